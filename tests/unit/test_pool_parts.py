import pytest

from ebbtide.broker.delivery import Delivery, parse_ack_subject
from ebbtide.deadletter import Reason, dead_letter_headers, header_safe


def test_ack_subject_v1() -> None:
    assert parse_ack_subject("$JS.ACK.ORDERS.distributor.3.1042.17.1732800000000000000.5") == Delivery(
        "ORDERS", 1042, 3, 1732800000000000000
    )


def test_ack_subject_v2_with_domain_and_account() -> None:
    reply = "$JS.ACK.hub.ACCHASH.ORDERS.distributor.1.99.12.1732800000000000000.0.tok"
    assert parse_ack_subject(reply) == Delivery("ORDERS", 99, 1, 1732800000000000000)


def test_ack_subject_rejects_other_subjects() -> None:
    with pytest.raises(ValueError):
        parse_ack_subject("_INBOX.abc")


def test_dead_letter_headers_are_single_line_and_bounded() -> None:
    headers = dead_letter_headers(
        function="f",
        reason=Reason.REJECTED,
        error="line one\r\nline two" + "x" * 5000,
        delivered=2,
        subject="orders.ingress",
        stream="ORDERS",
        sequence=7,
        original_msg_id=None,
    )
    assert headers["Ebbtide-Error"].startswith("line one line two")
    assert len(headers["Ebbtide-Error"]) == 1024
    assert headers["Ebbtide-Reason"] == "rejected"
    assert headers["Ebbtide-Delivery-Count"] == "2"
    assert "Ebbtide-Original-Msg-Id" not in headers
    assert header_safe("a\tb") == "a b"


def test_json_log_lines_carry_the_context() -> None:
    import json
    import logging

    from ebbtide.telemetry.logs import JsonFormatter

    record = logging.LogRecord("ebbtide.pool", logging.WARNING, __file__, 1, "dead-lettering %s", ("ORDERS #7",), None)
    record.function, record.reason, record.trace_id = "distributor", "rejected", "4bf92f3577b34da6a3ce929d0e0e4736"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "dead-lettering ORDERS #7" and line["level"] == "warning"
    assert (line["function"], line["reason"], line["trace_id"]) == ("distributor", "rejected", "4bf92f3577b34da6a3ce929d0e0e4736")
    assert line["time"].endswith("Z") and "stream" not in line


def test_histogram_buckets_are_upper_bounds() -> None:
    from ebbtide.telemetry.metrics import Histogram

    histogram = Histogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 5.0):
        histogram.observe(seconds)
    assert histogram.counts == [2, 1, 1]  # le=0.001 holds 0.001 itself; 5 s lands in +Inf
    assert histogram.count == 4 and histogram.sum == pytest.approx(5.0035)
