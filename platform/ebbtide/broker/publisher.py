"""JetStream publishes confirmed by the server, many in flight at once.

Each publish carries a reply subject under one wildcard inbox; the server's PubAck arrives there and
resolves that publish's future. Cheaper than nats-py's `publish_async` (no task or semaphore per
message) and it always sets `Nats-Msg-Id`, so a redelivered input's effects are deduplicated.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..errors import PublishError
from . import jsapi
from .headers import H_MSG_ID, H_STATUS, message_size


class PubAck(jsapi.ApiResponse):
    """The server's confirmation of a publish (or, with `error`, its refusal)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False  # the stream already held a message with this Nats-Msg-Id


_decode_ack = msgspec.json.Decoder(PubAck).decode  # on the hot path: one per effect


class ConfirmedPublisher:
    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = f"{nc._inbox_prefix.decode()}.{nats.nuid.NUID().next().decode()}."
        self._tokens = itertools.count()
        self._pending: dict[str, asyncio.Future[PubAck]] = {}
        self._subscription: Subscription | None = None

    @property
    def max_payload(self) -> int:
        """The largest message (payload and headers) the server accepts."""
        return self._nc.max_payload

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def stop(self) -> None:
        """Stop listening for confirmations; unconfirmed publishes stay unresolved."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        if not msg.data and msg.headers and msg.headers.get(H_STATUS) == "503":
            future.set_exception(PublishError("no stream captures this subject (503 no responders)"))
            return
        try:
            ack = _decode_ack(msg.data)
        except msgspec.DecodeError:
            future.set_exception(PublishError(f"unreadable PubAck: {msg.data[:200]!r}"))
            return
        if ack.error is not None:
            future.set_exception(PublishError(f"server refused publish: {ack.error.description} (err_code {ack.error.err_code})"))
        else:
            future.set_result(ack)

    async def publish(
        self, subject: str, payload: bytes, msg_id: str | None, headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Send one publish; the returned future resolves with the server's PubAck.

        `msg_id` becomes the `Nats-Msg-Id` header: the stream drops a second publish with the same id
        within its duplicate window.
        """
        token = str(next(self._tokens))
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        all_headers = dict(headers) if headers else {}
        if msg_id is not None:
            all_headers[H_MSG_ID] = msg_id
        size = message_size(payload, all_headers)
        if size > self._nc.max_payload:
            # The server would answer by closing the connection: refuse here, for this message only.
            self._pending.pop(token, None)
            future.set_exception(PublishError(f"message of {size} bytes exceeds the server's max_payload {self._nc.max_payload}"))
            return future
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=all_headers or None)
        except Exception as exc:
            self._pending.pop(token, None)
            future.set_exception(PublishError(f"publish to {subject} failed: {exc}"))
        return future

    async def confirm(self, futures: Iterable[asyncio.Future[PubAck]], timeout: float) -> list[PubAck | PublishError]:
        """Wait for the given publishes; each result is its PubAck or the error that stopped it."""
        futures = list(futures)
        if not futures:
            return []
        done, not_done = await asyncio.wait(futures, timeout=timeout)
        results: list[PubAck | PublishError] = []
        for future in futures:
            if future in not_done:
                future.cancel()
                results.append(PublishError(f"no PubAck within {timeout} s"))
            elif future.exception() is not None:
                exc = future.exception()
                results.append(exc if isinstance(exc, PublishError) else PublishError(str(exc)))
            else:
                results.append(future.result())
        if not_done:
            self._forget(not_done)
        return results

    def _forget(self, futures: set[asyncio.Future[PubAck]]) -> None:
        for token, future in list(self._pending.items()):
            if future in futures:
                del self._pending[token]


async def publish_all(
    publisher: ConfirmedPublisher,
    subject: str | Callable[[bytes], str],
    messages: Iterable[tuple[bytes, str | None]],
    *,
    window: int = 2000,
    timeout: float = 10.0,
) -> tuple[int, list[PublishError]]:
    """Publish (payload, msg_id) pairs with up to `window` unconfirmed at once; (confirmed, errors).

    `subject`: one for all, or the subject of each payload (an ordered entry's `<trigger>.<key>`)."""
    fixed = subject if isinstance(subject, str) else None
    confirmed = 0
    errors: list[PublishError] = []
    in_flight: list[asyncio.Future[PubAck]] = []

    async def drain() -> None:
        nonlocal confirmed
        for result in await publisher.confirm(in_flight, timeout):
            if isinstance(result, PublishError):
                errors.append(result)
            else:
                confirmed += 1
        in_flight.clear()

    for payload, msg_id in messages:
        to = fixed if fixed is not None else subject(payload)  # type: ignore[operator]
        in_flight.append(await publisher.publish(to, payload, msg_id))
        if len(in_flight) >= window:
            await drain()
    await drain()
    return confirmed, errors
