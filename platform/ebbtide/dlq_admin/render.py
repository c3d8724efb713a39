"""The dead-letter tool's output for a terminal: a table of dead letters, one dead letter in detail (pure)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from .model import StoredDeadLetter


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def format_table(letters: Iterable[StoredDeadLetter], width: int = 120) -> str:
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


def _original(letter: StoredDeadLetter) -> str:
    if not letter.original_subject:
        return "-"
    where = letter.original_stream or "?"
    if letter.original_sequence is not None:
        where += f" #{letter.original_sequence}"
    return f"{letter.original_subject} ({where})"


def format_detail(letter: StoredDeadLetter, preview_bytes: int = 2048) -> str:
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
