"""`ebbtide publish --file`: each line's orderGuid is its Nats-Msg-Id, so publishing a file twice within the
duplicate window stores each order once (a line without one is published without an id)."""

from __future__ import annotations

from ebbtide.commands.clients import _order_guid


def test_an_order_line_is_published_under_its_order_guid() -> None:
    assert _order_guid(b'{"orderId": 1, "orderGuid": "3f6c2d1e-8a4b"}') == "3f6c2d1e-8a4b"


def test_lines_without_a_usable_guid_get_no_id() -> None:
    for line in (b"not json", b'["orderGuid"]', b'{"orderGuid": ""}', b'{"orderGuid": 7}', b'{"orderId": 1}'):
        assert _order_guid(line) is None, line
