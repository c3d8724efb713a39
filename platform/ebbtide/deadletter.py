"""Dead letters: the original message, on `<prefix>.<function>`, with headers that say why."""

from __future__ import annotations

import time
from enum import Enum

# The dead-letter header names live with every other header name (broker/headers.py).
from .broker.headers import (
    H_DELIVERY_COUNT,
    H_ERROR,
    H_FAILED_AT,
    H_FIRST_FAILED_AT,
    H_FUNCTION,
    H_ORDER_KEY,
    H_ORIGINAL_MSG_ID,
    H_ORIGINAL_SEQUENCE,
    H_ORIGINAL_SIZE,
    H_ORIGINAL_STREAM,
    H_ORIGINAL_SUBJECT,
    H_REASON,
    H_SEQUENCE_BROKEN,
    header_lines_size,
)

MAX_ERROR_LENGTH = 1024


class Reason(str, Enum):
    """Why a message was dead-lettered (the `Ebbtide-Reason` header)."""

    REJECTED = "rejected"  # the guest refused the input (status REJECT)
    PAYLOAD_TOO_LARGE = "payload-too-large"
    HEADERS_TOO_LARGE = "headers-too-large"
    EFFECT_REFUSED = "effect-refused"  # an effect outside the allowlist
    RETRIES_EXHAUSTED = "retries-exhausted"  # transient failures until retry.max_deliver
    # Ordered functions: its effects were refused after a later message of its key was applied (executor.py).
    OVERTAKEN = "overtaken"


def header_safe(text: str) -> str:
    """Header values are one line of printable text."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_ERROR_LENGTH else flat[: MAX_ERROR_LENGTH - 3] + "..."


def _timestamp(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix)) + f".{int(unix % 1 * 1000):03d}Z"


def dead_letter_headers(
    *,
    function: str,
    reason: Reason,
    error: str,
    delivered: int,
    subject: str,
    stream: str,
    sequence: int,
    original_msg_id: str | None,
    first_failed_at: float | None = None,
    order_key: str | None = None,
) -> dict[str, str]:
    """`order_key`: the message's key when its function is ordered ("" without one): the dead letter then
    says that the key's sequence goes on without it."""
    headers = {
        H_FUNCTION: function,
        H_REASON: reason.value,
        H_ERROR: header_safe(error),
        H_DELIVERY_COUNT: str(delivered),
        H_ORIGINAL_SUBJECT: subject,
        H_ORIGINAL_STREAM: stream,
        H_ORIGINAL_SEQUENCE: str(sequence),
        H_FAILED_AT: _timestamp(time.time()),
    }
    if first_failed_at is not None:
        headers[H_FIRST_FAILED_AT] = _timestamp(first_failed_at)
    if original_msg_id:
        headers[H_ORIGINAL_MSG_ID] = header_safe(original_msg_id)
    if order_key is not None:
        headers[H_ORDER_KEY] = header_safe(order_key)  # read from the payload: any JSON string
        headers[H_SEQUENCE_BROKEN] = "true"
    return headers


HEADER_OVERHEAD = 64  # "NATS/1.0\r\n", the header terminator, Nats-Msg-Id, and margin


def fit_payload(payload: bytes, headers: dict[str, str], max_payload: int) -> bytes:
    """The payload, cut so that it and its headers fit the server's max_payload.

    An input close to the limit plus the dead-letter headers would exceed it, and a NATS server answers
    an oversized publish by closing the connection. The cut is recorded in `headers`.
    """
    header_bytes = HEADER_OVERHEAD + header_lines_size(headers)
    room = max_payload - header_bytes - len(H_ORIGINAL_SIZE) - 24
    if len(payload) + header_bytes <= max_payload:
        return payload
    headers[H_ORIGINAL_SIZE] = str(len(payload))
    return payload[: max(room, 0)]
