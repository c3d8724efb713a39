"""How long Python's garbage collector stops this process, for /metrics (`ebbtide_process_gc_pause_seconds`).

A collection runs on the thread that allocated when a generation's threshold is crossed, and every message the
process holds waits for it: a full collection over a large heap takes tens to hundreds of milliseconds. The
soak reads this histogram per minute beside its latencies, to tell a process's own pauses from the server's
or the network's. Timed through `gc.callbacks` (the documented hook): two clock reads per collection.
"""

from __future__ import annotations

import gc
import time

from .histogram import Histogram

GC_PAUSE_BUCKETS_S = (1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0)


class GcPauses:
    """Every collection's duration, by generation-blind buckets."""

    def __init__(self) -> None:
        self.histogram = Histogram(GC_PAUSE_BUCKETS_S)
        self._started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.histogram.observe(time.perf_counter() - self._started)


_PROCESS = GcPauses()


def timed() -> GcPauses:
    """This process's collections, timed from the first call on (idempotent: one hook per process, however many
    hosts it runs)."""
    if _PROCESS._on_gc not in gc.callbacks:
        gc.callbacks.append(_PROCESS._on_gc)
    return _PROCESS
