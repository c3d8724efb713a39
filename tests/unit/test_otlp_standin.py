"""The CI stand-in for Jaeger (deploy/ci-standins/otlp-recorder) reads what the OpenTelemetry exporter sends
and answers Jaeger's query API as the compose test reads it: checked here on a real OTLP protobuf export."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.conftest import REPO


def standin() -> ModuleType:
    path = REPO / "deploy" / "ci-standins" / "otlp-recorder" / "otlp_recorder.py"
    spec = importlib.util.spec_from_file_location("otlp_recorder", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["otlp_recorder"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def export(service: str, trace_id: bytes, span_id: bytes, parent: bytes, name: str) -> bytes:
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=Span.SPAN_KIND_CONSUMER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_002_500_000,
        attributes=[KeyValue(key="messaging.destination.name", value=AnyValue(string_value="orders.ingress"))],
    )
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[span])])])
    return request.SerializeToString()


def test_the_standin_answers_jaegers_query_api_from_protobuf_exports() -> None:
    recorder = standin()
    store = recorder.Store()
    trace = bytes(range(1, 17))
    store.add(recorder.spans_of_protobuf(export("ebbtide-distributor", trace, b"\x01" * 8, b"", "orders.ingress process")))
    store.add(
        recorder.spans_of_protobuf(export("ebbtide-receiver-express", trace, b"\x02" * 8, b"\x01" * 8, "orders.express process"))
    )
    store.add(recorder.spans_of_protobuf(export("ebbtide-receiver-standard", bytes(16 * [9]), b"\x03" * 8, b"", "other")))
    assert store.services() == ["ebbtide-distributor", "ebbtide-receiver-express", "ebbtide-receiver-standard"]

    [found] = json.loads(recorder.envelope([recorder.jaeger_trace(t) for t in store.traces("ebbtide-distributor", 20)]))["data"]
    assert found["traceID"] == trace.hex()
    assert {p["serviceName"] for p in found["processes"].values()} == {"ebbtide-distributor", "ebbtide-receiver-express"}
    receiver = next(s for s in found["spans"] if s["spanID"] == "02" * 8)
    assert receiver["references"] == [{"refType": "CHILD_OF", "traceID": trace.hex(), "spanID": "01" * 8}]
    assert (receiver["startTime"], receiver["duration"]) == (1_700_000_000_000_000, 2500)
    assert receiver["tags"] == [{"key": "messaging.destination.name", "type": "string", "value": "orders.ingress"}]
    assert found["processes"][receiver["processID"]]["serviceName"] == "ebbtide-receiver-express"
    assert store.traces("nobody", 20) == [] and store.trace(trace.hex().upper()) != []
