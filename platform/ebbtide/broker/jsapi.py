"""The raw JetStream API: request subjects, replies as msgspec structs, and one error with the server's codes.

Spoken raw (not through nats-py's JetStreamContext) where nats-py hides what ebbtide needs: the
`err_code` of an error, `no_erase` deletes, purge counts, a PubAck decoded without a task per publish.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient

from ..errors import JetStreamError, UnreadableReply

API_PREFIX = "$JS.API"
API_TIMEOUT_S = 5.0

# The server's err_code values that callers tell apart (nats-server's errors.json).
ERR_NO_MESSAGE_FOUND = 10037
ERR_SEQUENCE_NOT_FOUND = 10057  # e.g. deleting a sequence that is already gone
ERR_STREAM_NAME_IN_USE = 10058
ERR_STREAM_NOT_FOUND = 10059


class ApiError(msgspec.Struct):
    """The `error` object of a JetStream API reply."""

    code: int = 0  # HTTP-like: 400, 404, 503, ...
    err_code: int = 0  # the server's precise error number (ERR_*)
    description: str = ""


class ApiResponse(msgspec.Struct):
    """Base of every reply: `error` is set when the server refused the request."""

    error: ApiError | None = None


R = TypeVar("R", bound=ApiResponse)
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def decode(reply_type: type[R], data: bytes) -> R:
    """A reply as `reply_type`; raises msgspec.DecodeError if it is not one."""
    decoder = _decoders.get(reply_type)
    if decoder is None:
        decoder = _decoders[reply_type] = msgspec.json.Decoder(reply_type)
    reply: R = decoder.decode(data)
    return reply


async def request(
    nc: NatsClient, subject: str, body: dict[str, object] | None, reply_type: type[R], timeout: float = API_TIMEOUT_S
) -> R:
    """Send `$JS.API.<subject>` and decode the reply.

    Raises JetStreamError for an error reply, UnreadableReply for a reply that does not decode, and
    nats-py's NoRespondersError or TimeoutError when JetStream does not answer.
    """
    payload = msgspec.json.encode(body) if body is not None else b""
    msg = await nc.request(f"{API_PREFIX}.{subject}", payload, timeout=timeout)
    try:
        reply = decode(reply_type, msg.data)
    except msgspec.DecodeError:
        raise UnreadableReply(f"unreadable JetStream reply to {subject}: {msg.data[:200]!r}") from None
    if reply.error is not None:
        raise JetStreamError(subject, reply.error.description, reply.error.code, reply.error.err_code)
    return reply


def next_message_subject(stream: str, consumer: str) -> str:
    """Where a pull consumer's requests for messages go."""
    return f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


# -- reading stored messages (dead letters, shadow samples, a stream range for replay) --------------------


class StoredMessage(msgspec.Struct):
    """A message as STREAM.MSG.GET returns it: headers and data base64-encoded, `time` when it was stored."""

    subject: str
    seq: int
    hdrs: str | None = None
    data: str | None = None
    time: str = ""  # ISO 8601, UTC, ns

    @property
    def payload(self) -> bytes:
        return base64.b64decode(self.data) if self.data else b""

    @property
    def headers(self) -> dict[str, str]:
        return parse_headers(base64.b64decode(self.hdrs)) if self.hdrs else {}


class StoredMessageReply(ApiResponse):
    message: StoredMessage | None = None


def stored_time_unix(iso: str) -> float:
    """A stored message's `time` (RFC 3339, UTC, up to ns: 2026-11-29T05:30:01.123456789Z) as unix seconds."""
    whole, _, fraction = iso.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


async def first_stored_at(nc: NatsClient, stream: str, subject_filter: str, from_seq: int, timeout: float) -> float | None:
    """When the first message of `stream` at or after `from_seq` on `subject_filter` was stored (unix
    seconds); None when there is none."""
    try:
        reply = await request(
            nc, f"STREAM.MSG.GET.{stream}", {"seq": max(from_seq, 1), "next_by_subj": subject_filter}, StoredMessageReply, timeout
        )
    except JetStreamError as exc:
        if exc.err_code in (ERR_NO_MESSAGE_FOUND, ERR_SEQUENCE_NOT_FOUND):
            return None
        raise
    return stored_time_unix(reply.message.time) if reply.message is not None and reply.message.time else None


class StreamConfig(msgspec.Struct):
    subjects: list[str] = []
    retention: str = "limits"
    max_msgs_per_subject: int = -1


class StreamState(msgspec.Struct):
    messages: int = 0
    first_seq: int = 0
    last_seq: int = 0
    subjects: dict[str, int] | None = None  # per subject, when asked for with `subjects_filter`


class StreamInfoReply(ApiResponse):
    config: StreamConfig | None = None
    state: StreamState | None = None


def parse_headers(block: bytes) -> dict[str, str]:
    """A stored header block ("NATS/1.0\\r\\nKey: value\\r\\n...\\r\\n\\r\\n"), the first value of each key."""
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip():
            headers.setdefault(key.strip(), value.strip())
    return headers


async def stream_info(nc: NatsClient, stream: str, subjects_filter: str | None = None) -> StreamInfoReply:
    """STREAM.INFO; with `subjects_filter`, `state.subjects` counts the messages of each matching subject."""
    body: dict[str, object] | None = {"subjects_filter": subjects_filter} if subjects_filter else None
    return await request(nc, f"STREAM.INFO.{stream}", body, StreamInfoReply)


async def stored_messages(
    nc: NatsClient, stream: str, subject_filter: str, first: int, last: int
) -> AsyncGenerator[StoredMessage, None]:
    """The messages of `stream` on `subject_filter` with a sequence in [first, last], oldest first.

    Each request returns the first stored message at or after a sequence whose subject matches
    (`next_by_subj`), so deleted sequences and other subjects cost nothing and nothing is created on the
    server (no consumer to clean up)."""
    seq = max(first, 1)
    while seq <= last:
        try:
            reply = await request(
                nc, f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": subject_filter}, StoredMessageReply
            )
        except JetStreamError as exc:
            if exc.err_code in (ERR_NO_MESSAGE_FOUND, ERR_SEQUENCE_NOT_FOUND):
                return
            raise
        stored = reply.message
        if stored is None or stored.seq > last:
            return
        yield stored
        seq = stored.seq + 1
