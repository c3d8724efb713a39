"""One order, one trace: distributor process -> send -> receiver process -> outbox write, W3C context in
the NATS headers; with the client's trace id when the client sent one, a new trace otherwise."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ebbtide.broker import EmbeddedNats
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, generate_orders
from tests.conftest import provision_for, read_stream, wait_until

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-00f067aa0ba902b7-01"


def hops(spans: list[ReadableSpan], trace_id: int) -> list[str]:
    return sorted(s.name for s in spans if s.context.trace_id == trace_id)


async def test_one_connected_trace_per_order(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with_parent, without_parent = generate_orders(2, seed=8)
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url, tracer_provider=provider):
        js = nc.jetstream()
        await js.publish(INGRESS_SUBJECT, encode_order(with_parent), headers={"traceparent": CLIENT_TRACEPARENT})
        await js.publish(INGRESS_SUBJECT, encode_order(without_parent))
        await js.publish(
            INGRESS_SUBJECT,
            b'{"orderId": 1, "delivery": "Drone", "items": [1]}',
            headers={"traceparent": CLIENT_TRACEPARENT.replace("0e0e4736", "0e0e4737")},
        )
        await read_stream(nc, "DLQ", expected=1)

        async def all_ended() -> bool:  # 2 orders x 4 spans, plus the dead letter's process span
            return len(exporter.get_finished_spans()) >= 9

        await wait_until(all_ended)
    spans = list(exporter.get_finished_spans())

    client_trace = int(CLIENT_TRACE_ID, 16)
    delivery = with_parent.delivery.lower()
    assert hops(spans, client_trace) == sorted(
        [
            "process orders.ingress",
            "send orders.express" if delivery == "express" else "send orders.standard",
            f"process orders.{delivery}",
            f"send $KV.outbox-{delivery}.{with_parent.order_id}",
        ]
    )
    # The chain is connected: each span's parent is the one before it.
    chain = {
        s.name.split(" ")[0] + ":" + ("ingress" if "ingress" in s.name else "kv" if "$KV" in s.name else "route"): s
        for s in spans
        if s.context.trace_id == client_trace
    }
    distributor, route, receiver, outbox = chain["process:ingress"], chain["send:route"], chain["process:route"], chain["send:kv"]
    assert distributor.parent is not None and distributor.parent.span_id == 0x00F067AA0BA902B7  # the client's span
    assert route.parent.span_id == distributor.context.span_id
    assert receiver.parent.span_id == route.context.span_id
    assert outbox.parent.span_id == receiver.context.span_id
    assert (distributor.kind, route.kind, receiver.kind, outbox.kind) == (
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
    )
    assert distributor.attributes["messaging.system"] == "nats"
    assert distributor.attributes["messaging.destination.name"] == INGRESS_SUBJECT
    assert distributor.attributes["ebbtide.delivery_count"] == 1
    assert all(s.status.status_code != StatusCode.ERROR for s in chain.values())

    # No context from the client: the trace starts at ingress, and still spans both functions.
    roots = [s for s in spans if s.name == "process orders.ingress" and s.parent is None]
    assert len(roots) == 1
    assert len(hops(spans, roots[0].context.trace_id)) == 4

    # A dead letter is recorded on its span.
    dead = [s for s in spans if s.status.status_code == StatusCode.ERROR]
    assert len(dead) == 1 and [e.name for e in dead[0].events] == ["dead-lettered"]
    assert dead[0].events[0].attributes["ebbtide.reason"] == "rejected"


async def test_unsampled_orders_flow_and_pass_the_decision_on(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """Sampling says no: no span is recorded anywhere, the orders are processed all the same, and the
    next hop gets the not-sampled context (so it does not start a trace of its own)."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    orders = generate_orders(5, seed=9)
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url, ["distributor"], tracer_provider=provider):
        for order in orders:
            await nc.jetstream().publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        express = sum(1 for o in orders if o.delivery == "Express")
        routed = (
            await read_stream(nc, "ORDERS", "orders.express", expected=express)  # for receivers not running here
            + await read_stream(nc, "ORDERS", "orders.standard", expected=len(orders) - express)
        )
    assert len(routed) == len(orders) and exporter.get_finished_spans() == ()
    for msg in routed:
        assert int(msg.headers["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # trace flags: the sampled bit is off
