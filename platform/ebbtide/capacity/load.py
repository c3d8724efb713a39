"""Load shapes: when orders arrive. Pure; a file's text is parsed here, read by the caller.

A shape is a list of arrivals, each `orders` spread evenly over [start, start + duration) (duration 0: at
once, as a batch published together). Shapes:
- the ZEISS day: during the busy hours, a burst of N orders at the start of every minute (published at once),
  quiet in between and outside them (the 10,000-order burst ZEISS showed, as a day of it);
- steady: a constant rate for the whole duration;
- a file of per-second rates: one number per line (orders in that second), `#` comments allowed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

DAY_S = 86_400.0
# The busy hours of the reference ZEISS day (local time): a morning, a midday and an afternoon wave.
ZEISS_BUSY_HOURS = ((8.0, 10.0), (12.0, 13.0), (15.0, 17.0))


@dataclass(frozen=True, slots=True)
class Arrival:
    start_s: float
    duration_s: float  # 0: at once
    orders: float


@dataclass(frozen=True)
class LoadShape:
    name: str
    arrivals: tuple[Arrival, ...]  # sorted by start, none overlapping the next
    duration_s: float
    _ends: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ends = tuple(a.start_s + a.duration_s for a in self.arrivals)
        for before, after in zip(self.arrivals, self.arrivals[1:]):
            if after.start_s < before.start_s + before.duration_s or (after.start_s == before.start_s and after.duration_s == 0):
                raise ValueError(f"{self.name}: arrivals must be sorted and must not overlap ({before} then {after})")
        object.__setattr__(self, "_ends", ends)

    @property
    def total_orders(self) -> float:
        return sum(a.orders for a in self.arrivals)

    def orders_between(self, t0: float, t1: float) -> float:
        """Orders arriving in [t0, t1)."""
        total = 0.0
        for arrival in self.arrivals[bisect.bisect_left(self._ends, t0) :]:
            if arrival.start_s >= t1:
                break
            if arrival.duration_s == 0:
                if t0 <= arrival.start_s:
                    total += arrival.orders
                continue
            overlap = min(t1, arrival.start_s + arrival.duration_s) - max(t0, arrival.start_s)
            if overlap > 0:
                total += arrival.orders * overlap / arrival.duration_s
        return total

    def next_arrival_after(self, t: float) -> float | None:
        """The first instant >= t at which orders arrive (None: no more)."""
        index = bisect.bisect_left(self._ends, t)
        for arrival in self.arrivals[index:]:
            if arrival.duration_s == 0 and arrival.start_s < t:
                continue  # a batch at t exactly ends at t: bisect_left keeps it, an earlier one is past
            return max(t, arrival.start_s)
        return None


def zeiss_day(
    orders_per_minute: float, busy_hours: tuple[tuple[float, float], ...] = ZEISS_BUSY_HOURS, duration_s: float = DAY_S
) -> LoadShape:
    arrivals = []
    for start_h, end_h in busy_hours:
        minute = start_h * 3600
        while minute < min(end_h * 3600, duration_s):
            arrivals.append(Arrival(minute, 0.0, orders_per_minute))
            minute += 60
    arrivals.sort(key=lambda a: a.start_s)
    hours = ", ".join(f"{a:g}-{b:g} h" for a, b in busy_hours)
    return LoadShape(
        f"ZEISS day: {orders_per_minute:,.0f} orders at the start of every minute of {hours}", tuple(arrivals), duration_s
    )


def steady(orders_per_s: float, duration_s: float = DAY_S) -> LoadShape:
    return LoadShape(
        f"steady {orders_per_s * 60:,.0f} orders/minute", (Arrival(0.0, duration_s, orders_per_s * duration_s),), duration_s
    )


def burst(orders: float, publish_s: float = 0.0) -> LoadShape:
    """One batch published at t = 0 (over `publish_s`), and the time it takes to drain: a bench run."""
    return LoadShape(f"one burst of {orders:,.0f} orders", (Arrival(0.0, publish_s, orders),), publish_s)


def per_second_rates(text: str, source: str = "rates file") -> LoadShape:
    """One number per line: the orders arriving in that second (spread over it)."""
    arrivals = []
    second = 0
    for number, line in enumerate(text.splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"{source}, line {number}: {value!r} is not a number of orders") from None
        if rate < 0 or rate != rate:
            raise ValueError(f"{source}, line {number}: {value!r}: a rate is a number of orders >= 0")
        if rate > 0:
            arrivals.append(Arrival(float(second), 1.0, rate))
        second += 1
    if second == 0:
        raise ValueError(f"{source}: no rates (one number per line: the orders of each second)")
    return LoadShape(f"{source}: {second:,} s of per-second rates", tuple(arrivals), float(second))
