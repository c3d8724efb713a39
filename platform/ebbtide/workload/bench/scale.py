"""Scale behaviour: activation from zero, time to max instances, drain to zero, idle CPU and RSS.

Every function runs in this process (the `single` mode) so the benchmark can watch the pools directly.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import time
from pathlib import Path

import msgspec

from ...broker import ConfirmedPublisher, EmbeddedNats, connect, provision, publish_all
from ...host import Host
from ...manifest import LoadedManifest
from ...status_reports import STATUS_SUBJECT_PREFIX, decode_status
from ...timeseries import TimeSeries
from ..charts import write_scaling_chart
from ..orders import INGRESS_SUBJECT, encode_order, generate_orders
from .micro import rss_kib
from .report import BenchReport
from .stats import percentile as _pct

# -- scale: activation, burst, drain, idle CPU --------------------------------------------------------------


def _with_cooldown(manifest: LoadedManifest, cooldown_s: float) -> LoadedManifest:
    functions = {
        name: msgspec.structs.replace(fn, scale=msgspec.structs.replace(fn.scale, cooldown_s=cooldown_s))
        for name, fn in manifest.spec.functions.items()
    }
    return LoadedManifest(msgspec.structs.replace(manifest.spec, functions=functions), manifest.path)


async def bench_scale(manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path) -> None:
    data_dir = out_dir / "nats"
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench")
        try:
            # Each try waits for every pool to drop its last instance (~1 s: the last long-poll fetch): few in --quick.
            await _activation(manifest, server.url, nc, report, tries=8 if quick else 200, idle_s=1.0 if quick else 3.0)
            await _burst(manifest, server.url, nc, report, orders=2_000 if quick else 10_000, out_dir=out_dir)
        finally:
            await nc.drain()


async def _idle(host: Host) -> None:
    while not all(
        p.live_instances == 0 and p.in_flight == 0 and c.lag == 0 for p, c in zip(host.pools.values(), host.controllers.values())
    ):
        await asyncio.sleep(0.005)


async def _activation(manifest: LoadedManifest, url: str, nc, report: BenchReport, tries: int, idle_s: float) -> None:  # type: ignore[no-untyped-def]
    quick_drain = _with_cooldown(manifest, 0.05)
    stored = asyncio.Queue[float]()

    async def on_write(_msg) -> None:  # type: ignore[no-untyped-def]
        stored.put_nowait(time.perf_counter())

    subscription = await nc.subscribe("$KV.*.>", cb=on_write)  # the outbox writes (the only KV buckets)
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    orders = generate_orders(tries, seed=99, first_id=1_000_000)
    latencies = []
    await provision(nc.jetstream(), quick_drain)  # hosts wait for their consumers; the admin step creates them
    async with Host(quick_drain, url) as host:
        for order in orders:
            await _idle(host)
            await asyncio.sleep(0.06)  # past the cooldown: every controller waits on its bell
            started = time.perf_counter()
            await nc.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
            latencies.append((await asyncio.wait_for(stored.get(), 10) - started) * 1000)
        idle_cpu = await _idle_cpu(host, seconds=idle_s)
        idle_rss = rss_kib() / 1024
    await subscription.unsubscribe()
    how = f"one order into an idle pipeline (all pools at 0 instances) until its outbox write; {tries} tries"
    report.add("activation from zero, p50", _pct(latencies, 0.5), "ms", how, "≤ 20 ms")
    report.add("activation from zero, p99", _pct(latencies, 0.99), "ms", how)
    report.add("host CPU while idle at zero", idle_cpu, "%", f"process CPU time / wall time over {idle_s:g} s, all pools at zero")
    report.add(
        "host RSS at zero instances",
        idle_rss,
        "MiB",
        "the whole process (Python, nats-py, wasmtime, three pools, this benchmark) with every pool at zero",
    )


async def _idle_cpu(host: Host, seconds: float) -> float:
    await _idle(host)
    await asyncio.sleep(0.2)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started, cpu = time.monotonic(), usage.ru_utime + usage.ru_stime
    await asyncio.sleep(seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime - cpu) / (time.monotonic() - started) * 100


async def _burst(manifest: LoadedManifest, url: str, nc, report: BenchReport, orders: int, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    series = TimeSeries(start=time.time())
    await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=_feed(series))
    payloads = [(encode_order(o), o.order_guid) for o in generate_orders(orders, seed=5, first_id=2_000_000)]
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    await provision(nc.jetstream(), manifest)
    async with Host(manifest, url) as host:
        await _idle(host)
        reached: dict[str, float] = {}
        peak: dict[str, int] = {name: 0 for name in host.pools}
        backlog_gone: dict[str, float] = {}
        at_zero: dict[str, float] = {}
        started = time.perf_counter()
        series.start = time.time()
        publishing = asyncio.create_task(publish_all(publisher, INGRESS_SUBJECT, payloads))
        deadline = started + 120
        while len(at_zero) < len(host.pools) and time.perf_counter() < deadline:
            now = time.perf_counter()
            for name, pool in host.pools.items():
                controller = host.controllers[name]
                peak[name] = max(peak[name], pool.instances)
                if name not in reached and pool.instances >= pool.function.scale.max:
                    reached[name] = now - started
                if peak[name] > 0 and name not in backlog_gone and controller.lag == 0 and pool.in_flight == 0:
                    backlog_gone[name] = now
                if name in backlog_gone and name not in at_zero and pool.live_instances == 0:
                    at_zero[name] = now - backlog_gone[name]
            await asyncio.sleep(0.001)
        await publishing
    for name in host.pools:
        cooldown = manifest.function(name).scale.cooldown_s
        scale = manifest.function(name).scale
        report.add(
            f"{name}: peak instances",
            peak[name],
            "",
            f"of scale.max {scale.max}; target backlog {scale.target_backlog} per instance",
        )
        if name in reached:
            report.add(
                f"{name}: time to max instances",
                reached[name] * 1000,
                "ms",
                f"from the first of {orders:,} publishes until the pool runs scale.max instances",
                "within one control interval of the backlog",
            )
        if name in at_zero:
            report.add(
                f"{name}: empty backlog to zero instances",
                at_zero[name],
                "s",
                f"lag 0 and nothing in flight until no instance is left (cooldown {cooldown:g} s + last fetch)",
            )
    chart = write_scaling_chart(series.series(), out_dir / "burst.svg", title=f"ebbtide bench: burst of {orders:,} orders")
    report.files.append(str(chart))


def _feed(series: TimeSeries):  # type: ignore[no-untyped-def]
    async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
        series.add(decode_status(msg.data))

    return on_status
