"""`ebbtide bench`: measured figures, printed as a Markdown table and saved as JSON (+ a scaling chart).

Scenarios (pick with --scenario; --quick shrinks every size so the whole run takes well under a minute):
- scale:  activation latency from zero, the burst's time to max instances and back to zero, idle CPU
- memory: RSS of the host at zero instances, added RSS per idle and per busy Wasm instance
- host:   cost of one guest call (input copy, call, output read, effect decode) and of an instance start
- tracing: the same burst with tracing off, sampling 1 % and 100 % (spans built and batched, then dropped)

The scale scenario runs every function in this process (the `single` process mode) so it can watch the
pools directly; all figures come from one run on one machine, with warm-up excluded where stated.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from .broker import ConfirmedPublisher, EmbeddedNats, connect, kv_stream_name, publish_all
from .build import build_modules
from .host import Host
from .manifest import LoadedManifest
from .orders import INGRESS_SUBJECT, encode_order, generate_orders
from .pool import MIB
from .runtime import GuestInstance, GuestLimits, LoadedModule, WasmEngine, decode_effects
from .state import stream_state
from .status import STATUS_SUBJECT_PREFIX, decode_status
from .telemetry import resident_memory_bytes
from .timeseries import TimeSeries, write_scaling_chart

SCENARIOS = ("host", "memory", "scale", "tracing")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    how: str  # how it was measured
    goal: str = ""


@dataclass
class BenchReport:
    started: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, how: str, goal: str = "") -> None:
        self.figures.append(Figure(name, value, unit, how, goal))
        print(f"  {name}: {value:,.3f} {unit}", flush=True)

    def markdown(self) -> str:
        lines = ["| figure | value | goal | how it was measured |", "|---|---:|---|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.value:,.2f} {f.unit} | {f.goal} | {f.how} |")
        return "\n".join(lines)


def _rss_kib() -> float:
    return (resident_memory_bytes() or 0) / 1024


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- host: per-message cost and instance start ----------------------------------------------------------

def _distributor(manifest: LoadedManifest) -> tuple[WasmEngine, LoadedModule, GuestLimits, bytes]:
    """What it takes to start distributor instances outside a pool."""
    engine = WasmEngine()
    fn = manifest.function("distributor")
    return (engine, engine.load(manifest.module_path(fn.module)), GuestLimits(fn.limits.memory_mib * MIB, fn.limits.fuel),
            manifest.config_json("distributor"))


def bench_host(manifest: LoadedManifest, report: BenchReport, quick: bool) -> None:
    engine, module, limits, config = _distributor(manifest)
    payload = encode_order(generate_orders(1, seed=1)[0])
    instance = GuestInstance(engine, module, limits, config)
    calls = 20_000 if quick else 200_000
    subject = INGRESS_SUBJECT.encode()
    for _ in range(1000):  # warm-up, excluded
        decode_effects(instance.handle(subject, payload)[1])
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            decode_effects(instance.handle(subject, payload)[1])
        runs.append((time.perf_counter() - started) / calls * 1e6)
    report.add("guest call, distributor, one order", min(runs), "µs",
               f"{len(payload)}-byte order: copy in, call, read output, decode effects; min of 5 x {calls:,} calls "
               f"(median {statistics.median(runs):.2f})", "≤ 10 µs")
    starts = 2_000 if quick else 20_000
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(starts):
            GuestInstance(engine, module, limits, config)
        runs.append((time.perf_counter() - started) / starts * 1e6)
    report.add("instance start", min(runs), "µs",
               f"new Store, instantiate, init with config; min of 5 x {starts:,} (median {statistics.median(runs):.1f})",
               "≤ 50 µs")


# -- memory ---------------------------------------------------------------------------------------------

def bench_memory(manifest: LoadedManifest, report: BenchReport, quick: bool) -> None:
    engine, module, limits, config = _distributor(manifest)
    count = 200 if quick else 1000
    GuestInstance(engine, module, limits, config)  # first instance reads the module layout: excluded
    gc.collect()
    before = _rss_kib()
    instances = [GuestInstance(engine, module, limits, config) for _ in range(count)]
    idle = _rss_kib()
    payload = encode_order(generate_orders(1, seed=1)[0])
    for instance in instances:
        instance.handle(INGRESS_SUBJECT.encode(), payload)
    busy = _rss_kib()
    report.add("added RSS per idle instance", (idle - before) / count, "KiB",
               f"RSS delta for {count} live instances of the distributor (Store + instance + buffers)", "≤ 64 KiB")
    report.add("added RSS per busy instance", (busy - before) / count, "KiB",
               f"the same {count} after each handled one order (buffers touched)")
    del instances
    gc.collect()


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
            await _activation(manifest, server.url, nc, report, tries=20 if quick else 200)
            await _burst(manifest, server.url, nc, report, orders=2_000 if quick else 10_000, out_dir=out_dir)
        finally:
            await nc.drain()


async def _idle(host: Host) -> None:
    while not all(p.live_instances == 0 and p.in_flight == 0 and c.lag == 0 for p, c in
                  zip(host.pools.values(), host.controllers.values())):
        await asyncio.sleep(0.005)


async def _activation(manifest: LoadedManifest, url: str, nc, report: BenchReport, tries: int) -> None:  # type: ignore[no-untyped-def]
    quick_drain = _with_cooldown(manifest, 0.05)
    stored = asyncio.Queue[float]()

    async def on_write(_msg) -> None:  # type: ignore[no-untyped-def]
        stored.put_nowait(time.perf_counter())

    subscription = await nc.subscribe("$KV.*.>", cb=on_write)  # the outbox writes (the only KV buckets)
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    orders = generate_orders(tries, seed=99, first_id=1_000_000)
    latencies = []
    async with Host(quick_drain, url) as host:
        for order in orders:
            await _idle(host)
            await asyncio.sleep(0.06)  # past the cooldown: every controller waits on its bell
            started = time.perf_counter()
            await nc.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
            latencies.append((await asyncio.wait_for(stored.get(), 10) - started) * 1000)
        idle_cpu = await _idle_cpu(host, seconds=3.0)
        idle_rss = _rss_kib() / 1024
    await subscription.unsubscribe()
    how = f"one order into an idle pipeline (all pools at 0 instances) until its outbox write; {tries} tries"
    report.add("activation from zero, p50", _pct(latencies, 0.5), "ms", how, "≤ 20 ms")
    report.add("activation from zero, p99", _pct(latencies, 0.99), "ms", how)
    report.add("host CPU while idle at zero", idle_cpu, "%", "process CPU time / wall time over 3 s, all pools at zero")
    report.add("host RSS at zero instances", idle_rss, "MiB",
               "the whole process (Python, nats-py, wasmtime, three pools, this benchmark) with every pool at zero")


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
        report.add(f"{name}: peak instances", peak[name], "",
                   f"of scale.max {scale.max}; target backlog {scale.target_backlog} per instance")
        if name in reached:
            report.add(f"{name}: time to max instances", reached[name] * 1000, "ms",
                       f"from the first of {orders:,} publishes until the pool runs scale.max instances",
                       "within one control interval of the backlog")
        if name in at_zero:
            report.add(f"{name}: empty backlog to zero instances", at_zero[name], "s",
                       f"lag 0 and nothing in flight until no instance is left (cooldown {cooldown:g} s + last fetch)")
    chart = write_scaling_chart(series.series(), out_dir / "burst.svg", title=f"ebbtide bench: burst of {orders:,} orders")
    report.files.append(str(chart))


def _feed(series: TimeSeries):  # type: ignore[no-untyped-def]
    async def on_status(msg) -> None:  # type: ignore[no-untyped-def]
        series.add(decode_status(msg.data))
    return on_status


# -- tracing overhead -------------------------------------------------------------------------------------------

class _DroppingExporter(SpanExporter):
    """Spans are built, sampled and batched as with a real exporter, then dropped: measures the host's cost."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def bench_tracing(manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path) -> None:
    orders = 2_000 if quick else 10_000
    data_dir = out_dir / "nats-tracing"
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench")
        try:
            publisher = ConfirmedPublisher(nc)
            await publisher.start()
            results: dict[str, float] = {}
            for run, (label, ratio) in enumerate([("off", None), ("1 %", 0.01), ("100 %", 1.0), ("off again", None)]):
                provider = None
                if ratio is not None:
                    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
                    provider.add_span_processor(BatchSpanProcessor(_DroppingExporter()))
                batch = generate_orders(orders, seed=run, first_id=3_000_000 + run * orders)
                payloads = [(encode_order(o), o.order_guid) for o in batch]
                async with Host(manifest, server.url, tracer_provider=provider):
                    before = await _stored(nc, manifest)
                    started = time.time()
                    await publish_all(publisher, INGRESS_SUBJECT, payloads)
                    while await _stored(nc, manifest) < before + orders:
                        await asyncio.sleep(0.005)
                    results[label] = orders / (time.time() - started)
                if provider is not None:
                    provider.shutdown()
        finally:
            await nc.drain()
    baseline = (results["off"] + results["off again"]) / 2
    how = f"{orders:,}-order burst, all functions in one process, pools from zero; mean of the two 'off' runs as baseline"
    report.add("throughput, tracing off", baseline, "orders/s", how)
    for label in ("1 %", "100 %"):
        report.add(f"throughput, tracing {label} / off", results[label] / baseline * 100, "%", how)


async def _stored(nc, manifest: LoadedManifest) -> int:  # type: ignore[no-untyped-def]
    """Entries in every KV bucket of the manifest (the outboxes)."""
    return sum([(await stream_state(nc, kv_stream_name(bucket))).messages for bucket in manifest.spec.kv])


# -- entry point ----------------------------------------------------------------------------------------------

async def run_bench(manifest: LoadedManifest, scenarios: list[str], quick: bool, out_dir: Path) -> BenchReport:
    build_modules(manifest)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BenchReport(started=time.strftime("%Y-%m-%d %H:%M:%S"), quick=quick)
    if "host" in scenarios:
        print("host: guest call and instance start", flush=True)
        bench_host(manifest, report, quick)
    if "memory" in scenarios:
        print("memory: RSS per instance", flush=True)
        bench_memory(manifest, report, quick)
    if "scale" in scenarios:
        print("scale: activation from zero, burst, drain, idle CPU", flush=True)
        await bench_scale(manifest, report, quick, out_dir)
    if "tracing" in scenarios:
        print("tracing: burst throughput with tracing off, 1 %, 100 %", flush=True)
        await bench_tracing(manifest, report, quick, out_dir)
    results = out_dir / "results.json"
    results.write_text(json.dumps(msgspec.to_builtins(report), indent=2))
    report.files.append(str(results))
    return report
