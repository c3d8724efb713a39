"""A plan: the load autoscaled (KEDA + HPA + the pools) beside the same load on pods kept running at the
autoscaled run's peak size, and the text that shows it. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..scaler import ScalePolicy
from .kube import HpaSettings, KedaSettings
from .load import LoadShape
from .model import ClusterSettings, SimulationResult, StepSettings, simulate
from .profile import Pipeline, Profile

GIB = 1024.0


@dataclass(frozen=True)
class Plan:
    load: LoadShape
    autoscaled: SimulationResult
    always_on: SimulationResult
    always_on_pods: dict[str, int]

    @property
    def pod_seconds(self) -> tuple[float, float]:
        return (
            sum(f.pod_seconds for f in self.autoscaled.functions.values()),
            sum(f.pod_seconds for f in self.always_on.functions.values()),
        )

    @property
    def saved(self) -> float:
        """The share of pod-seconds autoscaling saves against pods kept running."""
        autoscaled, always_on = self.pod_seconds
        return 1 - autoscaled / always_on if always_on else 0.0


def make_plan(
    pipeline: Pipeline,
    profile: Profile,
    policies: dict[str, ScalePolicy],
    load: LoadShape,
    keda: KedaSettings,
    hpa: HpaSettings,
    cluster: ClusterSettings,
    steps: StepSettings,
    batches: dict[str, int] | None = None,
) -> Plan:
    autoscaled = simulate(pipeline, profile, policies, load, keda=keda, hpa=hpa, cluster=cluster, steps=steps, batches=batches)
    peak = {name: max(1, f.peak_pods) for name, f in autoscaled.functions.items()}
    always_on = simulate(pipeline, profile, policies, load, cluster=cluster, steps=steps, fixed_pods=peak, batches=batches)
    return Plan(load, autoscaled, always_on, peak)


def seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def storage(bytes_: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if bytes_ >= size:
            return f"{bytes_ / size:.1f} {unit}"
    return f"{bytes_ / 1e3:.0f} kB"


def plan_table(plan: Plan) -> list[str]:
    auto, fixed = plan.autoscaled, plan.always_on
    lines = [
        "| function | peak pods | pod-seconds | memory GiB·h | worst wait | always-on pods | pod-seconds | worst wait | saved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in auto.functions.items():
        g = fixed.functions[name]
        saved = 1 - f.pod_seconds / g.pod_seconds if g.pod_seconds else 0.0
        lines.append(
            f"| {name} | {f.peak_pods} | {f.pod_seconds:,.0f} | {f.memory_mib_seconds / GIB / 3600:,.2f} | "
            f"{seconds(f.worst_wait_s)} | {plan.always_on_pods[name]} | {g.pod_seconds:,.0f} | {seconds(g.worst_wait_s)} | "
            f"{saved:.0%} |"
        )
    autoscaled, always_on = plan.pod_seconds
    lines.append(
        f"| **all** | {sum(f.peak_pods for f in auto.functions.values())} | **{autoscaled:,.0f}** | "
        f"{sum(f.memory_mib_seconds for f in auto.functions.values()) / GIB / 3600:,.2f} | {seconds(auto.worst_end_to_end_s)} "
        f"publish → last function | {sum(plan.always_on_pods.values())} | **{always_on:,.0f}** | "
        f"{seconds(fixed.worst_end_to_end_s)} | **{plan.saved:.0%}** |"
    )
    return lines


def pods_over_time(result: SimulationResult, span: float, buckets: int = 24) -> list[str]:
    """Per function, the most pods within each of `buckets` equal slices of `span` seconds (the load's)."""
    span = max(span, 1e-9)
    width = max(len(name) for name in result.functions)
    lines = []
    for name, f in result.functions.items():
        most = [0] * buckets
        for t, pods in zip(f.times, f.pods):
            index = min(int(t / span * buckets), buckets - 1)
            most[index] = max(most[index], pods)
        lines.append(f"  {name:<{width}}  " + " ".join(f"{p:>3}" for p in most))
    return lines


def summary(plan: Plan, node_cores: int = 4) -> str:
    auto = plan.autoscaled
    pods = sum(f.peak_pods for f in auto.functions.values())  # an upper bound: the functions' peaks may not coincide
    nodes = math.ceil(pods / node_cores)
    return (
        f"at the peak, {pods} pods of one core each: {nodes} node{'s' if nodes != 1 else ''} of {node_cores} cores "
        f"for the functions (always-on: {math.ceil(sum(plan.always_on_pods.values()) / node_cores)} all day)\n"
        f"nats-server: {auto.server_cores_peak:.2f} cores in the busiest second, {auto.server_cores_mean:.3f} on average "
        f"(one server's work; each node of a cluster stores every replica); JetStream storage: "
        f"{storage(auto.storage_bytes_peak)} at most (every replica, the retention window's orders)"
    )


def sweep_table(plans: list[tuple[float, Plan]]) -> list[str]:
    lines = [
        "| orders/minute | orders | peak pods (all) | pod-seconds: autoscaled / always-on | saved | worst wait, publish → outbox | "
        "nats-server cores, peak / mean | storage |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, plan in plans:
        auto = plan.autoscaled
        autoscaled, always_on = plan.pod_seconds
        lines.append(
            f"| {size:,.0f} | {plan.load.total_orders:,.0f} | {sum(f.peak_pods for f in auto.functions.values())} | "
            f"{autoscaled:,.0f} / {always_on:,.0f} | {plan.saved:.0%} | {seconds(auto.worst_end_to_end_s)} | "
            f"{auto.server_cores_peak:.2f} / {auto.server_cores_mean:.3f} | {storage(auto.storage_bytes_peak)} |"
        )
    return lines
