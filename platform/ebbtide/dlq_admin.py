"""The operator's dead-letter tool: list, show, redrive and purge the dead letters of the DLQ stream.

Listing walks the stream with the JetStream "get message" API and `next_by_subj`: each request
returns the first stored message at or after a sequence whose subject matches `<prefix>.>` (or
`<prefix>.<function>`), so deleted sequences and other functions' dead letters cost nothing, nothing
is created on the server (no consumer to clean up), and the walk stops at the stream's last sequence
as it was when the walk started: dead letters that arrive meanwhile (a redriven order that fails
again) are not picked up by the same run.

Redrive publishes each dead letter's payload back to its original subject with
`Nats-Msg-Id: redrive:<dlq stream>:<dlq seq>` and `Ebbtide-Redriven-From: <dlq seq>`, waits for the
server's confirmation, and only then deletes the dead letter. Not the original `Nats-Msg-Id`: it may
still be inside the original stream's duplicate window, and the republish would be dropped silently.
A redrive that stopped between the confirmation and the delete can be repeated: within the duplicate
window the server recognises the id (the PubAck says `duplicate`) and stores nothing new; the dead
letter is then deleted. (After the window a repeat stores the order once more; the pipeline's effects
are idempotent per `orderId`, so the outbox still holds one entry.)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from .broker import jsapi
from .broker.headers import (
    H_DELIVERY_COUNT,
    H_ERROR,
    H_FAILED_AT,
    H_FIRST_FAILED_AT,
    H_FUNCTION,
    H_ORIGINAL_MSG_ID,
    H_ORIGINAL_SEQUENCE,
    H_ORIGINAL_STREAM,
    H_ORIGINAL_SUBJECT,
    H_REASON,
    H_REDRIVEN_FROM,
)
from .broker.publisher import ConfirmedPublisher, PubAck, PublishBatch
from .errors import DeadLetterError, JetStreamError, PublishError, UnreadableReply
from .manifest import LoadedManifest, subject_matches

REDRIVE_WINDOW = 256  # publishes awaiting confirmation at once
REDRIVE_CONFIRM_TIMEOUT_S = 10.0


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One stored dead letter, decoded from its headers (missing headers give the defaults)."""

    seq: int  # in the dead-letter stream
    subject: str  # <prefix>.<function>
    function: str  # Ebbtide-Function, else the last token of the subject
    reason: str = ""  # rejected, payload-too-large, effect-refused, retries-exhausted
    error: str = ""
    delivery_count: int = 0
    original_subject: str | None = None
    original_stream: str | None = None
    original_sequence: int | None = None
    original_msg_id: str | None = None
    failed_at: str = ""  # Ebbtide-Failed-At, else when the server stored it (ISO 8601, UTC, ms)
    first_failed_at: str | None = None  # Ebbtide-First-Failed-At: the first transient failure, if known
    size: int = 0
    payload: bytes = b""
    headers: dict[str, str] = {}  # every header as stored


class RedriveFailure(msgspec.Struct, frozen=True):
    seq: int
    reason: str


class Redriven(msgspec.Struct, frozen=True):
    seq: int  # the dead letter's sequence (now deleted from the DLQ)
    subject: str  # where it was republished
    stream: str  # the stream that stored it
    stream_seq: int  # its sequence there (of the earlier copy when `duplicate`)
    duplicate: bool  # the server already had it: an earlier redrive of this seq was interrupted


class RedriveResult(msgspec.Struct):
    redriven: list[Redriven] = []
    failed: list[RedriveFailure] = []

    @property
    def deduplicated(self) -> int:
        return sum(1 for r in self.redriven if r.duplicate)

    def summary(self) -> str:
        text = f"redriven {len(self.redriven)}, failed {len(self.failed)}"
        if self.deduplicated:
            text += f" ({self.deduplicated} already republished by an earlier, interrupted redrive)"
        return text


# -- the JetStream API, raw (error codes, no_erase deletes and purge counts are not all exposed by nats-py) --


class _Reply(jsapi.ApiResponse):
    message: jsapi.StoredMessage | None = None  # STREAM.MSG.GET
    purged: int = 0  # STREAM.PURGE
    state: dict[str, Any] | None = None  # STREAM.INFO


_STORED_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")  # the server's storage time (UTC, ns)


class _NoMessage(Exception):
    pass


class _NoStream(DeadLetterError):
    pass


async def _api(nc: NatsClient, subject: str, request: dict[str, Any] | None, stream: str) -> _Reply:
    try:
        return await jsapi.request(nc, subject, request, _Reply)
    except NoRespondersError:
        raise DeadLetterError("JetStream is not available on this server (no responders)") from None
    except (TimeoutError, NatsTimeoutError):
        raise DeadLetterError(f"JetStream did not answer {subject} within {jsapi.API_TIMEOUT_S} s") from None
    except UnreadableReply as exc:
        raise DeadLetterError(str(exc)) from None
    except JetStreamError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            raise _NoStream(
                f"the dead-letter stream {stream!r} does not exist (it is created when the functions start: `ebbtide up`)"
            ) from None
        if exc.err_code in (jsapi.ERR_NO_MESSAGE_FOUND, jsapi.ERR_SEQUENCE_NOT_FOUND):
            raise _NoMessage(exc.description) from None
        raise DeadLetterError(str(exc)) from None


def _target(manifest: LoadedManifest, function: str | None) -> tuple[str, str]:
    """(dlq stream, subject filter): all dead letters, or one function's."""
    dead_letter = manifest.spec.dead_letter
    if function is None:
        return dead_letter.stream, f"{dead_letter.subject_prefix}.>"
    if not function or any(c in function for c in ".*> \t\r\n"):
        raise DeadLetterError(f"invalid function name {function!r}")
    return dead_letter.stream, manifest.dead_letter_subject(function)


async def _last_seq(nc: NatsClient, stream: str) -> tuple[int, int]:
    """(first, last) sequence of the stream now; raises DeadLetterError if there is no such stream."""
    state = (await _api(nc, f"STREAM.INFO.{stream}", None, stream)).state or {}
    return int(state.get("first_seq", 0)), int(state.get("last_seq", 0))


def _int_or(value: str | None, default: int | None) -> int | None:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _decode_letter(stored: jsapi.StoredMessage, prefix: str) -> DeadLetter:
    headers = stored.headers
    payload = stored.payload
    function = headers.get(H_FUNCTION) or stored.subject.removeprefix(prefix + ".")
    failed_at = headers.get(H_FAILED_AT, "")
    if not failed_at and stored.time:
        match = _STORED_TIME.match(stored.time)  # in the headers' format: 2026-11-28T18:34:05.081Z
        failed_at = f"{match[1]}.{(match[2] or '').ljust(3, '0')[:3]}Z" if match else stored.time
    return DeadLetter(
        seq=stored.seq,
        subject=stored.subject,
        function=function,
        reason=headers.get(H_REASON, ""),
        error=headers.get(H_ERROR, ""),
        delivery_count=_int_or(headers.get(H_DELIVERY_COUNT), 0) or 0,
        original_subject=headers.get(H_ORIGINAL_SUBJECT) or None,
        original_stream=headers.get(H_ORIGINAL_STREAM) or None,
        original_sequence=_int_or(headers.get(H_ORIGINAL_SEQUENCE), None),
        original_msg_id=headers.get(H_ORIGINAL_MSG_ID) or None,
        failed_at=failed_at,
        first_failed_at=headers.get(H_FIRST_FAILED_AT) or None,
        size=len(payload),
        payload=payload,
        headers=headers,
    )


async def _scan(nc: NatsClient, manifest: LoadedManifest, function: str | None) -> AsyncIterator[DeadLetter]:
    """Dead letters oldest first, up to the stream's last sequence at the start of the walk."""
    stream, subject = _target(manifest, function)
    first, last = await _last_seq(nc, stream)
    seq = max(first, 1)
    while seq <= last:
        try:
            reply = await _api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": subject}, stream)
        except _NoMessage:
            return
        stored = reply.message
        if stored is None or stored.seq > last:
            return
        yield _decode_letter(stored, manifest.spec.dead_letter.subject_prefix)
        seq = stored.seq + 1


# -- the operations ------------------------------------------------------------------------------------


async def list_dead_letters(
    nc: NatsClient, manifest: LoadedManifest, function: str | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """The dead letters (of one function, if given), oldest first, at most `limit`."""
    letters: list[DeadLetter] = []
    if limit is not None and limit <= 0:
        await _last_seq(nc, manifest.spec.dead_letter.stream)  # still report a missing stream
        return letters
    async for letter in _scan(nc, manifest, function):
        letters.append(letter)
        if limit is not None and len(letters) >= limit:
            break
    return letters


async def show_dead_letter(nc: NatsClient, manifest: LoadedManifest, seq: int) -> DeadLetter:
    stream = manifest.spec.dead_letter.stream
    if seq < 1:
        raise DeadLetterError(f"no dead letter #{seq} in {stream} (sequences start at 1)")
    try:
        reply = await _api(nc, f"STREAM.MSG.GET.{stream}", {"seq": seq}, stream)
    except _NoMessage:
        raise DeadLetterError(f"no dead letter #{seq} in {stream} (redriven or purged, or never there)") from None
    assert reply.message is not None
    return _decode_letter(reply.message, manifest.spec.dead_letter.subject_prefix)


async def _delete(nc: NatsClient, stream: str, seq: int) -> None:
    """Remove one message; one that is already gone (a concurrent redrive) counts as removed."""
    try:
        await _api(nc, f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}, stream)
    except _NoMessage:
        pass


def _redrive_subject(letter: DeadLetter, manifest: LoadedManifest) -> str:
    subject = letter.original_subject
    if not subject:
        raise DeadLetterError(f"dead letter #{letter.seq} has no {H_ORIGINAL_SUBJECT} header: nowhere to redrive it to")
    prefix = manifest.spec.dead_letter.subject_prefix
    if any(c in subject for c in "*> \t\r\n") or subject_matches(f"{prefix}.>", subject):
        raise DeadLetterError(f"dead letter #{letter.seq}: cannot redrive to {subject!r}")
    return subject


async def _selected(
    nc: NatsClient, manifest: LoadedManifest, function: str | None, seqs: list[int] | None, result: RedriveResult
) -> AsyncIterator[DeadLetter]:
    if seqs is None:
        async for letter in _scan(nc, manifest, function):
            yield letter
        return
    wanted = _target(manifest, function)[1]
    for seq in dict.fromkeys(seqs):
        try:
            letter = await show_dead_letter(nc, manifest, seq)
        except DeadLetterError as exc:
            result.failed.append(RedriveFailure(seq, str(exc)))
            continue
        if not subject_matches(wanted, letter.subject):
            result.failed.append(RedriveFailure(seq, f"dead letter #{seq} is on {letter.subject}, not {wanted}"))
            continue
        yield letter


async def redrive(
    nc: NatsClient, manifest: LoadedManifest, function: str | None = None, seqs: list[int] | None = None
) -> RedriveResult:
    """Republish dead letters to their original subjects (confirmed), then delete them from the DLQ.

    Selects `seqs` if given (each must be a dead letter, of `function` if that is given too), else every
    dead letter of `function`, else all. A failure of one dead letter is reported in the result and
    leaves it in the DLQ; a missing DLQ stream raises DeadLetterError.
    """
    stream = manifest.spec.dead_letter.stream
    await _last_seq(nc, stream)
    result = RedriveResult()
    publisher = ConfirmedPublisher(nc)  # one PubAck per letter: each says where it went, and if it was there already
    await publisher.start()
    batch = PublishBatch()
    letters: list[tuple[DeadLetter, str]] = []

    async def settle() -> None:
        nonlocal batch
        outcomes = await publisher.wait(batch, timeout=REDRIVE_CONFIRM_TIMEOUT_S)
        confirmed: list[tuple[DeadLetter, str, PubAck]] = []
        for (letter, subject), outcome in zip(letters, outcomes):
            if isinstance(outcome, PublishError):
                result.failed.append(RedriveFailure(letter.seq, f"republish to {subject} not confirmed: {outcome}"))
            else:
                confirmed.append((letter, subject, outcome))
        letters.clear()
        batch = PublishBatch()
        deletes = await asyncio.gather(*(_delete(nc, stream, letter.seq) for letter, _, _ in confirmed), return_exceptions=True)
        for (letter, subject, ack), deleted in zip(confirmed, deletes):
            if isinstance(deleted, BaseException):
                result.failed.append(
                    RedriveFailure(
                        letter.seq,
                        f"republished to {subject} ({ack.stream} #{ack.seq}) but not removed from {stream}: {deleted}; "
                        "redriving it again within the duplicate window will not publish it twice",
                    )
                )
            else:
                result.redriven.append(Redriven(letter.seq, subject, ack.stream, ack.seq, ack.duplicate))

    try:
        async for letter in _selected(nc, manifest, function, seqs, result):
            try:
                subject = _redrive_subject(letter, manifest)
            except DeadLetterError as exc:
                result.failed.append(RedriveFailure(letter.seq, str(exc)))
                continue
            publisher.add(batch, subject, letter.payload, f"redrive:{stream}:{letter.seq}", {H_REDRIVEN_FROM: str(letter.seq)})
            letters.append((letter, subject))
            if len(letters) >= REDRIVE_WINDOW:
                await settle()
        if letters:
            await settle()
    finally:
        try:
            await publisher.stop()
        except Exception:
            pass  # connection already closed
    result.failed.sort(key=lambda f: f.seq)
    return result


async def count_by_function(nc: NatsClient, manifest: LoadedManifest) -> dict[str, int]:
    """The dead letters the stream holds now, per function (purged and redriven ones are gone from it)."""
    stream, subjects = _target(manifest, None)
    try:
        state = (await _api(nc, f"STREAM.INFO.{stream}", {"subjects_filter": subjects}, stream)).state or {}
    except _NoStream:
        return {}  # created when the functions start: nothing was dead-lettered yet
    prefix = f"{manifest.spec.dead_letter.subject_prefix}."
    return {subject.removeprefix(prefix): int(count) for subject, count in (state.get("subjects") or {}).items()}


async def purge(nc: NatsClient, manifest: LoadedManifest, function: str | None = None) -> int:
    """Delete every dead letter (or one function's); returns how many were deleted."""
    stream, subject = _target(manifest, function)
    request = {"filter": subject} if function is not None else None
    return (await _api(nc, f"STREAM.PURGE.{stream}", request, stream)).purged


# -- output for the CLI (pure) -------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def format_table(letters: Iterable[DeadLetter], width: int = 120) -> str:
    """One line per dead letter: seq, function, reason, deliveries, failed at, size, error (cut to fit)."""
    letters = list(letters)
    if not letters:
        return "no dead letters"
    head = ("SEQ", "FUNCTION", "REASON", "DELIV", "FAILED AT", "SIZE")
    rows = [
        (str(l.seq), _one_line(l.function), l.reason or "-", str(l.delivery_count), l.failed_at or "-", str(l.size))
        for l in letters
    ]
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    right = {0, 3, 5}

    def line(cells: tuple[str, ...], error: str) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        prefix = "  ".join(parts) + "  "
        return (prefix + _cut(error, max(width - len(prefix), 10))).rstrip()

    lines = [line(head, "ERROR")]
    lines += [line(row, _one_line(letter.error) or "-") for row, letter in zip(rows, letters)]
    return "\n".join(lines)


def _preview(payload: bytes, limit: int) -> list[str]:
    shown = payload[:limit]
    more = len(payload) - len(shown)
    try:
        text: str | None = shown.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A character cut in two by the preview limit is still text; anything else is binary.
        cut = more and exc.start >= len(shown) - 3
        text = shown[: exc.start].decode("utf-8") if cut else None
        if cut:
            more += len(shown) - exc.start
    if text is not None and all(c.isprintable() or c in "\n\t\r" for c in text):
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False) if not more else text
        except ValueError:
            pass
        lines = ["  " + line.replace("\r", "\\r") for line in text.split("\n")]
    else:
        lines = []
        for offset in range(0, len(shown), 16):
            chunk = shown[offset : offset + 16]
            hexes = " ".join(f"{b:02x}" for b in chunk)
            ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"  {offset:08x}  {hexes:<47}  {ascii_}")
    if more:
        lines.append(f"  … {more} more byte(s)")
    return lines


def _original(letter: DeadLetter) -> str:
    if not letter.original_subject:
        return "-"
    where = letter.original_stream or "?"
    if letter.original_sequence is not None:
        where += f" #{letter.original_sequence}"
    return f"{letter.original_subject} ({where})"


def format_detail(letter: DeadLetter, preview_bytes: int = 2048) -> str:
    """Every header, then the payload: text (JSON pretty-printed) or, if binary, a hex dump."""
    lines = [
        f"dead letter #{letter.seq} on {letter.subject}",
        f"  function:          {letter.function}",
        f"  reason:            {letter.reason or '-'}",
        f"  error:             {letter.error or '-'}",
        f"  deliveries:        {letter.delivery_count}",
        f"  failed at:         {letter.failed_at or '-'}",
        f"  first failed at:   {letter.first_failed_at or '-'}",
        f"  original:          {_original(letter)}",
        f"  original msg id:   {letter.original_msg_id or '-'}",
        "headers:",
    ]
    lines += [f"  {key}: {value}" for key, value in letter.headers.items()] or ["  (none)"]
    kind = "" if letter.size else " (empty)"
    lines.append(f"payload ({letter.size} bytes){kind}:")
    if letter.size:
        lines += _preview(letter.payload, preview_bytes)
    return "\n".join(lines)


__all__ = [
    "H_REDRIVEN_FROM",
    "DeadLetter",
    "DeadLetterError",
    "RedriveFailure",
    "RedriveResult",
    "Redriven",
    "format_detail",
    "format_table",
    "list_dead_letters",
    "purge",
    "redrive",
    "show_dead_letter",
]
