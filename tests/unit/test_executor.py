"""The executor carries outcomes out: what goes on the wire, in what order, on an in-memory broker.

The real ConfirmedPublisher and nats-py's Msg run on `FakeNats` (tests/unit/fakes.py); the guest is a
plain function returning what a guest's answer turns into, so every path is reached on purpose.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import StatusCode

from ebbtide.broker.delivery import Incoming, KeepAlive
from ebbtide.broker.publisher import ConfirmedPublisher
from ebbtide.effects import Outgoing
from ebbtide.executor import Executor, PoolStats, RunGuests
from ebbtide.manifest import parse_manifest
from ebbtide.outcome import Declined, Effects, Faulted, GuestResult, Refused
from ebbtide.runtime import Status
from ebbtide.telemetry.message_trace import MessageTracer

from .fakes import FakeNats, nak_delay_s

MANIFEST = parse_manifest(
    """
[streams.TEST]
subjects = ["in.>", "test.>"]

[modules.chaos]
source = "unused"

[functions.chaos]
module = "chaos"
trigger = "in.chaos"
publish = ["test.>"]
ack_wait_s = 0.4
limits = { max_payload = 64, max_header_bytes = 200 }
retry = { max_deliver = 3, backoff_ms = [50, 100] }
""",
    Path("ebbtide.toml"),
)
FUNCTION = MANIFEST.function("chaos")
ACK = b""  # nats-py acks with an empty payload


def echo(incoming: Incoming) -> GuestResult:
    """A guest that publishes its input to test.out."""
    return Effects([Outgoing("test.out", incoming.msg.data)])


def one_by_one(guest: Callable[[Incoming], GuestResult]) -> RunGuests:
    """The batch call the executor makes, from a guest written per message (an exception fails the call)."""
    return lambda batch: [guest(incoming) for incoming in batch]


async def run(
    nc: FakeNats, msgs: list[Msg], guest: Callable[[Incoming], GuestResult] = echo, tracer: MessageTracer | None = None
) -> PoolStats:
    publisher = ConfirmedPublisher(nc)  # type: ignore[arg-type]
    await publisher.start()
    stats = PoolStats()
    executor = Executor("chaos", FUNCTION, "dlq.chaos", publisher, stats, tracer)
    await executor.run_batch(msgs, one_by_one(guest), KeepAlive(msgs, 10.0))
    return stats


async def test_effects_are_confirmed_then_the_input_is_acked() -> None:
    nc = FakeNats()
    msgs = [nc.delivery(b"a", sequence=7), nc.delivery(b"b", sequence=8, headers={"Ebbtide-Ingress-At": "1700000000000000000"})]
    stats = await run(nc, msgs)
    out = nc.sent_to("test.out")
    assert [(p.payload, p.headers) for p in out] == [
        (b"a", {"Ebbtide-Ingress-At": "1732800000000000000", "Nats-Msg-Id": "TEST:7:0"}),  # ingress: its own publish
        (b"b", {"Ebbtide-Ingress-At": "1700000000000000000", "Nats-Msg-Id": "TEST:8:0"}),  # carried on
    ]
    assert [nc.acks(m) for m in msgs] == [[ACK], [ACK]]
    # every effect was sent before the first ack: one wait for the whole batch
    subjects = [p.subject for p in nc.published if not p.subject.startswith("_INBOX")]
    assert subjects.index(msgs[0].reply) > subjects.index("test.out") + 1
    assert (stats.processed, stats.retried, stats.dead_lettered, stats.end_to_end.count) == (2, 0, 0, 2)


async def test_a_message_with_several_effects_numbers_their_ids() -> None:
    nc = FakeNats()
    msg = nc.delivery(b"x", sequence=3)
    await run(nc, [msg], lambda i: Effects([Outgoing("test.a", b"1"), Outgoing("test.b", b"2")]))
    assert [(p.subject, p.headers["Nats-Msg-Id"]) for p in nc.published if p.headers] == [
        ("test.a", "TEST:3:0"),
        ("test.b", "TEST:3:1"),
    ]
    assert nc.acks(msg) == [ACK]


async def test_a_rejected_message_is_dead_lettered_with_headers_that_say_why_then_acked() -> None:
    nc = FakeNats()
    msg = nc.delivery(b"bad", sequence=5, delivered=2, headers={"Nats-Msg-Id": "order-5"})
    stats = await run(nc, [msg], lambda i: Declined(Status.REJECT, "no delivery field"))
    [letter] = nc.sent_to("dlq.chaos")
    assert letter.payload == b"bad"
    headers = letter.headers or {}
    assert {
        k: headers[k]
        for k in (
            "Ebbtide-Function",
            "Ebbtide-Reason",
            "Ebbtide-Error",
            "Ebbtide-Delivery-Count",
            "Ebbtide-Original-Subject",
            "Ebbtide-Original-Stream",
            "Ebbtide-Original-Sequence",
            "Ebbtide-Original-Msg-Id",
            "Nats-Msg-Id",
        )
    } == {
        "Ebbtide-Function": "chaos",
        "Ebbtide-Reason": "rejected",
        "Ebbtide-Error": "no delivery field",
        "Ebbtide-Delivery-Count": "2",
        "Ebbtide-Original-Subject": "in.chaos",
        "Ebbtide-Original-Stream": "TEST",
        "Ebbtide-Original-Sequence": "5",
        "Ebbtide-Original-Msg-Id": "order-5",
        "Nats-Msg-Id": "dlq:TEST:5",
    }
    assert "Ebbtide-First-Failed-At" not in headers  # it never failed transiently here
    assert nc.acks(msg) == [ACK]
    assert (stats.dead_lettered, stats.refused, stats.processed) == (1, 0, 0)


async def test_checks_before_the_guest_dead_letter_unread() -> None:
    nc = FakeNats()
    called: list[bytes] = []

    def guest(incoming: Incoming) -> GuestResult:
        called.append(incoming.msg.data)
        return echo(incoming)

    big = nc.delivery(b"x" * 65, sequence=1)
    loud = nc.delivery(b"ok", sequence=2, headers={"X-Padding": "y" * 200})
    stats = await run(nc, [big, loud], guest)
    assert called == []
    reasons = [p.headers["Ebbtide-Reason"] for p in nc.sent_to("dlq.chaos") if p.headers]
    assert reasons == ["payload-too-large", "headers-too-large"]
    assert nc.acks(big) == [ACK] and nc.acks(loud) == [ACK]
    assert stats.dead_lettered == 2


async def test_a_refused_effect_counts_as_refused() -> None:
    nc = FakeNats()
    msg = nc.delivery(b"F", sequence=1)
    stats = await run(nc, [msg], lambda i: Refused("publish to 'not.allowed' is not allowed"))
    assert [p.headers["Ebbtide-Reason"] for p in nc.sent_to("dlq.chaos") if p.headers] == ["effect-refused"]
    assert (stats.refused, stats.dead_lettered) == (1, 0)


async def test_a_transient_failure_is_nakd_with_backoff_until_max_deliver() -> None:
    nc = FakeNats()
    first, second, last = (nc.delivery(b"R", sequence=9, delivered=d) for d in (1, 2, 3))
    retry = lambda i: Declined(Status.RETRY, "busy")  # noqa: E731
    stats = await run(nc, [first], retry)
    await run(nc, [second], retry)
    assert [nak_delay_s(a) for a in nc.acks(first) + nc.acks(second)] == [0.05, 0.1]
    assert nc.sent_to("dlq.chaos") == [] and stats.retried == 1
    await run(nc, [last], retry)
    [letter] = nc.sent_to("dlq.chaos")
    assert letter.headers is not None
    assert letter.headers["Ebbtide-Reason"] == "retries-exhausted"
    assert letter.headers["Ebbtide-Error"] == "failed 3 deliveries; last error: guest asked to retry: busy"
    assert "Ebbtide-First-Failed-At" in letter.headers
    assert nc.acks(last) == [ACK]


async def test_the_first_failure_is_remembered_for_the_dead_letter() -> None:
    nc = FakeNats()
    publisher = ConfirmedPublisher(nc)  # type: ignore[arg-type]
    await publisher.start()
    executor = Executor("chaos", FUNCTION, "dlq.chaos", publisher, PoolStats())
    failed = nc.delivery(b"R", sequence=4, delivered=1)
    await executor.run_batch([failed], one_by_one(lambda i: Declined(Status.RETRY, "busy")), KeepAlive([failed], 10.0))
    rejected = nc.delivery(b"R", sequence=4, delivered=2)
    await executor.run_batch(
        [rejected], one_by_one(lambda i: Declined(Status.REJECT, "now it is bad")), KeepAlive([rejected], 10.0)
    )
    [letter] = nc.sent_to("dlq.chaos")
    assert letter.headers is not None and letter.headers["Ebbtide-Reason"] == "rejected"
    assert letter.headers["Ebbtide-First-Failed-At"].endswith("Z")


async def test_effects_not_confirmed_are_retried() -> None:
    nc = FakeNats(refuse={"test.out"})
    msg = nc.delivery(b"a", sequence=1, delivered=1)
    stats = await run(nc, [msg])
    assert [nak_delay_s(a) for a in nc.acks(msg)] == [0.05]
    assert (stats.retried, stats.processed) == (1, 0)


async def test_effects_not_confirmed_on_the_last_delivery_are_dead_lettered_in_a_second_round() -> None:
    nc = FakeNats(refuse={"test.out"})
    msg = nc.delivery(b"a", sequence=1, delivered=3)
    stats = await run(nc, [msg])
    [letter] = nc.sent_to("dlq.chaos")
    assert letter.headers is not None and letter.headers["Ebbtide-Reason"] == "retries-exhausted"
    assert "effects not confirmed: server refused publish: refused by the test" in letter.headers["Ebbtide-Error"]
    assert nc.acks(msg) == [ACK]
    assert stats.dead_lettered == 1


async def test_a_dead_letter_not_confirmed_is_nakd_for_later_not_acked() -> None:
    nc = FakeNats(refuse={"test.out", "dlq.chaos"})
    msg = nc.delivery(b"a", sequence=1, delivered=3)  # effects fail, the dead letter fails too
    stats = await run(nc, [msg])
    assert len(nc.sent_to("dlq.chaos")) == 1  # tried once, not again in a loop
    assert [nak_delay_s(a) for a in nc.acks(msg)] == [0.05]
    assert (stats.retried, stats.dead_lettered) == (1, 0)


async def test_publishes_that_get_no_answer_time_out_and_are_retried() -> None:
    nc = FakeNats(unanswered={"test.out"})
    msg = nc.delivery(b"a", sequence=1)
    stats = await run(nc, [msg])  # confirm timeout: ack_wait_s / 2 = 0.2 s
    assert [nak_delay_s(a) for a in nc.acks(msg)] == [0.05]
    assert stats.retried == 1


async def test_publishes_that_get_no_answer_past_max_deliver_are_still_retried_not_dead_lettered() -> None:
    # The server, not the message, is the trouble (a stream electing its leader): the retries are not used up.
    nc = FakeNats(unanswered={"test.out"})
    msg = nc.delivery(b"a", sequence=1, delivered=3)  # max_deliver 3: a failure the guest caused would end here
    stats = await run(nc, [msg])
    assert [nak_delay_s(a) for a in nc.acks(msg)] == [0.1]  # the last backoff, as for any later delivery
    assert (stats.retried, stats.dead_lettered) == (1, 0) and not nc.sent_to("dlq.chaos")


async def test_effects_refused_for_lack_of_space_past_max_deliver_are_still_retried_not_dead_lettered() -> None:
    """A full stream (max_bytes, discard new) or a full JetStream store refuses the effects: the server, not the
    message, is the trouble, so the message keeps its retries, as for effects the server never answered."""
    nc = FakeNats(full={"test.out"})
    msg = nc.delivery(b"a", sequence=1, delivered=3)  # max_deliver 3: a failure the guest caused would end here
    stats = await run(nc, [msg])
    assert [nak_delay_s(a) for a in nc.acks(msg)] == [0.1]
    assert (stats.retried, stats.dead_lettered) == (1, 0) and not nc.sent_to("dlq.chaos")


async def test_effects_refused_for_another_reason_use_up_the_retries() -> None:
    nc = FakeNats(refuse={"test.out"})
    msg = nc.delivery(b"a", sequence=1, delivered=3)
    stats = await run(nc, [msg])
    assert stats.dead_lettered == 1 and nc.sent_to("dlq.chaos")


async def test_a_host_error_does_not_stop_the_batch() -> None:
    nc = FakeNats()
    boom, fine = nc.delivery(b"boom", sequence=1), nc.delivery(b"fine", sequence=2)

    def guest(incoming: Incoming) -> GuestResult:
        if incoming.msg.data == b"boom":
            raise RuntimeError("a bug in the host")
        return echo(incoming)

    stats = await run(nc, [boom, fine], guest)
    assert [nak_delay_s(a) for a in nc.acks(boom)] == [0.05]
    assert nc.acks(fine) == [ACK]
    assert (stats.retried, stats.processed) == (1, 1)


async def test_a_message_without_an_ack_subject_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    nc = FakeNats()
    core = Msg(nc, subject="in.chaos", reply="_INBOX.x", data=b"a")  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, "ebbtide.pool"):
        stats = await run(nc, [core])
    assert nc.published == [] or all(p.subject != "test.out" for p in nc.published)
    assert "without a JetStream ack subject" in caplog.text and stats.processed == 0


# -- tracing ----------------------------------------------------------------------------------------------


def tracer(sampled: bool) -> tuple[MessageTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return MessageTracer(provider.get_tracer("test"), "chaos"), exporter


async def test_a_sampled_message_gets_a_process_span_and_a_send_span_per_effect() -> None:
    nc = FakeNats()
    traced, exporter = tracer(sampled=True)
    msg = nc.delivery(b"a", sequence=1)
    await run(nc, [msg], lambda i: Effects([Outgoing("test.a", b"1"), Outgoing("test.b", b"2")]), traced)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"process in.chaos", "send test.a", "send test.b"}
    process = spans["process in.chaos"]
    assert all(spans[n].parent.span_id == process.context.span_id for n in ("send test.a", "send test.b"))
    traceparents = [p.headers["traceparent"] for p in nc.published if p.headers and "traceparent" in p.headers]
    assert [t.split("-")[2] for t in traceparents] == [
        format(spans[n].context.span_id, "016x") for n in ("send test.a", "send test.b")
    ]


async def test_an_unsampled_message_builds_no_spans_and_passes_the_decision_on() -> None:
    nc = FakeNats()
    traced, exporter = tracer(sampled=False)
    msg = nc.delivery(b"a", sequence=1)
    await run(nc, [msg], lambda i: Effects([Outgoing("test.a", b"1"), Outgoing("test.b", b"2")]), traced)
    assert exporter.get_finished_spans() == ()
    traceparents = {p.headers["traceparent"] for p in nc.published if p.headers and "traceparent" in p.headers}
    assert len(traceparents) == 1  # one context for both effects
    assert int(traceparents.pop().rsplit("-", 1)[1], 16) & 1 == 0  # flagged not sampled
    assert nc.acks(msg) == [ACK]


async def test_a_traced_fault_retry_and_dead_letter_mark_the_span() -> None:
    nc = FakeNats()
    traced, exporter = tracer(sampled=True)
    faulted, rejected = nc.delivery(b"T", sequence=1), nc.delivery(b"X", sequence=2)

    def guest(incoming: Incoming) -> GuestResult:
        return Faulted("trap", "trap: unreachable") if incoming.msg.data == b"T" else Declined(Status.REJECT, "bad")

    await run(nc, [faulted, rejected], guest, traced)
    first, second = sorted(exporter.get_finished_spans(), key=lambda s: s.attributes["ebbtide.delivery_count"] and s.start_time)
    events = {s.attributes["messaging.message.id"]: [e.name for e in s.events] for s in (first, second)}
    assert events == {"TEST:1": ["guest.fault", "retry"], "TEST:2": ["dead-lettered"]}
    assert first.status.status_code is StatusCode.ERROR and second.status.status_code is StatusCode.ERROR


async def test_unconfirmed_effects_end_the_spans_in_error() -> None:
    nc = FakeNats(refuse={"test.out"})
    traced, exporter = tracer(sampled=True)
    await run(nc, [nc.delivery(b"a", sequence=1)], echo, traced)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert all(
        s.status.status_code is StatusCode.ERROR and "effects not confirmed" in (s.status.description or "") for s in spans
    )


def test_fake_nak_delay_reads_nats_py_bytes() -> None:
    assert nak_delay_s(b"-NAK " + json.dumps({"delay": 50_000_000}).encode()) == 0.05


def test_instance_seconds_integrate_the_live_instances_between_changes() -> None:
    now = [100.0]
    stats = PoolStats(clock=lambda: now[0])
    stats.instance_started()
    now[0] = 102.0
    stats.instance_started()  # 1 instance for 2 s
    now[0] = 103.5
    assert stats.instance_seconds_now() == pytest.approx(2.0 + 2 * 1.5)  # between changes too: a report's reading
    stats.instance_stopped()
    now[0] = 104.0
    stats.instance_stopped()
    now[0] = 110.0  # none live since
    assert stats.instance_seconds_now() == pytest.approx(2.0 + 3.0 + 0.5)
