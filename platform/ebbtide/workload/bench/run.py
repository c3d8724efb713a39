"""Runs the chosen `ebbtide bench` scenarios into one report (see the package's docstring)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec

from ...build import build_modules
from ...manifest import LoadedManifest
from .capacity import bench_capacity
from .comparison import bench_comparison
from .micro import bench_host, bench_memory
from .options import BenchOptions
from .ordering import bench_ordering
from .replica import bench_replica
from .report import BenchReport
from .scale import bench_scale
from .server import bench_server
from .shadow import bench_shadow
from .soak import bench_soak
from .tracing import bench_tracing


async def run_bench(
    manifest: LoadedManifest, scenarios: list[str], quick: bool, out_dir: Path, options: BenchOptions | None = None
) -> BenchReport:
    options = options or BenchOptions()
    build_modules(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BenchReport(started=time.strftime("%Y-%m-%d %H:%M:%S"), quick=quick)
    if "host" in scenarios:
        print("host: guest call and instance start", flush=True)
        bench_host(manifest, report, quick)
    if "memory" in scenarios:
        print("memory: RSS per instance", flush=True)
        bench_memory(manifest, report, quick)
    if "replica" in scenarios:
        print("replica: memory of a function process, the supervisor, each added function; cold start", flush=True)
        await bench_replica(manifest, report, quick, out_dir)
    if "scale" in scenarios:
        print("scale: activation from zero, burst, drain, idle CPU", flush=True)
        await bench_scale(manifest, report, quick, out_dir)
    if "tracing" in scenarios:
        print("tracing: burst throughput with tracing off, 1 %, 100 %", flush=True)
        await bench_tracing(manifest, report, quick, out_dir)
    if "shadow" in scenarios:
        print("shadow: burst throughput with no shadow, every function shadowing 10 % and 100 %", flush=True)
        await bench_shadow(manifest, report, quick, out_dir)
    if "server" in scenarios:
        print("server: nats-server CPU per message, by publish and ack form", flush=True)
        await bench_server(report, quick, out_dir)
    if "burst" in scenarios or "sustained" in scenarios:
        await bench_comparison(
            manifest, report, quick, out_dir, options, burst="burst" in scenarios, sustained="sustained" in scenarios
        )
    if "ordering" in scenarios:
        print("ordering: the burst with and without per-key ordering, 3 events per order, one hot key", flush=True)
        await bench_ordering(manifest, report, quick, out_dir, options)
    if "capacity" in scenarios:
        print(
            "capacity: the profile of `ebbtide plan`, then the burst with 1, 2, 4 processes per function (--quick: 1, 2) "
            "beside the model",
            flush=True,
        )
        await bench_capacity(manifest, report, quick, out_dir, options.orders)
    if "soak" in scenarios:
        print("soak: a burst a minute and a trickle between, per process memory, fds, tasks, objects over time", flush=True)
        await bench_soak(manifest, report, quick, out_dir, options)
    results = out_dir / "results.json"
    results.write_text(json.dumps(msgspec.to_builtins(report), indent=2))
    report.files.append(str(results))
    return report
