"""A LaneFeed's waits (broker/partitioned_pull.py) without a server: its clock is the test's."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from ebbtide.broker import partitioned_pull
from ebbtide.broker.delivery import Incoming, parse_ack_subject
from ebbtide.broker.lanes import ACT_WITHIN
from ebbtide.broker.partitioned_pull import LaneFeed

PIN_S = 0.05  # the lanes' pin timeout: an unanswered lapse is waited for this long (real time)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class Connection:
    """What a feed reads of its connection without starting: an inbox, whether it reconnected."""

    stats = {"reconnects": 0}
    is_connected = True

    def new_inbox(self) -> str:
        return "_INBOX.test"


def incoming(msg: Msg) -> Incoming:
    return Incoming(msg, parse_ack_subject(msg.reply))


async def test_a_lapsed_lanes_acks_wait_for_the_servers_answer_once_per_lapse_not_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's acks are asked one after another: when nothing answers whether a lapsed lane is still this
    process's (a cluster electing its leaders), each waited a pin timeout, a batch of 64 for minutes."""
    clock = Clock()
    monkeypatch.setattr(partitioned_pull, "time", clock)
    feed = LaneFeed(
        Connection(),  # type: ignore[arg-type]
        "S",
        "f",
        lambda subject, payload: payload.decode(),
        ["f-p0", "f"],
        pin_timeout_s=PIN_S,
        ack_wait_s=PIN_S,
        hold_max=8,
    )
    book = feed.book
    msgs = [Msg(None, subject="in.0", data=b"key%d" % i, reply=f"$JS.ACK.S.f-p0.1.{i}.{i}.0.0") for i in (1, 2, 3)]  # type: ignore[arg-type]
    book.pinned(0, "pin-a", clock.now)
    for seq, msg in enumerate(msgs, 1):
        book.arrived(0, msg, seq, msg.data.decode(), seq)
    assert book.barrier_answer(book.barrier_probe(0), len(msgs), 10**9, clock.now)  # nothing pending elsewhere
    assert await feed.fetch(8, 0.0) == msgs

    clock.now += PIN_S * ACT_WITHIN + 0.001  # the lease lapsed (the process was frozen), the server not asked yet
    assert not await feed.may_ack(incoming(msgs[0]))  # waited a pin timeout: no answer, no ack
    clock.now += PIN_S
    second = asyncio.ensure_future(feed.may_ack(incoming(msgs[1])))
    await asyncio.sleep(0)  # one turn of the loop: enough for a call that does not wait
    assert second.done() and second.result() is False  # the same lapse: its wait is over

    # The server confirms the pin: the lease runs again, and a later lapse is waited for afresh.
    assert book.confirmed(0, "pin-a", clock.now)
    assert await feed.may_ack(incoming(msgs[1]))
    clock.now += PIN_S * ACT_WITHIN + 0.001
    third = asyncio.ensure_future(feed.may_ack(incoming(msgs[2])))
    await asyncio.sleep(0)
    assert not third.done()
    assert await third is False
