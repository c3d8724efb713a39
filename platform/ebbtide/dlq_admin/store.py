"""The DLQ stream through the JetStream API: reading dead letters, counting, deleting and purging them.

Listing walks the stream with `jsapi.stored_messages` (`next_by_subj`: deleted sequences and other
functions' dead letters cost nothing, nothing is created on the server), and stops at the stream's last
sequence as it was when the walk started: dead letters that arrive meanwhile (a redriven order that fails
again) are not picked up by the same run. Every failure to read is a DeadLetterError that says why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ..broker import jsapi
from ..errors import DeadLetterError, JetStreamError, UnreadableReply
from ..manifest import LoadedManifest
from .model import StoredDeadLetter, decode_letter


class NoStream(DeadLetterError):
    """The DLQ stream does not exist (yet)."""


class _NoMessage(Exception):
    """No message at that sequence (internal: each caller says what that means for it)."""


class _PurgeReply(jsapi.ApiResponse):
    purged: int = 0


@contextmanager
def _answered(stream: str, subject: str) -> Iterator[None]:
    """The JetStream API's failures, as the dead-letter tool reports them."""
    try:
        yield
    except NoRespondersError:
        raise DeadLetterError("JetStream is not available on this server (no responders)") from None
    except (TimeoutError, NatsTimeoutError):
        raise DeadLetterError(f"JetStream did not answer {subject} within {jsapi.API_TIMEOUT_S} s") from None
    except UnreadableReply as exc:
        raise DeadLetterError(str(exc)) from None
    except JetStreamError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            raise NoStream(
                f"the dead-letter stream {stream!r} does not exist (it is created when the functions start: `ebbtide up`)"
            ) from None
        if exc.err_code in (jsapi.ERR_NO_MESSAGE_FOUND, jsapi.ERR_SEQUENCE_NOT_FOUND):
            raise _NoMessage(exc.description) from None
        raise DeadLetterError(str(exc)) from None


def target(manifest: LoadedManifest, function: str | None) -> tuple[str, str]:
    """(dlq stream, subject filter): all dead letters, or one function's."""
    dead_letter = manifest.spec.dead_letter
    if function is None:
        return dead_letter.stream, f"{dead_letter.subject_prefix}.>"
    if not function or any(c in function for c in ".*> \t\r\n"):
        raise DeadLetterError(f"invalid function name {function!r}")
    return dead_letter.stream, manifest.dead_letter_subject(function)


async def sequences(nc: NatsClient, stream: str) -> tuple[int, int]:
    """(first, last) sequence of the stream now; raises NoStream if there is no such stream."""
    with _answered(stream, f"STREAM.INFO.{stream}"):
        state = (await jsapi.stream_info(nc, stream)).state or jsapi.StreamState()
    return state.first_seq, state.last_seq


async def scan(nc: NatsClient, manifest: LoadedManifest, function: str | None) -> AsyncIterator[StoredDeadLetter]:
    """Dead letters oldest first, up to the stream's last sequence at the start of the walk."""
    stream, subject = target(manifest, function)
    first, last = await sequences(nc, stream)
    prefix = manifest.spec.dead_letter.subject_prefix
    with _answered(stream, f"STREAM.MSG.GET.{stream}"):
        async for stored in jsapi.stored_messages(nc, stream, subject, first, last):
            yield decode_letter(stored, prefix)


async def list_dead_letters(
    nc: NatsClient, manifest: LoadedManifest, function: str | None = None, limit: int | None = None
) -> list[StoredDeadLetter]:
    """The dead letters (of one function, if given), oldest first, at most `limit`."""
    letters: list[StoredDeadLetter] = []
    if limit is not None and limit <= 0:
        await sequences(nc, manifest.spec.dead_letter.stream)  # still report a missing stream
        return letters
    async for letter in scan(nc, manifest, function):
        letters.append(letter)
        if limit is not None and len(letters) >= limit:
            break
    return letters


async def show_dead_letter(nc: NatsClient, manifest: LoadedManifest, seq: int) -> StoredDeadLetter:
    """Dead letter number `seq` of the DLQ stream; DeadLetterError if there is none."""
    stream = manifest.spec.dead_letter.stream
    if seq < 1:
        raise DeadLetterError(f"no dead letter #{seq} in {stream} (sequences start at 1)")
    subject = f"STREAM.MSG.GET.{stream}"
    try:
        with _answered(stream, subject):
            reply = await jsapi.request(nc, subject, {"seq": seq}, jsapi.StoredMessageReply)
    except _NoMessage:
        raise DeadLetterError(f"no dead letter #{seq} in {stream} (redriven or purged, or never there)") from None
    if reply.message is None:
        raise DeadLetterError(f"no dead letter #{seq} in {stream}: the server answered without it")
    return decode_letter(reply.message, manifest.spec.dead_letter.subject_prefix)


async def delete(nc: NatsClient, stream: str, seq: int) -> None:
    """Remove one message; one that is already gone (a concurrent redrive) counts as removed."""
    subject = f"STREAM.MSG.DELETE.{stream}"
    try:
        with _answered(stream, subject):
            await jsapi.request(nc, subject, {"seq": seq, "no_erase": True}, jsapi.ApiResponse)
    except _NoMessage:
        pass


async def count_by_function(nc: NatsClient, manifest: LoadedManifest) -> dict[str, int]:
    """The dead letters the stream holds now, per function (purged and redriven ones are gone from it)."""
    stream, subjects = target(manifest, None)
    try:
        with _answered(stream, f"STREAM.INFO.{stream}"):
            state = (await jsapi.stream_info(nc, stream, subjects_filter=subjects)).state or jsapi.StreamState()
    except NoStream:
        return {}  # created when the functions start: nothing was dead-lettered yet
    prefix = f"{manifest.spec.dead_letter.subject_prefix}."
    return {subject.removeprefix(prefix): count for subject, count in (state.subjects or {}).items()}


async def purge(nc: NatsClient, manifest: LoadedManifest, function: str | None = None) -> int:
    """Delete every dead letter (or one function's); returns how many were deleted."""
    stream, subject = target(manifest, function)
    request: dict[str, object] | None = {"filter": subject} if function is not None else None
    with _answered(stream, f"STREAM.PURGE.{stream}"):
        return (await jsapi.request(nc, f"STREAM.PURGE.{stream}", request, _PurgeReply)).purged
