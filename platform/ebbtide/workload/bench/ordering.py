"""`ebbtide bench --scenario ordering`: what per-key ordering costs, side by side in one run.

On one embedded nats-server, the reference pipeline runs unordered (the default manifest) and ordered
(every function `order_by = "orderGuid"`, ORDERS in PARTITIONS partitions), each started once in
per-function process mode, warmed up, then given the same bursts:

- the ZEISS burst: N orders, one event each;
- N orders x 3 events (created, amended, cancelled), the orders interleaved;
- the skew case: the same, but one order (one key) holds 30 % of all events.

For each: wall time (first publish to the last outbox write, server time), events/s, and how many outbox
writes came out of their order's sequence (read back from the buckets' streams: an event older than one
already written for the order). Figures only: the machine is shared and noisy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from ...broker import EmbeddedNats, connect
from ...manifest import LoadedManifest
from ..orders import generate_order_events
from . import implementations as impls
from .comparison import cpu_seconds
from .harness import BurstResult, Harness
from .options import BenchOptions
from .report import BenchReport, Section

PARTITIONS = 32
ORDERED = impls.Variant("ordered", "per-function", {"order_by": "orderGuid"})


@dataclass(frozen=True)
class Case:
    name: str
    events_per_order: int
    hot_share: float = 0.0


CASES = (
    Case("burst, 1 event per order", 1),
    Case("3 events per order", 3),
    Case("skew: 3 events per order, one order 30 % of the events", 3, 0.3),
)


@dataclass
class CaseResult:
    events: int
    burst: BurstResult
    out_of_order: int
    cpu_functions_s: float  # CPU seconds of the function processes over the burst
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
    n = options.orders or (1_000 if quick else 10_000)  # quick: the hot key alone is ~4,300 events in a row
    folder = out_dir / "variants"
    implementations = {
        "unordered": (manifest, impls.ebbtide(manifest, impls.DEFAULT, folder, "unordered", "ebbtide default, unordered")),
    }
    ordered = ordered_variant(manifest)
    implementations["ordered"] = (
        ordered,
        impls.ebbtide(ordered, ORDERED, folder, "ordered", f"ebbtide ordered by orderGuid, {PARTITIONS} partitions"),
    )
    workloads = [
        generate_order_events(n, case.events_per_order, seed=31 + i, first_id=1 + i * 1_000_000, hot_share=case.hot_share)
        for i, case in enumerate(CASES)
    ]
    warm = generate_order_events(max(200, n // 10), 3, seed=30, first_id=50_000_000)
    results: dict[str, list[CaseResult]] = {}
    data_dir = out_dir / "nats-ordering"
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench-ordering")
        try:
            for key, (loaded, impl) in implementations.items():
                harness = Harness(nc, impls.write_variant(loaded, ORDERED if key == "ordered" else impls.DEFAULT, folder))
                print(f"ordering: {impl.label}", flush=True)
                await harness.reset()
                async with impl.start(server.url, nc) as pids:
                    await harness.burst(warm, tag=f"{key}-warm-up")
                    results[key] = []
                    assert server.pid is not None
                    for case, events in zip(CASES, workloads):
                        await harness.settle()
                        before = await harness.last_seqs()
                        cpu_before = [cpu_seconds(pid) for pid in (server.pid, *pids)]
                        run = await harness.burst(events, tag=key, timeout=600.0)
                        cpu = [b - a for a, b in zip(cpu_before, (cpu_seconds(pid) for pid in (server.pid, *pids)))]
                        late = await out_of_order(harness, before)
                        result = CaseResult(len(events), run, late, sum(cpu[1:]), cpu[0])
                        results[key].append(result)
                        print(
                            f"  {case.name}: {len(events):,} events in {run.wall_s:.3f} s, "
                            f"{result.events_per_s:,.0f} events/s, writes {run.writes}, out of order {late}, "
                            f"CPU s functions {result.cpu_functions_s:.2f} / nats-server {result.cpu_server_s:.2f}",
                            flush=True,
                        )
        finally:
            await nc.close()
    _report(report, results, n)


def _report(report: BenchReport, results: dict[str, list[CaseResult]], n: int) -> None:
    lines = [
        "| case | events | unordered: wall s / events/s / out of order | ordered: wall s / events/s / out of order "
        "| ordered / unordered wall time | CPU s, unordered → ordered: functions / nats-server |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    details = []
    for i, case in enumerate(CASES):
        plain, keyed = results["unordered"][i], results["ordered"][i]
        ratio = keyed.burst.wall_s / plain.burst.wall_s if plain.burst.wall_s > 0 else float("nan")
        lines.append(
            f"| {case.name} | {plain.events:,} | {plain.burst.wall_s:.3f} / {plain.events_per_s:,.0f} / {plain.out_of_order} "
            f"| {keyed.burst.wall_s:.3f} / {keyed.events_per_s:,.0f} / {keyed.out_of_order} | {ratio:.1f}× "
            f"| {plain.cpu_functions_s:.1f} → {keyed.cpu_functions_s:.1f} / {plain.cpu_server_s:.1f} → {keyed.cpu_server_s:.1f} |"
        )
        details.append(
            {
                "case": case.name,
                "events": plain.events,
                **{
                    key: {
                        "wall_s": r.burst.wall_s,
                        "events_per_s": r.events_per_s,
                        "writes": r.burst.writes,
                        "out_of_order": r.out_of_order,
                        "cpu_s": {"functions": r.cpu_functions_s, "nats_server": r.cpu_server_s},
                    }
                    for key, r in (("unordered", plain), ("ordered", keyed))
                },
            }
        )
        how = f"{plain.events:,} events of {n:,} orders published at once; first publish to the last outbox write"
        report.add(f"ordering, {case.name}: unordered wall time", plain.burst.wall_s, "s", how)
        report.add(f"ordering, {case.name}: ordered wall time", keyed.burst.wall_s, "s", how)
    lines += [
        "",
        f"Both in per-function process mode on one embedded nats-server, one warm-up burst each (excluded); ordered: "
        f'every function `order_by = "orderGuid"`, ORDERS in {PARTITIONS} partitions, one consumer per partition '
        "delivering one message at a time. Out of order: outbox writes of an event older than one already written "
        "for the same order (read back from the buckets' streams). CPU: user + system seconds over the burst "
        "(/proc/PID/stat) of the function processes and of nats-server (the publisher's load is in the server's).",
    ]
    report.sections.append(Section(f"Per-key ordering: its cost ({n:,} orders)", "\n".join(lines)))
    report.details["ordering"] = {"orders": n, "partitions": PARTITIONS, "cases": details}


__all__ = ["CASES", "bench_ordering"]
