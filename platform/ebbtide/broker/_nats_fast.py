"""The nats-py internals ebbtide's hot path relies on, in one place (nats-py is pinned in pyproject.toml).

Profiled through 10,000 messages, a function process spent most of its host time in nats-py's per-message
path: each `publish()` (one per effect and one per ack) validates its subject, encodes its headers key by
key and checks the flusher's queue; each delivered message and each PubAck goes through a queue, a task
switch and an `await` of the subscription's callback. Here instead:

- `write`: protocol bytes for many messages (built with `pub`/`hpub`) appended in one `_send_command`,
  then the flusher kicked, as `publish()` does;
- `subscribe_direct`: each message handed to a plain function as the read loop parses it, with no queue
  or task in between (nats-py's `_process_msg` puts it into `Subscription._pending_queue`; that queue is
  replaced by one that calls the function);
- `mark_settled`: a message acked through `write` is marked as acked, so nats-py refuses a second ack;
- `parse_header_lines`: nats-py's own header parser, the same result at half the cost (it tests each
  name's characters one by one in a generator); installed in place of nats-py's when this module loads.

tests/unit/test_nats_fast.py fails loudly when a nats-py release changes what this relies on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

log = logging.getLogger("ebbtide.broker")

_NEWLINES = str.maketrans({"\r": " ", "\n": " "})  # as nats-py: a header value stays on its line


def header_block(headers: Mapping[str, str]) -> bytes:
    """`NATS/1.0` header block for HPUB; keys are ebbtide's own (broker/headers.py), values kept on one line."""
    lines = "".join([f"{key}: {value.translate(_NEWLINES)}\r\n" for key, value in headers.items()])
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def hpub(subject: str, reply: str, header: bytes, payload: bytes) -> bytes:
    """A publish with headers and a reply subject, as nats-py would send it."""
    return b"".join((f"HPUB {subject} {reply} {len(header)} {len(header) + len(payload)}\r\n".encode(), header, payload, b"\r\n"))


def pub(subject: str, payload: bytes = b"") -> bytes:
    """A publish without headers or reply (an ack: `pub(msg.reply)`, empty as nats-py's `Msg.ack`)."""
    return b"".join((f"PUB {subject} {len(payload)}\r\n".encode(), payload, b"\r\n"))


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
    """`Client._parse_header_lines` of nats-py 2.16.0, line for line, with its whitespace test on a name
    (`any(c.isspace() for c in key)`) as one `str.split` (the same characters count as whitespace)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if key and key.split() != [key]:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


NATS_PY_PARSE_HEADER_LINES = NatsClient._parse_header_lines  # kept for the test that compares the two
NatsClient._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]


class _Dispatch(asyncio.Queue[Msg]):
    """Stands in for a subscription's pending queue: each message goes straight to `on_message`."""

    def __init__(self, subscription: Subscription, on_message: Callable[[Msg], None]) -> None:
        super().__init__()
        self._subscription = subscription
        self._on_message = on_message

    def put_nowait(self, item: Msg) -> None:
        self._subscription._pending_size -= len(item.data)  # counted by _process_msg, never dequeued
        try:
            self._on_message(item)
        except Exception:  # an exception here would end the connection's read loop
            log.exception("message handler failed on %s", item.subject)


async def subscribe_direct(nc: NatsClient, subject: str, on_message: Callable[[Msg], None]) -> Subscription:
    """Subscribe with `on_message` called synchronously for each message, in the order they arrive."""
    subscription = await nc.subscribe(subject)
    subscription._pending_queue = _Dispatch(subscription, on_message)
    return subscription
