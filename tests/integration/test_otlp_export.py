"""OTLP export of a real Host to a real HTTP collector on loopback: traces and metrics, decoded from the
protobuf the OpenTelemetry exporter sends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ebbtide.host import Host
from ebbtide.manifest import load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import manifest_copy, provision_for, wait_until
from tests.integration.test_pipeline import outbox_counts


class Collector:
    """Keeps every OTLP/HTTP request body by path (/v1/traces, /v1/metrics)."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/x-protobuf"
                collector.bodies.setdefault(self.path, []).append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def metrics(self) -> list[ExportMetricsServiceRequest]:
        return [ExportMetricsServiceRequest.FromString(body) for body in self.bodies["/v1/metrics"]]

    def spans(self) -> list:  # type: ignore[type-arg]
        return [
            span
            for body in self.bodies["/v1/traces"]
            for rs in ExportTraceServiceRequest.FromString(body).resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    yield collector
    collector.server.shutdown()


def latest_points(request: ExportMetricsServiceRequest) -> dict[str, dict[tuple, object]]:
    """metric name -> {sorted attribute pairs: data point}."""
    found: dict[str, dict[tuple, object]] = {}
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                points = getattr(metric, kind).data_points
                found[metric.name] = {
                    tuple(sorted((a.key, a.value.string_value) for a in point.attributes)): point for point in points
                }
    return found


async def test_traces_and_metrics_go_to_the_otlp_endpoint(
    tmp_path: Path,
    collector: Collector,
    nats_server,
    nc: NatsClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = manifest_copy(tmp_path)
    path.write_text(path.read_text() + f'\n[telemetry]\notlp_endpoint = "{collector.url}"\n')
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "200")  # ms: pushes happen while the host runs
    orders = generate_orders(40, seed=11)
    express = sum(1 for o in orders if o.delivery == "Express")

    await provision_for(load_manifest(path), nats_server.url)
    async with Host(load_manifest(path), nats_server.url) as host:
        assert host.metrics_pusher is not None and host.tracer_provider is not None
        js = nc.jetstream()
        for order in orders:
            await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})

        async def stored() -> bool:
            return sum((await outbox_counts(nc)).values()) == len(orders)

        await wait_until(stored)
        await wait_until(lambda: len(collector.bodies["/v1/metrics"]) >= 2)  # periodic, before the stop
    # Stopping pushes the final counts and flushes the spans.

    final = latest_points(collector.metrics()[-1])
    service = collector.metrics()[-1].resource_metrics[0].resource.attributes
    assert any(a.key == "service.name" and a.value.string_value.startswith("ebbtide-") for a in service)
    messages = final["ebbtide_messages"]
    assert messages[(("function", "distributor"), ("outcome", "ok"))].as_int == len(orders)
    assert messages[(("function", "receiver-express"), ("outcome", "ok"))].as_int == express
    assert messages[(("function", "receiver-standard"), ("outcome", "ok"))].as_int == len(orders) - express
    end_to_end = final["ebbtide_end_to_end_seconds"]
    assert end_to_end[(("function", "distributor"),)].count == len(orders)
    point = end_to_end[(("function", "receiver-express"),)]
    assert point.count == express and sum(point.bucket_counts) == express
    assert 0 < point.min <= point.max < 60 and list(point.explicit_bounds)[0] == pytest.approx(0.001)
    assert final["ebbtide_process_resident_memory_bytes"][()].as_int > 0

    spans = collector.spans()
    names = {span.name for span in spans}
    assert {"process orders.ingress", "process orders.express", "process orders.standard"} <= names
    assert len({span.trace_id for span in spans if span.name == "process orders.ingress"}) == len(orders)
