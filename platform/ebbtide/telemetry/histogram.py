"""A histogram cheap enough to observe on every message: counts per bucket, sum, count, min and max."""

from __future__ import annotations

import bisect
import math

# Upper bounds in seconds: guest call time (ebbtide_handle_duration_seconds) and end-to-end latency
# from the ingress publish (ebbtide_end_to_end_seconds).
HANDLE_BUCKETS_S = (5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 0.1, 1.0)
END_TO_END_BUCKETS_S = (1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Counts per bucket (upper bounds in seconds, plus +Inf), their sum and count: what Prometheus and
    OTLP histograms carry. Observing is a bisect and two additions: cheap enough for every message."""

    __slots__ = ("bounds", "counts", "sum", "min", "max")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # last: +Inf
        self.sum = 0.0
        self.min = math.inf  # OTLP carries them; Prometheus does not
        self.max = -math.inf

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile_since(self, earlier_counts: list[int], q: float) -> float:
        """The q-quantile (0..1) in seconds of what was observed since `earlier_counts` (a copy of
        `counts` taken before), interpolated linearly inside its bucket as Prometheus'
        histogram_quantile() does; 0.0 when nothing was observed. Beyond the last bound: the max."""
        counts = [now - before for now, before in zip(self.counts, earlier_counts)]
        total = sum(counts)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for index, count in enumerate(counts):
            if count and seen + count >= rank:
                if index == len(self.bounds):
                    return self.max
                lower = self.bounds[index - 1] if index else 0.0
                return lower + (self.bounds[index] - lower) * (rank - seen) / count
            seen += count
        return self.max
