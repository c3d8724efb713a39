"""Per-key ordering, the pure parts: partitioned subjects and the stream transform, lanes and their
consumers, the keys of effects, the ordered manifest's validation and permissions, the event generator."""

from __future__ import annotations

import collections
from pathlib import Path

import msgspec
import pytest

from ebbtide.broker.partitions import lane_consumer_config, lanes, pin_timeout_s, stream_transform_of
from ebbtide.broker.provisioning import consumer_config, consumer_configs
from ebbtide.broker.users import function_permissions, ingress_permissions
from ebbtide.deadletter import Reason, dead_letter_headers
from ebbtide.dlq_admin.model import StoredDeadLetter
from ebbtide.dlq_admin.redriving import redrive_subject
from ebbtide.effects import Allowlist
from ebbtide.errors import DeadLetterError, EffectRefused, ManifestError
from ebbtide.manifest import load_manifest, parse_manifest
from ebbtide.ordering import KeyReader, LaneKeys, entry_subject
from ebbtide.runtime.abi import KvPut, Publish
from ebbtide.subjects import fnv1a_partition, stream_transform
from ebbtide.workload.orders import OrderEvent, encode_order, event_msg_id, generate_order_events

REPO = Path(__file__).resolve().parents[2]
ORDERED = load_manifest(REPO / "deploy/ordered/ebbtide.toml")
UNORDERED = load_manifest(REPO / "ebbtide.toml")


def test_one_transform_partitions_every_ordered_trigger_of_a_stream() -> None:
    assert stream_transform(["orders.ingress", "orders.express", "orders.standard"], 32) == (
        "orders.*.*",
        "orders.{{wildcard(1)}}.{{partition(32,2)}}",
    )
    # One trigger: nothing varies but the key, and the stored subject keeps only its partition.
    assert stream_transform(["in.chaos"], 4) == ("in.chaos.*", "in.chaos.{{partition(4,1)}}")


@pytest.mark.parametrize(
    ("triggers", "error"),
    [(["a.b", "a.b.c"], "same number of tokens"), (["a.*"], "literal subject"), (["a.>"], "literal subject")],
)
def test_triggers_that_cannot_share_a_transform_are_refused(triggers: list[str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        stream_transform(triggers, 8)


def test_fnv1a_partition_is_stable_and_spreads_keys() -> None:
    assert fnv1a_partition("k1", 4) == fnv1a_partition("k1", 4)
    counts = collections.Counter(fnv1a_partition(f"order-{i}", 16) for i in range(16_000))
    assert len(counts) == 16 and min(counts.values()) > 800  # about 1000 each


def test_a_stored_messages_key_comes_from_its_payload_and_keyless_ones_share_one_sequence() -> None:
    keys = LaneKeys("orders.express", "orderGuid")
    assert keys.of("orders.express.7", b'{"orderGuid": "abc-1", "items": []}') == "abc-1"
    assert keys.of("orders.express.7", b'{"orderGuid": 42}') == "42"
    assert keys.of("orders.express", b'{"orderGuid": "abc-1"}') == ""  # the bare trigger: the keyless lane
    # Published under a key its payload does not carry: the partition's keyless messages, one sequence.
    for payload in (b'{"other": 1}', b'{"orderGuid": null}', b'{"orderGuid": [1]}', b"not json"):
        assert keys.of("orders.express.7", payload) == ""


def test_a_key_read_from_a_payload_cannot_break_a_dead_letters_headers() -> None:
    key = LaneKeys("orders.express", "orderGuid").of("orders.express.3", b'{"orderGuid": "a\\r\\nNats-Msg-Id: x"}')
    assert key == "a\r\nNats-Msg-Id: x"
    headers = dead_letter_headers(
        function="receiver-express", reason=Reason.REJECTED, error="no", delivered=1, subject="orders.express.3",
        stream="ORDERS", sequence=1, original_msg_id=None, order_key=key,
    )  # fmt: skip
    assert headers["Ebbtide-Order-Key"] == "a Nats-Msg-Id: x"


def test_a_partitions_dead_letter_is_redriven_under_its_key_and_refused_without_one() -> None:
    def letter(subject: str, key: str | None) -> StoredDeadLetter:
        headers = {} if key is None else {"Ebbtide-Order-Key": key}
        return StoredDeadLetter(
            seq=7, subject="dlq.receiver-express", function="receiver-express", original_subject=subject, headers=headers
        )

    assert redrive_subject(letter("orders.express.3", "o-1"), ORDERED) == "orders.express.o-1"  # the server re-partitions it
    assert redrive_subject(letter("orders.express", ""), ORDERED) == "orders.express"  # keyless: as it was
    assert redrive_subject(letter("orders.express", None), UNORDERED) == "orders.express"
    for key in ("", "a b"):  # its payload had no key, or one no subject can carry
        with pytest.raises(DeadLetterError, match="publish it again yourself, to orders.express.<key>"):
            redrive_subject(letter("orders.express.3", key), ORDERED)


def test_an_ordered_function_reads_one_lane_per_partition_and_its_own_for_keyless_messages() -> None:
    receiver = lanes(ORDERED, "receiver-express")
    assert len(receiver) == 9
    assert receiver[0].consumer == "receiver-express-p0" and receiver[0].filter_subject == "orders.express.0"
    assert receiver[-1].consumer == "receiver-express" and receiver[-1].filter_subject == "orders.express"
    function = ORDERED.function("receiver-express")
    configs = [lane_consumer_config(function, lane) for lane in receiver]
    # One holder at a time per lane, pinned by the server; it takes them in batches.
    assert {(c["priority_policy"], tuple(c["priority_groups"])) for c in configs} == {("pinned_client", ("holder",))}  # type: ignore[arg-type]
    assert {c["priority_timeout"] for c in configs} == {int(pin_timeout_s(function) * 1e9)}
    assert 2.0 <= pin_timeout_s(function) <= 10.0
    assert {c["max_ack_pending"] for c in configs} == {function.max_ack_pending}
    assert {c["max_deliver"] for c in configs} == {-1}  # the host dead-letters, the server never drops
    assert [c["filter_subject"] for c in configs[:2]] == ["orders.express.0", "orders.express.1"]
    assert consumer_config(ORDERED, "receiver-express").durable_name == "receiver-express"  # KEDA's name
    assert [c.durable_name for c in consumer_configs(UNORDERED, "receiver-express")] == ["receiver-express"]
    assert stream_transform_of(UNORDERED, "ORDERS") is None  # the speed reference stays unpartitioned


def test_ordered_permissions_cover_every_lane_and_the_keyed_subjects() -> None:
    distributor = function_permissions(ORDERED, "distributor")
    for p in (0, 7):
        assert f"$JS.API.CONSUMER.MSG.NEXT.ORDERS.distributor-p{p}" in distributor.publish
        assert f"$JS.ACK.ORDERS.distributor-p{p}.>" in distributor.publish
        assert f"$JS.API.CONSUMER.UNPIN.ORDERS.distributor-p{p}" in distributor.publish  # hands its lanes over
    assert "ebbtide.lane_holdings.distributor" in distributor.publish  # holdings spread over the replicas
    assert "ebbtide.lane_holdings.distributor" in distributor.subscribe
    assert {"orders.express.*", "orders.standard.*"} <= set(distributor.publish)
    assert {"orders.ingress", "orders.ingress.*"} <= set(distributor.subscribe)  # the bell, keyed or not
    assert ingress_permissions(ORDERED).publish == ["orders.ingress", "orders.ingress.*"]
    receiver = function_permissions(ORDERED, "receiver-express")
    assert not any(s.startswith("orders.") for s in receiver.publish)


ORDER = msgspec.json.encode({"orderId": 7, "orderGuid": "9f1b-77", "delivery": "Express"})


def test_an_effect_to_an_ordered_trigger_gets_its_payload_key() -> None:
    allowlist = Allowlist(["orders.express"], ["outbox"], keyed=None)
    assert allowlist.plan([Publish("orders.express", ORDER)])[0].subject == "orders.express"  # not ordered
    allowlist = Allowlist.of(ORDERED.function("distributor"), ORDERED.ordered_triggers())
    assert allowlist.plan([Publish("orders.express", ORDER)])[0].subject == "orders.express.9f1b-77"
    numeric = msgspec.json.encode({"orderGuid": 12})
    assert allowlist.plan([Publish("orders.standard", numeric)])[0].subject == "orders.standard.12"


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"orderId": 1}', "has no field 'orderGuid'"),
        (b'{"orderGuid": "a.b"}', "not a key"),
        (b'{"orderGuid": "a b"}', "not a key"),
        (b'{"orderGuid": ""}', "not a key"),
        (b'{"orderGuid": 1.5}', "cannot read field"),
        (b'{"orderGuid": {"x": 1}}', "cannot read field"),
        (b"not json", "cannot read field"),
    ],
)
def test_an_effect_without_a_usable_key_is_refused_with_the_reason(payload: bytes, why: str) -> None:
    allowlist = Allowlist.of(ORDERED.function("distributor"), ORDERED.ordered_triggers())
    with pytest.raises(EffectRefused, match=why):
        allowlist.plan([Publish("orders.express", payload)])


def test_kv_puts_are_never_keyed() -> None:
    allowlist = Allowlist.of(ORDERED.function("receiver-express"), ORDERED.ordered_triggers())
    assert allowlist.plan([KvPut("outbox-express", "7", ORDER)])[0].subject == "$KV.outbox-express.7"


def test_clients_publish_an_ordered_entry_on_its_keyed_subject() -> None:
    keyed = entry_subject(ORDERED, "orders.ingress")
    assert callable(keyed) and keyed(ORDER) == "orders.ingress.9f1b-77"
    assert entry_subject(UNORDERED, "orders.ingress") == "orders.ingress"
    assert KeyReader("orderGuid").key(ORDER) == "9f1b-77"


def test_a_dead_letter_of_an_ordered_function_says_it_broke_the_sequence() -> None:
    common = dict(
        function="f",
        reason=Reason.RETRIES_EXHAUSTED,
        error="e",
        delivered=5,
        subject="s",
        stream="S",
        sequence=1,
        original_msg_id=None,
    )
    headers = dead_letter_headers(**common, order_key="k-1")  # type: ignore[arg-type]
    assert headers["Ebbtide-Order-Key"] == "k-1" and headers["Ebbtide-Sequence-Broken"] == "true"
    assert "Ebbtide-Order-Key" not in dead_letter_headers(**common)  # type: ignore[arg-type]


BASE = """
[streams.S]
subjects = ["a.>"]
[modules.m]
prebuilt = true
[functions.f]
module = "m"
trigger = "a.in"
order_by = "k"
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[functions.g]\nmodule = "m"\ntrigger = "a.in.x"\n',
            "functions.g.trigger: 'a.in.x' is caught by stream S's partitioning",
        ),
        ('[functions.g]\nmodule = "m"\ntrigger = "a.b.c"\norder_by = "k"\n', "same number of tokens"),
    ],
)
def test_manifest_refuses_ordering_that_cannot_work(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(BASE + extra, tmp_path / "ebbtide.toml")


def test_manifest_order_by_must_be_a_json_field_name(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="functions.f.order_by"):
        parse_manifest(BASE.replace('order_by = "k"', 'order_by = "subject:2"'), tmp_path / "ebbtide.toml")
    loaded = parse_manifest(BASE + '[functions.g]\nmodule = "m"\ntrigger = "a.out"\n', tmp_path / "ebbtide.toml")
    assert loaded.spec.streams["S"].partitions == 16  # the default


def test_events_come_in_each_orders_sequence_and_interleaved() -> None:
    events = generate_order_events(200, 3, seed=5)
    assert len(events) == 600
    seen: dict[int, list[int]] = collections.defaultdict(list)
    for event in events:
        seen[event.order_id].append(event.event_seq)
    assert all(seqs == [1, 2, 3] for seqs in seen.values())
    assert [e.event for e in events if e.order_id == 1] == ["created", "amended", "cancelled"]
    assert [e.order_id for e in events[:20]] != sorted(e.order_id for e in events[:20])  # interleaved
    decoded = msgspec.json.decode(encode_order(events[0]), type=OrderEvent)
    assert decoded == events[0] and b'"eventSeq":' in encode_order(events[0])
    assert len({event_msg_id(e) for e in events}) == 600
    assert generate_order_events(200, 3, seed=5) == events  # reproducible


def test_a_hot_key_holds_its_share_of_the_events() -> None:
    events = generate_order_events(1000, 3, hot_share=0.3)
    hot = sum(1 for e in events if e.order_id == 1)
    assert abs(hot / len(events) - 0.3) < 0.01
    assert [e.event_seq for e in events if e.order_id == 1] == list(range(1, hot + 1))
