"""The scaling policy: consumer lag in, desired instance count out. Pure; no I/O, no clock of its own.

The rule is the one Kubernetes' HPA uses for scale-down stabilisation, applied to every decision:

    want(t)  = ceil(lag / target_backlog), at least 1 while anything is in flight, within [min, max]
    desired  = the largest `want` seen during the last `cooldown_s`

So a burst is met at once (the current `want` is in the window), the pool shrinks only after the
backlog has stayed lower for a whole cooldown, and it cannot flap: a dip shorter than the cooldown
changes nothing. At lag 0 for a cooldown the result is `min` (0 by default): drain to zero.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    min: int
    max: int
    target_backlog: int  # messages of lag per instance
    cooldown_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max or self.max < 1 or self.target_backlog < 1 or self.cooldown_s < 0:
            raise ValueError(f"invalid scale policy {self}")


class Scaler:
    """Remembers the recent `want`s of one pool; `desired` is called once per control tick."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._window: deque[tuple[float, int]] = deque()  # (time, want), want non-increasing left to right

    def want(self, lag: int, in_flight: int) -> int:
        """What the backlog alone asks for, right now."""
        policy = self.policy
        wanted = math.ceil(max(lag, 0) / policy.target_backlog)
        if in_flight > 0:
            wanted = max(wanted, 1)
        return min(max(wanted, policy.min), policy.max)

    def desired(self, *, lag: int, in_flight: int, current: int, now: float) -> int:
        """Instances to run now. `current` is accepted for symmetry with KEDA's inputs; the answer does not
        depend on it, which is what makes the policy unable to flap."""
        del current
        wanted = self.want(lag, in_flight)
        window = self._window
        # Keep a monotonic deque: a new want makes every smaller, older one irrelevant.
        while window and window[-1][1] <= wanted:
            window.pop()
        window.append((now, wanted))
        horizon = now - self.policy.cooldown_s
        while window[0][0] < horizon and len(window) > 1:
            window.popleft()
        return window[0][1]

    def next_change_at(self) -> float | None:
        """When `desired` may next drop with the lag unchanged: the oldest larger want leaves the cooldown
        window. None: nothing left to drop (the controller then need not look before the next message)."""
        window = self._window
        return window[0][0] + self.policy.cooldown_s if len(window) > 1 else None

    def wake(self, now: float) -> int:
        """A message arrived at an idle pool: run at least one instance (counts as a want of 1)."""
        return self.desired(lag=1, in_flight=0, current=0, now=now)
