"""A minimal HTTP/1.1 server for /metrics, /healthz and /readyz, on the host's own event loop.

One request per connection (`Connection: close`), GET only, small read limits and a read timeout: a
slow or malformed client gets a 4xx or is dropped, and nothing it sends can raise into the host.

With $EBBTIDE_METRICS_TOKEN set, /metrics answers only a request with `Authorization: Bearer <token>`
(401 otherwise). /healthz and /readyz stay open: Kubernetes probes send no headers (a token in a probe's
httpHeaders would sit in the pod spec in plain text), and they reveal only "ok" or why the host is not
ready, never a figure or a message.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable

from .metrics import CONTENT_TYPE

log = logging.getLogger("ebbtide.telemetry")

MAX_REQUEST_LINE = 4096
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 64
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
METRICS_TOKEN_ENV = "EBBTIDE_METRICS_TOKEN"

Readiness = Callable[[], "bool | tuple[bool, str]"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class TelemetryServer:
    """Serves `render()` at /metrics, 200 at /healthz, and `ready()` at /readyz (200 or 503 with its reason).

    `ready` returns a bool or (bool, reason). Port 0 picks a free port; `port` is the bound one after start().
    `token`: the bearer token /metrics requires; default $EBBTIDE_METRICS_TOKEN, "" or unset: none.
    """

    def __init__(
        self, render: Callable[[], str], ready: Readiness, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None
    ) -> None:
        self._render = render
        self._ready = ready
        token = os.environ.get(METRICS_TOKEN_ENV, "") if token is None else token
        self._authorization = f"Bearer {token}".encode() if token else None
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> TelemetryServer:
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, limit=MAX_REQUEST_LINE, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("telemetry: serving /metrics, /healthz, /readyz on %s", self.url)
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> TelemetryServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one connection ----------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            if self._slots.locked():  # too many at once: refuse rather than queue
                return
            async with self._slots:
                await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the server is stopping
        except Exception:  # never let a client take anything down
            log.debug("telemetry: connection failed", exc_info=True)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except BaseException:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, authorization = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
        except _BadRequest as exc:
            await _respond(writer, exc.status, str(exc) + "\n")
            return
        except TimeoutError:
            await _respond(writer, 408, "request timeout\n")
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # gone before sending a whole request
        head = method == "HEAD"  # answered 405 like any other method, but without a body

        async def respond(status: int, body: str, **kwargs: object) -> None:
            await _respond(writer, status, body, head=head, **kwargs)  # type: ignore[arg-type]

        if path not in ("/metrics", "/healthz", "/readyz"):
            await respond(404, "not found\n")
        elif method != "GET":
            await respond(405, "method not allowed\n", extra=(("Allow", "GET"),))
        elif path == "/healthz":
            await respond(200, "ok\n")
        elif path == "/readyz":
            ready, reason = self._readiness()
            await respond(200 if ready else 503, ("ok" if ready else reason) + "\n")
        elif self._authorization is not None and not hmac.compare_digest(authorization, self._authorization):
            await respond(401, "unauthorized\n", extra=(("WWW-Authenticate", 'Bearer realm="metrics"'),))
        else:
            try:
                body = self._render()
            except Exception:
                log.exception("telemetry: rendering the metrics failed")
                await respond(500, "cannot render metrics\n")
                return
            await respond(200, body, content_type=CONTENT_TYPE)

    def _readiness(self) -> tuple[bool, str]:
        try:
            result = self._ready()
        except Exception as exc:
            return False, f"readiness check failed: {exc!r}"
        if isinstance(result, tuple):
            ready, reason = result
            return bool(ready), str(reason) or ("ok" if ready else "not ready")
        return bool(result), "ok" if result else "not ready"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """The method, path and Authorization header (b"" if none) of one request; the other headers are read
    (bounded) and ignored. No body is read."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(400, "request line too long") from None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise
        raise _BadRequest(400, "incomplete request") from None
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper() or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest(400, "bad request line")
    try:
        method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(400, "bad request line") from None
    if not target.startswith("/"):
        raise _BadRequest(400, "bad request target")
    total = 0
    authorization = b""
    for _ in range(MAX_HEADERS + 1):
        try:
            header = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "header line too long") from None
        except asyncio.IncompleteReadError:
            raise _BadRequest(400, "incomplete headers") from None
        total += len(header)
        if total > MAX_HEADER_BYTES:
            raise _BadRequest(431, "headers too large")
        if header in (b"\r\n", b"\n"):
            return method, target.split("?", 1)[0], authorization
        name, colon, value = header.partition(b":")
        if not colon:
            raise _BadRequest(400, "bad header line")
        if name.strip().lower() == b"authorization":
            authorization = value.strip()
    raise _BadRequest(431, "too many headers")


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: str,
    *,
    content_type: str = _TEXT,
    extra: tuple[tuple[str, str], ...] = (),
    head: bool = False,
) -> None:
    data = body.encode("utf-8")
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(data)}",
        "Connection: close",
        "Cache-Control: no-store",
        *(f"{key}: {value}" for key, value in extra),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (b"" if head else data))
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
