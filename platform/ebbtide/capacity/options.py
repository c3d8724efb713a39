"""The options of `ebbtide plan` (argparse only: cli.py builds its parser from them at every start)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RESULTS = Path(".ebbtide/bench/results.json")


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        type=Path,
        help=f"results.json of `ebbtide bench --scenario capacity` (default: {DEFAULT_RESULTS} when it holds one, "
        "else the built-in profile)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--shape", choices=["zeiss", "steady"], default="zeiss", help="(default: %(default)s)")
    load.add_argument("--rates-file", type=Path, help="orders per second, one number a line (instead of --shape)")
    load.add_argument(
        "--orders-per-minute",
        type=float,
        default=10_000,
        help="zeiss: the burst at the start of each busy minute; steady: the rate (default: %(default)g)",
    )
    load.add_argument("--busy-hours", default="8-10,12-13,15-17", help="zeiss: busy hours of the day (default: %(default)s)")
    load.add_argument("--hours", type=float, default=24.0, help="length of the simulated day (default: %(default)g)")
    load.add_argument("--sweep", help="comma-separated orders/minute (e.g. 1000,10000,100000,1000000): one summary line each")
    scaling = parser.add_argument_group("KEDA, the HPA, the pods")
    scaling.add_argument("--keda", choices=["push", "poll"], default="push", help="external-push (the scaler's bell) or polling")
    scaling.add_argument("--polling-interval", type=float, default=5.0, help="KEDA pollingInterval, s (default: %(default)g)")
    scaling.add_argument("--cooldown", type=float, default=60.0, help="KEDA cooldownPeriod, s (default: %(default)g)")
    scaling.add_argument("--max-replicas", type=int, default=100, help="maxReplicaCount per function (default: %(default)s)")
    scaling.add_argument(
        "--pod-start", type=float, default=2.0, help="pod scheduling and container start, s (default: %(default)g)"
    )
    scaling.add_argument("--hpa-sync", type=float, default=15.0, help="HPA sync period, s (default: %(default)g)")
    scaling.add_argument(
        "--hpa-down-window", type=float, default=300.0, help="HPA scale-down stabilisation window, s (default: %(default)g)"
    )
    scaling.add_argument(
        "--stream-replicas", type=int, default=3, help="JetStream replicas of each stream (default: %(default)s)"
    )
    parser.add_argument(
        "--chart", type=Path, default=Path(".ebbtide/plan/plan.svg"), help="pods and backlog over time (default: %(default)s)"
    )
