"""The raw JetStream API: request subjects, replies as msgspec structs, and one error with the server's codes.

Spoken raw (not through nats-py's JetStreamContext) where nats-py hides what ebbtide needs: the
`err_code` of an error, `no_erase` deletes, purge counts, a PubAck decoded without a task per publish.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient

from ..errors import JetStreamError, UnreadableReply

API_PREFIX = "$JS.API"
API_TIMEOUT_S = 5.0

# The server's err_code values that callers tell apart (nats-server's errors.json).
ERR_NO_MESSAGE_FOUND = 10037
ERR_SEQUENCE_NOT_FOUND = 10057  # e.g. deleting a sequence that is already gone
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
