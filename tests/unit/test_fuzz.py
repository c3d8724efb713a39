"""Fuzzing the host's two parsers of untrusted input, for a bounded time: a guest's output (the effects
decoder and the allowlist) and the manifest loader. Whatever the bytes, the only outcome is the clear,
expected error: never another exception, never a crash."""

from __future__ import annotations

from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebbtide.effects import Allowlist, EffectRefused
from ebbtide.manifest import ManifestError, parse_manifest
from ebbtide.runtime import GuestFault, decode_effects

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOWLIST = Allowlist(["orders.express", "orders.*"], ["outbox-express"], max_effects=8, max_effect_bytes=1024)

# MessagePack values shaped like effects, near-misses included: wrong tags, arities and types.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=64),
)
_tags = st.sampled_from(["publish", "kv_put", "PUBLISH", "", "log"]) | st.text(max_size=8)
_effect_like = st.lists(st.one_of(_tags, _scalars), min_size=0, max_size=5)
_values = st.recursive(
    _scalars | _effect_like,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


def _check_output(output: bytes) -> None:
    try:
        effects = decode_effects(output)
    except GuestFault as fault:
        assert fault.kind == "invalid-output"
        return
    try:
        for outgoing in ALLOWLIST.plan(effects):
            assert isinstance(outgoing.subject, str) and isinstance(outgoing.payload, bytes)
    except EffectRefused:
        pass


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_guest_output(output: bytes) -> None:
    _check_output(output)


@FUZZ
@given(st.lists(_effect_like, max_size=10) | _values)
def test_structured_guest_output(value: object) -> None:
    _check_output(msgspec.msgpack.encode(value))


_REFERENCE = (REPO / "ebbtide.toml").read_text().splitlines()
_toml_values = st.sampled_from(
    [
        '""',
        "0",
        "-1",
        "1e309",
        "true",
        "[]",
        "{}",
        '"x"',
        '[1, "a"]',
        "{ a = 1 }",
        '"orders.>"',
        '"*"',
        "99999999999999999999",
        '"\\u0000"',
    ]
)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_REFERENCE) - 1),
            st.sampled_from(["drop", "value", "garbage", "dup"]),
            _toml_values,
            st.text(max_size=20),
        ),
        max_size=6,
    )
)
def test_mutated_manifest(mutations: list[tuple[int, str, str, str]]) -> None:
    lines = list(_REFERENCE)
    for index, action, value, garbage in mutations:
        index %= len(lines)
        line = lines[index]
        if action == "drop":
            del lines[index]
        elif action == "value" and "=" in line:
            lines[index] = line.split("=", 1)[0] + "= " + value
        elif action == "garbage":
            lines[index] = line + garbage
        else:
            lines.insert(index, line)
        if not lines:
            lines = [""]
    try:
        parse_manifest("\n".join(lines), Path("fuzzed.toml"))
    except ManifestError as exc:
        assert str(exc).startswith("fuzzed.toml")


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_manifest_text(text: str) -> None:
    try:
        parse_manifest(text, Path("fuzzed.toml"))
    except ManifestError as exc:
        assert str(exc).startswith("fuzzed.toml")
