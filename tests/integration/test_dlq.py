"""The dead-letter tool (ebbtide.dlq_admin) on a real nats-server, with the real pipeline where it matters."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.broker.headers import H_ORIGINAL_SUBJECT
from ebbtide.deadletter import Reason, dead_letter_headers
from ebbtide.dlq_admin import (
    H_REDRIVEN_FROM,
    DeadLetterError,
    RedriveResult,
    StoredDeadLetter,
    format_detail,
    format_table,
    list_dead_letters,
    purge,
    redrive,
    redriving,
    show_dead_letter,
)
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.stream_state import stream_state
from ebbtide.workload.orders import INGRESS_SUBJECT, Order, encode_order, generate_orders
from tests.conftest import backlog, exactly_once, outbox_bodies, outboxes_writes, provision_for, read_stream, wait_until

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")  # as deadletter.py writes it
OUTBOXES = ("outbox-express", "outbox-standard")


def bucket_of(order: Order) -> str:
    return "outbox-express" if order.delivery == "Express" else "outbox-standard"


def drone_order(order_id: int) -> bytes:
    order = json.loads(encode_order(generate_orders(1, seed=3, first_id=order_id)[0]))
    order["delivery"] = "Drone"
    return json.dumps(order).encode()


MALFORMED = b'{"orderId": 1, "delivery": "Express", "items": ['


async def dead_letter_by_hand(
    nc: NatsClient,
    function: str,
    payload: bytes,
    *,
    sequence: int,
    reason: Reason = Reason.RETRIES_EXHAUSTED,
    error: str = "failed 5 deliveries; last error: guest fault: trap: out of bounds memory access",
    delivered: int = 5,
    subject: str = INGRESS_SUBJECT,
    msg_id: str | None = None,
) -> int:
    """Store a dead letter exactly as the pool would (same headers, same Nats-Msg-Id); its DLQ seq."""
    headers = dead_letter_headers(
        function=function,
        reason=reason,
        error=error,
        delivered=delivered,
        subject=subject,
        stream="ORDERS",
        sequence=sequence,
        original_msg_id=msg_id,
    )
    headers["Nats-Msg-Id"] = f"dlq:ORDERS:{sequence}"
    ack = await nc.jetstream().publish(f"dlq.{function}", payload, headers=headers)
    assert not ack.duplicate
    return ack.seq


async def settled(nc: NatsClient, expected: dict[str, int]) -> bool:
    """Every input acked and the outboxes hold `expected` entries."""
    if await backlog(nc):
        return False
    return {b: (await stream_state(nc, f"KV_{b}")).messages for b in OUTBOXES} == expected


def by_bucket(orders: list[Order]) -> dict[str, dict[str, bytes]]:
    return {bucket: bodies for bucket, bodies in outbox_bodies(orders).items() if bucket in OUTBOXES}


async def test_list_and_show_decode_the_pipelines_dead_letters(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    js = nc.jetstream()
    good = generate_orders(40, seed=12)
    bad = {f"drone-{i}": drone_order(700 + i) for i in range(3)} | {f"broken-{i}": MALFORMED + bytes([48 + i]) for i in range(2)}
    ingress_seq: dict[str, int] = {}
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        bad_items = iter(bad.items())
        for i, order in enumerate(good):
            await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
            if i % 8 == 3:  # interleave the bad ones with the good
                msg_id, payload = next(bad_items)
                ingress_seq[msg_id] = (await js.publish(INGRESS_SUBJECT, payload, headers={"Nats-Msg-Id": msg_id})).seq
        expected = {b: sum(1 for o in good if bucket_of(o) == b) for b in OUTBOXES}
        await wait_until(lambda: settled(nc, expected))
    assert set(ingress_seq) == set(bad)

    # Someone else's dead letters: another function's (long error), and a bare binary message.
    long_error = "effect refused: kv_put to bucket 'outbox-standard' is not in the allowlist " + "x" * 300
    receiver_seq = await dead_letter_by_hand(
        nc,
        "receiver-express",
        encode_order(good[0]),
        sequence=999,
        reason=Reason.EFFECT_REFUSED,
        error=long_error,
        delivered=1,
        subject="orders.express",
    )
    binary = bytes(range(256))
    mystery_seq = (await js.publish("dlq.mystery", binary)).seq

    everything = await list_dead_letters(nc, reference_manifest)
    assert [l.seq for l in everything] == list(range(1, 8))  # oldest first, nothing skipped
    distributor = await list_dead_letters(nc, reference_manifest, function="distributor")
    assert [l.seq for l in distributor] == [l.seq for l in everything if l.subject == "dlq.distributor"]
    assert len(distributor) == 5 and max(l.seq for l in distributor) < receiver_seq < mystery_seq
    assert {l.original_msg_id for l in distributor} == set(bad)
    for letter in distributor:
        assert letter.function == "distributor"
        assert letter.reason == "rejected"
        assert letter.delivery_count == 1
        assert letter.original_subject == INGRESS_SUBJECT and letter.original_stream == "ORDERS"
        assert letter.original_sequence == ingress_seq[letter.original_msg_id]
        assert letter.payload == bad[letter.original_msg_id] and letter.size == len(letter.payload)
        assert ("unknown-delivery" if letter.original_msg_id.startswith("drone") else "malformed-json") in letter.error
        assert ISO_UTC.match(letter.failed_at)
        assert letter.headers["Nats-Msg-Id"] == f"dlq:ORDERS:{letter.original_sequence}"

    [receiver] = await list_dead_letters(nc, reference_manifest, function="receiver-express")
    assert (receiver.seq, receiver.reason, receiver.delivery_count, receiver.original_subject) == (
        receiver_seq,
        "effect-refused",
        1,
        "orders.express",
    )
    assert receiver.original_msg_id is None
    [mystery] = await list_dead_letters(nc, reference_manifest, function="mystery")
    assert mystery == StoredDeadLetter(
        seq=mystery_seq,
        subject="dlq.mystery",
        function="mystery",
        failed_at=mystery.failed_at,
        size=256,
        payload=binary,
        headers={},
    )
    assert ISO_UTC.match(mystery.failed_at)  # the server's storage time when the header is missing
    assert await list_dead_letters(nc, reference_manifest, function="nobody") == []

    assert await list_dead_letters(nc, reference_manifest, limit=3) == everything[:3]
    assert await list_dead_letters(nc, reference_manifest, function="distributor", limit=2) == distributor[:2]
    assert await list_dead_letters(nc, reference_manifest, limit=0) == []

    assert await show_dead_letter(nc, reference_manifest, distributor[2].seq) == distributor[2]
    with pytest.raises(DeadLetterError, match=r"no dead letter #999 in DLQ"):
        await show_dead_letter(nc, reference_manifest, 999)
    with pytest.raises(DeadLetterError, match="invalid function name"):
        await list_dead_letters(nc, reference_manifest, function="dist.*")

    table = format_table(everything, width=100).splitlines()
    assert len(table) == 1 + len(everything)
    assert table[0].split()[:4] == ["SEQ", "FUNCTION", "REASON", "DELIV"]
    assert all(len(line) <= 100 for line in table)
    receiver_row = next(line for line in table if line.split()[0] == str(receiver_seq))
    assert "receiver-express" in receiver_row and "effect-refused" in receiver_row and receiver_row.endswith("…")
    assert format_table([]) == "no dead letters"

    detail = format_detail(distributor[0])
    for key, value in distributor[0].headers.items():
        assert f"{key}: {value}" in detail
    assert '"delivery": "Drone"' in detail  # a JSON payload is shown as (pretty-printed) text
    binary_detail = format_detail(mystery)
    assert "00000000  00 01 02 03" in binary_detail and "(none)" in binary_detail
    assert all(c.isprintable() for c in binary_detail.replace("\n", ""))


async def test_every_operation_names_a_missing_dead_letter_stream(reference_manifest: LoadedManifest, nc: NatsClient) -> None:
    for operation in (
        lambda: list_dead_letters(nc, reference_manifest),
        lambda: show_dead_letter(nc, reference_manifest, 1),
        lambda: redrive(nc, reference_manifest),
        lambda: purge(nc, reference_manifest, "distributor"),
    ):
        with pytest.raises(DeadLetterError, match="the dead-letter stream 'DLQ' does not exist"):
            await operation()


async def test_redrive_of_fixed_orders_lands_each_in_its_outbox_once(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """Orders that failed (transiently) and were dead-lettered moments ago, within the duplicate window of
    their original Nats-Msg-Id, are redriven after the fix: each is processed and stored exactly once."""
    js = nc.jetstream()
    await provision(js, reference_manifest)  # the functions are not running yet
    orders = generate_orders(8, seed=21, first_id=5000, express_share=0.5)
    assert {o.delivery for o in orders} == {"Express", "Standard"}
    dlq_seqs = []
    for order in orders:
        # Published, delivered, failed five times, dead-lettered, acked (gone from the work queue) ...
        seq = (await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})).seq
        await js.delete_msg("ORDERS", seq)
        dlq_seqs.append(await dead_letter_by_hand(nc, "distributor", encode_order(order), sequence=seq, msg_id=order.order_guid))
    # ... and the original ids are still in the duplicate window: reusing them would lose the orders.
    assert (await js.publish(INGRESS_SUBJECT, encode_order(orders[0]), headers={"Nats-Msg-Id": orders[0].order_guid})).duplicate
    other_seq = await dead_letter_by_hand(nc, "receiver-express", encode_order(orders[0]), sequence=77, subject="orders.express")

    mismatch = await redrive(nc, reference_manifest, function="distributor", seqs=[other_seq])
    assert mismatch.redriven == [] and [f.seq for f in mismatch.failed] == [other_seq]
    assert "not dlq.distributor" in mismatch.failed[0].reason

    result = await redrive(nc, reference_manifest, function="distributor")
    assert result.failed == []
    assert [r.seq for r in result.redriven] == dlq_seqs
    assert all(r.subject == INGRESS_SUBJECT and r.stream == "ORDERS" and not r.duplicate for r in result.redriven)
    assert result.summary() == "redriven 8, failed 0"
    republished = await read_stream(nc, "ORDERS", expected=len(orders))
    assert len(republished) == len(orders)
    for msg, order, dlq_seq, redriven in zip(republished, orders, dlq_seqs, result.redriven):
        assert msg.data == encode_order(order)
        assert msg.headers["Nats-Msg-Id"] == f"redrive:DLQ:{dlq_seq}"
        assert msg.headers[H_REDRIVEN_FROM] == str(dlq_seq)
        assert msg.seq == redriven.stream_seq
    assert await list_dead_letters(nc, reference_manifest, function="distributor") == []
    assert [l.seq for l in await list_dead_letters(nc, reference_manifest)] == [other_seq]  # not selected, kept

    expected = {b: sum(1 for o in orders if bucket_of(o) == b) for b in OUTBOXES}
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        await wait_until(lambda: settled(nc, expected))
    for order in orders:
        entry = await (await js.key_value(bucket_of(order))).get(str(order.order_id))
        assert msgspec.json.decode(entry.value, type=Order) == order
    assert await outboxes_writes(nc, by_bucket(orders)) == exactly_once(by_bucket(orders))  # each written once
    assert (await stream_state(nc, "DLQ")).messages == 1


async def test_an_interrupted_redrive_is_repeated_without_duplicates(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    await provision(js, reference_manifest)
    orders = generate_orders(5, seed=8, first_id=6000, express_share=0.5)
    dlq_seqs = [
        await dead_letter_by_hand(nc, "distributor", encode_order(o), sequence=100 + i, msg_id=o.order_guid)
        for i, o in enumerate(orders)
    ]

    async def crash(nc: NatsClient, stream: str, seq: int) -> None:
        raise DeadLetterError("connection lost")

    monkeypatch.setattr(redriving, "delete", crash)  # the tool dies between the server's confirmation and the delete
    first = await redrive(nc, reference_manifest)
    monkeypatch.undo()
    assert first.redriven == [] and [f.seq for f in first.failed] == dlq_seqs
    assert all("republished to orders.ingress (ORDERS #" in f.reason and "connection lost" in f.reason for f in first.failed)
    orders_state = await js.stream_info("ORDERS")
    assert (orders_state.state.messages, orders_state.state.last_seq) == (5, 5)
    assert len(await list_dead_letters(nc, reference_manifest)) == 5

    second = await redrive(nc, reference_manifest)
    assert second.failed == [] and [r.seq for r in second.redriven] == dlq_seqs
    assert all(r.duplicate for r in second.redriven) and second.deduplicated == 5
    assert [r.stream_seq for r in second.redriven] == [1, 2, 3, 4, 5]  # the copies stored by the first run
    orders_state = await js.stream_info("ORDERS")
    assert (orders_state.state.messages, orders_state.state.last_seq) == (5, 5)  # nothing stored twice
    assert await list_dead_letters(nc, reference_manifest) == []

    assert await redrive(nc, reference_manifest) == RedriveResult()  # nothing left to do
    again = await redrive(nc, reference_manifest, seqs=[dlq_seqs[0]])
    assert again.redriven == [] and "no dead letter" in again.failed[0].reason

    expected = {b: sum(1 for o in orders if bucket_of(o) == b) for b in OUTBOXES}
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        await wait_until(lambda: settled(nc, expected))
    assert await outboxes_writes(nc, by_bucket(orders)) == exactly_once(by_bucket(orders))


async def test_a_still_invalid_order_comes_back_as_a_new_dead_letter(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    js = nc.jetstream()
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        await js.publish(INGRESS_SUBJECT, drone_order(42), headers={"Nats-Msg-Id": "drone-42"})
        await js.publish(INGRESS_SUBJECT, MALFORMED, headers={"Nats-Msg-Id": "broken-1"})

        def dead_lettered(count: int):
            async def check() -> bool:
                return len(await list_dead_letters(nc, reference_manifest, function="distributor")) == count

            return check

        await wait_until(dead_lettered(2))
        old = {l.original_msg_id: l for l in await list_dead_letters(nc, reference_manifest)}
        foreign_seq = (await js.publish("dlq.distributor", b"put here by hand")).seq  # no headers at all

        result = await redrive(nc, reference_manifest, function="distributor")
        assert sorted(r.seq for r in result.redriven) == sorted(l.seq for l in old.values())
        assert [f.seq for f in result.failed] == [foreign_seq]
        assert H_ORIGINAL_SUBJECT in result.failed[0].reason

        await wait_until(dead_lettered(3))
    letters = await list_dead_letters(nc, reference_manifest)
    assert len(letters) == 3 and (await stream_state(nc, "DLQ")).messages == 3  # none lost, none doubled
    by_origin = {l.original_msg_id: l for l in letters}
    assert by_origin[None].seq == foreign_seq and by_origin[None].payload == b"put here by hand"
    for before in old.values():
        after = by_origin[f"redrive:DLQ:{before.seq}"]
        assert after.seq > foreign_seq
        assert after.delivery_count == 1 and after.reason == "rejected" and after.error == before.error
        assert after.payload == before.payload and after.original_subject == INGRESS_SUBJECT
        assert after.original_sequence > before.original_sequence
        with pytest.raises(DeadLetterError, match=f"no dead letter #{before.seq}"):
            await show_dead_letter(nc, reference_manifest, before.seq)
    assert await backlog(nc) == 0


async def test_purge_all_or_one_functions_dead_letters(reference_manifest: LoadedManifest, nc: NatsClient) -> None:
    await provision(nc.jetstream(), reference_manifest)
    payload = encode_order(generate_orders(1)[0])
    for i, function in enumerate(["distributor"] * 3 + ["receiver-express"] * 2 + ["receiver-standard"]):
        await dead_letter_by_hand(nc, function, payload, sequence=i + 1)

    assert await purge(nc, reference_manifest, "receiver-express") == 2
    remaining = await list_dead_letters(nc, reference_manifest)
    assert [l.function for l in remaining] == ["distributor"] * 3 + ["receiver-standard"]
    assert await purge(nc, reference_manifest, "receiver-express") == 0
    assert await purge(nc, reference_manifest) == 4
    assert await list_dead_letters(nc, reference_manifest) == []
    assert await purge(nc, reference_manifest) == 0

    seq = await dead_letter_by_hand(nc, "distributor", payload, sequence=50)  # after a purge, listing starts anew
    assert seq == 7 and [l.seq for l in await list_dead_letters(nc, reference_manifest)] == [7]
