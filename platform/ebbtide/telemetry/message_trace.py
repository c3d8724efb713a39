"""A message's trace while it is handled: used by the pool only when a tracer exists (tracing on).

Sampled: a CONSUMER span `process <subject>` and a PRODUCER span per effect, whose context travels in the
effect's headers (W3C traceparent). Not sampled: the decision is passed on once, no span is built.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..broker.delivery import Incoming
from ..broker.headers import H_MSG_ID

_propagator = TraceContextTextMapPropagator()


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
            f"send {subject}",
            context=set_span_in_context(self.span),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": subject,
                "messaging.message.id": msg_id,
            },
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
            f"process {msg.subject}",
            context=extract(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self._function,
                "messaging.message.id": msg_id or f"{delivery.stream}:{delivery.sequence}",
                "messaging.message.body.size": len(msg.data),
                "ebbtide.function": self._function,
                "ebbtide.delivery_count": delivery.delivered,
            },
        )
        return SampledTrace(self._tracer, span) if span.is_recording() else UnsampledTrace(span)
