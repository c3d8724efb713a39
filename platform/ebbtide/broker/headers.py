"""Every NATS header name ebbtide reads or writes, and the size a header block takes on the wire.

Names and values are a contract: users' scripts and dashboards read the dead-letter headers, and other
services may set `Nats-Msg-Id` or `Ebbtide-Ingress-At` themselves. Change none of them.
"""

from __future__ import annotations

from collections.abc import Mapping

# -- set by NATS and JetStream -------------------------------------------------------------------------

#: Deduplication id: JetStream drops a second publish with the same id within the stream's duplicate
#: window. Every effect carries one derived from its input (`<stream>:<sequence>:<index>`), so a
#: redelivered input's effects are stored once.
H_MSG_ID = "Nats-Msg-Id"
#: On a message without a body: the server's status for a request (100 heartbeat, 404 no messages,
#: 408 request expired, 409 consumer deleted, 503 no responders).
H_STATUS = "Status"
#: Beside `Status`: the server's words for it ("No Messages", "Request Timeout", ...).
H_DESCRIPTION = "Description"
#: On a message of a pinned consumer (ordered lanes, ADR-42): the pin id its pull requests must carry.
H_PIN_ID = "Nats-Pin-Id"

# -- carried along the pipeline ------------------------------------------------------------------------

#: Server time (ns since the epoch) of the order's publish to the first function's stream. Every effect
#: carries it on, so each hop knows how long the order has been travelling (ebbtide_end_to_end_seconds).
H_INGRESS_AT = "Ebbtide-Ingress-At"

# -- on a dead letter (see deadletter.py) --------------------------------------------------------------

#: The function that gave up on the message.
H_FUNCTION = "Ebbtide-Function"
#: Why, as one of deadletter.Reason's values (rejected, payload-too-large, ...).
H_REASON = "Ebbtide-Reason"
#: The error text, one line, at most deadletter.MAX_ERROR_LENGTH characters.
H_ERROR = "Ebbtide-Error"
#: How many times the message had been delivered when it was dead-lettered.
H_DELIVERY_COUNT = "Ebbtide-Delivery-Count"
#: Where the message came from: its subject, stream and stream sequence.
H_ORIGINAL_SUBJECT = "Ebbtide-Original-Subject"
H_ORIGINAL_STREAM = "Ebbtide-Original-Stream"
H_ORIGINAL_SEQUENCE = "Ebbtide-Original-Sequence"
#: The input's own `Nats-Msg-Id`, when it had one.
H_ORIGINAL_MSG_ID = "Ebbtide-Original-Msg-Id"
#: The last failure: when the message was dead-lettered (ISO 8601, UTC, ms).
H_FAILED_AT = "Ebbtide-Failed-At"
#: The first transient failure, when this process saw it (absent when unknown).
H_FIRST_FAILED_AT = "Ebbtide-First-Failed-At"
#: The payload's original size, set only when the stored payload was cut to fit the server's max_payload.
H_ORIGINAL_SIZE = "Ebbtide-Original-Size"
#: On a dead letter of an ordered function (functions.X.order_by): the message's key ("" for a message
#: published without one), and `H_SEQUENCE_BROKEN: true`: the key's later messages went on without it.
H_ORDER_KEY = "Ebbtide-Order-Key"
H_SEQUENCE_BROKEN = "Ebbtide-Sequence-Broken"

# -- on a redriven message (see dlq.py) ----------------------------------------------------------------

#: The dead letter's sequence in the DLQ stream that `ebbtide dlq redrive` republished.
H_REDRIVEN_FROM = "Ebbtide-Redriven-From"

# -- size ----------------------------------------------------------------------------------------------

#: "NATS/1.0\r\n" and the blank line that ends the block.
HEADER_BLOCK_FRAMING = 12


def header_lines_size(headers: Mapping[str, str]) -> int:
    """Bytes the `Key: value\\r\\n` lines take (characters, as the limits count them), without the framing."""
    return sum(len(key) + len(value) + 4 for key, value in headers.items())
