"""Sustained load: fixed publish rates for a while, latency per window, backlog and RSS over time.

At each rate the publisher sends on a fixed schedule (orders due by now, every 2 ms), never waiting for
confirmations (they are counted as they arrive). Every 0.5 s the benchmark samples the backlog (pending +
unacked over every consumer) and the RSS of the implementation's processes. After the last publish it waits
for the pipeline to drain, then reads every outbox write with its server timestamp: an order's latency is
that minus its publish time, grouped by the window its publish fell in.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec

from ...broker.publisher import PublishBatch
from ...status_reports import STATUS_SUBJECT_PREFIX, decode_status
from ...timeseries import TimeSeries
from ..charts import write_line_chart, write_scaling_chart
from ..orders import INGRESS_SUBJECT, encode_order, generate_orders
from .harness import Harness
from .implementations import Implementation
from .options import BenchOptions
from .report import BenchReport, Section
from .stats import parse_rate, trend, windows

SAMPLE_EVERY_S = 0.5
RSS_TOLERANCE_MIB = 10.0  # more than this between the first and last sample counts as memory growth


def rss_mib(pids: list[int]) -> float:
    """Resident memory of these processes (Linux /proc), MiB; a process that is gone counts zero."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                total += int(statm.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total * _PAGE / 2**20


_PAGE = 4096
try:
    import os

    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):
    pass


async def bench_sustained(
    harness: Harness,
    url: str,
    impl: Implementation,
    pids: list[int],
    capacity: float,
    report: BenchReport,
    quick: bool,
    out_dir: Path,
    options: BenchOptions,
) -> None:
    duration = options.sustained_s or (5.0 if quick else 60.0)
    width = 5.0 if duration >= 25 else duration / 5  # five windows at least
    rates = []
    for text in options.rates or ["50%", "90%"]:
        value, percent = parse_rate(text)
        rates.append((text, capacity * value / 100 if percent else value))
    details: dict[str, Any] = {
        "implementation": impl.label,
        "capacity_orders_per_s": capacity,
        "duration_s": duration,
        "window_s": width,
        "rates": {},
    }
    lines = [
        "| rate | published | stored | latency p50 / p99 first window → last (ms) | worst window p99 | "
        "backlog first → last | RSS first → last (MiB) | grows? |",
        "|---|---:|---:|---|---:|---|---|---|",
    ]
    for index, (label, rate) in enumerate(rates):
        print(
            f"sustained: {impl.label} at {rate:,.0f} orders/s ({label}) for {duration:g} s (+ {width:g} s not measured)",
            flush=True,
        )
        result = await _one_rate(
            harness,
            pids,
            rate,
            duration,
            width,
            first_id=20_000_000 + index * 10_000_000,
            tag=f"{index}",
            out_dir=out_dir,
            name=label.replace("%", "pct"),
        )
        details["rates"][label] = result
        w = result["windows"]
        lat, back, mem = result["trend"]["p99_ms"], result["trend"]["backlog"], result["trend"]["rss_mib"]
        grows = [name for name, t in (("latency", lat), ("backlog", back), ("memory", mem)) if t["grows"]]
        lines.append(
            f"| {rate:,.0f}/s ({label}) | {result['published']:,} | {result['stored']:,} | "
            f"{w[0]['p50_ms']:.1f} / {w[0]['p99_ms']:.1f} → {w[-1]['p50_ms']:.1f} / {w[-1]['p99_ms']:.1f} | "
            f"{max(x['p99_ms'] for x in w if not math.isnan(x['p99_ms'])):.1f} | "
            f"{back['first']:,.0f} → {back['last']:,.0f} | {mem['first']:.0f} → {mem['last']:.0f} | "
            f"{', '.join(grows) or 'no'} |"
        )
        how = f"{duration:g} s at {rate:,.0f} orders/s ({label} of {capacity:,.0f}, the burst's median)"
        report.add(f"sustained {label}: latency p99, last window", w[-1]["p99_ms"], "ms", how)
        report.add(f"sustained {label}: backlog slope", back["slope_per_min"], "msgs/min", how, "no growth")
        report.add(f"sustained {label}: RSS slope", mem["slope_per_min"], "MiB/min", how, "no growth")
        report.files += result["charts"]
    lines += [
        "",
        f"{impl.label} ({impl.how}); capacity {capacity:,.0f} orders/s from the burst in this run. "
        f"Windows of {width:g} s by publish time (the load goes on for one more window, not measured, so "
        f"that the end of publishing does not distort the last one); backlog = pending + unacked over every consumer, sampled every "
        f"{SAMPLE_EVERY_S:g} s; RSS = the implementation's processes. 'Grows' means the last value exceeds the "
        f"first by more than a tolerance (latency: max(5 ms, first); backlog: one second of orders; RSS: "
        f"{RSS_TOLERANCE_MIB:g} MiB) with an upward least-squares slope.",
    ]
    report.sections.append(Section(f"Sustained load ({duration:g} s per rate)", "\n".join(lines)))
    report.details["sustained"] = details


async def _one_rate(
    harness: Harness,
    pids: list[int],
    rate: float,
    duration: float,
    width: float,
    first_id: int,
    tag: str,
    out_dir: Path,
    name: str,
) -> dict[str, Any]:
    template = generate_orders(1000, seed=11)
    before = await harness.last_seqs()
    published: dict[str, float] = {}
    samples: list[tuple[float, int, float]] = []  # (t, backlog, rss MiB)
    series = TimeSeries(start=time.time())

    async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
        series.add(decode_status(msg.data))

    status = await harness.nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=on_status)
    start = time.time()
    series.start = start
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            samples.append((time.time() - start, await harness.lag(), rss_mib(pids)))
            try:
                await asyncio.wait_for(stop_sampling.wait(), SAMPLE_EVERY_S)
            except TimeoutError:
                pass

    sampler = asyncio.create_task(sample())
    publishes = PublishBatch()  # confirmed at the end; each loop sends what it built
    sent = 0
    # The load goes on for one more window past the measured period: when publishing stops, the last orders
    # are handled differently (no batch fills up behind them), which is not what a steady load looks like.
    loaded_s = duration + width
    while (elapsed := time.time() - start) < loaded_s:
        due = min(int(rate * elapsed) + 1, math.ceil(rate * loaded_s))
        while sent < due:
            order = msgspec.structs.replace(template[sent % len(template)], order_id=first_id + sent)
            published[str(order.order_id)] = time.time()
            harness.publisher.add(publishes, INGRESS_SUBJECT, encode_order(order), f"sustained-{tag}-{sent}")
            sent += 1
        await harness.publisher.send(publishes)
        await asyncio.sleep(0.002)
    errors = sum(isinstance(r, Exception) for r in await harness.publisher.wait(publishes, timeout=10.0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # drain: every order stored (or dead-lettered)
        writes, dead = await harness.counts_since(before)
        if writes + dead >= sent:
            break
        await asyncio.sleep(0.05)
    await harness.settle(timeout=max(1.0, deadline - time.monotonic()))
    stop_sampling.set()
    await sampler
    await status.unsubscribe()
    written, _ = await harness.read_writes(before, {})  # values are checked by the burst
    measured = {key: t for key, t in published.items() if t - start < duration}
    wins = windows(measured, written, start, width, duration)
    mids = [w.start_s + width / 2 for w in wins]
    during = [s for s in samples if s[0] <= duration] or samples
    lat_first = wins[0].p99_ms if not math.isnan(wins[0].p99_ms) else 0.0
    charts = [
        str(
            write_line_chart(
                [
                    (
                        "latency per window (ms), by publish time",
                        {"p50": [(m, w.p50_ms) for m, w in zip(mids, wins)], "p99": [(m, w.p99_ms) for m, w in zip(mids, wins)]},
                    ),
                    ("backlog (messages, every consumer)", {"backlog": [(t, float(b)) for t, b, _ in samples]}),
                    ("RSS of the implementation's processes (MiB)", {"RSS": [(t, r) for t, _, r in samples]}),
                ],
                out_dir / f"sustained-{name}.svg",
                title=f"sustained load: {rate:,.0f} orders/s for {duration:g} s",
            )
        )
    ]
    if series.functions():  # ebbtide's status reports: backlog and instances per function
        charts.append(
            str(
                write_scaling_chart(
                    series.series(),
                    out_dir / f"sustained-{name}-scaling.svg",
                    title=f"sustained load: {rate:,.0f} orders/s, pools",
                )
            )
        )
    return {
        "rate": rate,
        "published": sent,
        "publish_errors": errors,
        "stored": len(written),
        "measured": len(measured),
        "measured_stored": sum(w.stored for w in wins),
        "windows": [asdict(w) for w in wins],
        "samples": [{"t": t, "backlog": b, "rss_mib": r} for t, b, r in samples],
        "trend": {
            "p99_ms": asdict(trend(mids, [w.p99_ms for w in wins], tolerance=max(5.0, lat_first))),
            "p50_ms": asdict(trend(mids, [w.p50_ms for w in wins], tolerance=5.0)),
            "backlog": asdict(trend([t for t, _, _ in during], [float(b) for _, b, _ in during], tolerance=rate)),
            "rss_mib": asdict(trend([t for t, _, _ in during], [r for _, _, r in during], tolerance=RSS_TOLERANCE_MIB)),
        },
        "charts": charts,
    }
