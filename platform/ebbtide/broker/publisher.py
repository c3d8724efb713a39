"""JetStream publishes confirmed by the server, many in flight at once: one API, `PublishBatch`.

`add` builds publishes into a batch (as protocol bytes), `send` writes what was added so far in one go
(while the caller computes the next ones), `wait` returns every publish's answer in the order added, with
one wait for the whole batch and no future per publish. Every effect carries `Nats-Msg-Id`, so a stream
stores a redelivered input's effects once.

Two wire forms, chosen per stream, the same answers either way:

- **one PubAck per publish**: each publish carries a reply subject of its own under the publisher's
  wildcard inbox, and the server's PubAck arrives there;
- **a fast batch** (ADR-50's fast ingest, nats-server 2.14+, on a stream with `allow_batched`; the
  publisher is told which streams by `batched`, from the manifest): the publishes of one `PublishBatch` to
  one stream are one batch, numbered in their reply subjects (`<inbox>.<id>.<flow>.fail.<n>.<op>.$FI`),
  the last one commits it, and the server answers the whole batch with one PubAck whose `count` says how
  many of its messages are stored (in "gap: fail" mode, the first `count`). The server still checks
  each message's `Nats-Msg-Id` and skips a duplicate (counted as stored), so exactly-once holds as with
  one PubAck per publish (tests/integration/test_server_batching.py checks each fact used here against
  the nats-server we ship). A refused message is named in an answer of its own (`{"type": "err", "seq":
  n}`, or an error PubAck on its reply subject); the batch then ends, and the messages after it are not
  stored: they are answered `PublishUnanswered` (not the message's fault; sent again, the stream drops
  what it already has). Measured on this machine: nats-server spends 0.7 times the CPU per message of
  publishes with a PubAck each (16 against 23 µs, batches of 256); ADR-50's atomic batches cost 1.8
  times (each batch is staged in a file store of its own) and refuse a whole batch for one duplicate.

The server's flow-control answers (`{"type": "ack"}`) are read only as progress: a batch holds at most
what its caller adds before `wait` (the executor: one fetched batch's effects), which is what it had in
flight with one PubAck per publish.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..errors import PublishError, PublishUnanswered, StoreFull
from . import _nats_fast, jsapi
from .headers import H_MSG_ID, H_STATUS

log = logging.getLogger("ebbtide.broker")

# nats-server's err_codes for fast batches (ADR-50): the stream does not allow them (provisioned without
# `allow_batched`, or by an older ebbtide), or it no longer knows the batch (a restart, a new stream leader,
# no message for 10 s: nothing after that is stored).
ERR_BATCH_DISABLED = 10205
ERR_BATCH_UNKNOWN = 10208
FAST_BATCH_SUFFIX = ".$FI"
# The most messages per flow-control answer the publisher allows: the server's own ceiling (500, shared
# among the stream's open batches); a round of a fetched batch's effects then gets one flow answer and
# one PubAck.
FAST_BATCH_FLOW = 500
_OP_START, _OP_APPEND, _OP_COMMIT = 0, 1, 2


class PubAck(jsapi.ApiResponse):
    """The server's confirmation of a publish (or, with `error`, its refusal).

    A publish confirmed as part of a fast batch gets the batch's PubAck: `seq` is then the sequence of the
    batch's last stored message, `count` how many of the batch's messages are stored, `batch` its id."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False  # the stream already held a message with this Nats-Msg-Id
    batch: str = ""
    count: int = 0


class _Answer(PubAck):
    """Anything the server sends to a reply subject of the publisher: a PubAck, or a fast batch's flow
    answer (`type`: "ack" progress, "gap" a message missing, "err" message `seq` refused)."""

    type: str = ""


_decode_answer = msgspec.json.Decoder(_Answer).decode  # on the hot path: one per answer


class _FastBatch:
    """The publishes of one PublishBatch to one stream that allows fast batches: one batch on the wire."""

    __slots__ = ("id", "stream", "indices", "held")

    def __init__(self, batch_id: str, stream: str) -> None:
        self.id = batch_id
        self.stream = stream
        self.indices: list[int] = []  # batch sequence n (from 1) -> index in PublishBatch.results: indices[n - 1]
        # The last publish added, not written yet: the next `add` sends it as an append, `wait` as the commit.
        self.held: tuple[str, bytes, bytes] | None = None  # subject, header block, payload


class PublishBatch:
    """Publishes built together, sent together and confirmed together (`ConfirmedPublisher.add`, `send`,
    `wait`): one batch, one wait."""

    __slots__ = ("results", "_commands", "_sent_indices", "_tokens", "_fast", "_waiting", "_all_answered")

    def __init__(self) -> None:
        self.results: list[PubAck | PublishError | None] = []  # by index; None: not answered yet
        self._commands: list[bytes] = []  # built, not written yet
        self._sent_indices: list[int] = []  # the publish each command is (of `results`)
        self._tokens: list[str] = []  # reply tokens of the single publishes, to forget after the wait
        self._fast: dict[str, _FastBatch] = {}  # by stream
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
    """Publishes on `nc`, confirmed through one wildcard inbox; see the module's docstring.

    `batched`: the stream a subject's publishes go to if that stream allows fast batches, else None
    (`manifest.batched_stream_of`); without it every publish gets a PubAck of its own."""

    def __init__(self, nc: NatsClient, batched: Callable[[str], str | None] | None = None) -> None:
        self._nc = nc
        self._prefix = f"{nc._inbox_prefix.decode()}.{nats.nuid.NUID().next().decode()}."
        self._tokens = itertools.count()
        self._batch_ids = nats.nuid.NUID()
        self._batched = batched
        self._not_batched: set[str] = set()  # streams that refused a fast batch: published one by one since
        self._pending: dict[str, tuple[PublishBatch, int]] = {}  # reply token -> the publish it answers
        self._fast: dict[str, tuple[PublishBatch, _FastBatch]] = {}  # fast batch id -> its publishes
        self._subscription: Subscription | None = None

    @property
    def max_payload(self) -> int:
        """The largest message (payload and headers) the server accepts."""
        return self._nc.max_payload

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await _nats_fast.subscribe_direct(self._nc, self._prefix + ">", self._on_reply)

    async def stop(self) -> None:
        """Stop listening for confirmations; unconfirmed publishes stay unresolved."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    # -- building --------------------------------------------------------------------------------------------

    def add(
        self, batch: PublishBatch, subject: str, payload: bytes, msg_id: str | None, headers: Mapping[str, str] | None = None
    ) -> int:
        """Build a publish into `batch` (written by `send` or `wait`); its index in `batch.results`.

        `headers` are ebbtide's own names (broker/headers.py); `msg_id` becomes `Nats-Msg-Id`: the stream
        drops a second publish with the same id within its duplicate window."""
        index = len(batch.results)
        if msg_id is not None:
            headers = {**headers, H_MSG_ID: msg_id} if headers else {H_MSG_ID: msg_id}
        header = _nats_fast.header_block(headers) if headers else b""
        size = len(header) + len(payload)
        if size > self._nc.max_payload:  # the server would answer by closing the connection
            batch.results.append(PublishError(f"message of {size} bytes exceeds the server's max_payload {self._nc.max_payload}"))
            return index
        batch.results.append(None)
        batch._waiting += 1
        stream = self._batched(subject) if self._batched is not None else None
        if stream is None or stream in self._not_batched:
            self._add_single(batch, index, subject, header, payload)
            return index
        fast = batch._fast.get(stream)
        if fast is None:
            fast = batch._fast[stream] = _FastBatch(self._batch_ids.next().decode(), stream)
            self._fast[fast.id] = (batch, fast)
        if fast.held is not None:  # no longer the last: it goes out now, as the batch's start or an append
            self._add_fast(batch, fast, len(fast.indices), _OP_START if len(fast.indices) == 1 else _OP_APPEND)
        fast.indices.append(index)
        fast.held = (subject, header, payload)
        return index

    def _add_single(self, batch: PublishBatch, index: int, subject: str, header: bytes, payload: bytes) -> None:
        token = str(next(self._tokens))
        self._pending[token] = (batch, index)
        batch._tokens.append(token)
        reply = self._prefix + token
        batch._commands.append(
            _nats_fast.hpub(subject, reply, header, payload) if header else _nats_fast.pub(subject, payload, reply)
        )
        batch._sent_indices.append(index)

    def _add_fast(self, batch: PublishBatch, fast: _FastBatch, n: int, op: int) -> None:
        """Build the held publish, number `n` of its fast batch, with operation `op`."""
        assert fast.held is not None
        subject, header, payload = fast.held
        fast.held = None
        reply = f"{self._prefix}{fast.id}.{FAST_BATCH_FLOW}.fail.{n}.{op}{FAST_BATCH_SUFFIX}"
        batch._commands.append(
            _nats_fast.hpub(subject, reply, header, payload) if header else _nats_fast.pub(subject, payload, reply)
        )
        batch._sent_indices.append(fast.indices[n - 1])

    def _commit(self, batch: PublishBatch) -> None:
        """Build the last publish of each fast batch as its commit (a batch of one: a single publish)."""
        for fast in batch._fast.values():
            if fast.held is None:
                continue
            if len(fast.indices) == 1:  # one publish to this stream: no batch, one PubAck
                subject, header, payload = fast.held
                fast.held = None
                self._fast.pop(fast.id, None)
                self._add_single(batch, fast.indices[0], subject, header, payload)
            else:
                self._add_fast(batch, fast, len(fast.indices), _OP_COMMIT)

    # -- sending and waiting ---------------------------------------------------------------------------------

    async def send(self, batch: PublishBatch) -> None:
        """Write what was added to `batch` since the last send, in one go (a fast batch's last publish
        waits for `wait`, which commits the batch with it)."""
        commands, batch._commands = batch._commands, []
        indices, batch._sent_indices = batch._sent_indices, []
        if not commands:
            return
        try:
            await _nats_fast.write(self._nc, b"".join(commands), len(commands))
        except Exception as exc:
            failed = PublishUnanswered(f"publish failed: {exc!r}")
            for index in indices:
                batch._answer(index, failed)

    async def wait(self, batch: PublishBatch, timeout: float) -> list[PubAck | PublishError]:
        """Send what is left (committing the fast batches), then every publish's answer, in the order added;
        a publish not answered within `timeout` is a PublishUnanswered (and forgotten: a late answer
        changes nothing). Call it once per batch."""
        self._commit(batch)
        await self.send(batch)
        if batch._waiting > 0:
            batch._all_answered = asyncio.get_running_loop().create_future()
            await asyncio.wait([batch._all_answered], timeout=timeout)
        if batch._waiting > 0:
            missing = PublishUnanswered(f"no PubAck within {timeout} s")
            batch.results = [missing if r is None else r for r in batch.results]
            batch._waiting = 0
        for token in batch._tokens:
            self._pending.pop(token, None)
        batch._tokens.clear()
        for fast in batch._fast.values():
            self._fast.pop(fast.id, None)
        return batch.results  # type: ignore[return-value]  # every entry answered now

    # -- answers ---------------------------------------------------------------------------------------------

    def _on_reply(self, msg: Msg) -> None:
        rest = msg.subject[len(self._prefix) :]
        if rest.endswith(FAST_BATCH_SUFFIX):
            self._on_fast_answer(rest, msg)
            return
        waiting = self._pending.pop(rest, None)
        if waiting is not None:
            batch, index = waiting
            batch._answer(index, _pub_ack(msg))

    def _on_fast_answer(self, rest: str, msg: Msg) -> None:
        """An answer to a fast batch's publish (`rest`: `<id>.<flow>.<gap>.<n>.<op>.$FI`)."""
        tokens = rest.split(".")
        waiting = self._fast.get(tokens[0])
        if waiting is None or len(tokens) != 6:
            return
        batch, fast = waiting
        answer = _pub_ack(msg)
        if isinstance(answer, PublishError):  # an error PubAck on message n's own subject, or no answer at all
            n = int(tokens[3])
            if isinstance(answer, _BatchRefused):
                answer = self._batch_refused(fast, answer)
            batch._answer(fast.indices[n - 1], answer)
        elif answer.type:
            if answer.type == "err" and answer.error is not None and 1 <= answer.seq <= len(fast.indices):
                batch._answer(fast.indices[answer.seq - 1], _refused(answer.error))
            return  # "ack": progress; "gap": a message went missing, the final PubAck says which are stored
        elif answer.batch:  # the final PubAck: the first `count` are stored (those refused on the way aside)
            ended = PublishUnanswered(f"not stored: the fast batch to {fast.stream} ended after message {answer.count}")
            for n, index in enumerate(fast.indices, 1):
                batch._answer(index, answer if n <= answer.count else ended)
        else:  # a PubAck of its own for message n: a server that treats the publish as a single one
            batch._answer(fast.indices[int(tokens[3]) - 1], answer)
        if all(batch.results[index] is not None for index in fast.indices):
            self._fast.pop(fast.id, None)

    def _batch_refused(self, fast: _FastBatch, refused: _BatchRefused) -> PublishError:
        """The stream took no part of the batch: its publishes are retried, one by one if the stream does not
        allow fast batches (it was provisioned without `allow_batched`)."""
        if refused.err_code == ERR_BATCH_DISABLED and fast.stream not in self._not_batched:
            self._not_batched.add(fast.stream)
            log.warning(
                "stream %s does not allow fast batches (allow_batched): publishing to it one message at a time; "
                "run `ebbtide provision` to turn them on",
                fast.stream,
            )
        return PublishUnanswered(str(refused))


class _BatchRefused(PublishError):
    """The server refused a fast batch as such (disabled on the stream, or the batch unknown to it)."""

    def __init__(self, text: str, err_code: int) -> None:
        super().__init__(text)
        self.err_code = err_code


def _refused(error: jsapi.ApiError) -> PublishError:
    """The server's refusal of a publish, as the error the executor acts on."""
    text = f"server refused publish: {error.description} (err_code {error.err_code})"
    if error.err_code in (ERR_BATCH_DISABLED, ERR_BATCH_UNKNOWN):
        return _BatchRefused(text, error.err_code)
    if is_store_full(error):
        return StoreFull(f"{text}: the stream or the server's store is full; retry once space frees")
    return PublishError(text)


def _pub_ack(msg: Msg) -> _Answer | PublishError:
    """What the server answered to a publish: its PubAck (or a fast batch's flow answer), or why it was
    not stored."""
    if not msg.data and msg.headers and msg.headers.get(H_STATUS) == "503":
        return PublishError("no stream captures this subject (503 no responders)")
    try:
        ack = _decode_answer(msg.data)
    except msgspec.DecodeError:
        return PublishError(f"unreadable PubAck: {msg.data[:200]!r}")
    if ack.error is not None and not ack.type:
        return _refused(ack.error)
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
    Nats-Msg-Id was stored within the stream's duplicate window). A fast batch's PubAck does not say which of
    its messages were duplicates: a publisher with `batched` counts them all as stored."""

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
    """Publish (payload, msg_id) pairs, `window` at a time, each window confirmed before the next; (confirmed,
    errors). `subject`: one for all, or the subject of each payload (an ordered entry's `<trigger>.<key>`).
    `tally`: counts the confirmed ones stored and dropped as duplicates."""
    fixed = subject if isinstance(subject, str) else None
    confirmed = 0
    errors: list[PublishError] = []
    batch = PublishBatch()
    for payload, msg_id in messages:
        publisher.add(batch, fixed if fixed is not None else subject(payload), payload, msg_id)  # type: ignore[operator]
        if len(batch) % 256 == 0:
            await publisher.send(batch)  # on its way while the next ones are built
        if len(batch) >= window:
            confirmed += _count(await publisher.wait(batch, timeout), errors, tally)
            batch = PublishBatch()
    confirmed += _count(await publisher.wait(batch, timeout), errors, tally)
    return confirmed, errors


def _count(results: list[PubAck | PublishError], errors: list[PublishError], tally: PublishTally | None) -> int:
    """How many of `results` were confirmed; the others go to `errors`, the confirmed ones to `tally`."""
    confirmed = 0
    for result in results:
        if isinstance(result, PublishError):
            errors.append(result)
            continue
        confirmed += 1
        if tally is not None:
            if result.duplicate:
                tally.duplicates += 1
            else:
                tally.stored += 1
    return confirmed
