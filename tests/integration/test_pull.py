"""The pool's pull consumer against a real server: what is there comes at once (never held back to fill
a batch), an empty consumer waits for the first message, nothing fetched is ever dropped."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import api

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.delivery import Incoming, ack_all, parse_ack_subject
from ebbtide.broker.publisher import ConfirmedPublisher, PubAck, PublishBatch
from ebbtide.broker.pull import FetchError, PullConsumer
from ebbtide.errors import PublishError
from tests.conftest import wait_until

WAIT_S = 30.0  # a long poll far longer than any of these tests: returning early is the behaviour under test


async def _consumer(nc: NatsClient, messages: int = 0) -> PullConsumer:
    await _stream_with_messages(nc, messages)
    return await PullConsumer(nc, "P", "c").start()


async def _stream_with_messages(nc: NatsClient, messages: int) -> None:
    """Stream P with a durable consumer c whose ack wait (60 s) outlasts every test here."""
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="P", subjects=["p.>"], retention=api.RetentionPolicy.WORK_QUEUE))
    await js.add_consumer("P", api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=60))
    for i in range(messages):
        await js.publish("p.in", f"{i}".encode())


async def test_returns_what_is_there_without_waiting_for_a_full_batch(nc: NatsClient) -> None:
    consumer = await _consumer(nc, messages=5)
    msgs = await asyncio.wait_for(consumer.fetch(100, WAIT_S), WAIT_S / 3)
    assert [m.data for m in msgs] == [b"0", b"1", b"2", b"3", b"4"]
    more = await _publish_later(nc, consumer, count=3)
    assert [m.data for m in more] == [b"late-0", b"late-1", b"late-2"][: len(more)] and more
    for m in msgs + more:
        await m.ack()
    await consumer.close()


async def test_batches_are_capped_and_the_rest_comes_next(nc: NatsClient) -> None:
    consumer = await _consumer(nc, messages=25)
    first = await consumer.fetch(10, WAIT_S)
    second = await consumer.fetch(10, WAIT_S)
    third = await asyncio.wait_for(consumer.fetch(10, WAIT_S), WAIT_S / 3)
    assert [len(first), len(second), len(third)] == [10, 10, 5]
    assert [m.data for m in first + second + third] == [f"{i}".encode() for i in range(25)]
    for m in first + second + third:
        await m.ack()
    assert await consumer.fetch(10, 0.2) == []  # empty: the long poll ends with nothing
    await consumer.close()


async def test_close_hands_back_what_was_never_fetched(nc: NatsClient) -> None:
    consumer = await _consumer(nc, messages=3)
    fetched = await consumer.fetch(3, WAIT_S)
    consumer._arrived.extend(fetched)  # as if delivered late, after its fetch gave up
    await consumer.close()
    again = await PullConsumer(nc, "P", "c").start()
    redelivered = await asyncio.wait_for(again.fetch(10, WAIT_S), WAIT_S / 3)  # nak'ed: at once, not after ack_wait
    assert sorted(m.data for m in redelivered) == [b"0", b"1", b"2"]
    assert all(m.metadata.num_delivered == 2 for m in redelivered)
    await again.close()


# A worker process that closes its consumer, then dies at once: nothing it left in its write buffer goes out.
_CLOSE_THEN_DIE = textwrap.dedent("""
    import asyncio, os, sys
    import nats
    from ebbtide.broker.pull import PullConsumer

    async def main() -> None:
        nc = await nats.connect(sys.argv[1])
        consumer = await PullConsumer(nc, "P", "c").start()
        fetched = await consumer.fetch(3, 30.0)
        consumer._arrived.extend(fetched)  # as if delivered late, after its fetch gave up
        await consumer.close()
        os._exit(0 if len(fetched) == 3 else 3)

    asyncio.run(main())
""")


async def test_close_returns_once_the_server_has_taken_everything_back(nats_server: EmbeddedNats, nc: NatsClient) -> None:
    """`close()` returning means the hand-back is done (the server confirmed each nak), not merely queued:
    even if the process dies right after, the messages are redelivered at once, not after the ack wait."""
    await _stream_with_messages(nc, 3)
    worker = await asyncio.create_subprocess_exec(sys.executable, "-c", _CLOSE_THEN_DIE, nats_server.url)
    assert await asyncio.wait_for(worker.wait(), WAIT_S) == 0
    again = await PullConsumer(nc, "P", "c").start()
    redelivered = await again.fetch(10, 5.0)  # far below the ack wait (60 s)
    assert sorted(m.data for m in redelivered) == [b"0", b"1", b"2"]
    assert all(m.metadata.num_delivered == 2 for m in redelivered)
    await again.close()


async def test_a_deleted_consumer_is_an_error(nc: NatsClient) -> None:
    consumer = await _consumer(nc)
    await nc.jetstream().delete_consumer("P", "c")
    with pytest.raises(FetchError):
        await consumer.fetch(10, 1.0)
    await consumer.close()


async def _publish_later(nc: NatsClient, consumer: PullConsumer, count: int) -> list:  # type: ignore[type-arg]
    async def publish() -> None:
        await asyncio.sleep(0.2)  # the fetch below is waiting by now
        for i in range(count):
            await nc.jetstream().publish("p.in", f"late-{i}".encode())

    task = asyncio.create_task(publish())
    msgs = await asyncio.wait_for(consumer.fetch(100, WAIT_S), WAIT_S / 3)
    await task
    return msgs


async def test_workers_sharing_a_consumer_each_get_messages(nc: NatsClient) -> None:
    """While one worker's request waits, another's `no_wait` request is told "408 Requests Pending"
    (the waiting one comes first): not an error; between them they get every message once."""
    first = await _consumer(nc)
    second = await PullConsumer(nc, "P", "c").start()
    waiting = asyncio.create_task(first.fetch(10, WAIT_S))
    await asyncio.sleep(0.2)  # the first worker's request is waiting on the server
    other = asyncio.create_task(second.fetch(10, WAIT_S))
    await asyncio.sleep(0.2)
    for i in range(6):
        await nc.jetstream().publish("p.in", f"{i}".encode())
    got = await asyncio.wait_for(waiting, WAIT_S / 3) + await asyncio.wait_for(other, WAIT_S / 3)
    while len(got) < 6:
        got += await asyncio.wait_for(first.fetch(10, WAIT_S), WAIT_S / 3)
    assert sorted(m.data for m in got) == [f"{i}".encode() for i in range(6)]
    for closing in (first, second):
        await closing.close()


async def test_a_rounds_acks_go_out_in_one_write_one_ack_per_message(nats_server: EmbeddedNats, nc: NatsClient) -> None:
    """The executor acks a settled round with `ack_all`: one write, still one +ACK per message (JetStream has
    no batched explicit ack). Counted on the wire; the consumer then holds nothing unacked."""
    consumer = await _consumer(nc, messages=5)
    msgs = await consumer.fetch(100, WAIT_S)
    watcher = await nats.connect(nats_server.url)
    seen: list[bytes] = []
    five = asyncio.Event()

    async def record(msg) -> None:
        seen.append(msg.data)
        if len(seen) == 5:
            five.set()

    await watcher.subscribe("$JS.ACK.P.c.>", cb=record)
    await watcher.flush()
    writes_before = nc.stats["out_msgs"]
    await ack_all([Incoming(m, parse_ack_subject(m.reply)) for m in msgs])
    await nc.flush()
    await watcher.flush()  # the acks reached the watcher's read loop; its callback runs in a task of its own
    await asyncio.wait_for(five.wait(), WAIT_S)
    assert seen == [b""] * 5  # an empty ack is +ACK, as nats-py's Msg.ack sends it
    assert nc.stats["out_msgs"] - writes_before == 5

    async def all_acked() -> bool:  # the server works through acks on a queue of their own: a moment later
        info = await nc.jetstream().consumer_info("P", "c")
        return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 5

    await wait_until(all_acked)
    with pytest.raises(nats.errors.MsgAlreadyAckdError):
        await msgs[0].ack()  # nats-py knows it was acked
    await consumer.close()
    await watcher.close()


async def test_a_publish_batch_is_confirmed_with_one_wait(nc: NatsClient) -> None:
    """The executor's publishes: built together, written together, each PubAck (or refusal) in its place."""
    await _stream_with_messages(nc, 0)
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    batch = PublishBatch()
    publisher.add(batch, "p.out", b"one", "id-1", {"Ebbtide-Ingress-At": "1"})
    publisher.add(batch, "p.out", b"again", "id-1", {})  # the same id: stored once
    publisher.add(batch, "p.out", b"x" * (nc.max_payload + 1), "id-2", {})  # refused here, never sent
    publisher.add(batch, "nowhere.out", b"lost", "id-3", {})  # no stream: 503 no responders
    await publisher.send(batch)
    first, duplicate, too_big, no_stream = await publisher.wait(batch, timeout=10)
    assert isinstance(first, PubAck) and first.seq == 1 and not first.duplicate
    assert isinstance(duplicate, PubAck) and duplicate.duplicate and duplicate.seq == 1
    assert isinstance(too_big, PublishError) and "max_payload" in str(too_big)
    assert isinstance(no_stream, PublishError) and "503" in str(no_stream)
    stored = await nc.jetstream().get_msg("P", 1)
    assert stored.data == b"one" and stored.headers == {"Ebbtide-Ingress-At": "1", "Nats-Msg-Id": "id-1"}
