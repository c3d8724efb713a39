"""Per-key ordering on a real nats-server with real Wasm: the server partitions keyed subjects as
`fnv1a_partition` says, a retried message holds back its key's later messages until it is dead-lettered
(the dead letter says which sequence it broke; redriven, it rejoins its partition), and the ordered order pipeline applies every order's
events in sequence; keyless and unkeyable messages are handled, never left behind."""

from __future__ import annotations

import asyncio
import collections
import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import RetentionPolicy, StreamConfig, SubjectTransform

from ebbtide import controller
from ebbtide.broker import EmbeddedNats
from ebbtide.broker.headers import H_ORDER_KEY, H_REASON, H_SEQUENCE_BROKEN
from ebbtide.dlq_admin.redriving import redrive
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, load_manifest, parse_manifest
from ebbtide.ordering import entry_subject
from ebbtide.status_reports import status_subject
from ebbtide.subjects import fnv1a_partition, stream_transform
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, event_msg_id, generate_order_events, generate_orders
from tests.conftest import REPO, backlog, chaos_manifest, manifest_copy, provision_for, read_stream, wait_until
from tests.ordering_check import check_outboxes

PARTITIONS = 4


def ordered_chaos(tmp_path: Path) -> LoadedManifest:
    """The chaos guest as an ordered function on in.chaos.<key>, retrying RETRY answers for ~0.8 s."""
    path = chaos_manifest(tmp_path, 'order_by = "k"\n').path
    text = path.read_text().replace('retention = "workqueue"', f'retention = "workqueue"\npartitions = {PARTITIONS}')
    text = text.replace("retry = { max_deliver = 3, backoff_ms = [50, 100] }", "retry = { max_deliver = 3, backoff_ms = [400] }")
    path.write_text(text)
    return parse_manifest(text, path)


def keys_in_one_partition(count: int) -> list[str]:
    """Keys the server puts in the same partition: one lane, one holder; only their keys keep them apart."""
    by_partition: dict[int, list[str]] = collections.defaultdict(list)
    for i in range(1000):
        group = by_partition[fnv1a_partition(f"key{i}", PARTITIONS)]
        group.append(f"key{i}")
        if len(group) == count:
            return group
    raise AssertionError("no partition got enough keys")


def chaos_event(key: str, n: int, retry: bool = False) -> bytes:
    """A chaos payload carrying its key in the field the function orders by (`R` first: RETRY, always)."""
    return json.dumps({"R": 1, "k": key, "n": n} if retry else {"k": key, "n": n}).encode()


async def test_a_retried_message_holds_back_its_key_until_it_is_dead_lettered(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = ordered_chaos(tmp_path)
    js = nc.jetstream()
    blocked, free = keys_in_one_partition(2)
    # The first: RETRY every time, three deliveries 0.4 s apart, then a dead letter. The other key, in the same
    # lane, goes on meanwhile.
    sent = [chaos_event(blocked, 1, retry=True), chaos_event(free, 1), chaos_event(blocked, 2), chaos_event(free, 2)]
    sent += [chaos_event(blocked, 3), chaos_event(free, 3)]
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url):
        for payload in sent:
            await js.publish(f"in.chaos.{json.loads(payload)['k']}", payload)
        outputs = await read_stream(nc, "TEST", "test.out", expected=5)
        letters = await read_stream(nc, "DLQ", expected=1)

    def handled(key: str) -> list[bytes]:
        return [m.data for m in outputs if json.loads(m.data)["k"] == key]

    assert [m.data for m in outputs] == [m.data for m in sorted(outputs, key=lambda m: m.seq)]
    assert handled(free) == [chaos_event(free, n) for n in (1, 2, 3)]
    assert handled(blocked) == [chaos_event(blocked, n) for n in (2, 3)]
    (letter,) = letters
    assert letter.data == sent[0]
    assert letter.headers[H_REASON] == "retries-exhausted"
    assert letter.headers[H_ORDER_KEY] == blocked and letter.headers[H_SEQUENCE_BROKEN] == "true"
    partition = fnv1a_partition(blocked, PARTITIONS)
    assert letter.headers["Ebbtide-Original-Subject"] == f"in.chaos.{partition}"  # stored without its key
    # The key's next message was handled only once the retried one had been given up on: not while it
    # waited its 0.4 s backoffs (without ordering it is handled at once, long before the dead letter).
    blocked_2 = next(m for m in outputs if m.data == chaos_event(blocked, 2))
    assert blocked_2.time > letter.time, (blocked_2.time, letter.time)

    # Redriven, it goes back under its key, so the server puts it in the same partition.
    result = await redrive(nc, manifest)
    (redriven,) = result.redriven
    assert redriven.subject == f"in.chaos.{blocked}"
    assert (await js.get_msg("TEST", redriven.stream_seq)).subject == f"in.chaos.{partition}"


async def test_provision_refuses_a_stream_that_keeps_the_key_in_its_stored_subjects_and_says_what_to_do(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """Earlier versions stored `T.<key>` as `T.<partition>.<key>`; this version's lanes read `T.<partition>`
    and would never see those messages: provisioning such a stream stops with what to do, changing nothing."""
    manifest = ordered_chaos(tmp_path)
    src, dest = stream_transform(["in.chaos"], PARTITIONS)
    earlier = SubjectTransform(src=src, dest=dest + ".{{wildcard(1)}}")
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="TEST", subjects=["in.>", "test.>"], retention=RetentionPolicy.WORK_QUEUE, subject_transform=earlier)
    )
    with pytest.raises(ConnectionError, match=r"an earlier ebbtide's layout.*drain it.*nats stream rm TEST.*provision` again"):
        await provision_for(manifest, nats_server.url)
    transform = (await js.stream_info("TEST")).config.subject_transform
    assert transform is not None and transform.dest == earlier.dest


async def test_the_ordered_pipeline_applies_every_orders_events_in_sequence(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    path, _ = manifest_copy(tmp_path, 'order_by = "orderGuid"')
    text = path.read_text().replace("max_age_s = 86400", "max_age_s = 86400\npartitions = 8")
    text = text.replace("[kv.outbox-express]", "[kv.outbox-express]\nhistory = 8").replace(
        "[kv.outbox-standard]", "[kv.outbox-standard]\nhistory = 8"
    )
    path.write_text(text)
    manifest = load_manifest(path)
    js = nc.jetstream()
    events = generate_order_events(300, 3, seed=21)
    keyless = generate_orders(1, seed=22, first_id=900)[0]  # on the bare entry subject: no key
    unkeyable = json.loads(encode_order(generate_orders(1, seed=23, first_id=901)[0]))
    del unkeyable["orderGuid"]  # keyed on ingress, but the distributor's effect has no key to carry on

    subject_of = entry_subject(manifest, INGRESS_SUBJECT)
    assert callable(subject_of)
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url):
        for event in events:
            payload = encode_order(event)
            await js.publish(subject_of(payload), payload, headers={"Nats-Msg-Id": event_msg_id(event)})
        await js.publish(INGRESS_SUBJECT, encode_order(keyless))
        await js.publish(f"{INGRESS_SUBJECT}.no-guid", json.dumps(unkeyable).encode())
        bucket_of = {"Express": "outbox-express", "Standard": "outbox-standard"}
        expected: dict[str, dict[str, int]] = {b: {} for b in bucket_of.values()}
        for event in events:
            expected[bucket_of[event.delivery]][str(event.order_id)] = 3
        total = len(events) + 1

        async def settled() -> bool:
            writes = sum([(await js.stream_info(f"KV_{b}")).state.last_seq for b in expected])
            return writes >= total and await backlog(nc) == 0

        await wait_until(settled, timeout=60)
    keyless_bucket = bucket_of[keyless.delivery]
    stored_keyless = await js.get_last_msg(f"KV_{keyless_bucket}", f"$KV.{keyless_bucket}.{keyless.order_id}")
    assert stored_keyless.data == encode_order(keyless)
    expected[keyless_bucket][str(keyless.order_id)] = 0  # no eventSeq: written once, as event 0
    checks = await check_outboxes(nc, expected)
    for bucket, check in checks.items():
        assert (check.violations, check.applied_twice, check.strays) == (0, 0, 0), (bucket, check)
        assert check.lost == 0 and check.writes == sum(expected[bucket].values()) + (bucket == keyless_bucket), (bucket, check)

    (letter,) = await read_stream(nc, "DLQ", expected=1)
    assert letter.headers[H_REASON] == "effect-refused" and "no field 'orderGuid'" in letter.headers["Ebbtide-Error"]
    # Published under the key no-guid, but the key a stored message runs under is its payload's: none.
    assert letter.headers[H_ORDER_KEY] == ""

    # The server stored each keyed message under the partition fnv1a_partition names, without its key.
    stored = await read_stream(nc, "ORDERS", expected=len(events))
    partitions = collections.Counter()
    for msg in stored:
        tokens = msg.subject.split(".")
        if tokens[1] == "ingress" and len(tokens) == 3:
            key = msgspec.json.decode(msg.data).get("orderGuid", "no-guid")  # the key it was published under
            assert int(tokens[2]) == fnv1a_partition(key, 8), msg.subject
            partitions[tokens[2]] += 1
    assert len(partitions) == 8
    assert msgspec.json.decode(stored[0].data)["eventSeq"] == 1


def ebbtide_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebbtide", *args], capture_output=True, text=True, timeout=60)


async def test_publish_sends_each_event_to_its_keyed_subject(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = str(REPO / "deploy/ordered/ebbtide.toml")
    await provision_for(load_manifest(manifest), nats_server.url)
    done = await asyncio.to_thread(
        ebbtide_cli, "-m", manifest, "publish", "--count", "4", "--events-per-order", "3", "--nats-url", nats_server.url
    )
    assert done.returncode == 0, done.stderr
    stored = await read_stream(nc, "ORDERS", expected=12)
    events = [msgspec.json.decode(m.data) for m in stored]
    assert [m.subject for m in stored] == [f"orders.ingress.{fnv1a_partition(e['orderGuid'], 8)}" for e in events]
    for guid in {e["orderGuid"] for e in events}:
        assert [e["eventSeq"] for e in events if e["orderGuid"] == guid] == [1, 2, 3]

    lines = tmp_path / "orders.jsonl"
    lines.write_text('{"orderId": 1, "orderGuid": "g-1"}\n{"orderId": 2}\n')
    refused = await asyncio.to_thread(ebbtide_cli, "-m", manifest, "publish", "--file", str(lines), "--nats-url", nats_server.url)
    assert refused.returncode == 2 and f"{lines}:2: orders.ingress is ordered" in refused.stderr, refused.stderr
    assert (await nc.jetstream().stream_info("ORDERS")).state.messages == 12  # nothing of the file published


async def test_an_ordered_function_at_zero_wakes_on_a_keyed_publish(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At zero instances the pool listens on its trigger; keyed messages come on `<trigger>.<key>`, so that
    rings the bell too (the idle lag check is pushed out of the test's reach: only the bell can wake it)."""
    monkeypatch.setattr(controller, "IDLE_REPORT_S", 600.0)
    manifest = ordered_chaos(tmp_path)
    manifest = LoadedManifest(
        msgspec.structs.replace(
            manifest.spec,
            functions={
                "chaos": msgspec.structs.replace(
                    manifest.function("chaos"), scale=msgspec.structs.replace(manifest.function("chaos").scale, min=0)
                )
            },
        ),
        manifest.path,
    )
    await provision_for(manifest, nats_server.url)
    # The idle pool reports once it listens for the bell (and found nothing waiting): publish after that.
    reported = asyncio.Event()

    async def on_report(_msg: object) -> None:
        reported.set()

    reports = await nc.subscribe(status_subject("chaos"), cb=on_report)
    async with Host(manifest, nats_server.url) as host:
        chaos = host.controllers["chaos"]
        await asyncio.wait_for(reported.wait(), 30)
        await reports.unsubscribe()
        await nc.jetstream().publish("in.chaos.k-1", b"wake up")
        (output,) = await read_stream(nc, "TEST", "test.out", expected=1)
        assert output.data == b"wake up"
        assert (chaos.wakeups, chaos.bell_wakeups) == (1, 1)
