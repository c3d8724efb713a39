"""What the scaler watches for each function, and what it tells KEDA about it. Pure: from the manifest.

One policy for pods and instances: a pool runs `ceil(lag / scale.target_backlog)` instances up to `scale.max`
(scaler.py), so one replica meets a lag of `target_backlog × max` with all its instances; that is the HPA's
target per replica here (metric type AverageValue: replicas = ceil(lag / target)), and any lag activates
(a pool wakes on any message too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..broker.partitions import consumer_names
from ..broker.users import with_keyed_subjects
from ..manifest import LoadedManifest

FUNCTION_KEY = "function"  # the trigger's metadata: which function of the manifest a ScaledObject scales
METRIC_PREFIX = "ebbtide-lag-"


@dataclass(frozen=True)
class FunctionTarget:
    function: str
    stream: str
    consumers: tuple[str, ...]  # its own durable consumer; an ordered function's partition consumers first
    bell_subjects: tuple[str, ...]  # the trigger, and its keyed form when ordered: a publish there rings
    target_per_replica: int  # lag one replica meets with every instance: scale.target_backlog × scale.max

    @property
    def metric_name(self) -> str:
        return METRIC_PREFIX + self.function

    def replicas_for(self, lag: int) -> int:
        """What the HPA computes from this metric (before its tolerance, limits and behaviour)."""
        return math.ceil(max(lag, 0) / self.target_per_replica)


def is_active(lag: int) -> bool:
    """Any message waiting or in flight keeps the function's Deployment above zero."""
    return lag > 0


def function_targets(manifest: LoadedManifest) -> dict[str, FunctionTarget]:
    targets = {}
    for name, fn in manifest.spec.functions.items():
        targets[name] = FunctionTarget(
            function=name,
            stream=manifest.stream_for(fn.trigger),
            consumers=tuple(consumer_names(manifest, name)),
            bell_subjects=tuple(with_keyed_subjects(manifest, [fn.trigger])),
            target_per_replica=fn.scale.target_backlog * fn.scale.max,
        )
    return targets
