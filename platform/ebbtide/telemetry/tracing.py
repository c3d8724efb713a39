"""Tracing: one trace per order across every hop, W3C trace context in NATS message headers.

A function's message becomes a CONSUMER span `process <subject>` (child of the publisher's context when
the message carries `traceparent`, else the root of a new trace), and each of its effects a PRODUCER span
`send <subject>` whose context travels in the effect's headers to the next function. Span names and
attributes follow the OpenTelemetry messaging conventions (messaging.system = nats).

Off by default and then free: the pool holds no tracer and the executor gets no trace (`None`). On, a
`MessageTracer` starts one trace object per message, which the executor tells what became of it (effects
sent, retried, dead-lettered, settled): `SampledTrace` records spans, `UnsampledTrace` records nothing and
only passes the decision on (its context is injected once per message, not once per effect).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import TracingError

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (tracer_provider)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"


def otlp_endpoint(configured: str) -> str:
    """Where traces and metrics go: the manifest's [telemetry] otlp_endpoint, else the standard variable."""
    return configured or os.environ.get(OTLP_ENDPOINT_ENV, "")


def otlp_exporter_module(name: str) -> ModuleType:
    """opentelemetry.exporter.otlp.proto.http.<name>, or a clear error when the otlp extra is missing."""
    try:
        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{name}")
    except ImportError:
        raise TracingError(
            "an OTLP endpoint is configured but the OTLP exporter is missing: pip install 'ebbtide[otlp]'"
        ) from None


def tracer_provider(sample_ratio: float, endpoint: str, service: str) -> TracerProvider | None:
    """The provider for a host process, or None when tracing is off (ratio 0 or no endpoint).

    Parent-based sampling: an order whose publisher sampled it is traced in every hop.
    """
    if sample_ratio <= 0 or not endpoint:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter = otlp_exporter_module("trace_exporter").OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), sampler=ParentBased(TraceIdRatioBased(sample_ratio))
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_of(provider: TracerProvider | None) -> Tracer | None:
    return provider.get_tracer("ebbtide") if provider is not None else None
