"""What the dead-letter tool reads and reports: a stored dead letter, decoded from its headers, and the
result of a redrive (pure: no I/O)."""

from __future__ import annotations

import re

import msgspec

from ..broker.headers import (
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
)
from ..broker.jsapi import StoredMessage

_STORED_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")  # the server's storage time (UTC, ns)


class StoredDeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter as the DLQ stream holds it, decoded from its headers (missing headers give the
    defaults). (`outcome.DeadLetter` is the decision to dead-letter a message; this is what it stored.)"""

    seq: int  # in the dead-letter stream
    subject: str  # <prefix>.<function>
    function: str  # Ebbtide-Function, else the last token of the subject
    reason: str = ""  # deadletter.Reason's values: rejected, payload-too-large, effect-refused, ...
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


def _int_or(value: str | None, default: int | None) -> int | None:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def decode_letter(stored: StoredMessage, prefix: str) -> StoredDeadLetter:
    """A stored message of the DLQ stream (on `<prefix>.<function>`) as a dead letter."""
    headers = stored.headers
    payload = stored.payload
    function = headers.get(H_FUNCTION) or stored.subject.removeprefix(prefix + ".")
    failed_at = headers.get(H_FAILED_AT, "")
    if not failed_at and stored.time:
        match = _STORED_TIME.match(stored.time)  # in the headers' format: 2026-11-28T18:34:05.081Z
        failed_at = f"{match[1]}.{(match[2] or '').ljust(3, '0')[:3]}Z" if match else stored.time
    return StoredDeadLetter(
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
