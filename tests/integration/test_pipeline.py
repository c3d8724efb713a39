"""The reference pipeline end to end on a real nats-server with the real Zig functions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ebbtide import executor as executor_module
from ebbtide.broker import ConfirmedPublisher, EmbeddedNats, provision, publish_all
from ebbtide.broker.delivery import Incoming
from ebbtide.broker.headers import H_ERROR, H_FUNCTION, H_ORIGINAL_SUBJECT, H_REASON
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.stream_state import stream_state
from ebbtide.workload.orders import INGRESS_SUBJECT, Order, encode_order, generate_orders
from tests.conftest import (
    backlog,
    exactly_once,
    manifest_copy,
    outbox_bodies,
    outboxes_writes,
    provision_for,
    read_stream,
    wait_until,
)


async def outbox_counts(nc: NatsClient) -> dict[str, int]:
    return {b: (await stream_state(nc, f"KV_{b}")).messages for b in ("outbox-express", "outbox-standard")}


async def publish(nc: NatsClient, payloads: list[tuple[bytes, str | None]]) -> None:
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    confirmed, errors = await publish_all(publisher, INGRESS_SUBJECT, payloads)
    assert errors == [] and confirmed == len(payloads)


async def test_10000_orders_end_in_the_right_outboxes(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    orders = generate_orders(10_000, seed=7)
    express = {o.order_id for o in orders if o.delivery == "Express"}
    standard = {o.order_id for o in orders if o.delivery == "Standard"}
    assert express and standard
    await provision_for(reference_manifest, nats_server.url)
    forms: Counter[str] = Counter()  # how the effects were published (their reply subjects say)

    async def watch(msg: Msg) -> None:
        forms["fast batch" if msg.reply.endswith(".$FI") else "a PubAck each"] += 1

    for subject in ("orders.express", "orders.standard", "$KV.outbox-express.>", "$KV.outbox-standard.>"):
        await nc.subscribe(subject, cb=watch)
    async with Host(reference_manifest, nats_server.url):
        await publish(nc, [(encode_order(o), o.order_guid) for o in orders])

        async def all_stored() -> bool:
            return sum((await outbox_counts(nc)).values()) >= len(orders)

        await wait_until(all_stored, timeout=120)
    # allow_batched (the default): a round's effects to a stream go as one fast batch (a round of one: a
    # single publish), so most effects of a burst were in batches.
    assert sum(forms.values()) >= 2 * len(orders) and forms["fast batch"] > sum(forms.values()) / 2, forms
    # Counted after the host stopped (every effect confirmed, nothing in flight): each order written once.
    expected = outbox_bodies(orders)
    assert await outboxes_writes(nc, expected) == exactly_once(expected)
    js = nc.jetstream()
    sample = orders[0]
    stored = await (await js.key_value(f"outbox-{sample.delivery.lower()}")).get(str(sample.order_id))
    assert msgspec.json.decode(stored.value, type=Order) == sample
    assert (await stream_state(nc, "DLQ")).messages == 0
    # Every input was acked.
    assert await backlog(nc) == 0


def order_json(**overrides: object) -> bytes:
    order = json.loads(encode_order(generate_orders(1, seed=3, first_id=900)[0]))
    for key, value in overrides.items():
        if value is ...:
            del order[key]
        else:
            order[key] = value
    return json.dumps(order).encode()


BAD_INPUTS = {
    "malformed-json": b'{"orderId": 1, "delivery": "Express", "items": [',
    "binary-garbage": bytes(range(256)) * 3,
    "empty": b"",
    "not-an-object": b"[1, 2, 3]",
    "missing-order-id": order_json(orderId=...),
    "string-order-id": order_json(orderId="17"),
    "float-order-id": order_json(orderId=17.5),
    "unknown-delivery": order_json(delivery="Drone"),
    "missing-delivery": order_json(delivery=...),
    "no-items": order_json(items=[]),
    "missing-items": order_json(items=...),
    "too-large": order_json(description="x" * 70_000),
}

EXPECTED_REASON = {
    "malformed-json": "malformed-json",
    "binary-garbage": "malformed-json",
    "empty": "malformed-json",
    "not-an-object": "malformed-json",
    "missing-order-id": "missing-order-id",
    "string-order-id": "invalid-order-id",
    "float-order-id": "invalid-order-id",
    "unknown-delivery": "unknown-delivery",
    "missing-delivery": "unknown-delivery",
    "no-items": "no-items",
    "missing-items": "no-items",
    "too-large": "exceeds limits.max_payload",
}


async def test_bad_input_is_dead_lettered_with_its_reason(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    good = generate_orders(200, seed=11)
    payloads: list[tuple[bytes, str | None]] = [(encode_order(o), o.order_guid) for o in good[:100]]
    payloads += [(payload, f"bad-{name}") for name, payload in BAD_INPUTS.items()]
    payloads += [(encode_order(o), o.order_guid) for o in good[100:]]
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        await publish(nc, payloads)
        dead = await read_stream(nc, "DLQ", expected=len(BAD_INPUTS))

        async def all_stored() -> bool:
            return sum((await outbox_counts(nc)).values()) >= len(good)

        await wait_until(all_stored)
    expected = outbox_bodies(good)
    assert await outboxes_writes(nc, expected) == exactly_once(expected)  # no bad input reached an outbox
    assert len(dead) == len(BAD_INPUTS)
    by_name = {m.headers["Ebbtide-Original-Msg-Id"].removeprefix("bad-"): m for m in dead}
    assert set(by_name) == set(BAD_INPUTS)
    for name, msg in by_name.items():
        assert (msg.data or b"") == BAD_INPUTS[name], name  # the original payload, untouched (nats-py gives None for empty)
        assert msg.subject == "dlq.distributor"
        assert msg.headers[H_FUNCTION] == "distributor"
        assert msg.headers[H_ORIGINAL_SUBJECT] == INGRESS_SUBJECT
        assert EXPECTED_REASON[name] in msg.headers[H_ERROR], (name, msg.headers[H_ERROR])
        expected_reason = "payload-too-large" if name == "too-large" else "rejected"
        assert msg.headers[H_REASON] == expected_reason, name


async def test_provisioning_is_idempotent_and_updates(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    js = nc.jetstream()
    await provision(js, reference_manifest)
    await provision(js, reference_manifest)
    info = await js.consumer_info("ORDERS", "distributor")
    assert info.config.max_ack_pending == reference_manifest.function("distributor").max_ack_pending
    changed = msgspec.structs.replace(
        reference_manifest.spec,
        functions={
            **reference_manifest.spec.functions,
            "distributor": msgspec.structs.replace(reference_manifest.function("distributor"), max_ack_pending=77),
        },
    )
    await provision(js, LoadedManifest(changed, reference_manifest.path))
    assert (await js.consumer_info("ORDERS", "distributor")).config.max_ack_pending == 77
    streams = {s.config.name for s in await js.streams_info()}
    assert {"ORDERS", "DLQ", "KV_outbox-express", "KV_outbox-standard"} <= streams


async def test_redelivered_order_is_written_once(
    tmp_path: Path, reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's ack of an order is lost after its outbox write was confirmed (as when its process dies
    there): the server redelivers the same message after the ack wait, the receiver writes again with the
    same Nats-Msg-Id, and the bucket stores one write. Then a client retries the order's publish with the
    same Nats-Msg-Id: the server recognises it, and nothing is written again."""
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 1")
    order = generate_orders(1, seed=5)[0]
    subject = f"orders.{order.delivery.lower()}"
    bucket = f"outbox-{order.delivery.lower()}"
    acks: list[tuple[int, bool]] = []  # the receiver's acks: (delivery count, sent)
    send_acks = executor_module.ack_all  # the executor acks each settled round with it

    async def first_ack_lost(settled: list[Incoming]) -> None:
        sent = []
        for incoming in settled:
            if incoming.subject == subject:
                lost = not acks  # the first is lost on its way
                acks.append((incoming.delivery.delivered, not lost))
                if lost:
                    continue
            sent.append(incoming)
        await send_acks(sent)

    monkeypatch.setattr(executor_module, "ack_all", first_ack_lost)
    await provision_for(load_manifest(path), nats_server.url)
    async with Host(load_manifest(path), nats_server.url):
        await publish(nc, [(encode_order(order), order.order_guid)])

        async def redelivered_and_acked() -> bool:
            return len(acks) == 2 and await backlog(nc) == 0

        await wait_until(redelivered_and_acked)
        assert acks == [(1, False), (2, True)]  # the same message, delivered again after the ack wait
        retry = await nc.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        assert retry.duplicate
    # Counted after the host stopped: the first write only (the redone one was deduplicated by the server).
    expected = {bucket: outbox_bodies([order])[bucket]}
    assert await outboxes_writes(nc, expected) == exactly_once(expected)
    assert len(acks) == 2
