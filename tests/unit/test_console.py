"""The console's pure parts: the pipeline graph and its rates, the live rows and chart points, what the
pages receive, and the HTTP guard (host, token, CSRF), driven as ASGI without a server."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ebbtide.console import graph
from ebbtide.console.live import Live
from ebbtide.console.server import COOKIE, CSRF_HEADER, Guard, allowed_hosts_for, is_loopback
from ebbtide.console.views import order_entry, payload_view, sample_view
from ebbtide.manifest import parse_manifest
from ebbtide.outbox import OutboxEntry
from ebbtide.rollout.compare import RecordedReply, Verdict
from ebbtide.rollout.samples import Sample
from ebbtide.runtime.abi import encode_effects
from ebbtide.status_reports import PoolStatus
from tests.conftest import REPO


def reference() -> graph.Graph:
    return graph.pipeline(parse_manifest((REPO / "ebbtide.toml").read_text(), REPO / "ebbtide.toml"))


# -- the graph -------------------------------------------------------------------------------------------


def test_the_reference_pipeline_flows_left_to_right_into_outboxes_and_the_dlq() -> None:
    g = reference()
    column = {n.id: n.column for n in g.nodes}
    assert column["subject:orders.ingress"] == 0
    assert column["function:distributor"] == 1
    assert column["subject:orders.express"] == column["subject:orders.standard"] == 2
    assert column["function:receiver-express"] == column["function:receiver-standard"] == 3
    assert column["bucket:outbox-express"] == column["bucket:outbox-standard"] == 4
    assert column["dlq:"] == 4  # in the last column, below the buckets
    last = [n for n in g.nodes if n.column == 4]
    assert max(last, key=lambda n: n.row).id == "dlq:"
    assert [n.label for n in g.nodes if n.entry] == ["orders.ingress"]
    edges = {(e.source, e.target): e for e in g.edges}
    assert edges[("subject:orders.ingress", "function:distributor")].kind == "trigger"
    assert edges[("function:distributor", "subject:orders.standard")].kind == "publish"
    assert edges[("function:receiver-express", "bucket:outbox-express")].kind == "kv"
    assert {e.source for e in g.edges if e.target == "dlq:"} == {
        "function:distributor",
        "function:receiver-express",
        "function:receiver-standard",
    }
    assert not any(e.shared for e in g.edges if e.kind != "dead_letter")
    assert all(e.shared for e in g.edges if e.kind == "dead_letter")  # one DLQ for all: its whole inflow


def manifest_of(functions: str, retention: str = "limits") -> Any:
    text = textwrap.dedent(f"""
        [streams.S]
        subjects = ["a.>", "b.>"]
        retention = "{retention}"
        [modules.m]
        prebuilt = true
    """) + textwrap.dedent(functions)
    return parse_manifest(text, Path("/nowhere/ebbtide.toml"))


def test_a_cycle_does_not_push_columns_forever_and_wildcards_reach_the_triggers_they_match() -> None:
    manifest = manifest_of("""
        [functions.first]
        module = "m"
        trigger = "a.in"
        publish = ["b.*", "a.nowhere"]
        [functions.second]
        module = "m"
        trigger = "b.next"
        publish = ["a.in", "b.other"]
        [functions.third]
        module = "m"
        trigger = "b.other"
    """)
    g = graph.pipeline(manifest)
    column = {n.id: n.column for n in g.nodes}
    # first -> b.next -> second -> a.in -> first: the edge back into a.in does not push it on
    assert column["subject:a.in"] == 0 and column["function:first"] == 1
    assert column["subject:b.next"] == 2 and column["function:second"] == 3
    assert column["subject:b.other"] == 4 and column["function:third"] == 5  # after its latest publisher
    targets = {e.target for e in g.edges if e.source == "function:first"}
    # b.* reaches both triggers it matches; a.nowhere feeds no function and is a node of its own
    assert targets == {"subject:b.next", "subject:b.other", "subject:a.nowhere", "dlq:"}
    assert not any(n.entry for n in g.nodes)  # every trigger is published to by a function
    shared = {e.id for e in g.edges if e.shared and e.kind == "publish"}
    assert shared == {"function:first>subject:b.other", "function:second>subject:b.other"}


def test_rates_come_from_two_ticks_of_counts() -> None:
    manifest = parse_manifest((REPO / "ebbtide.toml").read_text(), REPO / "ebbtide.toml")
    g = graph.pipeline(manifest)
    rates = graph.EdgeRates(manifest, g)

    def counts(t: float, ingress: int, express: int, writes: int, dead: int, rate: float) -> graph.Counts:
        return graph.Counts(
            time=t,
            stream_subjects={"ORDERS": {"orders.ingress": ingress, "orders.express": express}},
            bucket_writes={"outbox-express": writes},
            dead_letters={"distributor": dead},
            function_rates={"distributor": rate},
        )

    first, inflow = rates.observe(counts(100.0, 0, 0, 10, 5, 0.0))
    assert set(first.values()) == {0.0} and set(inflow.values()) == {0.0}
    edges, inflow = rates.observe(counts(102.0, 1000, 400, 210, 7, 321.0))
    assert inflow["subject:orders.ingress"] == 500.0
    assert edges["function:distributor>subject:orders.express"] == 200.0
    assert edges["subject:orders.ingress>function:distributor"] == 321.0  # the function's own settled rate
    assert edges["function:receiver-express>bucket:outbox-express"] == 100.0
    assert edges["function:distributor>dlq:"] == 1.0
    edges, _ = rates.observe(counts(103.0, 1000, 400, 210, 0, 0.0))  # letters redriven: not a negative rate
    assert edges["function:distributor>dlq:"] == 0.0


def test_a_work_queue_adds_back_what_its_consumer_took() -> None:
    manifest = manifest_of(
        """
        [functions.f]
        module = "m"
        trigger = "a.in"
        """,
        retention="workqueue",
    )
    rates = graph.EdgeRates(manifest, graph.pipeline(manifest))
    rates.observe(graph.Counts(0.0, {"S": {"a.in": 100}}, {}, {}, {"f": 0.0}))
    _, inflow = rates.observe(graph.Counts(1.0, {"S": {"a.in": 80}}, {}, {}, {"f": 50.0}))
    assert inflow["subject:a.in"] == 50.0  # 80 - 100 clamped to 0, plus the 50/s the function took


def test_an_ordered_triggers_keyed_subjects_count_for_it() -> None:
    manifest = manifest_of("""
        [functions.f]
        module = "m"
        trigger = "a.in"
        order_by = "id"
    """)
    rates = graph.EdgeRates(manifest, graph.pipeline(manifest))
    rates.observe(graph.Counts(0.0, {"S": {}}, {}, {}, {}))
    _, inflow = rates.observe(graph.Counts(1.0, {"S": {"a.in.3": 2, "a.in.7": 1, "a.in": 1}}, {}, {}, {}))
    assert inflow["subject:a.in"] == 4.0


# -- live rows and chart points ----------------------------------------------------------------------------


def report(function: str, host: str, t: float, backlog: int, instances: int, **rest: Any) -> PoolStatus:
    fields: dict[str, Any] = dict(
        in_flight=0, processed=0, dead_lettered=0, retried=0, guest_faults=0, rate=0.0, handle_p50_us=0.0, handle_p99_us=0.0
    )
    fields.update(rest)
    return PoolStatus(function=function, host_id=host, time=t, backlog=backlog, instances=instances, **fields)


def test_a_burst_between_two_ticks_still_shows_on_the_chart() -> None:
    live = Live(["f"])
    live.tick(0.0)
    live.update(report("f", "h1", 0.2, 3000, 4))
    live.update(report("f", "h2", 0.3, 2500, 4))  # another replica: instances add up, the newest backlog counts
    live.update(report("f", "h1", 0.6, 0, 0))
    live.update(report("f", "h2", 0.7, 0, 0))
    rows, points = live.tick(1.0)
    assert (points["f"].backlog, points["f"].instances) == (3000, 8)  # the peak of the interval
    assert (rows[0].backlog, rows[0].instances, rows[0].replicas) == (0, 0, 2)  # the table: now
    _, points = live.tick(2.0)
    assert (points["f"].backlog, points["f"].instances) == (0, 0)
    assert [p.t for p in live.history()["f"]] == [0.0, 1.0, 2.0]


def test_rows_sum_replicas_rollout_counts_and_go_stale_without_reports() -> None:
    live = Live(["f", "quiet"], history_s=5.0)
    live.update(report("f", "h1", 9.0, 7, 1, processed=1000))
    live.tick(9.5)  # h1 seen: it counts from here
    live.update(
        report(
            "f",
            "h1",
            10.0,
            7,
            1,
            processed=1100,
            dead_lettered=50,
            rollout={"shadow.same": 3},
            module_sha256="aa",
            candidate_sha256="bb",
        )
    )
    live.update(report("f", "h2", 10.0, 7, 2, processed=400, rollout={"shadow.same": 2, "shadow.different": 1}))
    live.update(report("f", "h2", 9.0, 99, 9))  # older than what h2 already said: ignored
    rows, _ = live.tick(11.0)
    f, quiet = rows
    # settled over the 1.5 s tick: h1 handled 100 and dead-lettered 50; h2 is new and counts from now on
    assert (f.instances, f.rate, f.replicas, f.stale) == (3, 100.0, 2, False)
    assert f.rollout == {"shadow.same": 5, "shadow.different": 1}
    assert [(r.host_id, r.candidate_sha256) for r in f.modules] == [("h1", "bb"), ("h2", "")]
    assert (quiet.stale, quiet.age_s, quiet.replicas) == (False, -1.0, 0)  # never reported: not stale, unknown
    live.update(report("f", "h2", 11.5, 7, 2, processed=100))  # h2 restarted: it settled 100 since
    rows, _ = live.tick(12.0)
    assert rows[0].rate == 100.0
    rows, _ = live.tick(30.0)
    assert (rows[0].stale, rows[0].backlog, rows[0].instances, rows[0].rate) == (True, 7, 0, 0.0)  # last known lag
    assert [p.t for p in live.history()["f"]] == [30.0]  # older than history_s: dropped


# -- what the pages receive --------------------------------------------------------------------------------


def test_payloads_are_text_when_they_are_and_hex_otherwise() -> None:
    shown = payload_view(b'{"orderId": 1, "note": "<img src=x onerror=alert(1)>"}')
    assert shown.text is not None and '"note": "<img src=x onerror=alert(1)>"' in shown.text  # kept as text, indented
    assert shown.hex is None
    binary = payload_view(bytes(range(20)))
    assert binary.text is None and binary.hex is not None and binary.hex.startswith("00000000  00 01 02")
    cut = payload_view("é".encode() * 10, limit=5)  # a character cut in two by the limit is still text
    assert cut.text == "éé" and cut.omitted == 16


def test_a_sample_is_shown_side_by_side_with_the_differences_marked() -> None:
    live = RecordedReply("ok", encode_effects([("publish", "orders.standard", b"x"), ("kv_put", "b", "k", b"v")]))
    candidate = RecordedReply("ok", encode_effects([("publish", "orders.express", b"x"), ("kv_put", "b", "k", b"v")]))
    view = sample_view(Sample("f", Verdict.DIFFERENT, "orders.ingress", b"x", live, candidate, "c" * 64, 0, 12))
    assert [(line.text, line.mark) for line in view.live] == [
        ("publish orders.standard: x", "changed"),
        ("kv_put b/k: v", "same"),
    ]
    assert [line.mark for line in view.candidate] == ["changed", "same"]
    assert (view.verdict, view.stream_sequence, view.judged_at) == ("different", 12, "1970-01-01T00:00:00Z")


def test_an_orders_trace_is_found_in_its_writes_traceparent() -> None:
    traced = OutboxEntry("b", "1", 3, "t", b"{}", {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    entry = order_entry(traced, "http://jaeger:16686/trace/{trace_id}")
    assert entry.trace_id == "ab" * 16 and entry.trace_url == f"http://jaeger:16686/trace/{'ab' * 16}"
    assert order_entry(traced, None).trace_url is None
    assert order_entry(OutboxEntry("b", "1", 3, "t", b"{}"), "x{trace_id}").trace_id is None


# -- the guard -----------------------------------------------------------------------------------------------


def request(guard: Guard, method: str, path: str, headers: dict[str, str], query: str = "") -> tuple[int, dict[str, str]]:
    """One request through the guard (the app behind it answers 200); the status and the response headers."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guarded = Guard(app, guard.allowed_hosts, guard.token, guard.csrf)
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "scheme": "http",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(guarded(scope, receive, send))
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}


HOST = {"Host": "127.0.0.1:8090"}
POST = {**HOST, "Origin": "http://127.0.0.1:8090", CSRF_HEADER: "csrf", "Content-Type": "application/json"}


def loopback_guard(token: str | None = None) -> Guard:
    return Guard(lambda *_: None, allowed_hosts_for("127.0.0.1", 8090), token, "csrf")  # type: ignore[arg-type]


def test_on_loopback_only_requests_naming_it_are_served() -> None:
    guard = loopback_guard()
    status, headers = request(guard, "GET", "/", HOST)
    assert status == 200
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert request(guard, "GET", "/", {"Host": "localhost:8090"})[0] == 200
    assert request(guard, "GET", "/", {"Host": "rebound.example:8090"})[0] == 421  # DNS rebinding
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert allowed_hosts_for("0.0.0.0", 8090) is None


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({}, 200),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": None}, 403),
        ({CSRF_HEADER: "guessed"}, 403),
        ({CSRF_HEADER: None}, 403),
        ({"Content-Type": "text/plain"}, 415),  # what a cross-site form can send without asking first
    ],
)
def test_an_action_must_come_from_the_consoles_own_page(change: dict[str, str | None], status: int) -> None:
    headers = {k: v for k, v in {**POST, **change}.items() if v is not None}
    assert request(loopback_guard(), "POST", "/api/dead-letters/purge", headers)[0] == status


def test_with_a_token_every_request_carries_it() -> None:
    guard = loopback_guard(token="s3cret")
    assert request(guard, "GET", "/", HOST)[0] == 401
    assert request(guard, "GET", "/api/events", HOST)[0] == 401
    status, headers = request(guard, "GET", "/", HOST, query="token=s3cret")
    assert status == 303 and headers["location"] == "/"
    assert f"{COOKIE}=s3cret" in headers["set-cookie"] and "HttpOnly" in headers["set-cookie"]
    assert "samesite=strict" in headers["set-cookie"].lower()
    assert request(guard, "GET", "/", HOST, query="token=wrong")[0] == 401
    assert request(guard, "GET", "/api/events", {**HOST, "Cookie": f"{COOKIE}=s3cret"})[0] == 200
    assert request(guard, "GET", "/api/events", {**HOST, "Authorization": "Bearer s3cret"})[0] == 200
    assert request(guard, "POST", "/api/dead-letters/purge", {**POST, "Cookie": f"{COOKIE}=s3cret"})[0] == 200
    assert request(guard, "POST", "/api/dead-letters/purge", POST)[0] == 401
