"""Scaling time series: `PoolStatus` reports merged per function, saved as JSON (drawn as an SVG chart by
ebbtide.workload.charts).

A run (the demo, a load test) records every status report; afterwards the chart shows how the backlog rose and
fell while the instance count followed it. Pure.

Aggregation over the processes (`host_id`) of one function, shared with `ebbtide top` via `aggregate`:
- instances, in_flight, rate, processed, dead_lettered: summed over the latest report of each live process;
- backlog: the consumer's lag, which every process reports for the whole consumer, so the newest report wins;
- oldest pending age: also the whole function's, but the max over processes (one asleep at zero reads its
  lag seldom: a stuck message shows if any process sees it);
- handle p99: the max over processes, an upper bound of the true merged p99 (percentiles cannot be merged);
- handle p50: the instances-weighted mean over processes that measured calls (a 0 means idle, not 0 µs);
  an approximation that assumes work spreads in proportion to instances.
A process whose latest report is `stale_after` seconds old or older has died or lost NATS: it stops counting.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import msgspec

from .status_reports import PoolStatus

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
    oldest_pending_s: float
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
        oldest_pending_s=max((r.oldest_pending_s for r in reports), default=0.0),
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
        """Every function's merged series, ready for `ebbtide.workload.charts.write_scaling_chart`."""
        return {function: self.samples(function) for function in self.functions()}

    def to_json(self) -> bytes:
        """The raw reports (reload with `from_json`) and the merged series (for plotting elsewhere)."""
        reports = [r for hosts in self._reports.values() for rs in hosts.values() for r in rs]
        reports.sort(key=lambda r: r.time)
        return msgspec.json.encode(
            {
                "start": self.start,
                "stale_after": self.stale_after,
                "reports": reports,
                "series": self.series(),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> TimeSeries:
        """Reload a saved run, to draw its chart again."""
        saved = msgspec.json.decode(data, type=_Saved)
        series = cls(saved.start, saved.stale_after)
        for report in saved.reports:
            series.add(report)
        return series
