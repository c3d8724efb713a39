"""The broker's small parts: header names (a contract), sizes, the JetStream API's errors, deliveries."""

from __future__ import annotations

import pytest

from ebbtide.broker import headers, jsapi
from ebbtide.broker.delivery import Incoming, nak_all, parse_ack_subject
from ebbtide.broker.publisher import ConfirmedPublisher, PublishBatch, PublishError
from ebbtide.errors import JetStreamError

from .fakes import FakeNats


def test_header_names_are_the_documented_ones() -> None:
    names = {name: value for name, value in vars(headers).items() if name.startswith("H_")}
    assert names == {
        "H_MSG_ID": "Nats-Msg-Id",
        "H_STATUS": "Status",
        "H_DESCRIPTION": "Description",
        "H_PIN_ID": "Nats-Pin-Id",
        "H_INGRESS_AT": "Ebbtide-Ingress-At",
        "H_FUNCTION": "Ebbtide-Function",
        "H_REASON": "Ebbtide-Reason",
        "H_ERROR": "Ebbtide-Error",
        "H_DELIVERY_COUNT": "Ebbtide-Delivery-Count",
        "H_ORIGINAL_SUBJECT": "Ebbtide-Original-Subject",
        "H_ORIGINAL_STREAM": "Ebbtide-Original-Stream",
        "H_ORIGINAL_SEQUENCE": "Ebbtide-Original-Sequence",
        "H_ORIGINAL_MSG_ID": "Ebbtide-Original-Msg-Id",
        "H_FAILED_AT": "Ebbtide-Failed-At",
        "H_FIRST_FAILED_AT": "Ebbtide-First-Failed-At",
        "H_ORIGINAL_SIZE": "Ebbtide-Original-Size",
        "H_ORDER_KEY": "Ebbtide-Order-Key",
        "H_SEQUENCE_BROKEN": "Ebbtide-Sequence-Broken",
        "H_REDRIVEN_FROM": "Ebbtide-Redriven-From",
    }


def test_header_sizes() -> None:
    assert headers.header_lines_size({"Ab": "cde"}) == len("Ab: cde\r\n")


async def test_the_publisher_refuses_what_the_server_would_close_the_connection_for() -> None:
    nc = FakeNats(max_payload=100)
    publisher = ConfirmedPublisher(nc)  # type: ignore[arg-type]
    await publisher.start()
    msg_id = "x" * 10
    fits = 100 - headers.HEADER_BLOCK_FRAMING - headers.header_lines_size({headers.H_MSG_ID: msg_id})
    batch = PublishBatch()
    publisher.add(batch, "test.out", b"a" * fits, msg_id)
    publisher.add(batch, "test.out", b"a" * (fits + 1), msg_id)
    [confirmed, refused] = await publisher.wait(batch, timeout=1)
    assert not isinstance(confirmed, PublishError)
    assert isinstance(refused, PublishError) and "exceeds the server's max_payload 100" in str(refused)
    assert len(nc.sent_to("test.out")) == 1  # the refused one never went out


def test_an_api_error_carries_the_servers_codes() -> None:
    error = JetStreamError("STREAM.INFO.DLQ", "stream not found", code=404, err_code=10059)
    assert (error.code, error.err_code, error.description) == (404, 10059, "stream not found")
    assert str(error) == "STREAM.INFO.DLQ: stream not found (err_code 10059)"


def test_replies_decode_into_their_own_structs() -> None:
    class Purged(jsapi.ApiResponse):
        purged: int = 0

    assert jsapi.decode(Purged, b'{"purged": 3}').purged == 3
    assert jsapi.decode(Purged, b'{"error": {"code": 400, "err_code": 1, "description": "no"}}').error == jsapi.ApiError(
        400, 1, "no"
    )


def test_a_delivery_reads_its_ack_subject() -> None:
    nc = FakeNats()
    msg = nc.delivery(b"x", sequence=12, delivered=2)
    incoming = Incoming(msg, parse_ack_subject(msg.reply))
    assert (incoming.delivery.stream, incoming.delivery.sequence, incoming.delivery.delivered) == ("TEST", 12, 2)
    assert (incoming.subject, incoming.data, incoming.headers) == ("in.chaos", b"x", None)
    with pytest.raises(ValueError):
        parse_ack_subject("_INBOX.1")


async def test_handing_a_batch_back_skips_what_was_settled_and_naks_the_rest() -> None:
    """At shutdown past the grace period a batch is nak'ed whole; a message of it already acked (or nak'ed as
    a retry) is skipped, not the end of the loop (nats-py refuses to settle a message twice)."""
    nc = FakeNats()
    acked, retried, waiting = (nc.delivery(b"x", sequence=i) for i in (1, 2, 3))
    await acked.ack()
    await retried.nak(delay=5)
    await nak_all([acked, retried, waiting], 1.5)
    assert nc.acks(acked) == [b""] and nc.acks(retried) == [b'-NAK {"delay": 5000000000}']
    assert nc.acks(waiting) == [b'-NAK {"delay": 1500000000}']  # before: never sent
