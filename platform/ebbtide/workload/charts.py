"""The SVG charts of the reference workload's runs: one module, shared axis helpers.

- `write_scaling_chart`: per function, the backlog (filled, left axis) and the instance count (step line,
  right axis) over time, as on the ZEISS slide (the demo, the scale and sustained benchmarks).
- `write_line_chart`: one panel per quantity, one line per series (the sustained load's latency per window,
  backlog and RSS over time).
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import msgspec

from ..timeseries import Sample

# --- backlog and instances over time (the scaling chart) ------------------------------------------------------------------------------------------------

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


def write_scaling_chart(
    series: dict[str, list[Sample]], path: Path, title: str, *, count: str = "instances", time_unit: str = "s"
) -> Path:
    """Draw backlog (filled, left axis) and instances (step line, right axis) over time, one panel per function.

    The time axis starts at the run's start: samples from before it (processes reporting ready) only give the
    state at t = 0. `count` names what the step line counts (the capacity model draws pods), `time_unit` the
    unit of the samples' `t`.
    """
    chart = _chart({function: _from_start(samples) for function, samples in series.items()}, title, count, time_unit)
    path.write_text(chart, encoding="utf-8")
    return path


def _from_start(samples: list[Sample]) -> list[Sample]:
    before = [s for s in samples if s.t < 0]
    after = [s for s in samples if s.t >= 0]
    if before and not (after and after[0].t == 0):
        after.insert(0, msgspec.structs.replace(before[-1], t=0.0))
    return after


def _chart(series: dict[str, list[Sample]], title: str, count: str = "instances", time_unit: str = "s") -> str:
    functions = sorted(series)
    height = _TOP + max(len(functions), 1) * (_PANEL_HEIGHT + _PANEL_GAP) - _PANEL_GAP + _BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family={quoteattr(_FONT)} font-size="12" fill="{_TEXT}">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_WIDTH / 2}" y="30" text-anchor="middle" font-size="18" font-weight="bold">{escape(title)}</text>',
        *_legend(count),
    ]
    if not functions:
        out.append(
            f'<text x="{_WIDTH / 2}" y="{_TOP + _PANEL_HEIGHT / 2}" text-anchor="middle" fill="{_AXIS}">'
            "no status reports recorded</text>"
        )
    times = [s.t for samples in series.values() for s in samples]
    t0 = 0.0
    t1 = max([t0, *times])
    t1 += (t1 - t0) * 0.02  # a last step at the final sample stays visible off the frame
    t_step = nice_step((t1 - t0) / 10 if t1 > t0 else 1.0)
    if t1 - t0 < t_step:
        t1 = t0 + t_step  # nothing or a single instant: show one tick's worth of time
    time_ticks = _multiples(t0, t1, t_step)
    for index, function in enumerate(functions):
        top = _TOP + index * (_PANEL_HEIGHT + _PANEL_GAP)
        out += _panel(
            function,
            series[function],
            top,
            t0,
            t1,
            time_ticks,
            last=index == len(functions) - 1,
            count=count,
            time_unit=time_unit,
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend(count: str) -> list[str]:
    y = 56
    x = _WIDTH / 2 - 200
    return [
        f'<rect x="{x}" y="{y - 10}" width="22" height="12" fill="{_BACKLOG}" fill-opacity="0.3" stroke="{_BACKLOG}"/>',
        f'<text x="{x + 30}" y="{y}">backlog (messages, left axis)</text>',
        f'<path d="M{x + 240},{y} h8 v-10 h14" fill="none" stroke="{_INSTANCES}" stroke-width="2.5"/>',
        f'<text x="{x + 270}" y="{y}">{escape(count)} (right axis)</text>',
    ]


def _panel(
    function: str,
    samples: list[Sample],
    top: float,
    t0: float,
    t1: float,
    time_ticks: list[float],
    *,
    last: bool,
    count: str = "instances",
    time_unit: str = "s",
) -> list[str]:
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
        f"peak backlog {peak_backlog:,} · max {peak_instances} {escape(count if peak_instances != 1 else count.rstrip('s'))}</text>",
    ]
    for k in range(divisions + 1):
        gy = _f(y(k * b_step, b_step))
        out.append(f'<line x1="{left}" y1="{gy}" x2="{right}" y2="{gy}" stroke="{_GRID}"/>')
        out.append(f'<text x="{left - 8}" y="{gy}" dy="4" text-anchor="end" fill="{_BACKLOG}">{short_number(k * b_step)}</text>')
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
        out.append(
            f'<path d="M{_f(x(samples[0].t))},{base} L{line} L{_f(x(samples[-1].t))},{base} Z" '
            f'fill="{_BACKLOG}" fill-opacity="0.3" stroke="none"/>'
        )
        out.append(f'<path d="M{line}" fill="none" stroke="{_BACKLOG}" stroke-width="1.5" stroke-linejoin="round"/>')
        steps = "".join(f" H{_f(x(s.t))} V{_f(y(s.instances, i_step))}" for s in samples[1:])
        first = samples[0]
        out.append(
            f'<path d="M{_f(x(first.t))},{_f(y(first.instances, i_step))}{steps}" fill="none" '
            f'stroke="{_INSTANCES}" stroke-width="2.5" stroke-linejoin="miter"/>'
        )
        if len(samples) == 1:  # a lone point draws no line: mark it
            cx = _f(x(first.t))
            out.append(f'<circle cx="{cx}" cy="{_f(y(first.backlog, b_step))}" r="3.5" fill="{_BACKLOG}"/>')
            out.append(f'<circle cx="{cx}" cy="{_f(y(first.instances, i_step))}" r="3.5" fill="{_INSTANCES}"/>')
    else:
        out.append(
            f'<text x="{(left + right) / 2}" y="{top + _PANEL_HEIGHT / 2}" text-anchor="middle" fill="{_AXIS}">no data</text>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{_PANEL_HEIGHT}" fill="none" stroke="{_AXIS}"/>')
    if last:
        out.append(
            f'<text x="{(left + right) / 2}" y="{bottom + 40}" text-anchor="middle" fill="{_AXIS}">time since start ({escape(time_unit)})</text>'
        )
    out.append("</g>")
    return out


def _backlog_axis(peak: int) -> tuple[int, int]:
    """A round tick step and the number of divisions (2 or more) that cover the peak backlog."""
    step = max(1, int(nice_step(peak / 4)))
    return step, max(2, math.ceil(peak / step))


def nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above raw (raw > 0)."""
    if raw <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _multiples(lo: float, hi: float, step: float) -> list[float]:
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 9) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def short_number(value: float) -> str:
    """Tick labels stay short: 7500 -> 7.5k."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _f(value: float) -> str:
    return f"{value:.1f}"


# --- any quantities over time (the line chart)

_LINE_PANEL, _LINE_GAP, _LINE_TOP, _LINE_RIGHT = 150, 50, 60, 24
_COLOURS = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5")


def write_line_chart(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: Path, title: str) -> Path:
    """`panels`: (panel title with unit, {series name: [(t seconds, value), ...]}), drawn top to bottom."""
    height = _LINE_TOP + len(panels) * (_LINE_PANEL + _LINE_GAP) + 50
    t_max = max([t for _, series in panels for points in series.values() for t, _ in points] + [1.0])
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_WIDTH / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">{escape(title)}</text>',
    ]
    for index, (name, series) in enumerate(panels):
        top = _LINE_TOP + index * (_LINE_PANEL + _LINE_GAP) + 20
        out += _line_panel(name, series, top, t_max)
    out.append(f'<text x="{_WIDTH / 2}" y="{height - 12}" text-anchor="middle" fill="#4a5568">time since start (s)</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def _line_panel(name: str, series: dict[str, list[tuple[float, float]]], top: float, t_max: float) -> list[str]:
    left, right, bottom = _LEFT, _WIDTH - _LINE_RIGHT, top + _LINE_PANEL
    values = [v for points in series.values() for _, v in points if math.isfinite(v)]
    v_max = max(values + [0.0]) * 1.1 or 1.0

    def x(t: float) -> str:
        return f"{left + t / t_max * (right - left):.1f}"

    def y(v: float) -> str:
        return f"{bottom - v / v_max * _LINE_PANEL:.1f}"

    out = [
        f'<text x="{left}" y="{top - 8}" font-size="14" font-weight="bold">{escape(name)}</text>',
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{_LINE_PANEL}" fill="none" stroke="#4a5568"/>',
    ]
    v_step = nice_step(v_max / 1.1 / 5)
    for k in range(int(v_max / v_step) + 1):
        v = k * v_step
        out.append(f'<line x1="{left}" y1="{y(v)}" x2="{right}" y2="{y(v)}" stroke="#e2e8f0"/>')
        out.append(f'<text x="{left - 6}" y="{y(v)}" dy="4" text-anchor="end" fill="#4a5568">{short_number(v)}</text>')
    t_step = nice_step(t_max / 6)
    for k in range(int(t_max / t_step + 1e-9) + 1):
        t = k * t_step
        out.append(f'<text x="{x(t)}" y="{bottom + 16}" text-anchor="middle" fill="#4a5568">{short_number(t)}</text>')
    for (label, points), colour, slot in zip(series.items(), _COLOURS, range(len(series))):
        finite = [(t, v) for t, v in points if math.isfinite(v)]
        if finite:
            path = " L".join(f"{x(t)},{y(v)}" for t, v in finite)
            out.append(f'<path d="M{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            if len(finite) == 1:
                out.append(f'<circle cx="{x(finite[0][0])}" cy="{y(finite[0][1])}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{right - 10 - 120 * slot}" y="{top - 8}" text-anchor="end" fill="{colour}">{escape(label)}</text>')
    return out
