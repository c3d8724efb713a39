"""A plain SVG line chart (time on x, one panel per quantity), for series that are not backlog/instances.

The backlog-and-instances chart is ebbtide.timeseries'; this one draws what the sustained load measures per
window (latency percentiles) and over time (backlog, RSS).
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.sax.saxutils import escape

_W, _LEFT, _RIGHT, _TOP, _PANEL, _GAP, _BOTTOM = 960, 76, 24, 60, 150, 50, 50
_COLOURS = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5")


def write_line_chart(panels: list[tuple[str, dict[str, list[tuple[float, float]]]]], path: Path, title: str) -> Path:
    """`panels`: (panel title with unit, {series name: [(t seconds, value), ...]}), drawn top to bottom."""
    height = _TOP + len(panels) * (_PANEL + _GAP) + _BOTTOM
    t_max = max([t for _, series in panels for points in series.values() for t, _ in points] + [1.0])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" viewBox="0 0 {_W} {height}" '
           'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
           f'<rect width="{_W}" height="{height}" fill="#ffffff"/>',
           f'<text x="{_W / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">{escape(title)}</text>']
    for index, (name, series) in enumerate(panels):
        top = _TOP + index * (_PANEL + _GAP) + 20
        out += _panel(name, series, top, t_max)
    out.append(f'<text x="{_W / 2}" y="{height - 12}" text-anchor="middle" fill="#4a5568">time since start (s)</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def _panel(name: str, series: dict[str, list[tuple[float, float]]], top: float, t_max: float) -> list[str]:
    left, right, bottom = _LEFT, _W - _RIGHT, top + _PANEL
    values = [v for points in series.values() for _, v in points if math.isfinite(v)]
    v_max = max(values + [0.0]) * 1.1 or 1.0

    def x(t: float) -> str:
        return f"{left + t / t_max * (right - left):.1f}"

    def y(v: float) -> str:
        return f"{bottom - v / v_max * _PANEL:.1f}"

    out = [f'<text x="{left}" y="{top - 8}" font-size="14" font-weight="bold">{escape(name)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{_PANEL}" fill="none" stroke="#4a5568"/>']
    v_step = _nice(v_max / 1.1 / 5)
    for k in range(int(v_max / v_step) + 1):
        v = k * v_step
        out.append(f'<line x1="{left}" y1="{y(v)}" x2="{right}" y2="{y(v)}" stroke="#e2e8f0"/>')
        out.append(f'<text x="{left - 6}" y="{y(v)}" dy="4" text-anchor="end" fill="#4a5568">{_label(v)}</text>')
    t_step = _nice(t_max / 6)
    for k in range(int(t_max / t_step + 1e-9) + 1):
        t = k * t_step
        out.append(f'<text x="{x(t)}" y="{bottom + 16}" text-anchor="middle" fill="#4a5568">{_label(t)}</text>')
    for (label, points), colour, slot in zip(series.items(), _COLOURS, range(len(series))):
        finite = [(t, v) for t, v in points if math.isfinite(v)]
        if finite:
            path = " L".join(f"{x(t)},{y(v)}" for t, v in finite)
            out.append(f'<path d="M{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            if len(finite) == 1:
                out.append(f'<circle cx="{x(finite[0][0])}" cy="{y(finite[0][1])}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{right - 10 - 120 * slot}" y="{top - 8}" text-anchor="end" fill="{colour}">{escape(label)}</text>')
    return out


def _nice(raw: float) -> float:
    """A round tick step at or above raw: 1, 2 or 5 times a power of ten."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _label(value: float) -> str:
    """Short tick labels: 7500 -> 7.5k."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"
