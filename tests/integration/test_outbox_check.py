"""The outbox checker the pipeline tests rely on (tests/conftest.py `outbox_writes`), against a real bucket
holding each defect it is there to find: every one found and counted, a clean bucket judged clean."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient

from ebbtide.workload.orders import encode_order, generate_orders
from tests.conftest import OutboxWrites, outbox_bodies, outbox_writes


async def test_every_defect_of_an_outbox_is_counted(nc: NatsClient) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="outbox-check", history=1)
    orders = generate_orders(9, seed=5)
    sent = {str(o.order_id): encode_order(o) for o in orders}
    keys = list(sent)
    right, empty, truncated, other, deleted, purged, twice, lost, _ = keys
    for key in (right, twice):
        await kv.put(key, sent[key])
    await kv.put(twice, sent[twice])  # written again: a redone effect the server did not deduplicate
    # (the delete and purge markers below are writes beyond one per key too: 3 in all)
    await kv.put(empty, b"")
    await kv.put(truncated, sent[truncated][:-7])
    await kv.put(other, sent[right])  # another order's body under this key
    for key in (deleted, purged):
        await kv.put(key, sent[key])
    await kv.delete(deleted)
    await kv.purge(purged)
    await kv.put("stray", b"{}")
    expected = {key: sent[key] for key in keys if key != keys[-1]}  # the last order belongs elsewhere

    writes = await outbox_writes(nc, "outbox-check", expected)
    assert writes == OutboxWrites(stored=2, lost=1, written_twice=3, strays=1, wrong_body=3, deleted=2), writes
    assert writes != OutboxWrites.exactly_once(len(expected))


async def test_a_bucket_holding_every_order_once_with_its_body_is_exactly_once(nc: NatsClient) -> None:
    js = nc.jetstream()
    orders = generate_orders(40, seed=6)
    expected = outbox_bodies(orders)
    for bucket, bodies in expected.items():
        kv = await js.create_key_value(bucket=bucket, history=1)
        for key, body in bodies.items():
            await kv.put(key, body)
    for bucket, bodies in expected.items():
        assert await outbox_writes(nc, bucket, bodies) == OutboxWrites.exactly_once(len(bodies))
