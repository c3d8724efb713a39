"""Scale behaviour: activation from zero, time to max instances, drain to zero, idle CPU and RSS.

Every function runs in this process (the `single` mode) so the benchmark can watch the pools directly.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ...broker import ConfirmedPublisher, EmbeddedNats, connect, provision, publish_all
from ...controller import IDLE_REPORT_S
from ...host import Host
from ...manifest import LoadedManifest
from ...status_reports import STATUS_SUBJECT_PREFIX, decode_status
from ...timeseries import TimeSeries
from ..charts import write_scaling_chart
from ..orders import INGRESS_SUBJECT, Order, encode_order, generate_orders
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


# Activation from zero, in the two moments a message meets an idle pool (README, Performance):
# - right after a burst: the pools have just drained back to zero (what follows a burst in production, and
#   where a controller that has just scaled to zero must already listen for the next message);
# - after a long idle: every pool has been at zero for longer than any of its controller's timers that start
#   with the drain (IDLE_REPORT_S), asleep on its bell.
# A p99 is printed only from at least P99_MIN_TRIES tries (fewer: the max, named as such).
P99_MIN_TRIES = 100
ACTIVATION_BURST = 100  # orders of the burst before each "right after a burst" try
LONG_IDLE_S = IDLE_REPORT_S + 1.0


@dataclass(frozen=True)
class ActivationPlan:
    after_burst: int  # tries right after a burst
    after_long_idle: int  # tries after LONG_IDLE_S at zero


QUICK_ACTIVATION = ActivationPlan(after_burst=10, after_long_idle=2)  # CI: the figures sane, not a p99
FULL_ACTIVATION = ActivationPlan(after_burst=200, after_long_idle=P99_MIN_TRIES)


async def bench_scale(manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path) -> None:
    data_dir = out_dir / "nats"
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench")
        try:
            plan = QUICK_ACTIVATION if quick else FULL_ACTIVATION
            await _activation(manifest, server.url, nc, report, plan, idle_s=1.0 if quick else 3.0)
            await _burst(manifest, server.url, nc, report, orders=2_000 if quick else 10_000, out_dir=out_dir)
        finally:
            await nc.drain()


async def _idle(host: Host) -> None:
    while not all(
        p.live_instances == 0 and p.in_flight == 0 and c.lag == 0 for p, c in zip(host.pools.values(), host.controllers.values())
    ):
        await asyncio.sleep(0.005)


class _OutboxWrites:
    """When each order reached its outbox (the receivers' KV writes, `$KV.<bucket>.<orderId>`)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._changed = asyncio.Event()

    async def on_write(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.at[msg.subject.rsplit(".", 1)[1]] = time.perf_counter()
        self._changed.set()

    async def until_stored(self, order_ids: list[int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()  # before looking: a write from now on sets it again
            if all(str(order_id) in self.at for order_id in order_ids):
                return
            await asyncio.wait_for(self._changed.wait(), max(deadline - time.monotonic(), 0.001))


async def _activation(manifest: LoadedManifest, url: str, nc, report: BenchReport, plan: ActivationPlan, idle_s: float) -> None:  # type: ignore[no-untyped-def]
    quick_drain = _with_cooldown(manifest, 0.05)  # back to zero in a moment: the tries are many
    writes = _OutboxWrites()
    subscription = await nc.subscribe("$KV.*.>", cb=writes.on_write)  # the outbox writes (the only KV buckets)
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    tries = generate_orders(plan.after_burst + plan.after_long_idle, seed=99, first_id=1_000_000)
    bursts = generate_orders(plan.after_burst * ACTIVATION_BURST, seed=98, first_id=3_000_000)
    after_burst: list[float] = []
    after_long_idle: list[float] = []

    async def activate(order: Order) -> float:
        """One order into the idle pipeline; ms until its outbox write."""
        started = time.perf_counter()
        await nc.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        await writes.until_stored([order.order_id])
        return (writes.at[str(order.order_id)] - started) * 1000

    await provision(nc.jetstream(), quick_drain)  # hosts wait for their consumers; the admin step creates them
    async with Host(quick_drain, url) as host:
        for n, order in enumerate(tries[: plan.after_burst]):
            burst = bursts[n * ACTIVATION_BURST : (n + 1) * ACTIVATION_BURST]
            await publish_all(publisher, INGRESS_SUBJECT, [(encode_order(o), o.order_guid) for o in burst])
            await writes.until_stored([o.order_id for o in burst])
            await _idle(host)  # every pool has drained back to zero: the try, at once
            after_burst.append(await activate(order))
        for order in tries[plan.after_burst :]:
            await _idle(host)
            await asyncio.sleep(LONG_IDLE_S)
            after_long_idle.append(await activate(order))
        idle_cpu = await _idle_cpu(host, seconds=idle_s)
        idle_rss = rss_kib() / 1024
    await subscription.unsubscribe()
    what = "one order into an idle pipeline (all pools at 0 instances) until its outbox write"
    _latency_rows(
        report,
        "activation from zero right after a burst",
        after_burst,
        f"{what}, at once when the pools drained back to zero after a burst of {ACTIVATION_BURST} orders",
        "≤ 20 ms",
    )
    _latency_rows(
        report,
        "activation from zero after a long idle",
        after_long_idle,
        f"{what}, after {LONG_IDLE_S:g} s at zero (longer than the controllers' idle timers)",
        "≤ 20 ms",
    )
    report.details["activation"] = {"after_burst_ms": after_burst, "after_long_idle_ms": after_long_idle}
    report.add("host CPU while idle at zero", idle_cpu, "%", f"process CPU time / wall time over {idle_s:g} s, all pools at zero")
    report.add(
        "host RSS at zero instances",
        idle_rss,
        "MiB",
        "the whole process (Python, nats-py, wasmtime, three pools, this benchmark) with every pool at zero",
    )


def _latency_rows(report: BenchReport, name: str, latencies: list[float], how: str, goal: str) -> None:
    """p50 (against the goal), then p99 when there are enough tries for one, and the max (the worst try)."""
    tries = f"; {len(latencies)} tries"
    report.add(f"{name}, p50", _pct(latencies, 0.5), "ms", how + tries, f"{goal} p50")
    if len(latencies) >= P99_MIN_TRIES:
        report.add(f"{name}, p99", _pct(latencies, 0.99), "ms", how + tries)
    report.add(
        f"{name}, max",
        max(latencies),
        "ms",
        how + tries + ("" if len(latencies) >= P99_MIN_TRIES else f" (a p99 needs {P99_MIN_TRIES})"),
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
