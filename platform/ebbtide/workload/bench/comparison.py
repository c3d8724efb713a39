"""The ZEISS burst side by side, and the sustained load, on one embedded nats-server in one run.

Implementations (implementations.py): a raw nats-py pass-through (the practical limit), FastStream, ebbtide
with the default manifest and ebbtide in its fastest configuration (a manifest variant: the full run tries
CANDIDATES, the default among them, in TUNING_ROUNDS alternating rounds of one burst each, so a slow minute of
a shared machine hits every candidate alike, and keeps the fastest median; --quick takes
FASTEST_KNOWN; when that is the default it is not run twice). For each: streams and
consumers deleted and provisioned again, the implementation started, one warm-up burst (excluded), then
`repeats` timed bursts of the same orders (ingress ids made unique per run, so no publish is deduplicated).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...broker import EmbeddedNats, connect
from ...manifest import LoadedManifest
from ..orders import generate_orders
from . import implementations as impls
from .harness import BurstResult, Harness
from .options import BenchOptions
from .report import BenchReport, Section
from .stats import percentile, spread
from .sustained import bench_sustained
from .wire import Totals, WireWatch, connection_totals

TUNING_ROUNDS = 3  # each candidate: one burst per round, after a warm-up, restarted every round
ROUNDS = 5  # timed: each implementation started afresh and timed once per round, the order turning each round
BENCH_CONNECTION = "ebbtide-bench"
WIRE_CONNECTION = "ebbtide-bench-wire"
NOT_COUNTED = {BENCH_CONNECTION, WIRE_CONNECTION}  # the harness's own traffic (publishing, reading back)
# Issue 29's goals, judged in the burst's table: ebbtide's default against the raw nats-py pass-through and
# FastStream (medians of the alternating rounds).
GOAL_VS_RAW = 1.5  # throughput
GOAL_VS_FASTSTREAM = 10.0  # throughput
GOAL_SERVER_CPU_VS_RAW = 0.6  # nats-server CPU per order
GOAL_FUNCTIONS_CPU_VS_RAW = 0.7  # CPU per order of the function processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its own threads; not its children), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class CpuUse:
    """CPU seconds one timed burst cost, the server's included (both measured over the same window)."""

    functions_s: float  # every process running the implementation's functions
    server_s: float  # nats-server

    def per_10k(self, orders: int) -> tuple[float, float]:
        scale = 10_000 / orders if orders else 0.0
        return self.functions_s * scale, self.server_s * scale


@dataclass
class ImplResult:
    impl: impls.Implementation
    runs: list[BurstResult]
    cpu: list[CpuUse] = field(default_factory=list)  # per timed run
    totals: list[Totals] = field(default_factory=list)  # messages in and out of the server, per timed run
    wire: dict[str, float] = field(default_factory=dict)  # API requests and acks per order, from a counted burst

    def summary(self) -> dict[str, Any]:
        wall = spread([r.wall_s for r in self.runs])
        rate = spread([r.orders_per_s for r in self.runs])
        return {
            "label": self.impl.label,
            "how": self.impl.how,
            "wall_s": {"min": wall.min, "median": wall.median, "runs": list(wall.values)},
            "orders_per_s": {"max": rate.max, "median": rate.median, "runs": [r.orders_per_s for r in self.runs]},
            "latency_ms": {
                q: spread([percentile(r.latencies_ms, p) if r.latencies_ms else math.nan for r in self.runs]).median
                for q, p in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            },
            "sent": [r.sent for r in self.runs],
            "stored": [r.stored for r in self.runs],
            "writes": [r.writes for r in self.runs],
            "mismatched": [r.mismatched for r in self.runs],
            "dead_letters": [r.dead_letters for r in self.runs],
            "publish_errors": [r.publish_errors for r in self.runs],
            "publish_s": [r.publish_s for r in self.runs],
            "exactly_once": all(r.exactly_once for r in self.runs),
            "cpu_s_per_10k_orders": {
                part: {"median": spread(runs).median if runs else math.nan, "runs": runs}
                for part, runs in (
                    ("functions", [c.per_10k(r.sent)[0] for c, r in zip(self.cpu, self.runs)]),
                    ("nats_server", [c.per_10k(r.sent)[1] for c, r in zip(self.cpu, self.runs)]),
                )
            },
            "messages_per_order": {
                "in": spread([t.in_msgs / r.sent for t, r in zip(self.totals, self.runs)]).median if self.totals else math.nan,
                "out": spread([t.out_msgs / r.sent for t, r in zip(self.totals, self.runs)]).median if self.totals else math.nan,
                **self.wire,
            },
        }


async def bench_comparison(
    manifest: LoadedManifest,
    report: BenchReport,
    quick: bool,
    out_dir: Path,
    options: BenchOptions,
    *,
    burst: bool,
    sustained: bool,
) -> None:
    n = options.orders or (2_000 if quick else 10_000)
    rounds = options.repeats or (1 if quick else ROUNDS)
    if not burst:
        rounds = 1  # one burst for the capacity the sustained load is set from
    orders = generate_orders(n, seed=7, first_id=1)
    warm = generate_orders(max(200, n // 5), seed=8, first_id=10_000_001)
    variants = out_dir / "variants"
    data_dir = out_dir / "nats-compare"
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name=BENCH_CONNECTION)
        harness = Harness(nc, manifest)
        try:
            tune = options.tune if options.tune is not None else not quick
            if tune and burst:
                tried = [impls.candidate(name) for name in options.candidates] if options.candidates else list(impls.CANDIDATES)
                fastest = await _tune(manifest, harness, server.url, orders, warm, variants, report, tried)
            else:
                fastest = impls.candidate(impls.FASTEST_KNOWN)
            default = impls.ebbtide(manifest, impls.DEFAULT, variants, "ebbtide-default", "ebbtide default")
            best = default
            if fastest != impls.DEFAULT:
                best = impls.ebbtide(manifest, fastest, variants, "ebbtide-fastest", f"ebbtide fastest ({fastest.name})")
            chosen = [impls.raw_limit(), impls.raw_batched()]
            if impls.have_faststream():
                chosen.append(impls.faststream())
            else:
                print("burst: FastStream is not installed (pip install -e '.[baseline]'): skipped", flush=True)
            chosen += [default] if best is default else [default, best]
            chosen.append(
                impls.ebbtide(
                    manifest, impls.PUBACK_PER_EFFECT, variants, "ebbtide-puback", "ebbtide, a PubAck per effect (before)"
                )
            )
            target = best if options.sustained_target == "ebbtide-fastest" else default
            if not burst:
                chosen = [target]
            results = {impl.key: ImplResult(impl, []) for impl in chosen}
            figures_before, sections_before = len(report.figures), len(report.sections)
            for round_ in range(rounds):
                turn = round_ % len(chosen)  # each round starts with the next implementation
                for impl in chosen[turn:] + chosen[:turn]:
                    print(f"burst: round {round_ + 1}/{rounds}: {impl.label}: {impl.how}", flush=True)
                    await _timed_burst(server, harness, impl, results[impl.key], orders, warm, round_)
            if burst:
                for impl in chosen:  # what each asks of the server, counted in bursts of their own
                    if impl.key != "faststream":
                        results[impl.key].wire = await _counted_burst(server, harness, impl, orders, warm)
            if sustained:
                await harness.reset()
                async with target.start(server.url, nc) as pids:
                    await harness.burst(warm, tag=f"{target.key}-sustained-warm-up")
                    await harness.settle()
                    capacity = spread([r.orders_per_s for r in results[target.key].runs]).median
                    await bench_sustained(harness, server.url, target, pids, capacity, report, quick, out_dir, options)
        finally:
            await nc.close()  # nothing left to deliver; drain can stall on the pull subscriptions
    if burst:  # the burst's table comes before the sustained load's
        later_figures, later_sections = report.figures[figures_before:], report.sections[sections_before:]
        del report.figures[figures_before:], report.sections[sections_before:]
        how_chosen = (
            "tried in this run, see the configurations table"
            if tune and burst
            else "from the last full run on this machine kind (--quick does not search)"
        )
        _report_burst(report, results, n, rounds, len(warm), fastest, how_chosen)
        report.figures += later_figures
        report.sections += later_sections


async def _timed_burst(
    server: EmbeddedNats, harness: Harness, impl: impls.Implementation, result: ImplResult, orders: list, warm: list, round_: int
) -> None:
    """The implementation started on fresh streams, warmed up, then one burst timed: wall time, CPU of its
    processes and of the server, messages in and out of the server (/connz)."""
    await harness.reset()
    async with impl.start(server.url, harness.nc) as pids:
        await harness.burst(warm, tag=f"{impl.key}-{round_}-warm-up")
        await harness.settle()
        assert server.pid is not None
        wire_before = await connection_totals(server.monitor_url, NOT_COUNTED)
        before = [cpu_seconds(pid) for pid in (server.pid, *pids)]
        run = await harness.burst(orders, tag=f"{impl.key}-{round_}")
        after = [cpu_seconds(pid) for pid in (server.pid, *pids)]
        wire = await connection_totals(server.monitor_url, NOT_COUNTED) - wire_before
    used = [b - a for a, b in zip(before, after)]
    cpu = CpuUse(functions_s=sum(used[1:]), server_s=used[0])
    print(
        f"  {run.wall_s:.3f} s, {run.orders_per_s:,.0f} orders/s, stored {run.stored}/{run.sent}, writes {run.writes}, "
        f"values wrong {run.mismatched}, CPU s functions {cpu.functions_s:.2f} / nats-server {cpu.server_s:.2f}, "
        f"messages in/out per order {wire.in_msgs / run.sent:.2f} / {wire.out_msgs / run.sent:.2f}",
        flush=True,
    )
    result.runs.append(run)
    result.cpu.append(cpu)
    result.totals.append(wire)


async def _counted_burst(
    server: EmbeddedNats, harness: Harness, impl: impls.Implementation, orders: list, warm: list
) -> dict[str, float]:
    """One more burst (not timed), with the JetStream API requests and acks counted: per order."""
    await harness.reset()
    async with impl.start(server.url, harness.nc) as _:
        await harness.burst(warm, tag=f"{impl.key}-wire-warm-up")
        await harness.settle()
        watcher = await connect(server.url, name=WIRE_CONNECTION)
        try:
            async with WireWatch(watcher, harness.nc) as watch:
                run = await harness.burst(orders, tag=f"{impl.key}-wire")
        finally:
            await watcher.close()
    per_order = {kind: count / run.sent for kind, count in sorted(watch.counts.items())}
    print(
        f"  wire, {impl.label}: " + ", ".join(f"{kind} {value:.4f}" for kind, value in per_order.items()) + " per order",
        flush=True,
    )
    return per_order


async def _tune(
    manifest: LoadedManifest,
    harness: Harness,
    url: str,
    orders: list,
    warm: list,
    folder: Path,
    report: BenchReport,
    candidates: list[impls.Variant],
) -> impls.Variant:
    """TUNING_ROUNDS alternating rounds: in each, every candidate started, warmed up, one burst; the fastest
    median wall time wins."""
    walls: dict[str, list[float]] = {variant.name: [] for variant in candidates}
    for round_ in range(TUNING_ROUNDS):
        for variant in candidates:
            impl = impls.ebbtide(manifest, variant, folder, f"tune-{variant.name}", variant.name)
            await harness.reset()
            async with impl.start(url, harness.nc):
                await harness.burst(warm, tag=f"tune-{variant.name}-{round_}-warm-up")
                await harness.settle()
                walls[variant.name].append((await harness.burst(orders, tag=f"tune-{variant.name}-{round_}")).wall_s)
            print(f"tune: round {round_ + 1}: {variant.name} ({variant.describe()}): {walls[variant.name][-1]:.3f} s", flush=True)
    timings = [(spread(walls[v.name]).median, v, walls[v.name]) for v in candidates]
    best = min(timings, key=lambda t: t[0])[1]
    lines = [
        f"| configuration | settings | wall time, median of {TUNING_ROUNDS} | each round |",
        "|---|---|---:|---|",
    ]
    lines += [
        f"| {v.name}{' (fastest)' if v is best else ''} | {v.describe()} | {t:.3f} s | {', '.join(f'{w:.3f}' for w in ws)} |"
        for t, v, ws in timings
    ]
    report.sections.append(
        Section(
            f"ebbtide configurations tried ({TUNING_ROUNDS} alternating rounds, one burst each after a warm-up)", "\n".join(lines)
        )
    )
    report.details["tuning"] = {v.name: {"settings": v.describe(), "wall_s": ws, "median_s": t} for t, v, ws in timings}
    return best


def _report_burst(
    report: BenchReport, results: dict[str, ImplResult], n: int, rounds: int, warm: int, fastest: impls.Variant, how_chosen: str
) -> None:
    summaries = {key: r.summary() for key, r in results.items()}
    how = (
        f"{n:,} orders published at once; first publish to the last outbox write (server time); {rounds} "
        f"alternating round(s), each implementation started afresh, warmed up with {warm:,} orders (excluded) "
        "and timed once per round, the order of the implementations turning every round; medians"
    )
    lines = [
        "| implementation | wall s (min / median) | orders/s (median) | latency p50 / p99 / max ms | "
        "CPU s per 10k orders: functions / nats-server | messages in / out per order | stored / sent | writes | "
        "values wrong | dead letters |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        lat, wire = s["latency_ms"], s["messages_per_order"]
        lines.append(
            f"| {s['label']} | {s['wall_s']['min']:.3f} / {s['wall_s']['median']:.3f} | "
            f"{s['orders_per_s']['median']:,.0f} | {lat['p50']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f} | "
            f"{s['cpu_s_per_10k_orders']['functions']['median']:.2f} / {s['cpu_s_per_10k_orders']['nats_server']['median']:.2f} | "
            f"{wire['in']:.2f} / {wire['out']:.2f} | {min(s['stored'])} / {max(s['sent'])} | {max(s['writes'])} | "
            f"{max(s['mismatched'])} | {max(s['dead_letters'])} |"
        )
    counted = {s["label"]: s["messages_per_order"] for s in summaries.values() if len(s["messages_per_order"]) > 2}
    if counted:
        kinds = sorted({kind for wire in counted.values() for kind in wire} - {"in", "out"})
        lines += ["", "| per order, a counted burst | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        lines += [
            f"| {label} | " + " | ".join(f"{wire.get(kind, 0.0):.4f}" for kind in kinds) + " |" for label, wire in counted.items()
        ]
    lines += [
        "",
        "How each ran: " + "; ".join(f"**{s['label']}**: {s['how']}" for s in summaries.values()) + ".",
        "",
        f"Measured: {how}. Latency per order: its outbox write (server timestamp) minus its publish time; "
        "median over the timed runs. Writes above the stored count would mean an order written twice; a value "
        "wrong is an outbox entry that is not the order published (decoded and compared) or not in its delivery's "
        "bucket. CPU: user + system seconds of every process running the functions and of nats-server over each "
        "timed burst (/proc/PID/stat), per 10,000 orders, median; the server's includes the publisher's load, the "
        "same for every implementation; `single` process mode runs in the benchmark's own process, so its "
        "functions' CPU includes the publisher. Messages in / out: what the server counted (/connz) from and to "
        "every connection but the benchmark's own over each timed burst, per order, median. The counted burst: "
        "one more burst each (not timed: the server copies every ack to the counter), with the JetStream API "
        "requests (pull requests apart) and the acks seen on $JS.API.> and $JS.ACK.>.",
    ]
    same = " (the default: run once)" if fastest == impls.DEFAULT else ""
    lines += ["", f"Fastest ebbtide configuration: **{fastest.name}**{same}: {fastest.describe()}; {how_chosen}."]
    ratios = _ratios(summaries)
    goals = _goals(summaries, ratios)
    lines += ["", *[f"- {line}" for line in goals]]
    report.sections.append(Section(f"ZEISS burst, side by side ({n:,} orders)", "\n".join(lines)))
    report.details["burst"] = {
        "orders": n,
        "rounds": rounds,
        "warm_up_orders": warm,
        "fastest_config": {"name": fastest.name, "settings": fastest.describe()},
        "implementations": summaries,
        "ratios": ratios,
        "goals": goals,
    }
    for s in summaries.values():
        report.add(f"burst {s['label']}: wall time, median", s["wall_s"]["median"], "s", how)
        report.add(f"burst {s['label']}: orders/s, median", s["orders_per_s"]["median"], "orders/s", how)
    for name, (value, _, goal) in ratios.items():
        report.add(name, value, "×", "median of the rounds' ratios", goal)


def _ratios(summaries: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float, str]]:
    """ebbtide's figures over each baseline's: throughput, and CPU per order (the server's, the functions').

    For each: the median of the rounds' ratios (each round's bursts ran minutes apart at most, so a shared
    machine's load, which can halve or double within the run, cancels out), which the goals judge, and the
    ratio of the medians beside it; with the goal, if any."""
    ratios: dict[str, tuple[float, float, str]] = {}
    for key in ("ebbtide-fastest", "ebbtide-default"):
        ours = summaries.get(key)
        if ours is None:
            continue
        for base_key, goal_rate, goal_server, goal_functions in (
            ("faststream", f"≥ {GOAL_VS_FASTSTREAM:g}", "", ""),
            ("raw", f"≥ {GOAL_VS_RAW:g}", f"≤ {GOAL_SERVER_CPU_VS_RAW:g}", f"≤ {GOAL_FUNCTIONS_CPU_VS_RAW:g}"),
            ("raw-batched", "", "", ""),
            ("ebbtide-puback", "", "", ""),
        ):
            base = summaries.get(base_key)
            if base is None:
                continue
            name = f"{ours['label']} / {base['label']}"
            figures = [("throughput", ours["orders_per_s"], base["orders_per_s"], goal_rate)]
            figures += [
                (
                    f"{part.replace('_', '-')} CPU per order",
                    ours["cpu_s_per_10k_orders"][part],
                    base["cpu_s_per_10k_orders"][part],
                    goal,
                )
                for part, goal in (("nats_server", goal_server), ("functions", goal_functions))
            ]
            for what, mine, theirs, goal in figures:
                paired = [a / b for a, b in zip(mine["runs"], theirs["runs"]) if b > 0 and math.isfinite(a / b)]
                if paired and theirs["median"] > 0:
                    ratios[f"{name}: {what}"] = (spread(paired).median, mine["median"] / theirs["median"], goal)
    return ratios


def _goals(summaries: dict[str, dict[str, Any]], ratios: dict[str, tuple[float, float, str]]) -> list[str]:
    """Issue 29's goals, judged on the default (what users run); every other ratio as measured."""
    best = summaries.get("ebbtide-default")
    if best is None:
        return []
    out = []
    for name, (value, of_medians, goal) in ratios.items():
        measured = f"{value:.2f} (median of the rounds' ratios; ratio of the medians {of_medians:.2f})"
        if not goal:
            out.append(f"{name}: {measured}")
            continue
        bound = float(goal.split()[1])
        met = value >= bound if goal.startswith("≥") else value <= bound
        out.append(f"goal {name} {goal}: {measured}: {'met' if met else 'not met'}")
    exactly = all(s["exactly_once"] for s in summaries.values())
    out.append(
        f"every burst exactly once (writes = stored = sent, values as published, no dead letters): {'yes' if exactly else 'NO'}"
    )
    return out
