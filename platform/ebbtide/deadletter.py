"""Dead letters: the original message, on `<prefix>.<function>`, with headers that say why."""

from __future__ import annotations

import time
from enum import Enum

H_FUNCTION = "Ebbtide-Function"
H_ERROR = "Ebbtide-Error"
H_REASON = "Ebbtide-Reason"
H_DELIVERY_COUNT = "Ebbtide-Delivery-Count"
H_ORIGINAL_SUBJECT = "Ebbtide-Original-Subject"
H_ORIGINAL_STREAM = "Ebbtide-Original-Stream"
H_ORIGINAL_SEQUENCE = "Ebbtide-Original-Sequence"
H_ORIGINAL_MSG_ID = "Ebbtide-Original-Msg-Id"
H_FAILED_AT = "Ebbtide-Failed-At"

MAX_ERROR_LENGTH = 1024


class Reason(str, Enum):
    """Why a message was dead-lettered (the `Ebbtide-Reason` header)."""

    REJECTED = "rejected"  # the guest refused the input (status REJECT)
    PAYLOAD_TOO_LARGE = "payload-too-large"
    EFFECT_REFUSED = "effect-refused"  # an effect outside the allowlist
    RETRIES_EXHAUSTED = "retries-exhausted"  # transient failures until retry.max_deliver


def header_safe(text: str) -> str:
    """Header values are one line of printable text."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_ERROR_LENGTH else flat[: MAX_ERROR_LENGTH - 3] + "..."


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
) -> dict[str, str]:
    headers = {
        H_FUNCTION: function,
        H_REASON: reason.value,
        H_ERROR: header_safe(error),
        H_DELIVERY_COUNT: str(delivered),
        H_ORIGINAL_SUBJECT: subject,
        H_ORIGINAL_STREAM: stream,
        H_ORIGINAL_SEQUENCE: str(sequence),
        H_FAILED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if original_msg_id:
        headers[H_ORIGINAL_MSG_ID] = header_safe(original_msg_id)
    return headers
