"""The live picture of every function from the status reports, and its recent history (pure: no I/O).

The console feeds `update` with every `PoolStatus` (`ebbtide.status_reports.>`), as `ebbtide top` does,
and calls `tick` once a second: one row per function (its live processes added up as in
`timeseries.aggregate`) and one point per function for the scaling chart.

A burst on a small machine can rise and drain within a second, between two ticks. So a chart point holds
the peak of the interval it closes: the largest backlog and instance count any report showed since the
previous tick (or the current value, when larger). The table shows the current values.

The rate is the messages settled (handled or dead-lettered) over the tick, from the processes' cumulative
counts: a process reports its own rate over its last report's interval, a few milliseconds while it is
busy, which swings between 0 and thousands from one report to the next.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import msgspec

from ..status_reports import PoolStatus
from ..timeseries import STALE_AFTER_S, aggregate

HISTORY_S = 600.0  # what the charts keep: the last ten minutes


SHA_SHOWN = 12  # hex digits of a module's digest the page shows (as `shadow status` does)


class Replica(msgspec.Struct, frozen=True):
    host_id: str
    module_sha256: str  # its first SHA_SHOWN hex digits
    candidate_sha256: str  # the same, "" when none


class FunctionRow(msgspec.Struct, frozen=True, kw_only=True):
    """One function at one tick: its live processes added up."""

    name: str
    backlog: int
    instances: int
    in_flight: int
    rate: float  # messages settled (handled or dead-lettered) per second over the last tick
    p50_ms: float  # guest call time since the processes' previous reports (0: no calls)
    p99_ms: float
    processed: int  # since the processes started
    replicas: int  # processes reporting
    stale: bool  # reports were seen, but no process has reported for `stale_after` seconds
    age_s: float  # since the newest report (-1: never reported)
    rollout: dict[str, int]  # running counts of the replicas: "shadow.<verdict>", "canary.<version>.<result>"
    # What each live replica runs, when it matters: a rollout has run, or the replicas differ (not sent
    # otherwise: with hundreds of functions the tick stays small).
    modules: list[Replica]


class Point(msgspec.Struct, frozen=True, array_like=True):
    """A chart point: the peaks of the interval it closes."""

    t: float
    backlog: int
    instances: int


@dataclass
class _Function:
    latest: dict[str, PoolStatus] = field(default_factory=dict)  # host_id -> newest report
    peak_backlog: int = 0
    peak_instances: int = 0
    history: deque[Point] = field(default_factory=deque)
    settled: dict[str, int] = field(default_factory=dict)  # host_id -> messages it had settled at the last tick


class Live:
    def __init__(self, functions: list[str], history_s: float = HISTORY_S, stale_after: float = STALE_AFTER_S) -> None:
        self.history_s = history_s
        self.stale_after = stale_after
        self._functions: dict[str, _Function] = {name: _Function() for name in functions}  # the manifest's first
        self._last_tick: float | None = None

    def update(self, status: PoolStatus) -> None:
        """Keep the report if it is its process's newest (core NATS may deliver out of order)."""
        function = self._functions.setdefault(status.function, _Function())
        known = function.latest.get(status.host_id)
        if known is not None and status.time < known.time:
            return
        function.latest[status.host_id] = status
        totals = aggregate(self._live(function, status.time))
        function.peak_backlog = max(function.peak_backlog, totals.backlog)
        function.peak_instances = max(function.peak_instances, totals.instances)

    def tick(self, now: float) -> tuple[list[FunctionRow], dict[str, Point]]:
        """Every function's row now, and the chart point that closes the interval since the last tick."""
        rows: list[FunctionRow] = []
        points: dict[str, Point] = {}
        elapsed = now - self._last_tick if self._last_tick is not None else 0.0
        self._last_tick = now
        for name, function in self._functions.items():
            settled = _settled_since(function, elapsed > 0)
            live = self._live(function, now)
            totals = aggregate(live)
            # With every process gone, the backlog is still the consumer's last known lag, not zero.
            backlog = totals.backlog if live or not function.latest else max(function.latest.values(), key=_time).backlog
            newest = max((r.time for r in function.latest.values()), default=None)
            rollout: dict[str, int] = {}
            for report in live:
                for key, count in report.rollout.items():
                    rollout[key] = rollout.get(key, 0) + count
            rows.append(
                FunctionRow(
                    name=name,
                    backlog=backlog,
                    instances=totals.instances,
                    in_flight=totals.in_flight,
                    rate=round(settled / elapsed, 1) if elapsed > 0 else 0.0,
                    p50_ms=round(totals.handle_p50_us / 1000, 3),
                    p99_ms=round(totals.handle_p99_us / 1000, 3),
                    processed=totals.processed,
                    replicas=totals.processes,
                    stale=bool(function.latest) and not live,
                    age_s=round(max(0.0, now - newest), 1) if newest is not None else -1.0,
                    rollout=rollout,
                    modules=_modules(live) if rollout or len({r.module_sha256 for r in live}) > 1 else [],
                )
            )
            point = Point(now, max(function.peak_backlog, backlog), max(function.peak_instances, totals.instances))
            function.peak_backlog, function.peak_instances = backlog, totals.instances
            function.history.append(point)
            while function.history and function.history[0].t < now - self.history_s:
                function.history.popleft()
            points[name] = point
        return rows, points

    def history(self) -> dict[str, list[Point]]:
        """Every function's chart points of the last `history_s` seconds, oldest first."""
        return {name: list(function.history) for name, function in self._functions.items()}

    def _live(self, function: _Function, now: float) -> list[PoolStatus]:
        return [r for r in function.latest.values() if now - r.time < self.stale_after]


def _time(report: PoolStatus) -> float:
    return report.time


def _settled_since(function: _Function, counting: bool) -> int:
    """Messages the function's processes settled since the last tick. A process seen for the first time
    counts from now on (its total covers its whole life); one that restarted, from its new start."""
    total = 0
    for host, report in function.latest.items():
        settled = report.processed + report.dead_lettered
        before = function.settled.get(host)
        if counting and before is not None:
            total += settled - before if settled >= before else settled
        function.settled[host] = settled
    return total


def _modules(live: list[PoolStatus]) -> list[Replica]:
    return [
        Replica(r.host_id, r.module_sha256[:SHA_SHOWN], r.candidate_sha256[:SHA_SHOWN])
        for r in sorted(live, key=lambda r: r.host_id)
    ]
