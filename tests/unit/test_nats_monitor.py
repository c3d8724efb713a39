"""The pure part of `ebbtide nats-exporter`: which server's view of a stream is taken, what a server without
JetStream or one that did not answer gives (the exporter against real servers: tests/integration/test_nats_exporter.py)."""

from __future__ import annotations

from ebbtide.telemetry.metrics import render_prometheus
from ebbtide.telemetry.nats_monitor import MonitorReading, collect


def node(name: str, messages: int, leader: str, *, jetstream: bool = True) -> MonitorReading:
    varz = {"server_name": name, "jetstream": {"config": {"max_storage": 1000, "max_memory": 100}, "stats": {"storage": 10}}}
    if not jetstream:
        varz["jetstream"] = {}
    stream = {
        "name": "ORDERS",
        "cluster": {"leader": leader},
        "config": {"max_bytes": -1, "max_msgs": 500, "max_age": 86_400 * 10**9},
        "state": {"messages": messages, "bytes": messages * 100},
    }
    return MonitorReading(f"http://{name}:8222", varz, {"account_details": [{"name": "$G", "stream_detail": [stream]}]})


def samples(readings: list[MonitorReading]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in collect(readings, {"distributor": "ORDERS", "receiver": "OTHER"}):
        found[family.name] = {tuple(sorted(labels.items())): value for labels, value in family.samples}  # type: ignore[misc]
    return found


def test_the_leaders_view_of_a_stream_is_taken_whatever_the_order() -> None:
    nodes = [node("n0", 7, "n1"), node("n1", 9, "n1"), node("n2", 8, "n1")]
    for readings in (nodes, nodes[::-1]):
        got = samples(readings)
        assert got["ebbtide_stream_messages"] == {(("stream", "ORDERS"),): 9}
        assert got["ebbtide_stream_bytes"] == {(("stream", "ORDERS"),): 900}
        assert len(got["ebbtide_jetstream_storage_bytes"]) == 3  # every node's own store


def test_without_a_leader_the_first_node_that_has_it_and_limits_only_where_set() -> None:
    got = samples([MonitorReading("http://gone:8222", error="refused"), node("n0", 5, ""), node("n1", 6, "")])
    assert got["ebbtide_nats_monitor_up"] == {
        (("monitor", "http://gone:8222"),): 0,
        (("monitor", "http://n0:8222"),): 1,
        (("monitor", "http://n1:8222"),): 1,
    }
    assert got["ebbtide_stream_messages"] == {(("stream", "ORDERS"),): 5}
    assert got["ebbtide_stream_max_bytes"] == {}  # -1: no limit
    assert got["ebbtide_stream_max_messages"] == {(("stream", "ORDERS"),): 500}
    assert got["ebbtide_stream_max_age_seconds"] == {(("stream", "ORDERS"),): 86_400}
    # Only functions whose trigger stream has an age limit (OTHER is not on this server).
    assert got["ebbtide_trigger_max_age_seconds"] == {(("function", "distributor"), ("stream", "ORDERS")): 86_400}


def test_a_server_without_jetstream_reports_no_store() -> None:
    got = samples([node("n0", 1, "n0", jetstream=False)])
    assert got["ebbtide_jetstream_storage_bytes"] == {}
    assert got["ebbtide_nats_monitor_up"] == {(("monitor", "http://n0:8222"),): 1}
    assert 'ebbtide_stream_messages{stream="ORDERS"} 1' in render_prometheus(collect([node("n0", 1, "n0")], {}))
