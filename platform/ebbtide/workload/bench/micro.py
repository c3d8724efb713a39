"""Host overhead and memory: one guest call, one instance start, RSS per instance (no NATS involved)."""

from __future__ import annotations

import gc
import statistics
import time

from ...manifest import LoadedManifest
from ...runtime import GuestInstance, GuestLimits, LoadedModule, WasmEngine, decode_effects
from ...telemetry import resident_memory_bytes
from ..orders import INGRESS_SUBJECT, encode_order, generate_orders
from .report import BenchReport


def rss_kib() -> float:
    return (resident_memory_bytes() or 0) / 1024


# -- host: per-message cost and instance start ----------------------------------------------------------


def _distributor(manifest: LoadedManifest) -> tuple[WasmEngine, LoadedModule, GuestLimits, bytes]:
    """What it takes to start distributor instances outside a pool."""
    engine = WasmEngine()
    fn = manifest.function("distributor")
    return (
        engine,
        engine.load(manifest.module_path(fn.module)),
        GuestLimits.of(fn.limits),
        manifest.config_json("distributor"),
    )


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
    report.add(
        "guest call, distributor, one order",
        min(runs),
        "µs",
        f"{len(payload)}-byte order: copy in, call, read output, decode effects; min of 5 x {calls:,} calls "
        f"(median {statistics.median(runs):.2f})",
        "≤ 10 µs",
    )
    _bench_batches(instance, report, quick)
    starts = 2_000 if quick else 20_000
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(starts):
            GuestInstance(engine, module, limits, config)
        runs.append((time.perf_counter() - started) / starts * 1e6)
    report.add(
        "instance start",
        min(runs),
        "µs",
        f"new Store, instantiate, init with config; min of 5 x {starts:,} (median {statistics.median(runs):.1f})",
        "≤ 50 µs",
    )


def _bench_batches(instance: GuestInstance, report: BenchReport, quick: bool) -> None:
    """The guest call amortized over a batch (ABI v2): 64 different orders per `handle_batch` call."""
    subject = INGRESS_SUBJECT.encode()
    batch = [(subject, encode_order(order)) for order in generate_orders(64, seed=2)]
    passes = 300 if quick else 3_000

    def one_pass() -> None:
        for outcome in instance.handle_batch(batch).replies:
            decode_effects(outcome[1])  # type: ignore[index]  (every order is valid: a (status, output) pair)

    one_pass()  # warm-up, excluded
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(passes):
            one_pass()
        runs.append((time.perf_counter() - started) / (passes * len(batch)) * 1e6)
    report.add(
        "guest call per message, distributor, batches of 64",
        min(runs),
        "µs",
        f"as the one-order call, 64 orders per call (ABI v2 handle_batch); min of 5 x {passes:,} batches "
        f"(median {statistics.median(runs):.2f})",
        "≤ 2 µs",
    )


# -- memory ---------------------------------------------------------------------------------------------


def bench_memory(manifest: LoadedManifest, report: BenchReport, quick: bool) -> None:
    engine, module, limits, config = _distributor(manifest)
    count = 200 if quick else 1000
    GuestInstance(engine, module, limits, config)  # first instance reads the module layout: excluded
    gc.collect()
    before = rss_kib()
    instances = [GuestInstance(engine, module, limits, config) for _ in range(count)]
    idle = rss_kib()
    payload = encode_order(generate_orders(1, seed=1)[0])
    for instance in instances:
        instance.handle(INGRESS_SUBJECT.encode(), payload)
    busy = rss_kib()
    report.add(
        "added RSS per idle instance",
        (idle - before) / count,
        "KiB",
        f"RSS delta for {count} live instances of the distributor (Store + instance + buffers)",
        "≤ 64 KiB",
    )
    report.add(
        "added RSS per busy instance",
        (busy - before) / count,
        "KiB",
        f"the same {count} after each handled one order (buffers touched)",
    )
    del instances
    gc.collect()
