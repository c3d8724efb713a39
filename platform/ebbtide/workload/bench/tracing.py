"""Tracing overhead: the same burst with tracing off, sampling 1 % and 100 % (spans built, then dropped)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from ...broker import ConfirmedPublisher, EmbeddedNats, connect, provision, publish_all
from ...host import Host
from ...manifest import LoadedManifest
from ..orders import INGRESS_SUBJECT, encode_order, generate_orders
from .harness import stored_orders
from .report import BenchReport

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
            await provision(nc.jetstream(), manifest)  # hosts wait for their consumers; the admin step creates them
            results: dict[str, float] = {}
            for run, (label, ratio) in enumerate([("off", None), ("1 %", 0.01), ("100 %", 1.0), ("off again", None)]):
                provider = None
                if ratio is not None:
                    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
                    provider.add_span_processor(BatchSpanProcessor(_DroppingExporter()))
                batch = generate_orders(orders, seed=run, first_id=3_000_000 + run * orders)
                payloads = [(encode_order(o), o.order_guid) for o in batch]
                async with Host(manifest, server.url, tracer_provider=provider):
                    before = await stored_orders(nc, manifest)
                    started = time.time()
                    await publish_all(publisher, INGRESS_SUBJECT, payloads)
                    while await stored_orders(nc, manifest) < before + orders:
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
