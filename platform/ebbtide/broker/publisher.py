"""JetStream publishes confirmed by the server, many in flight at once.

Each publish carries a reply subject under one wildcard inbox; the server's PubAck arrives there and
resolves that publish's future. Cheaper than nats-py's `publish_async` (no task or semaphore per
message) and it always sets `Nats-Msg-Id`, so a redelivered input's effects are deduplicated.

On the hot path (the executor: a batch's effects and dead letters) a `PublishBatch` goes further: its
publishes are built as protocol bytes and written together (`_nats_fast.write`), and the PubAcks fill one
list that a single wait returns, with no future per publish.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..errors import PublishError, PublishUnanswered, StoreFull
from . import _nats_fast, jsapi
from .headers import H_MSG_ID, H_STATUS, message_size


class PubAck(jsapi.ApiResponse):
    """The server's confirmation of a publish (or, with `error`, its refusal)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False  # the stream already held a message with this Nats-Msg-Id


_decode_ack = msgspec.json.Decoder(PubAck).decode  # on the hot path: one per effect


class PublishBatch:
    """Publishes sent together and confirmed together (`ConfirmedPublisher.add`, `send`, `wait`)."""

    __slots__ = ("results", "_commands", "_tokens", "_waiting", "_all_answered")

    def __init__(self) -> None:
        self.results: list[PubAck | PublishError | None] = []  # by index; None: not answered yet
        self._commands: list[bytes] = []  # built, not sent yet
        self._tokens: list[str] = []  # of the publishes not answered yet, when the wait ends
        self._waiting = 0
        self._all_answered: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.results)

    def _answer(self, index: int, result: PubAck | PublishError) -> None:
        if self.results[index] is not None:
            return
        self.results[index] = result
        self._waiting -= 1
        if self._waiting == 0 and self._all_answered is not None and not self._all_answered.done():
            self._all_answered.set_result(None)


class ConfirmedPublisher:
    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._prefix = f"{nc._inbox_prefix.decode()}.{nats.nuid.NUID().next().decode()}."
        self._tokens = itertools.count()
        self._pending: dict[str, asyncio.Future[PubAck] | tuple[PublishBatch, int]] = {}
        self._subscription: Subscription | None = None

    @property
    def max_payload(self) -> int:
        """The largest message (payload and headers) the server accepts."""
        return self._nc.max_payload

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await _nats_fast.subscribe_direct(self._nc, self._prefix + "*", self._on_reply)

    async def stop(self) -> None:
        """Stop listening for confirmations; unconfirmed publishes stay unresolved."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def _on_reply(self, msg: Msg) -> None:
        waiting = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if waiting is None:
            return
        result = _pub_ack(msg)
        if type(waiting) is tuple:
            batch, index = waiting
            batch._answer(index, result)
        elif not waiting.done():  # type: ignore[union-attr]
            if isinstance(result, PublishError):
                waiting.set_exception(result)  # type: ignore[union-attr]
            else:
                waiting.set_result(result)  # type: ignore[union-attr]

    # -- a batch: built together, sent together, confirmed together ----------------------------------------

    def add(self, batch: PublishBatch, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]) -> int:
        """Build a publish into `batch` (sent by `send`); its index in `batch.results`. `headers` are
        ebbtide's own names (broker/headers.py); `msg_id` becomes `Nats-Msg-Id`."""
        index = len(batch.results)
        header = _nats_fast.header_block({**headers, H_MSG_ID: msg_id})
        size = len(header) + len(payload)
        if size > self._nc.max_payload:  # the server would answer by closing the connection
            batch.results.append(PublishError(f"message of {size} bytes exceeds the server's max_payload {self._nc.max_payload}"))
            return index
        token = str(next(self._tokens))
        batch.results.append(None)
        batch._waiting += 1
        batch._tokens.append(token)
        self._pending[token] = (batch, index)
        batch._commands.append(_nats_fast.hpub(subject, self._prefix + token, header, payload))
        return index

    async def send(self, batch: PublishBatch) -> None:
        """Write what was added to `batch` since the last send, in one go."""
        commands, batch._commands = batch._commands, []
        if not commands:
            return
        try:
            await _nats_fast.write(self._nc, b"".join(commands), len(commands))
        except Exception as exc:
            for token in batch._tokens[-len(commands) :]:
                waiting = self._pending.pop(token, None)
                if type(waiting) is tuple:
                    waiting[0]._answer(waiting[1], PublishUnanswered(f"publish failed: {exc!r}"))

    async def wait(self, batch: PublishBatch, timeout: float) -> list[PubAck | PublishError]:
        """Every publish's answer, in the order added; a publish not answered within `timeout` is a
        PublishError (and forgotten: a late PubAck changes nothing)."""
        if batch._waiting > 0:
            batch._all_answered = asyncio.get_running_loop().create_future()
            await asyncio.wait([batch._all_answered], timeout=timeout)
        if batch._waiting > 0:
            for token in batch._tokens:
                self._pending.pop(token, None)
            missing = PublishUnanswered(f"no PubAck within {timeout} s")
            batch.results = [missing if r is None else r for r in batch.results]
            batch._waiting = 0
        batch._tokens.clear()
        return batch.results  # type: ignore[return-value]  # every entry answered now

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
            future.set_exception(PublishUnanswered(f"publish to {subject} failed: {exc}"))
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
                results.append(PublishUnanswered(f"no PubAck within {timeout} s"))
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


def _pub_ack(msg: Msg) -> PubAck | PublishError:
    """What the server answered to a publish: its PubAck, or why it was not stored."""
    if not msg.data and msg.headers and msg.headers.get(H_STATUS) == "503":
        return PublishError("no stream captures this subject (503 no responders)")
    try:
        ack = _decode_ack(msg.data)
    except msgspec.DecodeError:
        return PublishError(f"unreadable PubAck: {msg.data[:200]!r}")
    if ack.error is not None:
        refusal = f"server refused publish: {ack.error.description} (err_code {ack.error.err_code})"
        if is_store_full(ack.error):
            return StoreFull(f"{refusal}: stream {ack.stream or '?'} or the server's store is full; retry once space frees")
        return PublishError(refusal)
    return ack


# The server's refusals for lack of space (nats-server errors.json): the account's or the server's JetStream
# store is full, or a stream with discard new holds its limit (10077 is also any other store failure: the
# description tells them apart).
ERR_ACCOUNT_RESOURCES = 10002  # "resource limits exceeded for account"
ERR_INSUFFICIENT_RESOURCES = 10023  # "insufficient resources": the server's store (max_file_store, disk) is full
ERR_STREAM_STORE_FAILED = 10077  # "maximum bytes exceeded", "maximum messages exceeded", ...
_FULL_STORE_WORDS = ("maximum bytes", "maximum messages", "no space", "insufficient")


def is_store_full(error: jsapi.ApiError) -> bool:
    """Whether a publish was refused for lack of space (see StoreFull)."""
    if error.err_code in (ERR_ACCOUNT_RESOURCES, ERR_INSUFFICIENT_RESOURCES):
        return True
    return error.err_code == ERR_STREAM_STORE_FAILED and any(w in error.description.lower() for w in _FULL_STORE_WORDS)


@dataclass
class PublishTally:
    """What the server did with the publishes it confirmed: stored them, or dropped them as duplicates (their
    Nats-Msg-Id was stored within the stream's duplicate window)."""

    stored: int = 0
    duplicates: int = 0


async def publish_all(
    publisher: ConfirmedPublisher,
    subject: str | Callable[[bytes], str],
    messages: Iterable[tuple[bytes, str | None]],
    *,
    window: int = 2000,
    timeout: float = 10.0,
    tally: PublishTally | None = None,
) -> tuple[int, list[PublishError]]:
    """Publish (payload, msg_id) pairs with up to `window` unconfirmed at once; (confirmed, errors).

    `subject`: one for all, or the subject of each payload (an ordered entry's `<trigger>.<key>`).
    `tally`: counts the confirmed ones stored and dropped as duplicates."""
    fixed = subject if isinstance(subject, str) else None
    confirmed = 0
    errors: list[PublishError] = []
    in_flight: list[asyncio.Future[PubAck]] = []

    async def drain() -> None:
        nonlocal confirmed
        for result in await publisher.confirm(in_flight, timeout):
            if isinstance(result, PublishError):
                errors.append(result)
                continue
            confirmed += 1
            if tally is not None:
                if result.duplicate:
                    tally.duplicates += 1
                else:
                    tally.stored += 1
        in_flight.clear()

    for payload, msg_id in messages:
        to = fixed if fixed is not None else subject(payload)  # type: ignore[operator]
        in_flight.append(await publisher.publish(to, payload, msg_id))
        if len(in_flight) >= window:
            await drain()
    await drain()
    return confirmed, errors
