"""Scaling time series: `PoolStatus` reports merged per function, saved as JSON and drawn as an SVG chart.

A run (the demo, a load test) records every status report; afterwards the chart shows how the backlog rose and
fell while the instance count followed it. Pure: the only I/O is writing the chart file.

Aggregation over the processes (`host_id`) of one function, shared with `ebbtide top` via `aggregate`:
- instances, in_flight, rate, processed, dead_lettered: summed over the latest report of each live process;
- backlog: the consumer's lag, which every process reports for the whole consumer, so the newest report wins;
- handle p99: the max over processes, an upper bound of the true merged p99 (percentiles cannot be merged);
- handle p50: the instances-weighted mean over processes that measured calls (a 0 means idle, not 0 µs);
  an approximation that assumes work spreads in proportion to instances.
A process whose latest report is `stale_after` seconds old or older has died or lost NATS: it stops counting.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import msgspec

from .status import PoolStatus

STALE_AFTER_S = 10.0


class Sample(msgspec.Struct, frozen=True):
    """One point of a function's merged series."""

    t: float  # seconds since the run's start
    backlog: int
    instances: int
    in_flight: int
    rate: float


class PoolTotals(msgspec.Struct, frozen=True, kw_only=True):
    """One function's reports added up (see the module docstring for the rules)."""

    processes: int
    backlog: int
    instances: int
    in_flight: int
    rate: float
    processed: int
    dead_lettered: int
    handle_p50_us: float
    handle_p99_us: float


def aggregate(reports: Sequence[PoolStatus]) -> PoolTotals:
    """Add up the latest live report of each process of one function (an empty sequence gives zeros)."""
    measured = [r for r in reports if r.handle_p50_us > 0]
    weight = sum(r.instances for r in measured)
    if weight > 0:
        p50 = sum(r.handle_p50_us * r.instances for r in measured) / weight
    else:  # calls measured by processes that have already scaled to zero: no weights, plain mean
        p50 = sum(r.handle_p50_us for r in measured) / len(measured) if measured else 0.0
    return PoolTotals(
        processes=len(reports),
        backlog=max(reports, key=lambda r: r.time).backlog if reports else 0,
        instances=sum(r.instances for r in reports),
        in_flight=sum(r.in_flight for r in reports),
        rate=sum(r.rate for r in reports),
        processed=sum(r.processed for r in reports),
        dead_lettered=sum(r.dead_lettered for r in reports),
        handle_p50_us=p50,
        handle_p99_us=max((r.handle_p99_us for r in reports), default=0.0),
    )


class _Saved(msgspec.Struct):
    start: float
    stale_after: float
    reports: list[PoolStatus]


class TimeSeries:
    """Every status report of a run, by function and process, merged into one series per function on demand."""

    def __init__(self, start: float, stale_after: float = STALE_AFTER_S) -> None:
        self.start = start  # unix seconds; sample times are relative to it
        self.stale_after = stale_after
        self._reports: dict[str, dict[str, list[PoolStatus]]] = {}  # function -> host_id -> reports by time

    def add(self, status: PoolStatus) -> None:
        """Record one report; reports may arrive out of order (core NATS, several publishers)."""
        reports = self._reports.setdefault(status.function, {}).setdefault(status.host_id, [])
        bisect.insort_right(reports, status, key=lambda r: r.time)

    def functions(self) -> list[str]:
        return sorted(self._reports)

    def samples(self, function: str) -> list[Sample]:
        """The function's processes merged: one sample at each report and at each moment a process went stale."""
        hosts = list(self._reports.get(function, {}).values())
        if not hosts:
            return []
        times = [[r.time for r in reports] for reports in hosts]
        last = max(ts[-1] for ts in times)
        points = {t for ts in times for t in ts}
        for ts in times:  # a silent process stops counting stale_after after its report, not at the next report
            for t, following in zip(ts, [*ts[1:], math.inf], strict=True):
                if following - t > self.stale_after and t + self.stale_after <= last:
                    points.add(t + self.stale_after)
        samples: list[Sample] = []
        for point in sorted(points):
            latest = (bisect.bisect_right(ts, point) - 1 for ts in times)
            known = [reports[i] for reports, i in zip(hosts, latest, strict=True) if i >= 0]
            totals = aggregate([r for r in known if point - r.time < self.stale_after])
            # with every process gone the backlog is still the consumer's last known lag, not zero
            backlog = totals.backlog if totals.processes else max(known, key=lambda r: r.time).backlog
            samples.append(Sample(point - self.start, backlog, totals.instances, totals.in_flight, totals.rate))
        return samples

    def series(self) -> dict[str, list[Sample]]:
        """Every function's merged series, ready for `write_scaling_chart`."""
        return {function: self.samples(function) for function in self.functions()}

    def to_json(self) -> bytes:
        """The raw reports (reload with `from_json`) and the merged series (for plotting elsewhere)."""
        reports = [r for hosts in self._reports.values() for rs in hosts.values() for r in rs]
        reports.sort(key=lambda r: r.time)
        return msgspec.json.encode({
            "start": self.start,
            "stale_after": self.stale_after,
            "reports": reports,
            "series": self.series(),
        })

    @classmethod
    def from_json(cls, data: bytes) -> TimeSeries:
        """Reload a saved run, to draw its chart again."""
        saved = msgspec.json.decode(data, type=_Saved)
        series = cls(saved.start, saved.stale_after)
        for report in saved.reports:
            series.add(report)
        return series


# --- SVG chart ------------------------------------------------------------------------------------------------

_WIDTH = 960
_LEFT = 76  # backlog tick labels
_RIGHT = 56  # instance tick labels
_TOP = 88  # title and legend
_PANEL_HEIGHT = 170
_HEADROOM = 0.1  # of a panel's height above the top tick, so a line at the peak doesn't vanish into the frame
_PANEL_GAP = 52  # the next panel's name, and the time labels of the one above
_BOTTOM = 58  # time labels and axis title
_BACKLOG = "#2b6cb0"
_INSTANCES = "#dd6b20"
_GRID = "#e2e8f0"
_AXIS = "#4a5568"
_TEXT = "#1a202c"
_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


def write_scaling_chart(series: dict[str, list[Sample]], path: Path, title: str) -> Path:
    """Draw backlog (filled, left axis) and instances (step line, right axis) over time, one panel per function.

    The time axis starts at the run's start: samples from before it (processes reporting ready) only give the
    state at t = 0.
    """
    path.write_text(_chart({function: _from_start(samples) for function, samples in series.items()}, title),
                    encoding="utf-8")
    return path


def _from_start(samples: list[Sample]) -> list[Sample]:
    before = [s for s in samples if s.t < 0]
    after = [s for s in samples if s.t >= 0]
    if before and not (after and after[0].t == 0):
        after.insert(0, msgspec.structs.replace(before[-1], t=0.0))
    return after


def _chart(series: dict[str, list[Sample]], title: str) -> str:
    functions = sorted(series)
    height = _TOP + max(len(functions), 1) * (_PANEL_HEIGHT + _PANEL_GAP) - _PANEL_GAP + _BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family={quoteattr(_FONT)} font-size="12" fill="{_TEXT}">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_WIDTH / 2}" y="30" text-anchor="middle" font-size="18" font-weight="bold">{escape(title)}</text>',
        *_legend(),
    ]
    if not functions:
        out.append(f'<text x="{_WIDTH / 2}" y="{_TOP + _PANEL_HEIGHT / 2}" text-anchor="middle" fill="{_AXIS}">'
                   "no status reports recorded</text>")
    times = [s.t for samples in series.values() for s in samples]
    t0 = 0.0
    t1 = max([t0, *times])
    t1 += (t1 - t0) * 0.02  # a last step at the final sample stays visible off the frame
    t_step = _nice_step((t1 - t0) / 10 if t1 > t0 else 1.0)
    if t1 - t0 < t_step:
        t1 = t0 + t_step  # nothing or a single instant: show one tick's worth of time
    time_ticks = _multiples(t0, t1, t_step)
    for index, function in enumerate(functions):
        top = _TOP + index * (_PANEL_HEIGHT + _PANEL_GAP)
        out += _panel(function, series[function], top, t0, t1, time_ticks, last=index == len(functions) - 1)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend() -> list[str]:
    y = 56
    x = _WIDTH / 2 - 200
    return [
        f'<rect x="{x}" y="{y - 10}" width="22" height="12" fill="{_BACKLOG}" fill-opacity="0.3" stroke="{_BACKLOG}"/>',
        f'<text x="{x + 30}" y="{y}">backlog (messages, left axis)</text>',
        f'<path d="M{x + 240},{y} h8 v-10 h14" fill="none" stroke="{_INSTANCES}" stroke-width="2.5"/>',
        f'<text x="{x + 270}" y="{y}">instances (right axis)</text>',
    ]


def _panel(function: str, samples: list[Sample], top: float, t0: float, t1: float,
           time_ticks: list[float], *, last: bool) -> list[str]:
    left, right, bottom = _LEFT, _WIDTH - _RIGHT, top + _PANEL_HEIGHT
    peak_backlog = max((s.backlog for s in samples), default=0)
    peak_instances = max((s.instances for s in samples), default=0)
    b_step, divisions = _backlog_axis(peak_backlog)
    i_step = max(1, math.ceil(peak_instances / divisions))  # instance ticks share the backlog gridlines

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * (right - left)

    def y(value: float, step: float) -> float:
        return bottom - value / (step * divisions) * _PANEL_HEIGHT * (1 - _HEADROOM)

    out = [
        f'<g class="panel" id={quoteattr("panel-" + function)}>',
        f'<text x="{left}" y="{top - 10}" font-size="14" font-weight="bold">{escape(function)}</text>',
        f'<text x="{right}" y="{top - 10}" text-anchor="end" fill="{_AXIS}">'
        f"peak backlog {peak_backlog:,} · max {peak_instances} instance{'s' if peak_instances != 1 else ''}</text>",
    ]
    for k in range(divisions + 1):
        gy = _f(y(k * b_step, b_step))
        out.append(f'<line x1="{left}" y1="{gy}" x2="{right}" y2="{gy}" stroke="{_GRID}"/>')
        out.append(f'<text x="{left - 8}" y="{gy}" dy="4" text-anchor="end" fill="{_BACKLOG}">'
                   f"{_count(k * b_step)}</text>")
        out.append(f'<text x="{right + 8}" y="{gy}" dy="4" fill="{_INSTANCES}">{k * i_step}</text>')
    for t in time_ticks:
        gx = _f(x(t))
        out.append(f'<line x1="{gx}" y1="{top}" x2="{gx}" y2="{bottom}" stroke="{_GRID}"/>')
        out.append(f'<line x1="{gx}" y1="{bottom}" x2="{gx}" y2="{bottom + 4}" stroke="{_AXIS}"/>')
        if last:
            out.append(f'<text x="{gx}" y="{bottom + 18}" text-anchor="middle" fill="{_AXIS}">{t:g}</text>')
    if samples:
        base = _f(bottom)
        line = " L".join(f"{_f(x(s.t))},{_f(y(s.backlog, b_step))}" for s in samples)
        out.append(f'<path d="M{_f(x(samples[0].t))},{base} L{line} L{_f(x(samples[-1].t))},{base} Z" '
                   f'fill="{_BACKLOG}" fill-opacity="0.3" stroke="none"/>')
        out.append(f'<path d="M{line}" fill="none" stroke="{_BACKLOG}" stroke-width="1.5" stroke-linejoin="round"/>')
        steps = "".join(f" H{_f(x(s.t))} V{_f(y(s.instances, i_step))}" for s in samples[1:])
        first = samples[0]
        out.append(f'<path d="M{_f(x(first.t))},{_f(y(first.instances, i_step))}{steps}" fill="none" '
                   f'stroke="{_INSTANCES}" stroke-width="2.5" stroke-linejoin="miter"/>')
        if len(samples) == 1:  # a lone point draws no line: mark it
            cx = _f(x(first.t))
            out.append(f'<circle cx="{cx}" cy="{_f(y(first.backlog, b_step))}" r="3.5" fill="{_BACKLOG}"/>')
            out.append(f'<circle cx="{cx}" cy="{_f(y(first.instances, i_step))}" r="3.5" fill="{_INSTANCES}"/>')
    else:
        out.append(f'<text x="{(left + right) / 2}" y="{top + _PANEL_HEIGHT / 2}" text-anchor="middle" '
                   f'fill="{_AXIS}">no data</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{_PANEL_HEIGHT}" '
               f'fill="none" stroke="{_AXIS}"/>')
    if last:
        out.append(f'<text x="{(left + right) / 2}" y="{bottom + 40}" text-anchor="middle" fill="{_AXIS}">'
                   "time since start (s)</text>")
    out.append("</g>")
    return out


def _backlog_axis(peak: int) -> tuple[int, int]:
    """A round tick step and the number of divisions (2 or more) that cover the peak backlog."""
    step = max(1, int(_nice_step(peak / 4)))
    return step, max(2, math.ceil(peak / step))


def _nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above raw (raw > 0)."""
    if raw <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _multiples(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 9) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _count(value: float) -> str:
    """Tick labels stay short: 7500 -> 7.5k."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _f(value: float) -> str:
    return f"{value:.1f}"

