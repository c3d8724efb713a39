from pathlib import Path

import pytest

from ebbtide.manifest import DEFAULT_STREAM_MAX_BYTES, ManifestError, load_manifest, parse_manifest
from ebbtide.subjects import subject_matches

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """
[streams.S]
subjects = ["in.>"]
[modules.m]
source = "functions/m"
[functions.f]
module = "m"
trigger = "in.f"
"""


def parse(text: str):
    return parse_manifest(text, Path("/tmp/test/ebbtide.toml"))


def test_reference_manifest_loads() -> None:
    manifest = load_manifest(REPO / "ebbtide.toml")
    assert set(manifest.spec.functions) == {"distributor", "receiver-express", "receiver-standard"}
    assert manifest.stream_for("orders.express") == "ORDERS"
    assert manifest.function("receiver-express").kv == ["outbox-express"]
    assert manifest.dead_letter_subject("distributor") == "dlq.distributor"
    assert manifest.config_json("receiver-standard") == b'{"bucket":"outbox-standard"}'


def test_defaults() -> None:
    fn = parse(MINIMAL).function("f")
    assert (fn.scale.min, fn.retry.max_deliver, fn.limits.max_payload) == (0, 5, 65536)
    stream = parse(MINIMAL).spec.streams["S"]
    assert (stream.retention, stream.max_age_s, stream.duplicate_window_s) == ("limits", 0.0, 120.0)
    assert stream.max_bytes == DEFAULT_STREAM_MAX_BYTES == 1 << 30  # ~1.2 million orders of BYTES_PER_ORDER


def test_a_stream_is_bounded_and_refuses_when_full() -> None:
    """streams.X.max_bytes becomes the stream's max_bytes with discard new: a full stream refuses new
    publishes and never removes a stored (maybe unhandled) message to make room; 0 is no limit."""
    from ebbtide.broker.provisioning import stream_configs

    bounded = parse(MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_bytes = 10_000_000'))
    [config] = [c for c in stream_configs(bounded) if c.name == "S"]
    assert (config.max_bytes, config.discard) == (10_000_000, "new")
    unbounded = parse(MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_bytes = 0'))
    [config] = [c for c in stream_configs(unbounded) if c.name == "S"]
    assert (config.max_bytes, config.discard) == (-1, "new")


@pytest.mark.parametrize("path", ["ebbtide.toml", "deploy/kubernetes/ebbtide.toml"])
def test_reference_streams_keep_acked_messages_beyond_the_duplicate_window(path: str) -> None:
    """Nothing doubled across a server restart: the server rebuilds its duplicate table from the messages it
    still stores, so the reference streams keep acked messages (limits, not workqueue) for longer than it."""
    for stream in load_manifest(REPO / path).spec.streams.values():
        assert stream.retention == "limits"
        assert stream.max_age_s >= stream.duplicate_window_s


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL.replace('trigger = "in.f"', 'trigger = "in.f"\nbatch = "many"'), "functions.f.batch: Expected `int`, got `str`"),
        (MINIMAL.replace('trigger = "in.f"', 'trigger = "in.f"\nbatch = 0'), "functions.f.batch: Expected `int` >= 1"),
        (MINIMAL + "\nsurprise = 1\n", "unknown field `surprise`"),
        (MINIMAL.replace('module = "m"', 'module = "nope"'), "functions.f.module: no [modules.nope]"),
        (MINIMAL.replace('trigger = "in.f"', 'trigger = "other.f"'), "functions.f.trigger: no stream captures 'other.f'"),
        (MINIMAL + "\n[functions.f.scale]\nmin = 5\nmax = 2\n", "functions.f.scale.min: 5 is greater than scale.max 2"),
        (MINIMAL.replace('trigger = "in.f"', 'trigger = "in.f"\nkv = ["b"]'), "functions.f.kv[0]: no [kv.b] bucket"),
        (MINIMAL.replace('trigger = "in.f"', 'trigger = "in.f"\npublish = ["in.>"]'), "would feed the function its own output"),
        (MINIMAL.replace("[functions.f]", "[functions.'bad name']"), "functions"),
        ("[[[", "not valid TOML"),
        (
            MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_age_s = 60'),
            "streams.S.max_age_s: 60 is shorter than duplicate_window_s 120",
        ),
        (
            MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_age_s = -1'),
            "streams.S.max_age_s: Expected `float` >= 0",
        ),
        (
            MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_bytes = -5'),
            "streams.S.max_bytes: Expected `int` >= 0",
        ),
        (
            MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_bytes = "1 GiB"'),
            "streams.S.max_bytes: Expected `int`, got `str`",
        ),
        (
            MINIMAL.replace('subjects = ["in.>"]', 'subjects = ["in.>"]\nmax_bytes = 4096'),
            "streams.S.max_bytes: 4096 cannot hold one message of functions.f (limits.max_payload 65536)",
        ),
    ],
)
def test_errors_name_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as error:
        parse(text)
    assert str(error.value).startswith("/tmp/test/ebbtide.toml: ")
    assert message in str(error.value)


def test_missing_file() -> None:
    with pytest.raises(ManifestError, match="nowhere.toml: cannot read manifest"):
        load_manifest("/nowhere.toml")


def test_unknown_function() -> None:
    with pytest.raises(ManifestError, match="no function named 'x'"):
        parse(MINIMAL).function("x")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("orders.express", "orders.express", True),
        ("orders.*", "orders.express", True),
        ("orders.*", "orders.express.x", False),
        ("orders.>", "orders.express.x", True),
        ("orders.>", "orders", False),
        ("orders.express", "orders.standard", False),
        ("*", "orders", True),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_the_streams_that_take_fast_batches() -> None:
    """A subject's publishes go as fast batches to the stream capturing it, if that stream allows them."""
    manifest = parse(
        MINIMAL
        + """
[streams.T]
subjects = ["t.*.x", "literal"]
allow_batched = false
[streams.U]
subjects = ["u.*.y"]
[kv.box]
[kv.plain]
allow_batched = false
[dead_letter]
stream = "DEAD"
"""
    )
    stream_of = manifest.batched_stream_of()
    assert [stream_of(s) for s in ("in.f", "in.a.b", "$KV.box.7", "dlq.f")] == ["S", "S", "KV_box", "DEAD"]
    assert [stream_of(s) for s in ("t.1.x", "literal", "$KV.plain.7", "u.1.y", "u.1.z", "in", "elsewhere")] == [
        None,
        None,
        None,
        "U",
        None,
        None,
        None,
    ]
    assert parse(MINIMAL).spec.streams["S"].allow_batched  # on by default
    many = [stream_of(f"$KV.box.{n}") for n in range(1000)]  # unbounded keys: answered, not all remembered
    assert set(many) == {"KV_box"}
