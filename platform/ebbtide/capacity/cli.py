"""`ebbtide plan`: reads the profile and the load, runs the model, prints the plan and writes its chart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError
from ..manifest import LoadedManifest
from ..scaler import ScalePolicy
from . import load as shapes
from .kube import HpaSettings, KedaSettings
from .model import ClusterSettings, SimulationResult, StepSettings
from .options import DEFAULT_RESULTS
from .profile import DEFAULT, Profile, check_covers, pipeline_of, profile_of_results
from .report import Plan, make_plan, plan_table, pods_over_time, summary, sweep_table

DAY_STEPS = StepSettings(busy_dt_s=0.25, quiet_dt_s=2.0, sample_s=30.0)  # a day: instances to the quarter second


def read_profile(path: Path | None) -> Profile:
    """The given results.json (an error if it holds no profile); else the default one when it has a profile;
    else the built-in profile."""
    candidate = path or DEFAULT_RESULTS
    if path is None and not candidate.exists():
        return DEFAULT
    try:
        results = json.loads(candidate.read_text())
        return profile_of_results(results, str(candidate))
    except (OSError, ValueError) as exc:
        if path is None:
            return DEFAULT  # the default file is a bench run of other scenarios
        raise UsageError(f"--profile: {exc}") from None


def policies_of(manifest: LoadedManifest) -> dict[str, ScalePolicy]:
    return {
        name: ScalePolicy(fn.scale.min, fn.scale.max, fn.scale.target_backlog, fn.scale.cooldown_s)
        for name, fn in manifest.spec.functions.items()
    }


def busy_hours(text: str) -> tuple[tuple[float, float], ...]:
    hours = []
    for part in text.split(","):
        start, sep, end = part.strip().partition("-")
        try:
            begin, finish = float(start), float(end)
        except ValueError:
            raise UsageError(f"--busy-hours: {part!r}: expected START-END in hours, e.g. 8-10") from None
        if not sep or not 0 <= begin < finish <= 24:
            raise UsageError(f"--busy-hours: {part!r}: expected START-END within 0-24, START before END")
        hours.append((begin, finish))
    return tuple(sorted(hours))


def load_shape(args: argparse.Namespace, orders_per_minute: float) -> shapes.LoadShape:
    duration = args.hours * 3600
    if args.rates_file is not None:
        try:
            return shapes.per_second_rates(args.rates_file.read_text(), str(args.rates_file))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--rates-file: {exc}") from None
    if args.shape == "steady":
        return shapes.steady(orders_per_minute / 60, duration)
    return shapes.zeiss_day(orders_per_minute, busy_hours(args.busy_hours), duration)


def run_plan(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.hours <= 0 or args.orders_per_minute <= 0 or args.max_replicas < 1 or args.stream_replicas < 1:
        raise UsageError("--hours, --orders-per-minute, --max-replicas and --stream-replicas must be positive")
    profile = read_profile(args.profile)
    try:
        check_covers(profile, manifest)
        pipeline = pipeline_of(manifest)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    keda = KedaSettings(args.keda, args.polling_interval, args.cooldown, max_replicas=args.max_replicas)
    hpa = HpaSettings(sync_s=args.hpa_sync, down_window_s=args.hpa_down_window)
    retention = max((s.max_age_s for s in manifest.spec.streams.values()), default=0) or 86_400.0
    cluster = ClusterSettings(pod_start_s=args.pod_start, stream_replicas=args.stream_replicas, retention_s=retention)
    policies = policies_of(manifest)
    batches = {name: fn.batch for name, fn in manifest.spec.functions.items()}

    def plan(orders_per_minute: float) -> Plan:
        return make_plan(pipeline, profile, policies, load_shape(args, orders_per_minute), keda, hpa, cluster, DAY_STEPS, batches)

    print(f"profile: {profile.source}")
    print(
        f"KEDA: {'external-push (activation on the first message)' if args.keda == 'push' else f'polling every {args.polling_interval:g} s'}, "
        f"cooldown {args.cooldown:g} s, at most {args.max_replicas} replicas; HPA: sync {args.hpa_sync:g} s, scale-down window "
        f"{args.hpa_down_window:g} s; a pod ready {args.pod_start:g} s + {profile.cold_start_s:.2f} s (cold start) after KEDA asks"
    )
    if args.sweep:
        try:
            sizes = [float(size) for size in args.sweep.split(",")]
        except ValueError:
            raise UsageError(f"--sweep {args.sweep!r}: comma-separated orders per minute") from None
        plans = [(size, plan(size)) for size in sizes]
        print(f"load: {plans[0][1].load.name.split(':')[0]} ({args.shape}), per size:\n")
        print("\n".join(sweep_table(plans)))
        return 0
    result = plan(args.orders_per_minute)
    print(f"load: {result.load.name}; {result.load.total_orders:,.0f} orders\n")
    print("\n".join(plan_table(result)))
    print(f"\npods over time (most in each of 24 slices of {result.load.duration_s / 24 / 60:.0f} min):")
    print("\n".join(pods_over_time(result.autoscaled, result.load.duration_s)))
    print("\n" + summary(result))
    left = {name: f.left for name, f in result.autoscaled.functions.items() if f.left > 1}
    if left:
        print("not drained at the end: " + ", ".join(f"{name} {count:,.0f}" for name, count in left.items()))
    print(f"wrote {write_chart(result.autoscaled, args.chart, result.load.name)}")
    return 0


def write_chart(result: SimulationResult, path: Path, title: str) -> Path:
    from ..timeseries import Sample
    from ..workload.charts import write_scaling_chart

    path.parent.mkdir(parents=True, exist_ok=True)
    hours = result.duration_s >= 3 * 3600
    scale = 3600.0 if hours else 1.0
    series = {
        name: [Sample(t / scale, round(backlog), pods, 0, 0.0) for t, backlog, pods in zip(f.times, f.backlog, f.pods)]
        for name, f in result.functions.items()
    }
    return write_scaling_chart(series, path, f"ebbtide plan: {title}", count="pods", time_unit="h" if hours else "s")
