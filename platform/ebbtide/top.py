"""`ebbtide top`: the latest status report of every process, added up per function into a plain-text table.

Rendering only (no NATS, no terminal control): the caller feeds `update` from `ebbtide.status_reports.>` and prints
`render` on every refresh. Processes are added up as in `ebbtide.timeseries.aggregate`; a process whose latest
report is `stale_after` seconds old stops counting, and a function with no live process left shows as stale.
OLDEST is the age of the function's oldest unhandled message (`ebbtide_oldest_pending_seconds`, the max over
processes; AGE is the age of the newest report). DEAD is what the dead-letter stream holds now (`dead_letters`,
read from the server by the caller), not what the processes dead-lettered since they started: purged and
redriven letters no longer count.
"""

from __future__ import annotations

import time

from .status_reports import PoolStatus
from .timeseries import STALE_AFTER_S, PoolTotals, aggregate

_MIN_FUNCTION_WIDTH = 8
# header, width; numbers are right-aligned
_COLUMNS = [
    ("BACKLOG", 8),
    ("OLDEST", 6),
    ("INSTANCES", 9),
    ("IN-FLIGHT", 9),
    ("MSG/S", 8),
    ("P50 ms", 6),
    ("P99 ms", 6),
    ("PROCESSED", 9),
    ("DEAD", 6),
    ("PROCS", 5),
    ("AGE", 5),
]
# the columns a narrow terminal loses first; FUNCTION, BACKLOG and INSTANCES always stay
_DROP_ORDER = ["P50 ms", "PROCESSED", "IN-FLIGHT", "AGE", "PROCS", "DEAD", "P99 ms", "MSG/S", "OLDEST"]


class TopView:
    """The latest report per process, per function; renders the table on demand."""

    def __init__(self, stale_after: float = STALE_AFTER_S) -> None:
        self.stale_after = stale_after
        self._latest: dict[str, dict[str, PoolStatus]] = {}  # function -> host_id -> latest report
        self.dead_letters: dict[str, int] | None = None  # function -> letters in the DLQ now; None: unknown

    def update(self, status: PoolStatus) -> None:
        """Keep the report if it is the process's newest (core NATS may deliver out of order)."""
        hosts = self._latest.setdefault(status.function, {})
        known = hosts.get(status.host_id)
        if known is None or status.time >= known.time:
            hosts[status.host_id] = status

    def render(self, now: float, width: int = 100) -> str:
        """The table at unix time `now`, every line at most `width` characters."""
        longest = max((len(f) for f in self._latest), default=0)
        columns = _fit_columns(width, longest)
        function_width = max(_MIN_FUNCTION_WIDTH, min(longest, width - sum(w + 1 for _, w in columns)))
        lines = [self._summary(now, width), _row(("FUNCTION", function_width), [(h, h, w) for h, w in columns])]
        for function in sorted(self._latest):
            reports = list(self._latest[function].values())
            live = [r for r in reports if now - r.time < self.stale_after]
            age = max(0.0, now - max(r.time for r in reports))
            cells = _cells(aggregate(live), age) if live else _stale_cells(age)
            cells["DEAD"] = f"{self.dead_letters.get(function, 0):,}" if self.dead_letters is not None else "-"
            lines.append(_row((function, function_width), [(h, cells[h], w) for h, w in columns]))
        if not self._latest:
            lines.append("(no status reports yet)")
        return "\n".join(line[:width] for line in lines)

    def _summary(self, now: float, width: int) -> str:
        """Time and totals over live processes; the parts that don't fit are left off, least useful first."""
        per_function = [
            aggregate([r for r in hosts.values() if now - r.time < self.stale_after]) for hosts in self._latest.values()
        ]
        stale = sum(1 for totals in per_function if totals.processes == 0)
        parts = [
            f"ebbtide top {time.strftime('%H:%M:%S', time.localtime(now))}",
            f"{len(per_function)} function{'' if len(per_function) == 1 else 's'}" + (f" ({stale} stale)" if stale else ""),
            f"backlog {sum(t.backlog for t in per_function):,}",
            f"instances {sum(t.instances for t in per_function)}",
            f"{sum(t.rate for t in per_function):,.1f} msg/s",
            f"in-flight {sum(t.in_flight for t in per_function)}",
            f"dead {sum(self.dead_letters.values()):,}" if self.dead_letters is not None else "dead -",
            f"procs {sum(t.processes for t in per_function)}",
        ]
        line = parts[0]
        for part in parts[1:]:
            if len(line) + 3 + len(part) > width:
                break
            line += " · " + part
        return line


def _fit_columns(width: int, longest_name: int) -> list[tuple[str, int]]:
    """Drop the least useful columns until the table, with a readable FUNCTION column, fits."""
    columns = list(_COLUMNS)
    wanted_name = max(_MIN_FUNCTION_WIDTH, min(longest_name, 16))  # longer names get truncated instead
    for header in _DROP_ORDER:
        if sum(w + 1 for _, w in columns) + wanted_name <= width:
            break
        columns = [c for c in columns if c[0] != header]
    return columns


def _row(first: tuple[str, int], rest: list[tuple[str, str, int]]) -> str:
    name, width = first
    name = name if len(name) <= width else name[: width - 1] + "…"
    return name.ljust(width) + "".join(" " + _squeeze(text, w).rjust(w) for _, text, w in rest)


def _cells(totals: PoolTotals, age: float) -> dict[str, str]:
    return {
        "BACKLOG": f"{totals.backlog:,}",
        "OLDEST": _age(totals.oldest_pending_s) if totals.oldest_pending_s > 0 else "-",
        "INSTANCES": str(totals.instances),
        "IN-FLIGHT": str(totals.in_flight),
        "MSG/S": f"{totals.rate:,.1f}",
        "P50 ms": _ms(totals.handle_p50_us),
        "P99 ms": _ms(totals.handle_p99_us),
        "PROCESSED": f"{totals.processed:,}",
        "PROCS": str(totals.processes),
        "AGE": _age(age),
    }


def _stale_cells(age: float) -> dict[str, str]:
    """Last-known numbers of dead processes would mislead: show only that, and when, they went quiet."""
    cells = dict.fromkeys((h for h, _ in _COLUMNS), "-")
    cells.update({"BACKLOG": "stale", "PROCS": "0", "AGE": _age(age)})
    return cells


def _ms(us: float) -> str:
    """Handle times arrive in µs; 0 means no calls since the previous report."""
    if us <= 0:
        return "-"
    ms = us / 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _age(seconds: float) -> str:
    if seconds < 100:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 6000 else f"{seconds / 3600:.0f}h"


def _squeeze(text: str, width: int) -> str:
    """Large numbers get a k/M/G suffix instead of breaking the column."""
    if len(text) <= width:
        return text
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return text[:width]
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            short = f"{value / scale:.1f}{suffix}"
            return short if len(short) <= width else f"{value / scale:.0f}{suffix}"[:width]
    return text[:width]
