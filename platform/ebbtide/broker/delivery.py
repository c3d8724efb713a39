"""Messages delivered by JetStream: what their ack subject says, and the acks that settle them.

A delivered message is settled by publishing to its reply (ack) subject: `+ACK` (done), `-NAK` with an
optional delay (redeliver), `+WPI` (still in progress: restart the ack wait). nats-py's `Msg` does the
publishing; this module decides nothing, it only speaks the protocol for the pool and the executor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg

from . import _nats_fast

_V1_TOKENS = 9  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
_V2_MIN_TOKENS = 11  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the JetStream ack subject says about a delivered message."""

    stream: str
    sequence: int  # stream sequence: stable across redeliveries, so effect ids derived from it are too
    delivered: int  # 1 on first delivery
    published_ns: int  # server time the message was stored in the stream


def parse_ack_subject(reply: str) -> Delivery:
    """The delivery an ack subject describes; ValueError if `reply` is not one.

    nats-py's `Msg.metadata` reads the same tokens, but builds two dataclasses and a `datetime` from a
    float (to the µs) on every message: 2.3 times this parser's cost (43 µs against 19 µs per call,
    measured on this machine under load), and the end-to-end latency wants the server's ns as an int.
    """
    tokens = reply.split(".")
    if len(tokens) == _V1_TOKENS:
        base = 2
    elif len(tokens) >= _V2_MIN_TOKENS:
        base = 4
    else:
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    return Delivery(tokens[base], int(tokens[base + 3]), int(tokens[base + 2]), int(tokens[base + 5]))


def delivery_sequence(reply: str) -> int:
    """The consumer's delivery sequence in an ack subject (each delivery, redeliveries too, has its own);
    ValueError if `reply` is not one."""
    tokens = reply.split(".")
    if len(tokens) == _V1_TOKENS:
        return int(tokens[6])
    if len(tokens) >= _V2_MIN_TOKENS:
        return int(tokens[8])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


class Incoming:
    """A delivered message and its delivery (`Incoming(msg, parse_ack_subject(msg.reply))`); settled
    with `ack` or `nak`, once."""

    __slots__ = ("msg", "delivery")

    def __init__(self, msg: Msg, delivery: Delivery) -> None:
        self.msg = msg
        self.delivery = delivery

    @property
    def subject(self) -> str:
        return self.msg.subject

    @property
    def data(self) -> bytes:
        return self.msg.data

    @property
    def headers(self) -> dict[str, str] | None:
        return self.msg.headers

    async def ack(self) -> None:
        await self.msg.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        """Hand the message back: redelivered after `delay_s` (at once when None or 0)."""
        await self.msg.nak(delay=delay_s)


async def ack_all(settled: Sequence[Incoming]) -> None:
    """+ACK each message, in one write (an ack per message all the same: JetStream's only batched ack,
    AckAll, would also ack other workers' and replicas' messages still in progress). Raises as
    `Msg.ack` does when the connection is closed."""
    if not settled:
        return
    msgs = [incoming.msg for incoming in settled]
    for msg in msgs:
        if msg.is_acked:
            raise nats.errors.MsgAlreadyAckdError(msg)
    pub = _nats_fast.pub
    await _nats_fast.write(_nats_fast.client_of(msgs[0]), b"".join([pub(msg.reply) for msg in msgs]), len(msgs))
    for msg in msgs:
        _nats_fast.mark_settled(msg)


async def nak_all(msgs: Sequence[Msg], delay_s: float) -> None:
    """Hand a batch back for redelivery after `delay_s`, but for the messages already settled (acked, or
    nak'ed as a retry): nats-py refuses a second ack of those, which would otherwise end the loop. Stops at
    the first failure: with the connection gone, the server redelivers after the ack wait anyway."""
    for msg in msgs:
        if msg.is_acked:
            continue
        try:
            await msg.nak(delay=delay_s)
        except Exception:
            return


class KeepAlive:
    """Tells the server (+WPI, "in progress") every `interval` that a batch is still being worked on, so
    messages that are merely slow (a long batch, effects waiting to be confirmed) are not redelivered."""

    def __init__(self, msgs: Sequence[Msg], interval: float, still_held: Callable[[Msg], bool] | None = None) -> None:
        """`still_held`: whether a message is still this process's to keep alive (an ordered function's lane
        may have gone to another process: its messages must then come back to that one at their ack wait)."""
        self.msgs = msgs
        self.interval = interval
        self.still_held = still_held
        self.last = self.last_yield = time.monotonic()

    async def maybe_send(self) -> None:
        """Called between guest calls, which otherwise run back to back without giving up the event loop."""
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            still_held = self.still_held
            for msg in self.msgs:
                if still_held is None or still_held(msg):
                    await msg.in_progress()  # the server ignores it for a message already acked
        if now - self.last_yield >= self.interval / 4:
            # Let the other workers' keep-alives run: their batches wait while this one computes.
            self.last_yield = now
            await asyncio.sleep(0)

    async def run(self) -> None:
        """Send from a task of its own while the batch waits (for confirmations)."""
        while True:
            await asyncio.sleep(self.interval / 2)
            await self.maybe_send()
