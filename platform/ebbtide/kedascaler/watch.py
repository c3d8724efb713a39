"""One function's lag and activity, as the scaler keeps them: read through the JetStream API, woken by the bell.

The lag is `num_pending + num_ack_pending` of the function's consumers (an ordered function's partition
consumers and its own, summed), read with CONSUMER.INFO: any server of the cluster forwards that request to
the consumer's leader, whose numbers are the real ones (unlike /jsz, which reports what the node it asks
holds: 0 pending on a follower, keda#7322). So the scaler reads the same lag through whichever server its
connection lands on, and after a leader moves.

Activity follows the pools' own wake-up (controller.py): while the function has work, the lag is read every
ACTIVE_POLL_S; once it reads 0 with the bell listening, and 0 again LAG_CONFIRM_S later (a message stored
just before the bell was subscribed can count a moment after its PubAck), the function is inactive and the
scaler only listens: a core subscription on the trigger (and its keyed subjects when ordered). The first
publish rings it, and the activation is pushed to every StreamIsActive listener from the bell's callback,
before any lag is read: KEDA's `external-push` trigger scales 0 -> 1 without waiting for a poll. The bell
is dropped while the function is active, so a burst does not send the scaler a copy of every message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..broker import jsapi
from .targets import FunctionTarget, is_active

log = logging.getLogger("ebbtide.scaler")

ACTIVE_POLL_S = 1.0  # while active: how often the lag is read to see it drain (the HPA asks every 15 s)
LAG_CONFIRM_S = 0.25  # the second zero reading before the function counts as inactive
IDLE_RECHECK_S = 5.0  # inactive: how often the connection's reconnects are looked at (the bell may have missed one)
IDLE_LAG_CHECK_S = 60.0  # inactive: a lag read as a safety net
RETRY_S = 1.0  # after a failed read (server unreachable, consumer not provisioned yet)


class ConsumerLag(jsapi.ApiResponse):
    """The part of a CONSUMER.INFO reply the lag is made of."""

    num_pending: int = 0
    num_ack_pending: int = 0


class FunctionWatch:
    def __init__(self, target: FunctionTarget, nc: NatsClient) -> None:
        self.target = target
        self.lag = 0  # as last read (0 while inactive: the bell would have rung)
        self.active = False
        self.readable = False  # the last read succeeded: the consumers exist and the server answers
        self.last_error = "not read yet"
        self.lag_reads = 0
        self.activations: Counter[str] = Counter()  # pushed activations by cause: "bell", "poll"
        self._nc = nc
        self._listeners: set[asyncio.Queue[bool]] = set()
        self._changed = asyncio.Event()  # activity changed outside the loop (a bell, a read by a request)
        self._task: asyncio.Task[None] | None = None

    # -- what the gRPC service asks -------------------------------------------------------------------------------

    async def read_lag(self) -> int:
        """The lag now, from the consumers' leaders; raises JetStreamError, UnreadableReply or a NATS error."""
        stream = self.target.stream
        try:
            replies = await asyncio.gather(
                *(jsapi.request(self._nc, f"CONSUMER.INFO.{stream}.{name}", None, ConsumerLag) for name in self.target.consumers)
            )
        except Exception as exc:
            self.readable, self.last_error = False, f"{type(exc).__name__}: {exc}"
            raise
        self.lag_reads += 1
        self.readable, self.last_error = True, ""
        self.lag = sum(reply.num_pending + reply.num_ack_pending for reply in replies)
        if is_active(self.lag) and not self.active:
            self._set_active(True, "poll")  # a message the bell did not see (e.g. while reconnecting)
        return self.lag

    def listen(self) -> asyncio.Queue[bool]:
        """A StreamIsActive listener: the current activity at once, then every change."""
        queue: asyncio.Queue[bool] = asyncio.Queue()
        queue.put_nowait(self.active)
        self._listeners.add(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue[bool]) -> None:
        self._listeners.discard(queue)

    # -- the loop -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"scaler-watch-{self.target.function}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _set_active(self, active: bool, cause: str) -> None:
        if active == self.active:
            return
        self.active = active
        if active:
            self.activations[cause] += 1
        else:
            self.lag = 0
        for queue in self._listeners:
            queue.put_nowait(active)
        self._changed.set()
        log.info("%s: %s (%s)", self.target.function, "active" if active else "inactive", cause)

    async def _run(self) -> None:
        while True:
            try:
                if self.active:
                    await self._while_active()
                else:
                    await self._while_inactive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server is away, the consumer not provisioned yet: keep the state, retry
                log.warning("%s: lag not readable: %s", self.target.function, exc)
                await asyncio.sleep(RETRY_S)

    async def _while_active(self) -> None:
        """Read the lag every ACTIVE_POLL_S until it is 0; then confirm it with the bell listening."""
        if await self.read_lag() > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), ACTIVE_POLL_S)
            except TimeoutError:
                pass
            return
        async with self._bell() as rang:
            for _ in range(2):
                if rang.is_set() or await self.read_lag() > 0:
                    return
                try:
                    await asyncio.wait_for(rang.wait(), LAG_CONFIRM_S)
                    return
                except TimeoutError:
                    pass
            self._set_active(False, "drained")

    async def _while_inactive(self) -> None:
        """Listen on the bell (its callback pushes the activation); a lag read only after a reconnect, or
        every IDLE_LAG_CHECK_S."""
        async with self._bell() as rang:
            if await self.read_lag() > 0:  # what came before the bell listened
                return
            reconnects, checked = self._nc.stats["reconnects"], time.monotonic()
            while not rang.is_set() and not self.active:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), IDLE_RECHECK_S)
                except TimeoutError:
                    pass
                if reconnects != self._nc.stats["reconnects"] or time.monotonic() - checked >= IDLE_LAG_CHECK_S:
                    reconnects, checked = self._nc.stats["reconnects"], time.monotonic()
                    await self.read_lag()
        await self.read_lag()  # rang: the real lag for the gauge and the HPA, after the push

    def _bell(self) -> _Bell:
        return _Bell(self)


class _Bell:
    """The subscriptions on the function's bell subjects while the context is entered; `rang` is set by the
    first message, whose callback pushes the activation at once."""

    def __init__(self, watch: FunctionWatch) -> None:
        self._watch = watch
        self._subscriptions: list[Subscription] = []
        self.rang = asyncio.Event()

    async def __aenter__(self) -> asyncio.Event:
        watch = self._watch

        async def ring(_msg: Msg) -> None:
            if not self.rang.is_set():
                self.rang.set()
                watch._set_active(True, "bell")

        for subject in watch.target.bell_subjects:
            self._subscriptions.append(await watch._nc.subscribe(subject, cb=ring))
        return self.rang

    async def __aexit__(self, *exc: object) -> None:
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception:  # the connection is closed or reconnecting: the server forgets it anyway
                pass
        self._subscriptions.clear()
