"""Prometheus metrics and health endpoints of a real Host, scraped over TCP, on a real nats-server."""

from __future__ import annotations

import asyncio
import gc
import re

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, free_port
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.stream_state import stream_state
from ebbtide.telemetry import CONTENT_TYPE, TelemetryServer
from ebbtide.telemetry.http import METRICS_TOKEN_ENV
from ebbtide.telemetry.metrics import escape_label_value
from ebbtide.workload.orders import encode_order, generate_orders
from tests.conftest import provision_for, wait_until
from tests.integration.test_pipeline import BAD_INPUTS, outbox_counts, publish

FUNCTIONS = ("distributor", "receiver-express", "receiver-standard")


# -- a small HTTP client over a real TCP connection ------------------------------------------------


async def http_raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)  # Connection: close: read to EOF
    finally:
        writer.close()
    head, sep, body = response.partition(b"\r\n\r\n")
    assert sep, response
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return int(status), headers, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await http_raw(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n".encode())


# -- a strict parser of the Prometheus text format 0.0.4 -------------------------------------------

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}

Series = tuple[str, frozenset[tuple[str, str]]]


def _parse_value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("+", ""))
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ValueError(f"bad sample value {text!r}")
    return float(text)


def _parse_labels(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Labels from text[pos] == '{'; returns them and the position after '}'."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        if text[pos] == "}":
            return labels, pos + 1
        match = LABEL_NAME.match(text, pos)
        if not match or text[match.end() : match.end() + 2] != '="':
            raise ValueError(f"bad label at {text[pos:]!r}")
        name, pos = match.group(), match.end() + 2
        value = []
        while text[pos] != '"':
            if text[pos] == "\\":
                escaped = {"\\": "\\", '"': '"', "n": "\n"}.get(text[pos + 1])
                if escaped is None:
                    raise ValueError(f"bad escape in {text!r}")
                value.append(escaped)
                pos += 2
            else:
                value.append(text[pos])
                pos += 1
        pos += 1
        if name in labels:
            raise ValueError(f"label {name} repeated in {text!r}")
        labels[name] = "".join(value)
        if text[pos] == ",":
            pos += 1
        elif text[pos] != "}":
            raise ValueError(f"expected , or }} in {text!r}")


def parse_exposition(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": {(name, labels): value}}}; raises ValueError on anything off."""
    if not text.endswith("\n"):
        raise ValueError("the exposition must end with a newline")
    families: dict[str, dict] = {}
    closed: set[str] = set()  # families whose samples are over: they must be contiguous
    current: str | None = None
    for line in text[:-1].split("\n"):
        if not line:
            raise ValueError("empty line")
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if not METRIC_NAME.fullmatch(name):
                    raise ValueError(f"bad metric name {name!r}")
                family = families.setdefault(name, {"type": None, "help": None, "samples": {}})
                if name in closed or family["samples"]:
                    raise ValueError(f"{parts[1]} of {name} after its samples")
                key = parts[1].lower()
                if family[key] is not None:
                    raise ValueError(f"second {parts[1]} for {name}")
                value = parts[3] if len(parts) == 4 else ""
                if key == "type" and value not in TYPES:
                    raise ValueError(f"bad type {value!r}")
                if key == "help" and re.search(r"\\[^\\n]", value):
                    raise ValueError(f"bad escape in HELP of {name}")
                family[key] = value
                if current is not None and current != name:
                    closed.add(current)
                current = name
            continue  # any other comment
        match = METRIC_NAME.match(line)
        if not match:
            raise ValueError(f"bad sample line {line!r}")
        sample, pos = match.group(), match.end()
        labels: dict[str, str] = {}
        if pos < len(line) and line[pos] == "{":
            try:
                labels, pos = _parse_labels(line, pos)
            except IndexError:
                raise ValueError(f"unterminated labels in {line!r}") from None
        rest = line[pos:]
        if not rest.startswith(" "):
            raise ValueError(f"no space before the value in {line!r}")
        fields = rest[1:].split(" ")
        if len(fields) not in (1, 2) or (len(fields) == 2 and not re.fullmatch(r"-?\d+", fields[1])):
            raise ValueError(f"bad value/timestamp in {line!r}")
        value = _parse_value(fields[0])
        owner = next(
            (name for name, fam in families.items() if any(sample == name + s for s in SUFFIXES.get(fam["type"] or "", ("",)))),
            None,
        )
        if owner is None or families[owner]["type"] is None:
            raise ValueError(f"sample {sample} without a TYPE line")
        if owner in closed:
            raise ValueError(f"samples of {owner} are not contiguous")
        if current is not None and current != owner:
            closed.add(current)
        current = owner
        series: Series = (sample, frozenset(labels.items()))
        if series in families[owner]["samples"]:
            raise ValueError(f"duplicate series {line!r}")
        families[owner]["samples"][series] = value
    return families


def value(families: dict[str, dict], name: str, **labels: str) -> float:
    return families[name]["samples"][(name, frozenset(labels.items()))]


def test_the_parser_is_strict() -> None:
    good = '# HELP m_total A counter.\n# TYPE m_total counter\nm_total{a="x\\"y\\\\z\\n"} 3\nm_total{a="b"} 1e3 123\n'
    families = parse_exposition(good)
    assert value(families, "m_total", a='x"y\\z\n') == 3 and value(families, "m_total", a="b") == 1000
    for bad in (
        "m 1\n",  # no TYPE
        "# TYPE m gauge\nm 1",  # no final newline
        "# TYPE m gauge\nm 1\nm 2\n",  # duplicate series
        '# TYPE m gauge\nm{a="b} 1\n',  # unterminated label value
        '# TYPE m gauge\nm{a="\\t"} 1\n',  # bad escape
        "# TYPE m gauge\nm one\n",
        "# TYPE m gauge\n# TYPE m counter\nm 1\n",
        '# TYPE m gauge\n# TYPE n gauge\nm 1\nn 1\nm{a="b"} 2\n',  # not contiguous
        "# TYPE m gauge\n\nm 1\n",
    ):
        with pytest.raises(ValueError):
            parse_exposition(bad)


def test_label_values_are_escaped() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    text = f'# TYPE m gauge\nm{{function="{escape_label_value(chr(10) + "q" + chr(34) + chr(92))}"}} 1\n'
    assert value(parse_exposition(text), "m", function='\nq"\\') == 1


# -- the end-to-end test ---------------------------------------------------------------------------


async def scrape(port: int) -> dict[str, dict]:
    status, headers, body = await get(port, "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE
    return parse_exposition(body.decode("utf-8"))


async def test_metrics_and_health_of_a_running_host(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    orders = generate_orders(300, seed=5)
    express = sum(1 for o in orders if o.delivery == "Express")
    standard = len(orders) - express
    bad = [(BAD_INPUTS[name], f"bad-{name}") for name in ("malformed-json", "unknown-delivery", "no-items", "too-large")]

    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url, metrics_port=free_port()) as host:
        assert host.telemetry is not None
        port = host.telemetry.port
        assert port > 0
        assert (await get(port, "/healthz"))[::2] == (200, b"ok\n")
        assert (await get(port, "/readyz"))[::2] == (200, b"ok\n")

        families = await scrape(port)
        expected_types = {
            "ebbtide_messages_total": "counter",
            "ebbtide_guest_faults_total": "counter",
            "ebbtide_instances": "gauge",
            "ebbtide_in_flight": "gauge",
            "ebbtide_backlog": "gauge",
            "ebbtide_oldest_pending_seconds": "gauge",
            "ebbtide_instance_starts_total": "counter",
            "ebbtide_instance_stops_total": "counter",
            "ebbtide_process_resident_memory_bytes": "gauge",
            "ebbtide_process_private_memory_bytes": "gauge",
            "ebbtide_process_open_fds": "gauge",
            "ebbtide_process_asyncio_tasks": "gauge",
            "ebbtide_process_gc_objects": "gauge",
            "ebbtide_process_gc_pause_seconds": "histogram",
            "ebbtide_nats_connected": "gauge",
            "ebbtide_handle_duration_seconds": "histogram",
            "ebbtide_end_to_end_seconds": "histogram",
            "ebbtide_module_reloads_total": "counter",
            "ebbtide_dead_letters_total": "counter",
            "ebbtide_canary_rollbacks_total": "counter",
            "ebbtide_ready": "gauge",
        }
        assert {name: f["type"] for name, f in families.items()} == expected_types
        assert all(f["help"] for f in families.values())
        for fn in FUNCTIONS:
            for outcome in ("ok", "dead_lettered", "refused", "retried"):
                assert value(families, "ebbtide_messages_total", function=fn, outcome=outcome) == 0
            for reason in ("rejected", "payload-too-large", "headers-too-large", "effect-refused", "retries-exhausted"):
                assert value(families, "ebbtide_dead_letters_total", function=fn, reason=reason) == 0
            assert value(families, "ebbtide_canary_rollbacks_total", function=fn) == 0
            assert value(families, "ebbtide_ready", function=fn) == 1
        assert value(families, "ebbtide_process_resident_memory_bytes") > 10 * 1024 * 1024
        assert (
            0
            < value(families, "ebbtide_process_private_memory_bytes")
            <= value(families, "ebbtide_process_resident_memory_bytes")
        )
        assert value(families, "ebbtide_process_open_fds") >= 3  # stdin, stdout, stderr at least
        assert value(families, "ebbtide_process_asyncio_tasks") >= 1  # the one serving this scrape at least
        assert value(families, "ebbtide_process_gc_objects") > 1000
        gc.collect()  # this process's: the host runs in it
        pauses = (await scrape(port))["ebbtide_process_gc_pause_seconds"]["samples"]
        assert pauses[("ebbtide_process_gc_pause_seconds_count", frozenset())] >= 1
        for fn in FUNCTIONS:
            assert value(families, "ebbtide_oldest_pending_seconds", function=fn) == 0  # nothing published yet
        assert value(families, "ebbtide_nats_connected") == 1

        await publish(
            nc,
            [(encode_order(o), o.order_guid) for o in orders[:150]]
            + bad
            + [(encode_order(o), o.order_guid) for o in orders[150:]],
        )

        async def all_done() -> bool:
            return sum((await outbox_counts(nc)).values()) >= len(orders) and (await stream_state(nc, "DLQ")).messages >= len(bad)

        await wait_until(all_done, timeout=60)
        expected = {"distributor": len(orders), "receiver-express": express, "receiver-standard": standard}

        async def counted() -> bool:  # a message is counted right after its ack, a moment after its effect
            families = await scrape(port)
            return all(value(families, "ebbtide_messages_total", function=fn, outcome="ok") >= n for fn, n in expected.items())

        await wait_until(counted, timeout=10)
        families = await scrape(port)
        for fn, n in expected.items():
            assert value(families, "ebbtide_messages_total", function=fn, outcome="ok") == n, fn
            assert value(families, "ebbtide_instance_starts_total", function=fn) >= 1, fn
            for kind in ("trap", "timeout", "memory-limit", "invalid-output"):
                assert value(families, "ebbtide_guest_faults_total", function=fn, kind=kind) == 0
            assert value(families, "ebbtide_in_flight", function=fn) >= 0
            assert value(families, "ebbtide_instances", function=fn) >= 0
            assert value(families, "ebbtide_backlog", function=fn) >= 0
            assert value(families, "ebbtide_oldest_pending_seconds", function=fn) >= 0
        assert value(families, "ebbtide_messages_total", function="distributor", outcome="dead_lettered") == len(bad)
        # By reason: the guest rejected three; the fourth never reached it.
        assert value(families, "ebbtide_dead_letters_total", function="distributor", reason="rejected") == len(bad) - 1
        assert value(families, "ebbtide_dead_letters_total", function="distributor", reason="payload-too-large") == 1
        # One guest call per message that reached the guest (the too-large one did not).
        histogram = families["ebbtide_handle_duration_seconds"]["samples"]
        calls = histogram[("ebbtide_handle_duration_seconds_count", frozenset({("function", "distributor")}))]
        assert calls == len(orders) + len(bad) - 1
        assert (
            histogram[("ebbtide_handle_duration_seconds_bucket", frozenset({("function", "distributor"), ("le", "+Inf")}))]
            == calls
        )
        assert 0 < histogram[("ebbtide_handle_duration_seconds_sum", frozenset({("function", "distributor")}))] < calls
        for fn in ("receiver-express", "receiver-standard"):
            assert value(families, "ebbtide_messages_total", function=fn, outcome="dead_lettered") == 0
        # End to end, ingress publish -> effects confirmed: one observation per order processed ok, and an
        # order reaches its outbox (receiver) later than it left the distributor.
        latency = families["ebbtide_end_to_end_seconds"]["samples"]
        e2e = {
            fn: (
                latency[("ebbtide_end_to_end_seconds_count", frozenset({("function", fn)}))],
                latency[("ebbtide_end_to_end_seconds_sum", frozenset({("function", fn)}))],
            )
            for fn in FUNCTIONS
        }
        assert {fn: count for fn, (count, _) in e2e.items()} == expected
        receivers_sum = e2e["receiver-express"][1] + e2e["receiver-standard"][1]
        assert 0 < e2e["distributor"][1] < receivers_sum < 60 * len(orders)

        # Bad requests get an answer (or are dropped) and the server goes on serving.
        assert (await http_raw(port, b"\x00\xffgarbage\r\n\r\n"))[0] == 400
        assert (await http_raw(port, b"GET /metrics\r\n\r\n"))[0] == 400
        assert (await http_raw(port, b"GET http://x/metrics HTTP/1.1\r\n\r\n"))[0] == 400
        assert (await http_raw(port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n"))[0] == 400
        assert (await http_raw(port, b"GET /healthz HTTP/1.1\r\nX: " + b"y" * 20_000 + b"\r\n\r\n"))[0] == 431
        assert (await http_raw(port, b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n"))[0] == 400
        status, headers, _ = await http_raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        assert status == 405 and headers["allow"] == "GET"
        assert (await get(port, "/nope"))[0] == 404
        assert (await get(port, "/metrics?x=1"))[0] == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # half a request, then gone
        writer.write(b"GET /heal")
        await writer.drain()
        writer.close()
        assert (await get(port, "/healthz"))[::2] == (200, b"ok\n")

        # NATS down: not ready (alive all the same); back up: ready again.
        nats_server.stop()

        async def readyz(expected_status: int) -> bool:
            return (await get(port, "/readyz"))[0] == expected_status

        await wait_until(lambda: readyz(503), timeout=10)
        status, _, body = await get(port, "/readyz")
        assert status == 503 and b"NATS" in body
        assert (await get(port, "/healthz"))[0] == 200
        families = await scrape(port)
        assert value(families, "ebbtide_nats_connected") == 0
        assert all(value(families, "ebbtide_ready", function=fn) == 0 for fn in FUNCTIONS)

        nats_server.start()  # same port, same data folder
        await wait_until(lambda: readyz(200), timeout=20)
        assert value(await scrape(port), "ebbtide_nats_connected") == 1

        async def client_back() -> bool:  # the fixture's client reconnects more slowly (every 2 s)
            return nc.is_connected

        await wait_until(client_back, timeout=20)
        more = generate_orders(10, seed=6, first_id=10_000)
        await publish(nc, [(encode_order(o), o.order_guid) for o in more])

        async def counted_after_restart() -> bool:
            ok = value(await scrape(port), "ebbtide_messages_total", function="distributor", outcome="ok")
            return ok == len(orders) + len(more)

        await wait_until(counted_after_restart, timeout=20)
    # Stopped: the port no longer answers.
    with pytest.raises(OSError):
        await get(port, "/healthz")


async def test_metrics_need_the_bearer_token_when_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """$EBBTIDE_METRICS_TOKEN: /metrics answers only with it; the probes' /healthz and /readyz stay open."""
    monkeypatch.setenv(METRICS_TOKEN_ENV, "s3cret-token")
    async with TelemetryServer(lambda: "ebbtide_up 1\n", lambda: (False, "waiting for provisioning")) as server:
        assert (await get(server.port, "/metrics"))[0] == 401
        status, headers, _ = await http_raw(server.port, b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert (await http_raw(server.port, b"GET /metrics HTTP/1.1\r\nauthorization: Basic s3cret-token\r\n\r\n"))[0] == 401
        status, _, body = await http_raw(server.port, b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n\r\n")
        assert (status, body) == (200, b"ebbtide_up 1\n")
        assert (await get(server.port, "/healthz"))[::2] == (200, b"ok\n")
        assert (await get(server.port, "/readyz"))[::2] == (503, b"waiting for provisioning\n")
    monkeypatch.delenv(METRICS_TOKEN_ENV)
    async with TelemetryServer(lambda: "ebbtide_up 1\n", lambda: True) as server:  # no token: open, as before
        assert (await get(server.port, "/metrics"))[0] == 200
