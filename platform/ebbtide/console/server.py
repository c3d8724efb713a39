"""The console's HTTP side: the page, its assets, its one event stream, its reads and its actions (Starlette
served by uvicorn).

Safety, in the order a request meets it (`Guard`):
- Bound to a loopback address, only requests naming it in their Host header are served (a web page
  elsewhere cannot reach the console through a DNS name that points to 127.0.0.1: DNS rebinding).
- With a token (required for any other address: `EBBTIDE_CONSOLE_TOKEN`), every request carries it: the
  page's address once (`/?token=...`, exchanged for an HttpOnly, SameSite=Strict cookie and a redirect that
  drops it from the address bar), or `Authorization: Bearer`.
- An action (every POST) must come from the console's own page: its Origin is the console's own, it
  carries the page's CSRF token in `X-Ebbtide-CSRF` (a random value per run, in the page itself, which
  another site cannot read), and its body is JSON. Then the console must have admin credentials
  (`Session.actions`), else 403 with the reason.
- Every response forbids framing and inline scripts (Content-Security-Policy), and the page renders data
  only as text.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import EbbtideError, UsageError
from .service import ActionRefused, Console

log = logging.getLogger("ebbtide.console")

TOKEN_ENV = "EBBTIDE_CONSOLE_TOKEN"
COOKIE = "ebbtide_console"
CSRF_HEADER = "x-ebbtide-csrf"
MAX_BODY = 64 * 1024
DEFAULT_LIMIT = 200  # dead letters listed at once
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def assets_folder() -> Path:
    return Path(str(resources.files("ebbtide.console") / "assets"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    """The checks above, as ASGI middleware around the whole app (the event stream included)."""

    app: ASGIApp
    allowed_hosts: frozenset[str] | None  # Host header values served; None: any (a token guards instead)
    token: str | None
    csrf: str

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if isinstance(refusal, Response):
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> Response | None:
        host = headers.get("host", "")
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return PlainTextResponse(f"this console answers only as {' or '.join(sorted(self.allowed_hosts))}", 421)
        if self.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = query.get("token", [""])[0]
            if scope["path"] == "/" and given and secrets.compare_digest(given, self.token):
                redirect = RedirectResponse("/", 303)
                redirect.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
                return redirect
            cookie = SimpleCookie(headers.get("cookie", ""))
            presented = cookie[COOKIE].value if COOKIE in cookie else headers.get("authorization", "").removeprefix("Bearer ")
            if not (presented and secrets.compare_digest(presented, self.token)):
                return PlainTextResponse(f"a token is required: open /?token=<${TOKEN_ENV}>", 401)
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            own = f"{scope.get('scheme', 'http')}://{host}"
            if origin != own:
                return _error(403, f"refused: a request from {origin or 'an unknown origin'}, not from this console's page")
            if not secrets.compare_digest(headers.get(CSRF_HEADER, ""), self.csrf):
                return _error(403, "refused: the request does not carry this console's page token (reload the page)")
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _error(415, "refused: actions take a JSON body")
        return None


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


class _RedriveRequest(msgspec.Struct, forbid_unknown_fields=True):
    seqs: list[int] | None = None  # these dead letters; None: every one (of `function`)
    function: str | None = None


class _PurgeRequest(msgspec.Struct, forbid_unknown_fields=True):
    function: str | None = None  # None: every dead letter


class _NoBody(msgspec.Struct, forbid_unknown_fields=True):
    pass


async def _body(request: Request, kind: type[Any]) -> Any:
    data = await request.body()
    if len(data) > MAX_BODY:
        raise UsageError("request body too large")
    try:
        return msgspec.json.decode(data or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise UsageError(f"bad request: {exc}") from None
    except msgspec.DecodeError:
        raise UsageError("bad request: the body is not JSON") from None


def _answers(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
    """A handler's value as JSON; ebbtide's errors as JSON with a status that says whose fault it was."""

    async def endpoint(request: Request) -> Response:
        try:
            return _json(await handler(request))
        except ActionRefused as exc:
            return _error(403, str(exc))
        except UsageError as exc:  # an unknown function, a bad body
            return _error(400, str(exc))
        except EbbtideError as exc:  # the server could not do it (no such dead letter, nothing to promote)
            return _error(409, str(exc))
        except (TimeoutError, ConnectionError) as exc:
            return _error(503, f"the NATS server did not answer: {exc}")

    return endpoint


def create_app(
    console: Console, *, stopping: Callable[[], bool], token: str | None, allowed_hosts: frozenset[str] | None
) -> ASGIApp:
    csrf = secrets.token_urlsafe(32)
    page = (assets_folder() / "index.html").read_text().replace("{{csrf}}", csrf)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            async with console.page() as queue:
                while True:
                    event = await queue.get()
                    if not event or stopping():  # the console stops: end the stream, so the server can
                        return
                    yield event

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    async def dead_letters(request: Request) -> Any:
        function = request.query_params.get("function") or None
        try:
            limit = int(request.query_params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise UsageError("limit: a number") from None
        return await console.dead_letters(function, max(1, min(limit, 10_000)))

    async def dead_letter(request: Request) -> Any:
        return await console.dead_letter(request.path_params["seq"])

    async def redrive(request: Request) -> Any:
        body: _RedriveRequest = await _body(request, _RedriveRequest)
        if body.seqs is not None and not body.seqs:
            raise UsageError("no dead letters chosen")
        return await console.redrive(body.function, body.seqs)

    async def purge(request: Request) -> Any:
        body: _PurgeRequest = await _body(request, _PurgeRequest)
        return {"purged": await console.purge(body.function)}

    async def samples(request: Request) -> Any:
        return await console.samples(request.path_params["function"])

    async def promote(request: Request) -> Any:
        await _body(request, _NoBody)
        return {"done": await console.promote(request.path_params["function"])}

    async def abort(request: Request) -> Any:
        await _body(request, _NoBody)
        return {"done": await console.abort(request.path_params["function"])}

    async def order(request: Request) -> Any:
        from ..outbox import is_valid_key

        key = request.path_params["key"]
        if not is_valid_key(key):
            raise UsageError(f"{key!r} is not a KV key (letters, digits and - / _ = . only)")
        return await console.order(key)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/events", events),
            Route("/api/dead-letters", _answers(dead_letters)),
            Route("/api/dead-letters/redrive", _answers(redrive), methods=["POST"]),
            Route("/api/dead-letters/purge", _answers(purge), methods=["POST"]),
            Route("/api/dead-letters/{seq:int}", _answers(dead_letter)),
            Route("/api/rollouts/{function}/samples", _answers(samples)),
            Route("/api/rollouts/{function}/promote", _answers(promote), methods=["POST"]),
            Route("/api/rollouts/{function}/abort", _answers(abort), methods=["POST"]),
            Route("/api/orders/{key}", _answers(order)),
            Mount("/assets", StaticFiles(directory=assets_folder())),
        ]
    )
    return Guard(app, allowed_hosts, token, csrf)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound here, before anything starts: a port in use is a clear error (exit 1), and port 0 works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def allowed_hosts_for(host: str, port: int) -> frozenset[str] | None:
    """On a loopback address: the names a browser on this machine uses for it. Elsewhere: any (the token guards)."""
    if not is_loopback(host):
        return None
    names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
    return frozenset(f"{name}:{port}" for name in names)


async def serve(console: Console, sock: socket.socket, token: str | None) -> None:
    """Serve until SIGINT or SIGTERM; then the page streams end and the console disconnects."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    server: uvicorn.Server | None = None
    app = create_app(
        console,
        stopping=lambda: server is not None and server.should_exit,
        token=token,
        allowed_hosts=allowed_hosts_for(host, port),
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    await console.start()
    # uvicorn raises the signal that stopped it again once it has stopped; by then we have stopped: a normal end.
    # (Set only now: a signal while connecting to NATS stops the console at once, as usual.)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        await server.serve(sockets=[sock])
    finally:
        await console.stop()
