"""What the console's pages receive as JSON: dead letters, shadow samples side by side, orders (pure).

Every text here is data for the page to show as text (the page never parses it as HTML). Payloads are
shown as UTF-8 text when they are (pretty-printed when JSON) and as a hex dump otherwise, cut at a preview
size with the number of bytes left out.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re

import msgspec

from ..dlq_admin import StoredDeadLetter
from ..outbox import OutboxEntry
from ..rollout.compare import describe
from ..rollout.report import preview
from ..rollout.samples import Sample

PREVIEW_BYTES = 64 * 1024
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


class Payload(msgspec.Struct, frozen=True):
    size: int
    text: str | None  # the payload as text (JSON indented), when it is text
    hex: str | None  # otherwise a hex dump, 16 bytes a line
    omitted: int  # bytes beyond the preview


def payload_view(data: bytes, limit: int = PREVIEW_BYTES) -> Payload:
    shown = data[:limit]
    omitted = len(data) - len(shown)
    try:
        text: str | None = shown.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A character cut in two by the preview limit is still text; anything else is binary.
        text = shown[: exc.start].decode("utf-8") if omitted and exc.start >= len(shown) - 3 else None
        if text is not None:
            omitted += len(shown) - exc.start
    if text is not None and all(c.isprintable() or c in "\n\t\r" for c in text):
        if not omitted:
            try:
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            except ValueError:
                pass
        return Payload(len(data), text, None, omitted)
    lines = []
    for offset in range(0, len(shown), 16):
        chunk = shown[offset : offset + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {' '.join(f'{b:02x}' for b in chunk):<47}  {ascii_}")
    return Payload(len(data), None, "\n".join(lines), omitted)


class LetterRow(msgspec.Struct, frozen=True):
    seq: int
    function: str
    reason: str
    error: str
    deliveries: int
    failed_at: str
    size: int
    original_subject: str | None


class LetterDetail(msgspec.Struct, frozen=True):
    row: LetterRow
    headers: list[tuple[str, str]]
    payload: Payload


def letter_row(letter: StoredDeadLetter) -> LetterRow:
    return LetterRow(
        letter.seq,
        letter.function,
        letter.reason,
        letter.error,
        letter.delivery_count,
        letter.failed_at,
        letter.size,
        letter.original_subject,
    )


def letter_detail(letter: StoredDeadLetter) -> LetterDetail:
    return LetterDetail(letter_row(letter), list(letter.headers.items()), payload_view(letter.payload))


class Line(msgspec.Struct, frozen=True, array_like=True):
    text: str
    mark: str  # "same", or "changed" where the two answers differ


class SampleView(msgspec.Struct, frozen=True):
    verdict: str
    subject: str
    stream_sequence: int
    judged_at: str
    input: str  # a one-line preview
    input_size: int
    live: list[Line]
    candidate: list[Line]
    candidate_sha256: str


def sample_view(sample: Sample) -> SampleView:
    """The live module's answer beside the candidate's, one effect a line, the lines that differ marked."""
    live, candidate = describe(sample.live), describe(sample.candidate)
    live_marks = ["changed"] * len(live)
    candidate_marks = ["changed"] * len(candidate)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=live, b=candidate, autojunk=False).get_opcodes():
        if tag == "equal":
            live_marks[i1:i2] = ["same"] * (i2 - i1)
            candidate_marks[j1:j2] = ["same"] * (j2 - j1)
    judged = datetime.datetime.fromtimestamp(sample.at_ns / 1e9, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return SampleView(
        sample.verdict.value,
        sample.subject,
        sample.stream_sequence,
        judged,
        preview(sample.payload),
        len(sample.payload),
        [Line(t, m) for t, m in zip(live, live_marks)],
        [Line(t, m) for t, m in zip(candidate, candidate_marks)],
        sample.candidate_sha256,
    )


class OrderEntry(msgspec.Struct, frozen=True):
    bucket: str
    key: str
    revision: int
    stored_at: str
    value: Payload
    trace_id: str | None  # from the write's `traceparent` header (tracing on)
    trace_url: str | None  # `trace_id` in the operator's trace UI (`--trace-url`)


def order_entry(entry: OutboxEntry, trace_url: str | None) -> OrderEntry:
    match = TRACEPARENT.match(entry.headers.get("traceparent", ""))
    trace_id = match[1] if match else None
    return OrderEntry(
        entry.bucket,
        entry.key,
        entry.revision,
        entry.stored_at,
        payload_view(entry.value),
        trace_id,
        trace_url.replace("{trace_id}", trace_id) if trace_url and trace_id else None,
    )
