"""Fetching batches from a durable pull consumer: what is there now, at once; else wait for the first.

nats-py's `fetch(n, timeout)` sends a waiting pull request (`expires` set) when its buffer is empty, and
the server then holds the request open until n messages arrived or it expires. Under a burst that reads
as: the first message comes, then nothing until the long poll ends (up to a second) while a batch slowly
fills. Here a fetch is:

1. a `no_wait` request for up to n: the server sends what it has at once, then 404 "No Messages";
2. only when that brought nothing, a waiting request for one message (`expires` = the long poll), and
   as soon as it comes, a `no_wait` request for the rest.

So a fetch returns as soon as anything is there, with as much as there is (up to n). After a fetch that
brought nothing, the next one starts at step 2: an idle consumer costs the server one request per long poll.

Messages that arrive after their fetch gave up waiting (a slow server, a reconnect) are kept for the next
fetch, never dropped; `close()` hands back (naks) whatever nobody fetched, and returns only once the
server has confirmed each nak. A plain nak is fire-and-forget, and the server works through acks and
pull requests on separate goroutines: a fetch sent right after unconfirmed naks can be served before
they are, and gets only part of what was handed back (issue 13, item 2).
"""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..errors import FetchError
from . import _nats_fast
from .headers import H_DESCRIPTION, H_STATUS
from .jsapi import next_message_subject

NO_MESSAGES = "404"
REQUEST_TIMEOUT = "408"  # also "408 Requests Pending": other workers' waiting requests come first
HEARTBEAT = "100"
LATE_MARGIN_S = 0.5  # beyond the server's expiry, before a fetch stops waiting on its own
NAK = b"-NAK"
NAK_CONFIRM_S = 2.0  # a hand-back not confirmed by then is left to the server's ack wait


class PullConsumer:
    """One worker's view of a durable pull consumer, on an inbox of its own."""

    def __init__(self, nc: NatsClient, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next_subject = next_message_subject(stream, consumer)
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._arrived: list[Msg] = []  # delivered, not yet handed out by a fetch
        self._wanted = 0  # messages the request in progress may still bring
        self._answered: asyncio.Future[str | None] | None = None  # a status, or None: enough messages
        self._idle = False  # the last fetch brought nothing: the next skips the no_wait request

    async def start(self) -> PullConsumer:
        self._subscription = await _nats_fast.subscribe_direct(self._nc, self._inbox, self._on_message)
        return self

    def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(H_STATUS) if msg.headers and not msg.data else None
        if status is None:
            self._arrived.append(msg)
            if len(self._arrived) >= self._wanted:
                self._answer(None)
        elif status != HEARTBEAT:
            self._answer(f"{status} {msg.headers.get(H_DESCRIPTION, '')}".strip() if msg.headers else status)

    def _answer(self, outcome: str | None) -> None:
        if self._answered is not None and not self._answered.done():
            self._answered.set_result(outcome)

    async def _request(self, batch: int, wait_s: float | None) -> str | None:
        """Ask for up to `batch` more; wait until they are here, or the server says that is all."""
        loop = asyncio.get_running_loop()
        self._wanted = len(self._arrived) + batch
        self._answered = loop.create_future()
        body: dict[str, object] = {"batch": batch}
        if wait_s is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(wait_s * 1e9)
        await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=self._inbox)
        try:
            return await asyncio.wait_for(self._answered, (wait_s or 0) + LATE_MARGIN_S)
        except TimeoutError:
            return REQUEST_TIMEOUT  # no answer in time: whatever comes later waits for the next fetch
        finally:
            self._answered = None

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to `batch` messages: those there now, else the first to come within `wait_s`. [] if none."""
        if len(self._arrived) < batch:
            if not self._idle:
                status = await self._request(batch - len(self._arrived), None)
                self._raise_for(status if not self._arrived else None, NO_MESSAGES, REQUEST_TIMEOUT)
            if not self._arrived:
                status = await self._request(1, wait_s)
                if not self._arrived:
                    self._raise_for(status, REQUEST_TIMEOUT, NO_MESSAGES)
                    self._idle = True
                    return []
                if batch > 1:
                    await self._request(batch - len(self._arrived), None)
        self._idle = False
        taken, self._arrived = self._arrived[:batch], self._arrived[batch:]
        return taken

    @staticmethod
    def _raise_for(status: str | None, *expected: str) -> None:
        if status is not None and status.split(" ", 1)[0] not in expected:
            raise FetchError(f"pull request answered {status}")

    async def close(self) -> None:
        """Stop listening; hand back (nak) what arrived but was never fetched, for redelivery at once.

        Returns when the server has confirmed every nak, so a fetch sent afterwards (by anyone) gets
        every message handed back. Draining the inbox (unsubscribe, then a round trip) first collects
        what the server delivered to a still-open pull request before it saw the unsubscribe.
        """
        connected = self._nc.is_connected  # else no round trip can succeed: do not wait for one
        if self._subscription is not None:
            try:
                await (self._subscription.drain() if connected else self._subscription.unsubscribe())  # type: ignore[no-untyped-call]
            except Exception:
                pass  # connection gone or draining: nothing more can arrive here
            self._subscription = None
        leftovers, self._arrived = self._arrived, []
        if connected:
            await asyncio.gather(*(hand_back(self._nc, msg) for msg in leftovers))
        # else the server redelivers them after the ack wait


async def hand_back(nc: NatsClient, msg: Msg) -> None:
    """Nak `msg` for redelivery at once, and wait until the server confirms it."""
    try:
        await nc.request(msg.reply, NAK, timeout=NAK_CONFIRM_S)  # the server answers once it is done
    except Exception:
        pass  # connection gone or no answer: the server redelivers after the ack wait
