"""The nats-py internals ebbtide's hot path relies on, in one place (tests/unit/test_nats_fast.py guards them).

Profiled through 10,000 messages, a function process spent most of its host time in nats-py's per-message
path: each `publish()` (one per effect and one per ack) validates its subject, encodes its headers key by
key and checks the flusher's queue; each delivered message and each PubAck goes through a queue, a task
switch and an `await` of the subscription's callback. Here instead:

- `FastNatsClient`: the class of ebbtide's own connections (broker/connection.py makes them), a subclass
  of nats-py's `Client`. It parses header blocks with `parse_header_lines` (nats-py's own parser, the
  same result at half the cost), and its `subscribe_direct` hands each message to a plain function as the
  read loop parses it, with no queue or task in between. Its protocol parser is `FastParser`, a subclass
  of nats-py's `Parser` that reads MSG/HMSG control lines by splitting them instead of nats-py's regular
  expressions and hands a direct subscription's message over without a coroutine per message (profiled:
  nats-py's parser and `_process_msg` were 15 % of a function process's host time). Nothing else changes:
  nats-py's `Client`, `Parser`, its subscriptions and any client an application makes itself are left
  exactly as published.
- `subscribe_direct(nc, ...)`: that, on a `FastNatsClient`; on any other client (one an application
  passed in) nats-py's public `subscribe(cb=...)`, the same messages in the same order, at nats-py's cost;
- `write`: protocol bytes for many messages (built with `pub`/`hpub`) appended in one `_send_command`,
  then the flusher kicked, as `publish()` does;
- `mark_settled`: a message acked through `write` is marked as acked, so nats-py refuses a second ack.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import nats.aio.client
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.protocol.parser import AWAITING_CONTROL_LINE, MAX_CONTROL_LINE_SIZE, Parser

log = logging.getLogger("ebbtide.broker")

_NEWLINES = str.maketrans({"\r": " ", "\n": " "})  # as nats-py: a header value stays on its line


def header_block(headers: Mapping[str, str]) -> bytes:
    """`NATS/1.0` header block for HPUB; keys are ebbtide's own (broker/headers.py), values kept on one line."""
    lines = "".join(
        [
            f"{key}: {value}\r\n" if "\r" not in value and "\n" not in value else f"{key}: {value.translate(_NEWLINES)}\r\n"
            for key, value in headers.items()
        ]
    )  # translate only where needed: it costs twice the rest (timeit)
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def hpub(subject: str, reply: str, header: bytes, payload: bytes) -> bytes:
    """A publish with headers and a reply subject, as nats-py would send it."""
    return b"".join((f"HPUB {subject} {reply} {len(header)} {len(header) + len(payload)}\r\n".encode(), header, payload, b"\r\n"))


def pub(subject: str, payload: bytes = b"", reply: str = "") -> bytes:
    """A publish without headers (an ack: `pub(msg.reply)`, empty as nats-py's `Msg.ack`)."""
    head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else f"PUB {subject} {len(payload)}\r\n"
    return b"".join((head.encode(), payload, b"\r\n"))


async def write(nc: NatsClient, data: bytes, messages: int) -> None:
    """Send `messages` messages' protocol bytes at once, with `publish()`'s refusals when they cannot go."""
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if not nc.is_connected and (nc._max_pending_size <= 0 or len(data) + nc._pending_data_size > nc._max_pending_size):
        raise nats.errors.OutboundBufferLimitError
    nc.stats["out_msgs"] += messages
    nc.stats["out_bytes"] += len(data)
    await nc._send_command(data)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def client_of(msg: Msg) -> NatsClient:
    """The connection a delivered message came on (its acks go back on it)."""
    return msg._client


def client_of_jetstream(js: JetStreamContext) -> NatsClient:
    """The connection a JetStreamContext speaks on (for the API requests nats-py has no method for)."""
    client: NatsClient = js._nc
    return client


def mark_settled(msg: Msg) -> None:
    """`msg` was acked through `write`: nats-py's own ack/nak/term now raise MsgAlreadyAckdError, as after
    its `Msg.ack()`."""
    msg._ackd = True


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """FastNatsClient's header parser: `Client._parse_header_lines` of nats-py 2.16.0, line for line, with
    its checks on a name (stripped, ASCII, no whitespace inside: `any(c.isspace() for c in key)`) made once
    per distinct name and remembered (`_header_name`)."""
    out: dict[str, str] = {}
    names = _header_names
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = names[name]
        except KeyError:
            key = _header_name(name)
            if len(names) < _HEADER_NAMES_REMEMBERED:
                names[name] = key
        if key is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out


def _header_name(name: bytes) -> str | None:
    """The header key nats-py makes of a line's `name` (before the colon), or None where it skips the line."""
    try:
        key = name.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    if key and key.split() != [key]:  # whitespace inside (str.split counts the same characters as isspace)
        return None
    return key


# Header names as they come on the wire, checked once: ebbtide's messages carry a handful of distinct ones;
# the bound keeps a stream of ever new names (someone else's publisher) from growing the table.
_header_names: dict[bytes, str | None] = {}
_HEADER_NAMES_REMEMBERED = 256


# nats-py's own header-line parser (2.15 and later), which FastNatsClient's replaces and must equal (tests);
# None in older releases, which parse headers their own way: FastNatsClient then leaves that as it is.
NATS_PY_PARSE_HEADER_LINES: Callable[[bytes], dict[str, str]] | None = getattr(NatsClient, "_parse_header_lines", None)

OnMessage = Callable[[Msg], None]


class FastNatsClient(NatsClient):
    """nats-py's client with ebbtide's hot path; the class of every connection ebbtide makes itself.

    Three differences from its base class, all confined to instances of this class: header blocks are
    parsed by `parse_header_lines` (where nats-py has the parser it replaces); a subscription made with
    `subscribe_direct` has each message handed to a plain function by the read loop itself (`FastParser`,
    or `_process_msg` for what it leaves to nats-py), instead of through the subscription's queue and a
    task awaiting a callback; and the protocol parser is `FastParser`.
    """

    if NATS_PY_PARSE_HEADER_LINES is not None:
        _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, OnMessage] = {}  # subscription id -> the function its messages go to
        self._ps = FastParser(self)

    async def subscribe_direct(self, subject: str, on_message: OnMessage) -> Subscription:
        """Subscribe with `on_message` called synchronously for each message, in the order they arrive."""
        subscription = await self.subscribe(subject)
        live = self._subs
        for gone in [sid for sid in self._direct if sid not in live]:  # unsubscribed since: forget them
            del self._direct[gone]
        self._direct[subscription._id] = on_message
        # Anything the read loop took while `subscribe` awaited its flush went into the queue: first, in order.
        queued = subscription._pending_queue
        while not queued.empty():
            msg = queued.get_nowait()
            queued.task_done()  # the subscription's drain() joins this queue
            subscription._pending_size -= len(msg.data)
            _deliver(on_message, msg)
        return subscription

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        on_message = self._direct.get(sid)
        if on_message is None or sid not in self._subs:  # not direct, or unsubscribed: nats-py's own way
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        msg = self._build_message(sid, subject, reply, data, await self._process_headers(headers))
        if msg:
            _deliver(on_message, msg)


# The header blocks FastParser reads itself: plain ones (no inline status such as `NATS/1.0 404`), and only
# where nats-py parses them with the parser FastNatsClient replaces (not with fast_mail_parser's).
_PLAIN_HEADER_LINE = b"NATS/1.0\r\n"
_HEADERS_READ_HERE = NATS_PY_PARSE_HEADER_LINES is not None and getattr(nats.aio.client, "parse_email", None) is None


class FastParser(Parser):
    """nats-py's protocol parser with a fast path for the messages a FastNatsClient receives.

    A complete MSG or HMSG at the front of the buffer is read by splitting its control line; when its
    subscription is direct and its headers plain, the message is built and handed to the subscription's
    function right here, as `FastNatsClient._process_msg` would (counted, headers parsed, built, handed
    over), without awaiting a coroutine per message. Any other message goes to `_process_msg` as in
    nats-py's parser, and anything else (PING, PONG, INFO, +OK, -ERR, a line that does not parse) to
    nats-py's own `parse` with the rest of the buffer, so the connection's protocol handling stays nats-py's.
    """

    nc: FastNatsClient

    async def parse(self, data: bytes = b"") -> None:
        if self.state != AWAITING_CONTROL_LINE:  # nats-py's parse is in the middle of a message: it finishes
            await super().parse(data)
            return
        buf = self.buf
        if buf:  # the rest of the last read first
            buf.extend(data)
            data = bytes(buf)
        nc = self.nc
        direct = nc._direct
        subs = nc._subs
        stats = nc.stats
        make = nc.msg_class
        pos = 0
        size = len(data)
        not_a_message = False
        while pos < size:
            end = data.find(b"\r\n", pos)
            if end < 0:
                not_a_message = size - pos >= MAX_CONTROL_LINE_SIZE  # nats-py's parser decides what that is
                break  # the control line is not all here yet
            parts = data[pos:end].split()
            op = parts[0] if parts else b""
            try:
                if op == b"HMSG" and len(parts) in (5, 6):
                    header_size, total, has_reply = int(parts[-2]), int(parts[-1]), len(parts) == 6
                elif op == b"MSG" and len(parts) in (4, 5):
                    header_size, total, has_reply = 0, int(parts[-1]), len(parts) == 5
                else:
                    header_size = total = -1
                sid = int(parts[2])
            except (ValueError, IndexError):
                header_size = total = -1
            if not 0 <= header_size <= total:
                not_a_message = True  # PING, INFO, -ERR...: nats-py's parser (it raises on a malformed MSG)
                break
            start = end + 2
            stop = start + total
            if stop + 2 > size:
                break  # the payload is not all here yet: read again from this control line
            subject = parts[1]
            reply = parts[3] if has_reply else b""
            header = data[start : start + header_size] if header_size else None
            pos = stop + 2
            on_message = direct.get(sid)
            if (
                on_message is not None
                and sid in subs
                and (header is None or (_HEADERS_READ_HERE and header.startswith(_PLAIN_HEADER_LINE)))
            ):
                payload = data[start + header_size : stop]
                stats["in_msgs"] += 1
                stats["in_bytes"] += len(payload)
                # As nats-py's _process_headers for a block without inline status: lines after `NATS/1.0`.
                headers = (parse_header_lines(header[10:]) or None) if header is not None and len(header) > 10 else None
                msg = make(subject=subject.decode(), reply=reply.decode(), data=payload, headers=headers, _client=nc, _sid=sid)
                _deliver(on_message, msg)
                continue
            # nats-py's way for this one, the buffer holding the rest as nats-py's parser leaves it before awaiting.
            self._keep(data, pos)
            await nc._process_msg(sid, subject, reply, data[start + header_size : stop], header)  # type: ignore[arg-type]
            if self.buf is not buf:  # the parser was reset while it awaited (a reconnect): nothing left to read
                return
            data, pos, size = bytes(buf), 0, len(buf)
        self._keep(data, pos)
        if not_a_message:
            await super().parse()  # from here on nats-py's own parser, with the rest of the buffer

    def _keep(self, data: bytes, pos: int) -> None:
        """Leave the unparsed rest of `data` in the buffer, where nats-py's parser expects it."""
        buf = self.buf
        buf.clear()
        if pos < len(data):
            buf.extend(memoryview(data)[pos:])


def _deliver(on_message: OnMessage, msg: Msg) -> None:
    try:
        on_message(msg)
    except Exception:  # an exception here would end the connection's read loop
        log.exception("message handler failed on %s", msg.subject)


async def subscribe_direct(nc: NatsClient, subject: str, on_message: OnMessage) -> Subscription:
    """Subscribe with `on_message` called for each message, in the order they arrive: synchronously by the
    read loop on ebbtide's own connections, through nats-py's public callback on any other client."""
    if isinstance(nc, FastNatsClient):
        return await nc.subscribe_direct(subject, on_message)

    async def callback(msg: Msg) -> None:
        _deliver(on_message, msg)

    return await nc.subscribe(subject, cb=callback)
