"""CI stand-in for Jaeger: accepts OTLP/HTTP exports on :4318 and records them; serves the record on :16686.

POST /v1/traces, /v1/metrics, /v1/logs on 4318: the body is kept as received (protobuf or JSON), answered
with an empty export response (200). GET /recorded on 16686: {"requests": [{"path", "content_type",
"body_base64"}, ...]}, the most recent MAX_KEPT requests; the test decodes the protobuf itself.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_KEPT = 2000
OTLP_PATHS = ("/v1/traces", "/v1/metrics", "/v1/logs")
recorded: deque[dict[str, str]] = deque(maxlen=MAX_KEPT)
lock = threading.Lock()


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
        content_type = self.headers.get("Content-Type", "")
        with lock:
            recorded.append({"path": self.path, "content_type": content_type,
                             "body_base64": base64.b64encode(body).decode()})
        json_reply = content_type.startswith("application/json")
        self.reply(200, b"{}" if json_reply else b"", "application/json" if json_reply else "application/x-protobuf")


class RecordServer(Quiet):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/recorded":
            with lock:
                body = json.dumps({"requests": list(recorded)}).encode()
            self.reply(200, body, "application/json")
        else:
            self.reply(200, b"CI stand-in for Jaeger: records OTLP/HTTP (port 4318), GET /recorded. No UI.\n",
                       "text/plain")


def main() -> None:
    record = ThreadingHTTPServer(("0.0.0.0", 16686), RecordServer)
    threading.Thread(target=record.serve_forever, daemon=True).start()
    print("otlp-recorder (CI stand-in for Jaeger): OTLP/HTTP on 4318, record on 16686", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 4318), OtlpReceiver).serve_forever()


if __name__ == "__main__":
    main()
