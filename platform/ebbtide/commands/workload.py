"""The reference workload's commands: demo and bench (ebbtide.workload, loaded only for them)."""

from __future__ import annotations

import argparse

import uvloop

from ..errors import UsageError
from ..exit_codes import EXIT_FAILURE
from ..manifest import LoadedManifest


def bench_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    from ..workload.bench import DEFAULT_SCENARIOS, BenchOptions, run_bench

    try:
        options = BenchOptions(
            orders=args.orders,
            repeats=args.repeats,
            sustained_s=args.sustained_s,
            rates=args.rate or [],
            sustained_target=args.sustained_target,
            soak_minutes=args.minutes,
            soak_manifests=args.soak_manifest or [],
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = uvloop.run(run_bench(manifest, args.scenario or list(DEFAULT_SCENARIOS), args.quick, args.out, options))
    print()
    print(report.markdown())
    print()
    for path in report.files:
        print(f"wrote {path}")
    return 0


def demo_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    if args.orders < 1:
        raise UsageError("--orders must be at least 1")
    from ..workload.demo import print_summary, run_demo

    if args.events_per_order < 1:
        raise UsageError("--events-per-order must be at least 1")
    result = uvloop.run(  # Ctrl-C: errors.Interrupted, exit code 130
        run_demo(manifest, args.orders, args.seed, args.data_dir, args.processes, events_per_order=args.events_per_order)
    )
    print_summary(result)
    return 0 if result.complete else EXIT_FAILURE
