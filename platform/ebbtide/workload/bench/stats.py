"""Pure arithmetic of the benchmarks: percentiles, repeat summaries, latency per order, windows and trends."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..1) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Spread:
    """Repeats of one figure: the best and the typical value (noise on a shared machine is one-sided)."""

    min: float
    median: float
    max: float
    values: tuple[float, ...]


def spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("spread of no values")
    return Spread(min(values), statistics.median(values), max(values), tuple(values))


def latencies_ms(published: Mapping[str, float], written: Mapping[str, float]) -> list[float]:
    """Per order stored: its outbox write time minus its publish time (both unix seconds), in ms.

    Keys are orderIds; an order written but never published in this run (a leftover) is an error.
    """
    unknown = written.keys() - published.keys()
    if unknown:
        raise ValueError(f"{len(unknown)} outbox writes for orders not published in this run, e.g. {sorted(unknown)[:3]}")
    return [(t - published[key]) * 1000 for key, t in written.items()]


@dataclass(frozen=True)
class Window:
    start_s: float  # since the run's start
    published: int  # orders published in the window
    stored: int  # of those, stored in an outbox
    p50_ms: float
    p99_ms: float


def windows(
    published: Mapping[str, float], written: Mapping[str, float], start: float, width_s: float, duration_s: float
) -> list[Window]:
    """Latency percentiles of the orders published in each window of `width_s` (by their publish time)."""
    count = max(1, math.ceil(duration_s / width_s - 1e-9))
    buckets: list[list[float]] = [[] for _ in range(count)]
    sent = [0] * count
    for key, t in published.items():
        index = min(count - 1, max(0, int((t - start) / width_s)))
        sent[index] += 1
        if key in written:
            buckets[index].append((written[key] - t) * 1000)
    return [
        Window(i * width_s, sent[i], len(b), percentile(b, 0.5) if b else math.nan, percentile(b, 0.99) if b else math.nan)
        for i, b in enumerate(buckets)
    ]


@dataclass(frozen=True)
class Trend:
    first: float
    last: float
    slope_per_min: float  # least-squares slope over the whole run, per minute
    grows: bool


def trend(times_s: Sequence[float], values: Sequence[float], tolerance: float) -> Trend:
    """Does a series grow? First vs last value and the least-squares slope.

    It grows when the last value exceeds the first by more than `tolerance` (absolute, in the series' unit)
    and the slope over the whole run is upward too (one late spike alone is not growth).
    """
    points = [(t, v) for t, v in zip(times_s, values, strict=True) if not math.isnan(v)]
    if not points:
        return Trend(math.nan, math.nan, math.nan, False)
    first, last = points[0][1], points[-1][1]
    slope = 0.0
    if len(points) > 1:
        mean_t = statistics.fmean(t for t, _ in points)
        mean_v = statistics.fmean(v for _, v in points)
        spread_t = sum((t - mean_t) ** 2 for t, _ in points)
        if spread_t > 0:
            slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / spread_t * 60
    return Trend(first, last, slope, last - first > tolerance and slope > 0)


def parse_rate(text: str) -> tuple[float, bool]:
    """`--rate` values: '50%' (of the measured capacity) or '4000' (orders/s); returns (value, is_percent)."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise ValueError(f"rate {text!r}: expected orders/s (e.g. 4000) or a share of the capacity (e.g. 50%)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"rate {text!r}: must be positive")
    return value, percent
