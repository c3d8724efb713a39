"""The diff report that `ebbtide shadow report F` and `ebbtide replay` print (pure: no I/O).

Both judge pairs of answers (the live module's, the candidate's) to the same messages and keep them as
`Sample`s; a `Report` is the counts per verdict and the samples to show. `render` turns it into text for
people (the counts, then each sample: where its input came from, a preview of it, and the unified diff of
the two answers), `to_json` into one JSON document for scripts.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from .compare import Verdict
from .compare import render as render_diff
from .samples import Sample

# What a report shows first: what would change, then what broke, then what agrees.
VERDICT_ORDER = (Verdict.DIFFERENT, Verdict.CANDIDATE_FAULT, Verdict.SAME)
SHOWN_BY_DEFAULT = (Verdict.DIFFERENT, Verdict.CANDIDATE_FAULT)
PREVIEW_CHARS = 300


@dataclass(frozen=True)
class Report:
    title: str  # e.g. "shadow report for distributor"
    counts: dict[Verdict, int]  # every message judged (replay), every sample kept (shadow)
    samples: list[Sample]  # the ones to show, in order
    sequences_of: str  # the stream that a sample's `stream_sequence` numbers (e.g. ORDERS, DLQ)
    notes: list[str] = field(default_factory=list)  # lines shown under the counts
    # Dead letters only: the DLQ sequences the candidate would now handle (ok, and effects the allowlist takes).
    would_handle: list[int] | None = None


def select(samples: Iterable[Sample], verdicts: Sequence[Verdict], limit: int | None) -> list[Sample]:
    """The first `limit` samples of each of `verdicts`, grouped in `verdicts`' order (each group oldest first)."""
    groups: dict[Verdict, list[Sample]] = {verdict: [] for verdict in verdicts}
    for sample in samples:
        group = groups.get(sample.verdict)
        if group is not None and (limit is None or len(group) < limit):
            group.append(sample)
    return [sample for verdict in verdicts for sample in groups[verdict]]


def render(report: Report) -> str:
    lines = [report.title]
    width = max(len(v.value) for v in VERDICT_ORDER)
    lines += [f"  {verdict.value:<{width}}  {report.counts.get(verdict, 0):>7,}" for verdict in VERDICT_ORDER]
    digests = sorted({sample.candidate_sha256 for sample in report.samples if sample.candidate_sha256})
    if digests:
        lines.append(f"  candidate sha256 {', '.join(digests)}")
    if report.would_handle is not None:
        handled = report.would_handle
        listed = ", ".join(f"#{seq}" for seq in handled[:50]) + (f", … ({len(handled) - 50} more)" if len(handled) > 50 else "")
        lines.append(
            f"  would now handle {len(handled):,} dead letter(s)" + (f": {report.sequences_of} {listed}" if handled else "")
        )
    lines += [f"  {note}" for note in report.notes]
    shown: dict[Verdict, int] = {}
    for sample in report.samples:
        shown[sample.verdict] = shown.get(sample.verdict, 0) + 1
        lines += ["", *_sample_lines(sample, shown[sample.verdict], report)]
    if not report.samples:
        lines += ["", "no samples to show" if sum(report.counts.values()) else "nothing judged"]
    return "\n".join(lines)


def to_json(report: Report) -> bytes:
    """One JSON document: counts, notes, would_handle and the samples (bytes base64, as in the SHADOW
    stream), each with its rendered diff."""
    document = {
        "title": report.title,
        "counts": {verdict.value: report.counts.get(verdict, 0) for verdict in VERDICT_ORDER},
        "sequences_of": report.sequences_of,
        "notes": report.notes,
        "would_handle": report.would_handle,
        "samples": [
            {**msgspec.to_builtins(sample), "diff": render_diff(sample.live, sample.candidate)} for sample in report.samples
        ],
    }
    return msgspec.json.encode(document)


def _sample_lines(sample: Sample, number: int, report: Report) -> list[str]:
    where = f"{report.sequences_of} #{sample.stream_sequence}" if sample.stream_sequence else "sequence unknown"
    judged = datetime.datetime.fromtimestamp(sample.at_ns / 1e9, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    total = report.counts.get(sample.verdict, 0)
    lines = [
        f"── {sample.verdict.value} {number} of {total:,}: {sample.subject}, {where}, judged {judged}",
        f"input ({len(sample.payload):,} bytes): {preview(sample.payload)}",
    ]
    lines += render_diff(sample.live, sample.candidate).splitlines()
    return lines


def preview(payload: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The input on one line: text with its runs of white space folded (cut at `limit` characters),
    anything else as hex."""
    try:
        text: str | None = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or not all(c.isprintable() or c in "\n\r\t" for c in text):
        shown = payload[: limit // 3]
        return shown.hex(" ") + (" …" if len(payload) > len(shown) else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"
