"""KEDA and the HPA as they decide a Deployment's replicas, as pure state machines driven by the model's clock.

- KEDA (0 <-> 1): polls its trigger every `polling_interval_s` (with an `external-push` trigger, the scaler
  also pushes an activation the moment a message arrives); active -> at least one replica; inactive for
  `cooldown_s` since it was last seen active -> zero.
- The HPA (1 <-> N), which KEDA creates with minReplicas 1: every `sync_s`, desired = ceil(metric / target)
  for an AverageValue external metric, unchanged within the tolerance (10 %); then the stabilisation windows
  (scale up to the lowest recommendation of the up window, down to the highest of the down window) and the
  scaling policies (per period, the largest of +N pods and +P % for scale-up, -P % for scale-down), as the
  horizontal-pod-autoscaler controller computes them (Kubernetes' defaults below).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

KedaMode = Literal["push", "poll"]


@dataclass(frozen=True)
class KedaSettings:
    mode: KedaMode = "push"  # external-push: activation on the bell; poll: at the next pollingInterval
    polling_interval_s: float = 5.0  # deploy/kubernetes's ScaledObjects (KEDA's default: 30)
    cooldown_s: float = 60.0  # cooldownPeriod: idle this long, then zero replicas
    reaction_s: float = 0.5  # from KEDA's decision to the Deployment's new replica count (API calls)
    max_replicas: int = 100  # maxReplicaCount


@dataclass(frozen=True)
class HpaSettings:
    """Kubernetes' defaults (autoscaling/v2 behavior), the HPA controller's sync period and tolerance."""

    sync_s: float = 15.0
    # The HPA controller's clock against the load's: bursts at whole minutes would otherwise always meet a
    # sync at the very instant they land (and never be seen by the next); halfway is the average case.
    phase_s: float = 7.5
    tolerance: float = 0.1
    up_window_s: float = 0.0
    up_pods: int = 4  # per up_period_s ...
    up_percent: float = 100.0  # ... or this much of the replicas at the period's start, whichever is more
    up_period_s: float = 15.0
    down_window_s: float = 300.0
    down_percent: float = 100.0
    down_period_s: float = 15.0


class DeploymentScaler:
    """One function's Deployment: KEDA's activation and cooldown, then the HPA. `replicas` is the count the
    Deployment is told to run; the caller starts and stops pods to match it."""

    def __init__(self, target_per_replica: int, keda: KedaSettings, hpa: HpaSettings) -> None:
        self.target = target_per_replica
        self.keda = keda
        self.hpa = hpa
        self.replicas = 0
        self._last_active = -math.inf
        self._next_poll = 0.0
        self._next_sync = hpa.phase_s
        self._recommendations: deque[tuple[float, int]] = deque()
        self._events: deque[tuple[float, int]] = deque()  # (time, replicas added (+) or removed (-))

    def step(self, now: float, lag: float, pushed: bool) -> None:
        """Advance to `now` with the function's current lag; `pushed`: the scaler's bell rang since the last step."""
        active = lag > 0
        if pushed and self.keda.mode == "push":
            self._last_active = now
            if self.replicas == 0:
                self._set(now, 1)
        if now >= self._next_poll:  # KEDA's loop and the HPA controller's run on their own clocks, not ours
            self._next_poll = _next_tick(now, self.keda.polling_interval_s)
            if active:
                self._last_active = now
                if self.replicas == 0:
                    self._set(now, 1)
            elif self.replicas > 0 and now - self._last_active >= self.keda.cooldown_s:
                self._set(now, 0)
                self._recommendations.clear()
        if now >= self._next_sync:
            self._next_sync = _next_tick(now - self.hpa.phase_s, self.hpa.sync_s) + self.hpa.phase_s
            if self.replicas > 0:  # at zero replicas the HPA does nothing ("scaling is disabled")
                self._set(now, self._hpa_desired(now, lag))

    def _set(self, now: float, replicas: int) -> None:
        if replicas != self.replicas:
            self._events.append((now, replicas - self.replicas))
            self.replicas = replicas

    def _hpa_desired(self, now: float, lag: float) -> int:
        hpa, current = self.hpa, self.replicas
        ratio = lag / (self.target * current)
        raw = current if abs(ratio - 1.0) <= hpa.tolerance else math.ceil(lag / self.target)
        raw = min(max(raw, 1), self.keda.max_replicas)
        window = self._recommendations
        window.append((now, raw))
        while window and window[0][0] < now - max(hpa.up_window_s, hpa.down_window_s):
            window.popleft()
        up = min([r for t, r in window if t >= now - hpa.up_window_s], default=raw)
        down = max([r for t, r in window if t >= now - hpa.down_window_s], default=raw)
        recommendation = min(max(current, up), down)
        while self._events and self._events[0][0] < now - max(hpa.up_period_s, hpa.down_period_s):
            self._events.popleft()
        if recommendation > current:
            added = sum(d for t, d in self._events if d > 0 and t > now - hpa.up_period_s)
            start = current - added
            limit = max(start + hpa.up_pods, math.ceil(start * (1 + hpa.up_percent / 100)))
            return min(recommendation, limit, self.keda.max_replicas)
        if recommendation < current:
            removed = -sum(d for t, d in self._events if d < 0 and t > now - hpa.down_period_s)
            start = current + removed
            limit = int(start * (1 - hpa.down_percent / 100))
            return max(recommendation, limit, 1)
        return current


def _next_tick(now: float, period: float) -> float:
    return (math.floor(now / period + 1e-9) + 1) * period
