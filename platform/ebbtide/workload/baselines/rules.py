"""The distributor's and the receiver's rules in pure Python, as in functions/distributor/main.zig and
functions/receiver/main.zig: the same accept/reject decisions and reason prefixes, the same routing and the
same stored value (the payload unchanged, keyed by orderId in decimal).
"""

from __future__ import annotations

import json
from typing import Any

EXPRESS_SUBJECT = "orders.express"
STANDARD_SUBJECT = "orders.standard"
_I64 = (-(2**63), 2**63 - 1)
_CHECKED_KEYS = ("orderId", "delivery", "items")  # the guests refuse a duplicate of these (top level only)


class Rejected(Exception):
    """A permanent rejection: the message goes to the dead-letter stream with this reason."""


class _Object(dict[str, Any]):
    duplicates: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = frozenset(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid literal {name}")  # JSON has no NaN/Infinity; Python's json would accept them


def _parse(payload: bytes) -> _Object:
    try:
        order = json.loads(payload, object_pairs_hook=_object, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(f"malformed-json: {exc}") from None
    if not isinstance(order, _Object):
        raise Rejected(f"malformed-json: expected an object, got {type(order).__name__}")
    return order


def _field(order: _Object, key: str) -> Any:
    if key in order.duplicates:
        raise Rejected(f'malformed-json: duplicate key "{key}"')
    return order.get(key)


def _order_id(order: _Object) -> int:
    if "orderId" not in order:
        raise Rejected("missing-order-id")
    value = _field(order, "orderId")
    if isinstance(value, bool) or not isinstance(value, int):  # 1.0 and true are not integers
        raise Rejected(f"invalid-order-id: expected an integer, got {type(value).__name__}")
    if not _I64[0] <= value <= _I64[1]:
        raise Rejected("invalid-order-id: out of range for i64")
    return value


def route(payload: bytes) -> str:
    """The distributor: the subject to forward the unchanged payload to, or Rejected."""
    order = _parse(payload)
    _order_id(order)
    if "delivery" not in order:
        raise Rejected("unknown-delivery: delivery is missing")
    delivery = _field(order, "delivery")
    if not isinstance(delivery, str):
        raise Rejected(f"unknown-delivery: expected a string, got {type(delivery).__name__}")
    kind = delivery.lower() if delivery.isascii() else ""  # the guest compares ASCII case-insensitively
    if kind not in ("express", "standard"):
        raise Rejected(f"unknown-delivery: {json.dumps(delivery)}")
    if "items" not in order:
        raise Rejected("no-items: items is missing")
    items = _field(order, "items")
    if not isinstance(items, list):
        raise Rejected(f"no-items: expected an array, got {type(items).__name__}")
    if not items:
        raise Rejected("no-items: items is empty")
    return EXPRESS_SUBJECT if kind == "express" else STANDARD_SUBJECT


def outbox_key(payload: bytes) -> str:
    """The receiver: the outbox key (orderId in decimal) under which the unchanged payload is stored."""
    return str(_order_id(_parse(payload)))
