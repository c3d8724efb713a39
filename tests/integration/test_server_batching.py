"""What nats-server (the one we ship) does with batched publishes: each fact the publisher relies on, checked
with raw protocol, then the publisher itself on the real server.

ADR-50 fast batches (`allow_batched`): a message's reply subject `<inbox>.<id>.<flow>.<gap>.<n>.<op>.$FI`
numbers it in its batch (op 0 start, 1 append, 2 commit with this message, 3 commit without storing it).
Atomic batches (`allow_atomic`, headers Nats-Batch-Id/-Sequence/-Commit) are checked for the fact that rules
them out for effects: one duplicate refuses the whole batch.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import api

from ebbtide.broker.publisher import (
    ERR_BATCH_DISABLED,
    ERR_BATCH_UNKNOWN,
    ConfirmedPublisher,
    PubAck,
    PublishBatch,
)
from ebbtide.errors import PublishError, PublishUnanswered
from tests.conftest import wait_until

INBOX = "_INBOX.facts"


class Answers:
    """Everything the server sends below INBOX, by the token after it (the batch id)."""

    def __init__(self) -> None:
        self.by_batch: dict[str, list[tuple[int, dict[str, object]]]] = {}
        self.arrived = asyncio.Event()

    async def on(self, msg: Msg) -> None:
        tokens = msg.subject[len(INBOX) + 1 :].split(".")
        n = int(tokens[3]) if len(tokens) == 6 else int(tokens[1])  # <id>.<flow>.<gap>.<n>.<op>.$FI or <id>.<n>
        self.by_batch.setdefault(tokens[0], []).append((n, msgspec.json.decode(msg.data) if msg.data else {}))
        self.arrived.set()

    async def final(self, batch_id: str, timeout: float = 5.0) -> list[tuple[int, dict[str, object]]]:
        """The batch's answers once its last one (a PubAck, or an error for its last message) arrived."""

        def done() -> bool:
            answers = self.by_batch.get(batch_id, [])
            return any("count" in a or ("error" in a and "type" not in a) for _, a in answers)

        async with asyncio.timeout(timeout):
            while not done():
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.sleep(0.1)  # anything sent right behind it
        return self.by_batch[batch_id]


async def _setup(nc: NatsClient, **stream: object) -> Answers:
    await nc.jetstream().add_stream(api.StreamConfig(name="S", subjects=["s.>"], duplicate_window=120, **stream))  # type: ignore[arg-type]
    answers = Answers()
    await nc.subscribe(f"{INBOX}.>", cb=answers.on)
    return answers


async def _fast(nc: NatsClient, batch_id: str, messages: list[tuple[bytes, str]], last_op: int = 3) -> None:
    """A fast batch in "gap: fail" mode; the commit is an extra empty message (op 3) or the last one (op 2)."""
    count = len(messages)
    for n, (payload, msg_id) in enumerate(messages, 1):
        op = 0 if n == 1 else 2 if (last_op == 2 and n == count) else 1
        await nc.publish("s.x", payload, reply=f"{INBOX}.{batch_id}.500.fail.{n}.{op}.$FI", headers={"Nats-Msg-Id": msg_id})
    if last_op == 3:
        await nc.publish("s.x", b"", reply=f"{INBOX}.{batch_id}.500.fail.{count + 1}.3.$FI")
    await nc.flush()


async def _stored(nc: NatsClient) -> int:
    return (await nc.jetstream().stream_info("S")).state.messages


def _kinds(answers: list[tuple[int, dict[str, object]]]) -> list[tuple[int, str]]:
    out = []
    for n, a in answers:
        kind = str(a.get("type") or ("error" if "error" in a else "pub-ack"))
        out.append((n, kind))
    return out


async def test_a_fast_batch_is_answered_by_one_flow_ack_and_one_pub_ack_counting_what_it_stored(nc: NatsClient) -> None:
    answers = await _setup(nc, allow_batched=True)
    await _fast(nc, "b1", [(b"m", f"id-{n}") for n in range(1, 6)])
    got = await answers.final("b1")
    assert _kinds(got) == [(1, "ack"), (6, "pub-ack")]
    assert got[-1][1] == {"stream": "S", "seq": 5, "batch": "b1", "count": 5}
    assert await _stored(nc) == 5


async def test_a_fast_batch_skips_a_duplicate_msg_id_and_counts_it_as_stored(nc: NatsClient) -> None:
    """The fact exactly-once rests on: the server checks each message's Nats-Msg-Id, also in a fast batch."""
    answers = await _setup(nc, allow_batched=True)
    await _fast(nc, "first", [(b"m", "id-1"), (b"m", "id-2")])
    await answers.final("first")
    await _fast(nc, "again", [(b"m", "new-1"), (b"m", "id-2"), (b"m", "new-2"), (b"m", "id-1")])
    got = await answers.final("again")
    assert got[-1][1]["count"] == 4 and "error" not in got[-1][1]
    assert await _stored(nc) == 4  # id-2 and id-1 once each
    await _fast(nc, "only-duplicates", [(b"m", "id-1"), (b"m", "new-2")], last_op=2)
    got = await answers.final("only-duplicates")
    assert got[-1][1]["count"] == 2 and await _stored(nc) == 4


async def test_a_refused_message_ends_the_fast_batch_and_the_pub_ack_counts_those_before_it(nc: NatsClient) -> None:
    """A stream full (discard new): the refused message is named; the rest of the batch is not stored."""
    answers = await _setup(nc, allow_batched=True, max_bytes=2000, discard=api.DiscardPolicy.NEW)
    await _fast(nc, "full", [(b"x" * 100, "a"), (b"x" * 1900, "b"), (b"x" * 10, "c")])
    got = await answers.final("full")
    assert (2, "err") in _kinds(got)
    [err] = [a for n, a in got if a.get("type") == "err"]
    assert err["seq"] == 2 and err["error"]["err_code"] == 10077  # type: ignore[index]
    [ack] = [a for _, a in got if "count" in a]
    assert ack["count"] == 1 and await _stored(nc) == 1  # "c" after it was not stored, though it fit
    # The last message refused, committed with it (op 2): still answered, not left hanging.
    await nc.jetstream().purge_stream("S")
    await _fast(nc, "last", [(b"x" * 10, "d"), (b"x" * 1990, "e")], last_op=2)
    got = await answers.final("last")
    assert [a["count"] for _, a in got if "count" in a] == [1] and await _stored(nc) == 1


async def test_a_missing_message_ends_a_fail_mode_fast_batch_before_the_gap(nc: NatsClient) -> None:
    answers = await _setup(nc, allow_batched=True)
    for n in (1, 2, 4):  # 3 never arrives (lost on the way)
        await nc.publish(
            "s.x", b"m", reply=f"{INBOX}.gap.500.fail.{n}.{0 if n == 1 else 1}.$FI", headers={"Nats-Msg-Id": f"g{n}"}
        )
    await nc.publish("s.x", b"", reply=f"{INBOX}.gap.500.fail.5.3.$FI")
    got = await answers.final("gap")
    assert (4, "gap") in _kinds(got)
    [ack] = [a for _, a in got if "count" in a]
    assert ack["count"] == 2 and await _stored(nc) == 2
    # what comes after the batch ended: the batch is unknown now
    assert [a["error"]["err_code"] for n, a in got if n == 5] == [ERR_BATCH_UNKNOWN]  # type: ignore[index]


async def test_a_stream_without_allow_batched_refuses_each_message_of_a_fast_batch(nc: NatsClient) -> None:
    answers = await _setup(nc)
    await _fast(nc, "off", [(b"m", "o1"), (b"m", "o2")])
    await asyncio.sleep(0.3)
    assert [a["error"]["err_code"] for _, a in answers.by_batch["off"]] == [ERR_BATCH_DISABLED] * 3  # type: ignore[index]
    assert await _stored(nc) == 0


async def test_an_atomic_batch_with_one_duplicate_is_refused_whole(nc: NatsClient) -> None:
    """Why effects do not go as atomic batches: a redelivered input's effects next to new ones would
    refuse the new ones too."""
    answers = await _setup(nc, allow_atomic=True)

    async def atomic(batch_id: str, ids: list[str]) -> None:
        for n, msg_id in enumerate(ids, 1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n), "Nats-Msg-Id": msg_id}
            if n == len(ids):
                headers["Nats-Batch-Commit"] = "1"
            await nc.publish("s.x", b"m", reply=f"{INBOX}.{batch_id}.{n}", headers=headers)
        await nc.flush()

    await atomic("a1", ["x1", "x2"])
    assert (await answers.final("a1"))[-1][1]["count"] == 2
    await atomic("a2", ["y1", "x2", "y3"])
    got = await answers.final("a2")
    assert got[-1][1]["error"]["err_code"] == 10201  # type: ignore[index]  # "contains duplicate message id"
    assert await _stored(nc) == 2  # y1 and y3 refused with it


# -- the publisher on the real server -------------------------------------------------------------------------


async def test_the_publisher_sends_a_streams_publishes_as_one_fast_batch(nc: NatsClient) -> None:
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="S", subjects=["s.>"], allow_batched=True, duplicate_window=120))
    await js.add_stream(api.StreamConfig(name="T", subjects=["t.>"]))  # one PubAck per publish
    publisher = ConfirmedPublisher(nc, lambda subject: "S" if subject.startswith("s.") else None)
    await publisher.start()
    wire: list[str] = []

    async def watch(msg: Msg) -> None:
        wire.append(msg.reply)

    await nc.subscribe("s.>", cb=watch)
    first = PublishBatch()
    for n in range(3):
        publisher.add(first, f"s.{n}", b"m", f"id-{n}", {"Ebbtide-Ingress-At": "1"})
    publisher.add(first, "t.one", b"m", "t-1")
    await publisher.send(first)
    results = await publisher.wait(first, timeout=5)
    assert all(isinstance(r, PubAck) for r in results)
    assert [r.count for r in results[:3]] == [3, 3, 3] and results[3].seq == 1  # type: ignore[union-attr]
    assert [reply.rsplit(".", 2)[1] for reply in wire] == ["0", "1", "2"]  # start, append, commit with the last
    # again, with two publishes already stored: skipped as duplicates, confirmed
    again = PublishBatch()
    for n in range(1, 5):
        publisher.add(again, f"s.{n}", b"m", f"id-{n}")
    assert all(isinstance(r, PubAck) for r in await publisher.wait(again, timeout=5))
    assert (await js.stream_info("S")).state.messages == 5
    # a batch of one to the stream is a single publish, with its own PubAck
    single = PublishBatch()
    publisher.add(single, "s.9", b"m", "id-9")
    [ack] = await publisher.wait(single, timeout=5)
    assert isinstance(ack, PubAck) and ack.seq == 6 and not ack.batch


async def test_the_publisher_names_the_refused_publish_and_leaves_the_rest_for_later(nc: NatsClient) -> None:
    await nc.jetstream().add_stream(
        api.StreamConfig(name="S", subjects=["s.>"], allow_batched=True, max_bytes=2000, discard=api.DiscardPolicy.NEW)
    )
    publisher = ConfirmedPublisher(nc, lambda subject: "S")
    await publisher.start()
    batch = PublishBatch()
    for n, size in enumerate((100, 1900, 10, 10)):
        publisher.add(batch, "s.x", b"x" * size, f"id-{n}")
    stored, refused, after, last = await publisher.wait(batch, timeout=5)
    assert isinstance(stored, PubAck)
    assert isinstance(refused, PublishError) and not isinstance(refused, PublishUnanswered)
    assert "maximum bytes exceeded" in str(refused)
    assert isinstance(after, PublishUnanswered) and isinstance(last, PublishUnanswered)  # not the message's fault


async def test_the_publisher_goes_message_by_message_to_a_stream_that_does_not_allow_fast_batches(
    nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest that says allow_batched over a stream provisioned without it (not provisioned again):
    the first round is answered 'try again', then every publish goes on its own."""
    await nc.jetstream().add_stream(api.StreamConfig(name="S", subjects=["s.>"]))
    publisher = ConfirmedPublisher(nc, lambda subject: "S")
    await publisher.start()
    first = PublishBatch()
    publisher.add(first, "s.x", b"m", "id-1")
    publisher.add(first, "s.x", b"m", "id-2")
    assert all(isinstance(r, PublishUnanswered) for r in await publisher.wait(first, timeout=5))
    assert "does not allow fast batches" in caplog.text
    second = PublishBatch()
    publisher.add(second, "s.x", b"m", "id-1")
    publisher.add(second, "s.x", b"m", "id-2")
    assert all(isinstance(r, PubAck) for r in await publisher.wait(second, timeout=5))
    assert (await nc.jetstream().stream_info("S")).state.messages == 2


# -- acks: why a round of acks is still one ack per message ---------------------------------------------------


async def test_ack_all_settles_a_message_handed_back_below_it_and_its_policy_cannot_be_changed(nc: NatsClient) -> None:
    """AckAll (ack policy `all`) settles every pending message up to the one acked: a message nak'ed for a
    retry below it is never redelivered. So a round's acks could be one AckAll only on a consumer whose every
    pending message is the acker's own and settled; and an existing consumer cannot be switched to it."""
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="S", subjects=["s.>"]))
    for i in range(10):
        await js.publish("s.x", b"%d" % i)
    await js.add_consumer("S", api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.ALL, ack_wait=30))
    subscription = await js.pull_subscribe_bind("c", stream="S")
    msgs = await subscription.fetch(10, timeout=5)
    await msgs[2].nak(delay=0.5)  # a retry, due in half a second
    await msgs[9].ack()
    await nc.flush()

    async def settled() -> bool:
        info = await js.consumer_info("S", "c")
        return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 10

    await wait_until(settled)
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(1, timeout=1.5)  # the retry never comes
    with pytest.raises(nats.js.errors.APIError, match="ack policy can not be updated"):  # err_code 10012
        await js.add_consumer("S", api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30))
