"""A small NATS client for gevent (Locust): core publish/subscribe and JetStream publish with acks.

Locust runs its users as gevent greenlets, while nats-py needs an asyncio loop (a thread per process and a
hand-off per message). Speaking the text protocol over a gevent socket keeps everything on one hub: a
reader greenlet parses what the server sends and a writer greenlet sends what the users queued, so many
publishes leave in one syscall. Implemented: INFO, CONNECT (user/password or token from the URL or given, NKEY seed),
PING/PONG, PUB/HPUB with headers, SUB/MSG/HMSG, one reply inbox for JetStream acks. Not implemented:
TLS, reconnection (a lost connection fails every waiting call with `ConnectionClosed`, with the reason).

It uses gevent explicitly (not the monkey-patched stdlib), so it also works in a process that did not
patch anything, as the tests do.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import gevent
from gevent import socket
from gevent.event import AsyncResult, Event

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4222
_CRLF = b"\r\n"


class NatsError(Exception):
    """Base of every error this client raises."""


class ConnectionClosed(NatsError):
    """The connection is gone (server closed it, network error, or close() was called)."""


class PublishTimeout(NatsError):
    """No JetStream acknowledgement arrived in time."""


class JetStreamError(NatsError):
    """The server answered a JetStream publish with an error (or no stream captures the subject)."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Msg:
    subject: str
    reply: str | None
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status: str | None = None  # e.g. "503" (no responders) from the header line "NATS/1.0 503"


@dataclass(frozen=True)
class PubAck:
    stream: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True)
class Credentials:
    """At most one kind: user and password, a token, or an NKEY seed file (signs the server's nonce)."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed_file: str | None = None

    def connect_options(self, nonce: str | None) -> dict[str, str]:
        if self.nkey_seed_file:
            return _nkey_options(self.nkey_seed_file, nonce)
        if self.user is not None:
            return {"user": self.user, "pass": self.password or ""}
        if self.token is not None:
            return {"auth_token": self.token}
        return {}


def _nkey_options(seed_file: str, nonce: str | None) -> dict[str, str]:
    try:
        import nkeys  # from nats-py[nkeys], an ebbtide dependency
    except ImportError:
        raise NatsError("NKEY authentication needs the 'nkeys' package (pip install nkeys)") from None
    try:
        with open(seed_file, "rb") as source:
            key_pair = nkeys.from_seed(bytearray(source.read().strip()))
    except OSError as exc:
        raise NatsError(f"cannot read the NKEY seed file {seed_file}: {exc.strerror}") from None
    except Exception as exc:  # nkeys raises its own errors for a malformed seed
        raise NatsError(f"{seed_file} does not hold an NKEY seed ({type(exc).__name__})") from None
    options = {"nkey": key_pair.public_key.decode()}
    if nonce:
        options["sig"] = base64.b64encode(key_pair.sign(nonce.encode())).decode()
    key_pair.wipe()
    return options


def parse_url(url: str) -> list[Endpoint]:
    """`nats://[user:pass@|token@]host[:port]`, comma-separated for several servers (tried in order)."""
    endpoints = []
    for part in (p.strip() for p in url.split(",")):
        if not part:
            continue
        if "://" not in part:
            part = "nats://" + part
        parts = urlsplit(part)
        if parts.scheme not in ("nats", "tcp"):
            raise ValueError(f"unsupported NATS URL scheme {parts.scheme!r} in {url!r} (this client speaks plain nats:// only)")
        if not parts.hostname:
            raise ValueError(f"no host in NATS URL {url!r}")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"bad port in NATS URL {url!r}: {exc}") from None
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        # nats://TOKEN@host is a token; nats://user:pass@host is user and password.
        token = user if user is not None and password is None else None
        endpoints.append(Endpoint(parts.hostname, port, None if token else user, password, token))
    if not endpoints:
        raise ValueError(f"empty NATS URL {url!r}")
    return endpoints


def encode_headers(headers: dict[str, str]) -> bytes:
    lines = ["NATS/1.0"]
    for key, value in headers.items():
        text = f"{key}: {value}"
        if "\r" in text or "\n" in text or ":" in key:
            raise ValueError(f"invalid NATS header {key!r}: {value!r}")
        lines.append(text)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def decode_headers(block: bytes) -> tuple[str | None, dict[str, str]]:
    """The status code (if any) and the headers of an HMSG header block."""
    lines = block.decode("utf-8", "replace").split("\r\n")
    status_line = lines[0].split(" ", 2)  # "NATS/1.0", optional code, optional description
    status = status_line[1] if len(status_line) > 1 and status_line[1] else None
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip()] = value.strip()
    return status, headers


def parse_pub_ack(subject: str, msg: Msg) -> PubAck:
    """A JetStream publish reply: `{"stream":..,"seq":..}` or `{"error":{..}}`; a 503 status = no stream."""
    if msg.status == "503":
        raise JetStreamError(f"no responders: no JetStream stream captures {subject!r}")
    if msg.status is not None:
        raise JetStreamError(f"publish to {subject!r}: status {msg.status} {msg.headers}")
    try:
        reply = json.loads(msg.payload)
    except ValueError:
        raise JetStreamError(f"publish to {subject!r}: reply is not JSON: {msg.payload[:200]!r}") from None
    if not isinstance(reply, dict):
        raise JetStreamError(f"publish to {subject!r}: unexpected reply {reply!r}")
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {"description": str(reply["error"])}
        raise JetStreamError(
            f"publish to {subject!r}: {error.get('description', error)} "
            f"(code {error.get('code')}, err_code {error.get('err_code')})"
        )
    if "stream" not in reply or "seq" not in reply:
        raise JetStreamError(f"publish to {subject!r}: reply without stream/seq: {reply!r}")
    return PubAck(stream=reply["stream"], seq=int(reply["seq"]), duplicate=bool(reply.get("duplicate", False)))


class NatsConnection:
    """One connection to a NATS server. Create with `NatsConnection.connect(url)`."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, info: dict, name: str) -> None:
        self.endpoint = endpoint
        self.server_info = info
        self.max_payload = int(info.get("max_payload", 1 << 20))
        self._sock = sock
        self._name = name
        self._closed_reason: str | None = None
        self._closing = False
        self._last_error: str | None = None  # the text of the server's last -ERR
        self.errors: deque[str] = deque(maxlen=100)  # -ERR texts (a permission violation leaves the connection open)
        self._out: list[bytes] = []
        self._out_ready = Event()
        self._pongs: deque[AsyncResult] = deque()
        self._subs: dict[int, Callable[[Msg], None]] = {}
        self._sids = itertools.count(1)
        self._acks: dict[str, AsyncResult] = {}
        self._ack_tokens = itertools.count(1)
        self._inbox = f"_INBOX.{secrets.token_hex(11)}."
        self._reader = gevent.spawn(self._read_loop)
        self._writer = gevent.spawn(self._write_loop)

    # --- connecting ---------------------------------------------------------------------------------

    @classmethod
    def connect(
        cls, url: str, *, name: str = "ebbtide-loadtest", timeout: float = 5.0, credentials: Credentials | None = None
    ) -> NatsConnection:
        """Connect to the first server of `url` that answers; raise ConnectionClosed naming each failure.

        Credentials in the URL win over `credentials`.
        """
        failures = []
        for endpoint in parse_url(url):
            try:
                return cls._connect_one(endpoint, name, timeout, credentials or Credentials())
            except (OSError, NatsError, gevent.Timeout) as exc:
                failures.append(f"{endpoint.host}:{endpoint.port}: {exc or type(exc).__name__}")
        raise ConnectionClosed(f"cannot connect to NATS at {url}: " + "; ".join(failures))

    @classmethod
    def _connect_one(cls, endpoint: Endpoint, name: str, timeout: float, credentials: Credentials) -> NatsConnection:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            info = cls._read_info(sock, timeout)
            if info.get("tls_required"):
                raise ConnectionClosed("the server requires TLS, which this load-test client does not speak")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        conn = cls(sock, endpoint, info, name)
        options = {
            "verbose": False,
            "pedantic": False,
            "tls_required": False,
            "name": name,
            "lang": "python-gevent",
            "version": "0.1",
            "protocol": 1,
            "headers": True,
            "no_responders": True,
        }
        if endpoint.user is not None or endpoint.token is not None:
            credentials = Credentials(user=endpoint.user, password=endpoint.password, token=endpoint.token)
        options.update(credentials.connect_options(info.get("nonce")))
        conn._send(b"CONNECT " + json.dumps(options).encode() + _CRLF)
        try:
            conn.flush(timeout)  # the PONG means CONNECT was accepted (an auth error closes first)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _read_info(sock: socket.socket, timeout: float) -> dict:
        data = b""
        with gevent.Timeout(timeout, ConnectionClosed(f"no INFO from the server within {timeout} s")):
            while _CRLF not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionClosed("the server closed the connection before INFO")
                data += chunk
        line, _, rest = data.partition(_CRLF)
        if not line.startswith(b"INFO ") or rest:
            raise ConnectionClosed(f"not a NATS server (first line {line[:80]!r})")
        return json.loads(line[5:])

    # --- API ----------------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str | None = None) -> None:
        """Queue a core NATS publish (sent by the writer greenlet with whatever else is queued)."""
        if len(payload) > self.max_payload:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the server's max_payload {self.max_payload}")
        head = f"{subject} {reply} " if reply else f"{subject} "
        if headers:
            block = encode_headers(headers)
            self._send(
                b"".join((b"HPUB ", head.encode(), b"%d %d\r\n" % (len(block), len(block) + len(payload)), block, payload, _CRLF))
            )
        else:
            self._send(b"".join((b"PUB ", head.encode(), b"%d\r\n" % len(payload), payload, _CRLF)))

    def subscribe(self, subject: str, callback: Callable[[Msg], None]) -> int:
        """Core subscription; `callback` runs in the reader greenlet, so it must not block."""
        sid = next(self._sids)
        self._subs[sid] = callback
        self._send(f"SUB {subject} {sid}\r\n".encode())
        return sid

    def check_subscriptions(self, timeout: float = 5.0) -> None:
        """Round trip, then raise NatsError if the server refused a subscription (permissions)."""
        self.flush(timeout)
        refused = [error for error in self.errors if "permissions violation for subscription" in error.lower()]
        if refused:
            raise NatsError("; ".join(refused))

    def unsubscribe(self, sid: int) -> None:
        self._subs.pop(sid, None)
        self._send(f"UNSUB {sid}\r\n".encode())

    def flush(self, timeout: float = 5.0) -> None:
        """Round trip (PING/PONG): everything sent before has been processed by the server."""
        pong = AsyncResult()
        self._pongs.append(pong)
        self._send(b"PING\r\n")
        self._wait(pong, timeout, f"no PONG from the server within {timeout} s")

    def js_publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None, timeout: float = 5.0) -> PubAck:
        """Publish and wait for the JetStream acknowledgement; raise JetStreamError/PublishTimeout/ConnectionClosed."""
        self._ensure_inbox()
        token = format(next(self._ack_tokens), "x")
        result = AsyncResult()
        self._acks[token] = result
        try:
            self.publish(subject, payload, headers, reply=self._inbox + token)
            msg = self._wait(result, timeout, None)
        except gevent.Timeout:
            # A refused publish (permissions) gets no reply, only an -ERR: name it.
            hint = f" (last server error: {self._last_error})" if self._last_error else ""
            raise PublishTimeout(f"no JetStream ack for {subject!r} within {timeout} s{hint}") from None
        finally:
            self._acks.pop(token, None)
        return parse_pub_ack(subject, msg)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued, then close; waiting calls fail with ConnectionClosed."""
        if self.is_closed:
            return
        # Only the writer greenlet writes to the socket (two writers could interleave their bytes).
        self._closing = True
        self._out_ready.set()
        self._writer.join(timeout=timeout)
        self._fail("closed by the client")
        self._reader.kill(block=False)

    # --- internals ----------------------------------------------------------------------------------

    def _ensure_inbox(self) -> None:
        # sid 0 is reserved for the ack inbox: one wildcard subscription for every request of the connection
        if 0 not in self._subs:
            self._subs[0] = self._on_ack
            self._send(f"SUB {self._inbox}* 0\r\n".encode())

    def _on_ack(self, msg: Msg) -> None:
        result = self._acks.get(msg.subject[len(self._inbox) :])
        if result is not None:  # else: it came after its timeout; the caller has already reported it
            result.set(msg)

    def _wait(self, result: AsyncResult, timeout: float, timeout_text: str | None):
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        try:
            return result.get(timeout=timeout)
        except gevent.Timeout:
            if timeout_text is None:
                raise
            raise ConnectionClosed(timeout_text) from None

    def _send(self, data: bytes) -> None:
        if self._closed_reason is not None:
            raise ConnectionClosed(self._closed_reason)
        self._out.append(data)
        self._out_ready.set()

    def _write_loop(self) -> None:
        try:
            while self._closed_reason is None:
                if not self._out:
                    if self._closing:
                        return
                    self._out_ready.wait()
                    self._out_ready.clear()
                    continue
                data = b"".join(self._out)
                self._out.clear()
                self._sock.sendall(data)
        except OSError as exc:
            self._fail(f"write failed: {exc}")

    def _read_loop(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    self._fail("the server closed the connection" + (f" ({self._last_error})" if self._last_error else ""))
                    return
                buffer += chunk
                consumed = self._parse(buffer)
                if consumed:
                    del buffer[:consumed]
        except OSError as exc:
            self._fail(f"read failed: {exc}")

    def _parse(self, buf: bytearray) -> int:
        """Handle every complete protocol message in `buf`; return how many bytes were used."""
        pos = 0
        size = len(buf)
        while True:
            end = buf.find(_CRLF, pos)
            if end < 0:
                return pos
            line = bytes(buf[pos:end])
            if line.startswith(b"MSG "):
                parts = line.split()
                nbytes = int(parts[-1])
                start = end + 2
                if size < start + nbytes + 2:
                    return pos
                reply = parts[3].decode() if len(parts) == 5 else None
                self._dispatch(int(parts[2]), Msg(parts[1].decode(), reply, bytes(buf[start : start + nbytes])))
                pos = start + nbytes + 2
            elif line.startswith(b"HMSG "):
                parts = line.split()
                header_bytes, total = int(parts[-2]), int(parts[-1])
                start = end + 2
                if size < start + total + 2:
                    return pos
                reply = parts[3].decode() if len(parts) == 6 else None
                status, headers = decode_headers(bytes(buf[start : start + header_bytes]))
                payload = bytes(buf[start + header_bytes : start + total])
                self._dispatch(int(parts[2]), Msg(parts[1].decode(), reply, payload, headers, status))
                pos = start + total + 2
            else:
                self._control(line)
                pos = end + 2

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            self._send(b"PONG\r\n")
        elif line == b"PONG":
            if self._pongs:
                self._pongs.popleft().set(None)
        elif line.startswith(b"-ERR"):
            # Most -ERR are followed by the server closing the connection; keep the text for that error.
            self._last_error = line[4:].decode("utf-8", "replace").strip().strip("'")
            self.errors.append(self._last_error)
            logger.warning("NATS server error: %s", self._last_error)
        elif line.startswith(b"INFO "):
            self.server_info = json.loads(line[5:])
        # +OK (verbose mode only) needs nothing

    def _dispatch(self, sid: int, msg: Msg) -> None:
        callback = self._subs.get(sid)
        if callback is None:
            return  # unsubscribed while messages were in flight
        try:
            callback(msg)
        except Exception:  # a faulty callback must not stop the reader (and with it every other call)
            logger.exception("NATS subscription callback failed for %s", msg.subject)

    def _fail(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        error = ConnectionClosed(reason)
        for waiter in list(self._acks.values()) + list(self._pongs):
            waiter.set_exception(error)
        self._pongs.clear()
        self._out_ready.set()  # lets the writer greenlet end
        try:
            self._sock.close()
        except OSError:
            pass
