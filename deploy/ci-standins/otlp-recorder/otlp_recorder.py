"""CI stand-in for Jaeger: accepts OTLP/HTTP traces on :4318 and answers the part of Jaeger's HTTP query API
that the compose test reads, on :16686 (where Jaeger serves its UI and that API).

4318: POST /v1/traces (protobuf, as the OpenTelemetry exporters send it, or OTLP JSON), /v1/metrics and
/v1/logs (accepted and dropped: Jaeger stores traces only). Answered with an empty export response (200).

16686, as Jaeger's query service answers them (the same JSON envelope {"data", "total", "limit", "offset",
"errors"}; times in microseconds, ids in lowercase hex):
- GET /api/services: the service.name of every resource that sent spans;
- GET /api/traces?service=S[&limit=N]: the most recent N (default 20) traces with a span of S, each whole
  (every span of the trace, whatever its service), as {"traceID", "spans": [...], "processes": {...}};
- GET /api/traces/<traceID>: one trace.
Nothing else of Jaeger (no UI, no other parameters, no storage beyond the last MAX_SPANS spans in memory).
Only the Python standard library: the base image has no protobuf package, so the few OTLP messages used
are read with a small decoder of the protobuf wire format.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_SPANS = 50_000
OTLP_PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs")


# -- the protobuf wire format: (field number, value) pairs ------------------------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Every field of one message: varints and fixed ints as ints, length-delimited ones as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 1:
            out.append((number, int.from_bytes(data[pos : pos + 8], "little")))
            pos += 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire == 5:
            out.append((number, int.from_bytes(data[pos : pos + 4], "little")))
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _string_attributes(messages: list[bytes]) -> dict[str, str]:
    """KeyValue{1: key, 2: AnyValue{1: string_value, ...}}: the string-valued ones."""
    attributes: dict[str, str] = {}
    for kv in messages:
        parts = dict(fields(kv))
        value = dict(fields(parts[2])) if isinstance(parts.get(2), bytes) else {}  # type: ignore[arg-type]
        if isinstance(parts.get(1), bytes) and isinstance(value.get(1), bytes):
            attributes[parts[1].decode()] = value[1].decode()  # type: ignore[union-attr]
    return attributes


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    start_us: int
    duration_us: int
    service: str
    attributes: dict[str, str] = field(default_factory=dict)


def spans_of_protobuf(body: bytes) -> list[Span]:
    """ExportTraceServiceRequest{1: ResourceSpans{1: Resource{1: KeyValue}, 2: ScopeSpans{2: Span}}}."""
    spans = []
    for number, resource_spans in fields(body):
        if number != 1 or not isinstance(resource_spans, bytes):
            continue
        parts = fields(resource_spans)
        resource = next((v for n, v in parts if n == 1 and isinstance(v, bytes)), b"")
        service = _string_attributes([v for n, v in fields(resource) if n == 1 and isinstance(v, bytes)]).get(
            "service.name", "unknown_service"
        )
        for scope_spans in (v for n, v in parts if n == 2 and isinstance(v, bytes)):
            for span in (v for n, v in fields(scope_spans) if n == 2 and isinstance(v, bytes)):
                s = fields(span)
                one = {n: v for n, v in s}
                start, end = int(one.get(7, 0)), int(one.get(8, 0))  # type: ignore[arg-type]
                spans.append(
                    Span(
                        trace_id=bytes(one.get(1, b"")).hex(),  # type: ignore[arg-type]
                        span_id=bytes(one.get(2, b"")).hex(),  # type: ignore[arg-type]
                        parent_id=bytes(one.get(4, b"")).hex(),  # type: ignore[arg-type]
                        name=bytes(one.get(5, b"")).decode(),  # type: ignore[arg-type]
                        start_us=start // 1000,
                        duration_us=max(0, end - start) // 1000,
                        service=service,
                        attributes=_string_attributes([v for n, v in s if n == 9 and isinstance(v, bytes)]),
                    )
                )
    return spans


def spans_of_json(body: bytes) -> list[Span]:
    """The same request in OTLP's JSON encoding (ids in hex, times as strings of nanoseconds)."""
    spans = []
    for resource_spans in json.loads(body).get("resourceSpans", []):
        attributes = resource_spans.get("resource", {}).get("attributes", [])
        service = next(
            (a["value"].get("stringValue", "") for a in attributes if a.get("key") == "service.name"), "unknown_service"
        )
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                start, end = int(span.get("startTimeUnixNano", 0)), int(span.get("endTimeUnixNano", 0))
                spans.append(
                    Span(
                        span.get("traceId", "").lower(),
                        span.get("spanId", "").lower(),
                        span.get("parentSpanId", "").lower(),
                        span.get("name", ""),
                        start // 1000,
                        max(0, end - start) // 1000,
                        service,
                        {a["key"]: a["value"].get("stringValue", "") for a in span.get("attributes", []) if "key" in a},
                    )
                )
    return spans


# -- the store and Jaeger's answers ----------------------------------------------------------------------


class Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._traces: OrderedDict[str, list[Span]] = OrderedDict()  # trace id -> its spans, oldest trace first
        self._count = 0

    def add(self, spans: list[Span]) -> None:
        with self._lock:
            for span in spans:
                self._traces.setdefault(span.trace_id, []).append(span)
                self._traces.move_to_end(span.trace_id)
                self._count += 1
            while self._count > MAX_SPANS and self._traces:
                _, dropped = self._traces.popitem(last=False)
                self._count -= len(dropped)

    def services(self) -> list[str]:
        with self._lock:
            return sorted({s.service for spans in self._traces.values() for s in spans})

    def traces(self, service: str, limit: int) -> list[list[Span]]:
        with self._lock:
            found = [list(spans) for spans in reversed(self._traces.values()) if any(s.service == service for s in spans)]
        return found[:limit]

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return list(self._traces.get(trace_id.lower(), []))


def jaeger_trace(spans: list[Span]) -> dict[str, Any]:
    """A trace as Jaeger's query API renders it: spans point at processes (one per service here)."""
    process_ids = {service: f"p{i + 1}" for i, service in enumerate(sorted({s.service for s in spans}))}
    return {
        "traceID": spans[0].trace_id,
        "spans": [
            {
                "traceID": s.trace_id,
                "spanID": s.span_id,
                "operationName": s.name,
                "references": [{"refType": "CHILD_OF", "traceID": s.trace_id, "spanID": s.parent_id}] if s.parent_id else [],
                "startTime": s.start_us,
                "duration": s.duration_us,
                "tags": [{"key": k, "type": "string", "value": v} for k, v in s.attributes.items()],
                "logs": [],
                "processID": process_ids[s.service],
                "warnings": None,
            }
            for s in spans
        ],
        "processes": {pid: {"serviceName": service, "tags": []} for service, pid in process_ids.items()},
        "warnings": None,
    }


def envelope(data: list[Any]) -> bytes:
    return json.dumps({"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}).encode()


store = Store()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OtlpReceiver(Quiet):
    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path not in OTLP_PATHS:
            self.reply(404, b"", "text/plain")
            return
        json_request = self.headers.get("Content-Type", "").startswith("application/json")
        if self.path == "/v1/traces":
            try:
                store.add(spans_of_json(body) if json_request else spans_of_protobuf(body))
            except (ValueError, KeyError, IndexError) as exc:
                self.reply(400, f"cannot read the export: {exc}".encode(), "text/plain")
                return
        self.reply(200, b"{}" if json_request else b"", "application/json" if json_request else "application/x-protobuf")


class QueryServer(Quiet):
    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/api/services":
            self.reply(200, envelope(store.services()), "application/json")
        elif url.path == "/api/traces":
            service = query.get("service", [""])[0]
            if not service:
                self.reply(400, json.dumps({"data": None, "errors": [{"code": 400, "msg": "parameter 'service' is required"}]}).encode(), "application/json")
                return
            limit = int(query.get("limit", ["20"])[0] or 20)
            self.reply(200, envelope([jaeger_trace(t) for t in store.traces(service, limit)]), "application/json")
        elif url.path.startswith("/api/traces/"):
            spans = store.trace(url.path.rsplit("/", 1)[1])
            if spans:
                self.reply(200, envelope([jaeger_trace(spans)]), "application/json")
            else:
                self.reply(404, json.dumps({"data": None, "errors": [{"code": 404, "msg": "trace not found"}]}).encode(), "application/json")
        else:
            self.reply(200, b"CI stand-in for Jaeger: OTLP/HTTP on 4318; /api/services and /api/traces here. No UI.\n", "text/plain")


def main() -> None:
    query = ThreadingHTTPServer(("0.0.0.0", 16686), QueryServer)
    threading.Thread(target=query.serve_forever, daemon=True).start()
    print("otlp-recorder (CI stand-in for Jaeger): OTLP/HTTP on 4318, query API on 16686", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 4318), OtlpReceiver).serve_forever()


if __name__ == "__main__":
    main()
