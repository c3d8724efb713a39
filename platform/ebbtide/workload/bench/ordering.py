"""`ebbtide bench --scenario ordering`: what per-key ordering costs, side by side in one run.

On one embedded nats-server, the reference pipeline runs unordered (the default manifest) and ordered
(every function `order_by = "orderGuid"`, ORDERS in PARTITIONS partitions), in per-function process mode,
each started afresh for every round (warmed up, then given the same bursts); the rounds alternate which of
the two goes first, so that the machine's load falls on both alike:

- the ZEISS burst: N orders, one event each;
- N orders x 3 events (created, amended, cancelled), the orders interleaved;
- the skew case: the same, but one order (one key) holds 30 % of all events.

For each: wall time (first publish to the last outbox write, server time), events/s, CPU seconds of the
function processes and of nats-server from the first publish until every write is in, and how many outbox
writes came out of their order's sequence (read back from the buckets' streams: an event older than one
already written for the order). The medians of the rounds, and ordered / unordered as ratios, beside the
goals of issue 26.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ...broker import EmbeddedNats, connect
from ...manifest import LoadedManifest
from ..orders import OrderEvent, generate_order_events
from . import implementations as impls
from .comparison import cpu_seconds
from .harness import BurstResult, Harness
from .options import BenchOptions
from .report import BenchReport, Section

PARTITIONS = 8
ORDERED = impls.Variant("ordered", "per-function", {"order_by": "orderGuid"})
KINDS = ("unordered", "ordered")


@dataclass(frozen=True)
class Case:
    name: str
    events_per_order: int
    hot_share: float = 0.0
    wall_goal: float = 1.3  # ordered / unordered wall time (issue 26)


CASES = (
    Case("burst, 1 event per order", 1),
    Case("3 events per order", 3),
    Case("skew: 3 events per order, one order 30 % of the events", 3, 0.3, wall_goal=2.0),
)
SERVER_CPU_GOAL = 1.5  # ordered / unordered nats-server CPU per event
FUNCTION_CPU_GOAL = 1.3  # ordered / unordered function processes' CPU per event


@dataclass
class CaseResult:
    events: int
    burst: BurstResult
    out_of_order: int
    cpu_functions_s: float  # CPU seconds of the function processes, first publish to the last write
    cpu_server_s: float  # ... and of nats-server (the publisher's load included, the same for both)

    @property
    def events_per_s(self) -> float:
        return self.burst.writes / self.burst.wall_s if self.burst.wall_s > 0 else 0.0


class _Seq(msgspec.Struct):
    event_seq: int = msgspec.field(name="eventSeq", default=0)


_decode_seq = msgspec.json.Decoder(_Seq).decode


def ordered_variant(manifest: LoadedManifest) -> LoadedManifest:
    """The manifest with its streams partitioned (the functions get order_by from the variant)."""
    streams = {name: msgspec.structs.replace(s, partitions=PARTITIONS) for name, s in manifest.spec.streams.items()}
    return LoadedManifest(msgspec.structs.replace(manifest.spec, streams=streams), manifest.path)


async def out_of_order(harness: Harness, before: dict[str, int]) -> int:
    """Outbox writes since `before` of an event older than one already written for the same order."""
    latest: dict[str, int] = {}
    late = 0
    async for msg in harness.writes_since(before):
        key, seq = msg.subject, _decode_seq(msg.data).event_seq
        if seq < latest.get(key, 0):
            late += 1
        latest[key] = max(latest.get(key, 0), seq)
    return late


async def bench_ordering(
    manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path, options: BenchOptions
) -> None:
    n = options.orders or (1_000 if quick else 10_000)
    rounds = options.repeats or (1 if quick else 3)
    folder = out_dir / "variants"
    ordered = ordered_variant(manifest)
    implementations = {
        "unordered": (
            manifest,
            impls.DEFAULT,
            impls.ebbtide(manifest, impls.DEFAULT, folder, "unordered", "ebbtide default, unordered"),
        ),
        "ordered": (
            ordered,
            ORDERED,
            impls.ebbtide(ordered, ORDERED, folder, "ordered", f"ebbtide ordered by orderGuid, {PARTITIONS} partitions"),
        ),
    }
    workloads = [
        generate_order_events(n, case.events_per_order, seed=31 + i, first_id=1 + i * 1_000_000, hot_share=case.hot_share)
        for i, case in enumerate(CASES)
    ]
    warm = generate_order_events(max(200, n // 10), 3, seed=30, first_id=50_000_000)
    results: dict[str, list[list[CaseResult]]] = {key: [[] for _ in CASES] for key in KINDS}
    data_dir = out_dir / "nats-ordering"
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench-ordering")
        try:
            for round_ in range(rounds):
                for key in KINDS if round_ % 2 == 0 else reversed(KINDS):
                    loaded, variant, impl = implementations[key]
                    harness = Harness(nc, impls.write_variant(loaded, variant, folder))
                    print(f"ordering, round {round_ + 1}/{rounds}: {impl.label}", flush=True)
                    await harness.reset()
                    async with impl.start(server.url, nc) as pids:
                        await harness.burst(warm, tag=f"{key}-warm-up-{round_}")
                        assert server.pid is not None
                        for i, (case, events) in enumerate(zip(CASES, workloads)):
                            results[key][i].append(await _timed_case(harness, events, [server.pid, *pids], f"{key}-{round_}"))
                            r = results[key][i][-1]
                            print(
                                f"  {case.name}: {len(events):,} events in {r.burst.wall_s:.3f} s, {r.events_per_s:,.0f} "
                                f"events/s, writes {r.burst.writes}, out of order {r.out_of_order}, CPU s functions "
                                f"{r.cpu_functions_s:.2f} / nats-server {r.cpu_server_s:.2f}",
                                flush=True,
                            )
        finally:
            await nc.close()
    _report(report, results, n, rounds)


async def _timed_case(harness: Harness, events: list[OrderEvent], pids: list[int], tag: str) -> CaseResult:
    """One burst; CPU counted from just before the first publish until every write is in."""
    await harness.settle()
    before = await harness.last_seqs()
    cpu_before = [cpu_seconds(pid) for pid in pids]
    cpu_after: list[float] = []
    run = await harness.burst(
        events, tag=tag, timeout=600.0, on_stored=lambda: cpu_after.extend(cpu_seconds(pid) for pid in pids)
    )
    cpu = [b - a for a, b in zip(cpu_before, cpu_after)]
    return CaseResult(len(events), run, await out_of_order(harness, before), sum(cpu[1:]), cpu[0])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _report(report: BenchReport, results: dict[str, list[list[CaseResult]]], n: int, rounds: int) -> None:
    lines = [
        "| case | events | wall s, unordered → ordered | ordered / unordered wall (goal) "
        "| CPU s per 1,000 events, unordered → ordered: functions / nats-server "
        "| ordered / unordered CPU: functions (goal ≤ 1.3) / nats-server (goal ≤ 1.5) | out of order |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    for i, case in enumerate(CASES):
        runs = {key: results[key][i] for key in KINDS}
        events = runs["unordered"][0].events
        wall = {key: _median([r.burst.wall_s for r in runs[key]]) for key in KINDS}
        functions = {key: _median([r.cpu_functions_s for r in runs[key]]) * 1000 / events for key in KINDS}
        server = {key: _median([r.cpu_server_s for r in runs[key]]) * 1000 / events for key in KINDS}
        ratios = {
            "wall": _ratio(wall["ordered"], wall["unordered"]),
            "cpu_functions": _ratio(functions["ordered"], functions["unordered"]),
            "cpu_nats_server": _ratio(server["ordered"], server["unordered"]),
        }
        late = sum(r.out_of_order for r in runs["ordered"])

        def met(value: float, goal: float) -> str:
            return "met" if value <= goal else "not met"

        lines.append(
            f"| {case.name} | {events:,} | {wall['unordered']:.3f} → {wall['ordered']:.3f} "
            f"| **{ratios['wall']:.2f}×** (≤ {case.wall_goal:g}: {met(ratios['wall'], case.wall_goal)}) "
            f"| {functions['unordered']:.3f} → {functions['ordered']:.3f} / {server['unordered']:.3f} → {server['ordered']:.3f} "
            f"| **{ratios['cpu_functions']:.2f}×** ({met(ratios['cpu_functions'], FUNCTION_CPU_GOAL)}) / "
            f"**{ratios['cpu_nats_server']:.2f}×** ({met(ratios['cpu_nats_server'], SERVER_CPU_GOAL)}) | {late} |"
        )
        details.append(
            {
                "case": case.name,
                "events": events,
                "ratios": ratios,
                "goals": {"wall": case.wall_goal, "cpu_functions": FUNCTION_CPU_GOAL, "cpu_nats_server": SERVER_CPU_GOAL},
                **{
                    key: {
                        "wall_s": wall[key],
                        "wall_s_each": [r.burst.wall_s for r in runs[key]],
                        "events_per_s": events / wall[key] if wall[key] > 0 else 0.0,
                        "writes": runs[key][0].burst.writes,
                        "writes_each": [r.burst.writes for r in runs[key]],
                        "out_of_order": sum(r.out_of_order for r in runs[key]),
                        "cpu_s_per_1000_events": {"functions": functions[key], "nats_server": server[key]},
                    }
                    for key in KINDS
                },
            }
        )
        how = f"{events:,} events of {n:,} orders published at once; first publish to the last outbox write; median of {rounds}"
        report.add(f"ordering, {case.name}: unordered wall time", wall["unordered"], "s", how)
        report.add(f"ordering, {case.name}: ordered wall time", wall["ordered"], "s", how)
        report.add(f"ordering, {case.name}: ordered / unordered wall time", ratios["wall"], "×", f"goal ≤ {case.wall_goal:g}")
    lines += [
        "",
        f"Medians of {rounds} round(s); each round starts both afresh (per-function processes, one embedded "
        f"nats-server, one warm-up burst excluded) and alternates which goes first. Ordered: every function "
        f'`order_by = "orderGuid"`, ORDERS in {PARTITIONS} partitions, each a lane held by one process that takes '
        "it in batches (README: Ordering by key). CPU: user + system seconds (/proc/PID/stat) of the function "
        "processes and of nats-server (the publisher's load is in the server's, the same for both) from the first "
        "publish until every write is in. Out of order: outbox writes of an event older than one already written "
        "for the same order (read back from the buckets' streams), summed over the rounds.",
    ]
    report.sections.append(Section(f"Per-key ordering: its cost ({n:,} orders)", "\n".join(lines)))
    report.details["ordering"] = {"orders": n, "partitions": PARTITIONS, "rounds": rounds, "cases": details}


__all__ = ["CASES", "bench_ordering"]
