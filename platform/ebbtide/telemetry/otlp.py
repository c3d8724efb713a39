"""OTLP metric export: the families of /metrics, pushed every interval to <endpoint>/v1/metrics.

The host already keeps its counters and histograms (`metrics.collect`), so this maps one snapshot into the
OpenTelemetry SDK's data model and hands it to the SDK's OTLP/HTTP exporter: no second set of instruments
on the message path. Cumulative temporality, like Prometheus; counters lose their `_total` suffix (an
OTLP-to-Prometheus bridge adds it back), so the names match /metrics after the round trip.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as OtelHistogram
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .metrics import Family, Histogram

log = logging.getLogger("ebbtide.telemetry")

# The OpenTelemetry SDK's variable for the push interval, in milliseconds.
EXPORT_INTERVAL_ENV = "OTEL_METRIC_EXPORT_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
_SCOPE = InstrumentationScope("ebbtide")
_CUMULATIVE = AggregationTemporality.CUMULATIVE


def export_interval_s() -> float:
    try:
        return max(0.1, float(os.environ[EXPORT_INTERVAL_ENV]) / 1000)
    except (KeyError, ValueError):
        return DEFAULT_INTERVAL_S


def otlp_name(family: Family) -> str:
    return family.name.removesuffix("_total") if family.kind == "counter" else family.name


def to_metrics_data(families: list[Family], resource: Resource, start_ns: int, now_ns: int) -> MetricsData:
    metrics = []
    for family in families:
        unit = "s" if family.name.endswith("_seconds") else "By" if family.name.endswith("_bytes") else "1"
        if family.kind == "histogram":
            points = [
                _histogram_point(labels, value, start_ns, now_ns)
                for labels, value in family.samples
                if isinstance(value, Histogram)
            ]
            data: Sum | Gauge | OtelHistogram = OtelHistogram(points, _CUMULATIVE)
        else:
            numbers = [
                NumberDataPoint(labels, start_ns, now_ns, value)
                for labels, value in family.samples
                if not isinstance(value, Histogram)
            ]
            data = Sum(numbers, _CUMULATIVE, is_monotonic=True) if family.kind == "counter" else Gauge(numbers)
        metrics.append(Metric(otlp_name(family), family.help, unit, data))
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(_SCOPE, metrics, "")], "")])


def _histogram_point(labels: dict[str, str], histogram: Histogram, start_ns: int, now_ns: int) -> HistogramDataPoint:
    empty = histogram.count == 0
    return HistogramDataPoint(
        labels,
        start_ns,
        now_ns,
        histogram.count,
        histogram.sum,
        list(histogram.counts),
        list(histogram.bounds),
        min=0.0 if empty or math.isinf(histogram.min) else histogram.min,
        max=0.0 if empty or math.isinf(histogram.max) else histogram.max,
    )


class OtlpMetricsPusher:
    """Pushes `collect()` every `interval_s` (and once more on stop, so short runs are not lost).

    The exporter's HTTP call blocks, so it runs in a thread; a failed push is logged and the next one
    carries the same cumulative values, so nothing is lost but resolution.
    """

    def __init__(
        self, collect: Callable[[], list[Family]], exporter: MetricExporter, service: str, interval_s: float | None = None
    ) -> None:
        self._collect = collect
        self._exporter = exporter
        self._resource = Resource.create({"service.name": service})
        self._interval_s = interval_s if interval_s is not None else export_interval_s()
        self._start_ns = time.time_ns()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    @classmethod
    def to_endpoint(cls, collect: Callable[[], list[Family]], endpoint: str, service: str) -> OtlpMetricsPusher:
        from .tracing import otlp_exporter_module  # one clear error when the otlp extra is missing

        exporter = otlp_exporter_module("metric_exporter").OTLPMetricExporter(endpoint=f"{endpoint.rstrip('/')}/v1/metrics")
        return cls(collect, exporter, service)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="otlp-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self.push()
        await asyncio.to_thread(self._exporter.shutdown)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.push()

    async def push(self) -> None:
        data = to_metrics_data(self._collect(), self._resource, self._start_ns, time.time_ns())
        try:
            result = await asyncio.to_thread(self._exporter.export, data)
        except Exception as exc:  # an exporter bug must not take the host down
            result, detail = None, repr(exc)
        else:
            detail = str(result)
        if result is None or result.name != "SUCCESS":
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:  # rate-limited: the collector may be down for long
                log.warning("OTLP metric export failed (%s; %d failures so far)", detail, self._failures)
