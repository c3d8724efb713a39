"""Reading an ordered function's lanes (broker/partitions.py): a long pull request open on every one.

Each lane is a durable consumer that delivers one message at a time (max_ack_pending = 1), so a request
for one message per lane is all there is to ask. The feed keeps such a request open on every lane, each
answered into an inbox of its own (`<inbox>.<lane>`: a delivered message carries its stream subject, not
the inbox, so the subscription says which lane it came from); when a lane's message arrives, the next request for
that lane goes out at once: the server holds it until the message is settled (by this process or any
other), then sends the lane's next message. So at most one message of a lane is here at a time, and a
batch a worker takes holds at most one message per partition.

A process's workers share one feed (`SharedFeed`): it opens with the first worker and closes with the
last, handing back (nak, confirmed) what no worker took, as PullConsumer.close does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from .headers import H_DESCRIPTION, H_STATUS
from .jsapi import next_message_subject
from .pull import HEARTBEAT, LATE_MARGIN_S, hand_back

log = logging.getLogger("ebbtide.pool")

LANE_EXPIRES_S = 5.0  # a lane's open request is renewed this often (after a lost reply: its deadline)
RETRY_AFTER_ERROR_S = 1.0  # a lane whose request was refused (e.g. consumer deleted) asks again after this
WATCHDOG_S = 0.5


class PartitionedFeed:
    """Every lane of one ordered function, read through one inbox."""

    def __init__(self, nc: NatsClient, stream: str, consumers: list[str], expires_s: float = LANE_EXPIRES_S) -> None:
        self._nc = nc
        self._next_subjects = [next_message_subject(stream, consumer) for consumer in consumers]
        self._expires_s = expires_s
        self._request_body = json.dumps({"batch": 1, "expires": int(expires_s * 1e9)}).encode()
        self._inbox = nc.new_inbox()
        self._renew_at = [0.0] * len(consumers)  # when each lane's request is to be sent again
        self._ready: deque[Msg] = deque()
        # Workers waiting for a message, first come first served: an arrival wakes one, not all.
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._subscriptions: list[Subscription] = []
        self._watchdog: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> PartitionedFeed:
        for lane in range(len(self._next_subjects)):
            self._subscriptions.append(await self._nc.subscribe(f"{self._inbox}.{lane}", cb=self._receiver(lane)))
        for lane in range(len(self._next_subjects)):
            await self._request(lane)
        self._watchdog = asyncio.create_task(self._renew_lost(), name="ordered-feed-watchdog")
        return self

    async def _request(self, lane: int) -> None:
        if self._closed or not self._nc.is_connected:
            return  # the watchdog asks again once connected
        self._renew_at[lane] = time.monotonic() + self._expires_s + LATE_MARGIN_S
        await self._nc.publish(self._next_subjects[lane], self._request_body, reply=f"{self._inbox}.{lane}")

    def _receiver(self, lane: int) -> Callable[[Msg], Awaitable[None]]:
        async def receive(msg: Msg) -> None:
            await self._on_message(lane, msg)

        return receive

    async def _on_message(self, lane: int, msg: Msg) -> None:
        status = msg.headers.get(H_STATUS) if msg.headers and not msg.data else None
        if status is None:
            self._ready.append(msg)
            self._wake_one()
            await self._request(lane)  # served once this message is settled, by whoever settles it
        elif status == HEARTBEAT:
            return
        elif status.startswith("408") or status.startswith("404"):
            await self._request(lane)  # expired: open another
        else:
            description = msg.headers.get(H_DESCRIPTION, "") if msg.headers else ""
            log.warning("pull request on %s answered %s %s", self._next_subjects[lane], status, description)
            self._renew_at[lane] = time.monotonic() + RETRY_AFTER_ERROR_S

    async def _renew_lost(self) -> None:
        """Ask again on lanes whose request got no answer in time (a reconnect, a restarted server)."""
        while not self._closed:
            await asyncio.sleep(WATCHDOG_S)
            now = time.monotonic()
            for lane, renew_at in enumerate(self._renew_at):
                if now >= renew_at:
                    try:
                        await self._request(lane)
                    except Exception as exc:  # connection closing: the next round, or close(), decides
                        log.debug("cannot renew a pull request: %r", exc)

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # else it gave up waiting (timed out)
                waiter.set_result(None)
                return

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to `batch` messages that are here (at most one per lane); else the first within `wait_s`
        ([] if none came, or another worker took it first)."""
        ready = self._ready
        if not ready:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await asyncio.wait_for(waiter, wait_s)
            except TimeoutError:
                return []
        taken = [ready.popleft() for _ in range(min(batch, len(ready)))]
        if ready:
            self._wake_one()  # more than this batch: for the next worker waiting
        return taken

    async def close(self) -> None:
        """Stop asking; hand back (nak, confirmed by the server) what arrived and nobody took."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        connected = self._nc.is_connected
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                await (subscription.drain() if connected else subscription.unsubscribe())  # type: ignore[no-untyped-call]
            except Exception:
                pass  # connection gone or draining: nothing more can arrive here
        leftovers = list(self._ready)
        self._ready.clear()
        if connected:
            await asyncio.gather(*(hand_back(self._nc, msg) for msg in leftovers))
        # else the server redelivers them after the ack wait, before anything later of their lanes


class FeedView:
    """One worker's handle on a shared feed (the pool's Consumer): closing it lets the feed go."""

    def __init__(self, shared: SharedFeed, feed: PartitionedFeed) -> None:
        self._shared = shared
        self._feed: PartitionedFeed | None = feed

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        assert self._feed is not None, "fetch on a closed view"
        return await self._feed.fetch(batch, wait_s)

    async def close(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await self._shared.release(feed)


class SharedFeed:
    """One PartitionedFeed for all of a pool's workers: opened by the first, closed with the last."""

    def __init__(self, open_feed: Callable[[], Awaitable[PartitionedFeed]]) -> None:
        self._open_feed = open_feed
        self._feed: PartitionedFeed | None = None
        self._users = 0
        self._lock = asyncio.Lock()

    async def view(self) -> FeedView:
        async with self._lock:
            if self._feed is None:
                self._feed = await self._open_feed()
            self._users += 1
            return FeedView(self, self._feed)

    async def release(self, feed: PartitionedFeed) -> None:
        async with self._lock:
            self._users -= 1
            if self._users == 0 and self._feed is feed:
                self._feed = None
                await feed.close()
