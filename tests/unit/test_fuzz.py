"""Fuzzing the host's two parsers of untrusted input, for a bounded time: a guest's output (the effects
decoder and the allowlist) and the manifest loader. Whatever the bytes, the only outcome is the clear,
expected error: never another exception, never a crash. And whatever effects a fuzzed guest plans, the
allowlist lets through exactly those the function may carry out: every publish to an allowed subject,
every KV write to an allowed bucket under a valid key, at most `max_effects` of them, none larger than
`max_effect_bytes` (judged by a reference written out below, not by the code under test)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebbtide.effects import Allowlist, EffectRefused, Outgoing
from ebbtide.manifest import ManifestError, parse_manifest
from ebbtide.runtime import GuestFault, decode_effects
from ebbtide.runtime.abi import Effect, KvPut, Publish
from tests.nats_subjects import subject_matches

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALLOWED_SUBJECTS = ("orders.express", "orders.*", "audit.>")
ALLOWED_BUCKETS = ("outbox-express",)
MAX_EFFECTS, MAX_EFFECT_BYTES = 8, 1024
ALLOWLIST = Allowlist(list(ALLOWED_SUBJECTS), list(ALLOWED_BUCKETS), max_effects=MAX_EFFECTS, max_effect_bytes=MAX_EFFECT_BYTES)


# -- the reference: what a function may carry out ---------------------------------------------------------


def _valid_subject(subject: str) -> bool:
    """A subject a message can be published to: dot-separated tokens, none empty, no wildcard or whitespace."""
    return all(token and not any(c in token for c in "*> \t\r\n\f\v") for token in subject.split("."))


def _valid_key(key: str) -> bool:
    """A NATS KV key: letters, digits and -/_=, in dot-separated tokens none of them empty."""
    return all(token and all(c.isascii() and (c.isalnum() or c in "-/_=") for c in token) for token in key.split("."))


def may_carry_out(effects: list[Effect]) -> bool:
    if len(effects) > MAX_EFFECTS:
        return False
    for effect in effects:
        if isinstance(effect, Publish):
            if len(effect.payload) > MAX_EFFECT_BYTES or not _valid_subject(effect.subject):
                return False
            if not any(subject_matches(pattern, effect.subject) for pattern in ALLOWED_SUBJECTS):
                return False
        elif len(effect.value) > MAX_EFFECT_BYTES or effect.bucket not in ALLOWED_BUCKETS or not _valid_key(effect.key):
            return False
    return True


def carried_out(effects: list[Effect]) -> list[Outgoing]:
    """What the host publishes for effects the function may carry out: each one, in order."""
    return [
        Outgoing(e.subject, e.payload) if isinstance(e, Publish) else Outgoing(f"$KV.{e.bucket}.{e.key}", e.value)
        for e in effects
    ]


def _plan_checked(effects: list[Effect]) -> None:
    """The allowlist against the reference: it plans exactly the effects the function may carry out, each
    within the limits and on a valid, allowed subject; it refuses every other list, whole."""
    try:
        planned = ALLOWLIST.plan(effects)
    except EffectRefused:
        assert not may_carry_out(effects), f"refused, yet allowed: {effects!r}"[:2000]
        return
    assert may_carry_out(effects), f"planned, yet not allowed: {effects!r}"[:2000]
    assert planned == carried_out(effects)
    assert len(planned) <= MAX_EFFECTS
    for outgoing in planned:
        assert len(outgoing.payload) <= MAX_EFFECT_BYTES and _valid_subject(outgoing.subject)
        assert any(subject_matches(p, outgoing.subject) for p in ALLOWED_SUBJECTS) or any(
            outgoing.subject.startswith(f"$KV.{bucket}.") for bucket in ALLOWED_BUCKETS
        )


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
    _plan_checked(effects)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_guest_output(output: bytes) -> None:
    _check_output(output)


@FUZZ
@given(st.lists(_effect_like, max_size=10) | _values)
def test_structured_guest_output(value: object) -> None:
    _check_output(msgspec.msgpack.encode(value))


# Well-formed effects near every edge of the allowlist: subjects just inside and outside the patterns
# (wildcards, empty tokens, whitespace), buckets and keys allowed or not, sizes and counts around the limits.
_subjects = st.sampled_from(
    ["orders.express", "orders.standard", "orders", "orders.a.b", "audit", "audit.x", "audit.x.y", "other.express"]
    + ["orders.*", "orders.>", "orders..x", ".orders", "orders.", "orders.ex press", "orders.\t", "", "$KV.outbox-express.1"]
) | st.text(max_size=12)
_keys = st.sampled_from(
    ["1", "order-1", "a/b=c", "a.b", ".", ".a", "a.", "a..b", "", "a b", "a*", "a>", "é", "x" * 300]
) | st.text(max_size=6)
_sized = st.sampled_from([0, 1, MAX_EFFECT_BYTES - 1, MAX_EFFECT_BYTES, MAX_EFFECT_BYTES + 1, 4 * MAX_EFFECT_BYTES]).map(
    lambda n: b"x" * n
)
_effects = st.lists(
    st.one_of(
        st.builds(Publish, _subjects, _sized),
        st.builds(KvPut, st.sampled_from(["outbox-express", "outbox-standard", "", "outbox-express.x"]), _keys, _sized),
    ),
    max_size=MAX_EFFECTS + 2,
)


@FUZZ
@given(_effects)
def test_well_formed_effects_planned_exactly_as_the_allowlist_allows(effects: list[Effect]) -> None:
    _plan_checked(effects)
    _check_output(msgspec.msgpack.encode(effects))  # the same list, through the guest's wire format


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
