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

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..errors import TracingError
from ..broker.delivery import Incoming
from ..broker.headers import H_MSG_ID

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"

_propagator = TraceContextTextMapPropagator()


def otlp_endpoint(configured: str) -> str:
    """Where traces and metrics go: the manifest's [telemetry] otlp_endpoint, else the standard variable."""
    return configured or os.environ.get(OTLP_ENDPOINT_ENV, "")


def otlp_exporter_module(name: str) -> ModuleType:
    """opentelemetry.exporter.otlp.proto.http.<name>, or a clear error when the otlp extra is missing."""
    try:
        return importlib.import_module(f"opentelemetry.exporter.otlp.proto.http.{name}")
    except ImportError:
        raise TracingError("an OTLP endpoint is configured but the OTLP exporter is missing: pip install 'ebbtide[otlp]'") from None


def tracer_provider(sample_ratio: float, endpoint: str, service: str) -> TracerProvider | None:
    """The provider for a host process, or None when tracing is off (ratio 0 or no endpoint).

    Parent-based sampling: an order whose publisher sampled it is traced in every hop.
    """
    if sample_ratio <= 0 or not endpoint:
        return None
    exporter = otlp_exporter_module("trace_exporter").OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": service}),
                              sampler=ParentBased(TraceIdRatioBased(sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_of(provider: TracerProvider | None) -> Tracer | None:
    return provider.get_tracer("ebbtide") if provider is not None else None


def extract(headers: dict[str, str] | None) -> Context | None:
    return _propagator.extract(headers) if headers else None


def inject(span: Span) -> dict[str, str]:
    """Headers that carry `span`'s context (traceparent, tracestate) to the next hop."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=set_span_in_context(span))
    return carrier


class SampledTrace:
    """A sampled message: its CONSUMER span, and a PRODUCER span per effect; all ended once settled."""

    __slots__ = ("_tracer", "span", "_sends")

    def __init__(self, tracer: Tracer, span: Span) -> None:
        self._tracer = tracer
        self.span = span
        self._sends: list[Span] = []

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def fault(self, kind: str, error: str) -> None:
        self.span.add_event("guest.fault", {"ebbtide.fault.kind": kind, "exception.message": error})

    def effect_headers(self, carried: dict[str, str], subject: str, msg_id: str) -> dict[str, str]:
        """`carried`, plus the context of a new `send <subject>` span (a child of the message's span)."""
        send = self._tracer.start_span(
            f"send {subject}", context=set_span_in_context(self.span), kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.operation.type": "send", "messaging.operation.name": "send",
                        "messaging.destination.name": subject, "messaging.message.id": msg_id},
        )
        self._sends.append(send)
        headers = inject(send)
        headers.update(carried)
        return headers

    def retried(self, error: str) -> None:
        """Nak'ed for redelivery: the span ends now, in error."""
        self.span.add_event("retry", {"ebbtide.error": error})
        self.span.set_status(StatusCode.ERROR, error)
        self.span.end()

    def dead_lettered(self, reason: str, error: str) -> None:
        self.span.add_event("dead-lettered", {"ebbtide.reason": reason, "ebbtide.error": error})
        self.span.set_status(StatusCode.ERROR, f"dead-lettered: {reason}")

    def settled(self, unconfirmed: str | None) -> None:
        """The server confirmed every publish (None), or not (why): end the spans."""
        for span in (self.span, *self._sends):
            if unconfirmed is not None:
                span.set_status(StatusCode.ERROR, f"effects not confirmed: {unconfirmed}")
            span.end()


class UnsampledTrace:
    """A message not sampled: no spans; its effects carry the decision on to the next hop."""

    __slots__ = ("span", "_headers")

    def __init__(self, span: Span) -> None:
        self.span = span  # non-recording: only its context matters
        self._headers: dict[str, str] | None = None

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def fault(self, kind: str, error: str) -> None:
        pass

    def effect_headers(self, carried: dict[str, str], subject: str, msg_id: str) -> dict[str, str]:
        """The same headers for every effect of the message: the context is injected once."""
        if self._headers is None:
            self._headers = inject(self.span)
            self._headers.update(carried)
        return self._headers

    def retried(self, error: str) -> None:
        pass

    def dead_lettered(self, reason: str, error: str) -> None:
        pass

    def settled(self, unconfirmed: str | None) -> None:
        pass


MessageTrace = SampledTrace | UnsampledTrace


class MessageTracer:
    """Starts the trace of each message a function processes."""

    def __init__(self, tracer: Tracer, function: str) -> None:
        self._tracer = tracer
        self._function = function

    def begin(self, incoming: Incoming) -> MessageTrace:
        """The CONSUMER span `process <subject>`, a child of the context the message carries, if any."""
        msg, delivery = incoming.msg, incoming.delivery
        msg_id = msg.headers.get(H_MSG_ID) if msg.headers else None
        span = self._tracer.start_span(
            f"process {msg.subject}", context=extract(msg.headers), kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats", "messaging.operation.type": "process", "messaging.operation.name": "process",
                "messaging.destination.name": msg.subject, "messaging.consumer.group.name": self._function,
                "messaging.message.id": msg_id or f"{delivery.stream}:{delivery.sequence}",
                "messaging.message.body.size": len(msg.data), "ebbtide.function": self._function,
                "ebbtide.delivery_count": delivery.delivered,
            },
        )
        return SampledTrace(self._tracer, span) if span.is_recording() else UnsampledTrace(span)
