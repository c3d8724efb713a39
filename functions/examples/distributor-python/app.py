"""distributor, in Python, with the ebbtide Python SDK (functions/sdk-python): validates an order and
routes it by delivery type. The behaviour of functions/distributor/main.zig, as far as Python's json
module allows (its syntax error texts differ):

OK:     ["publish", <express_subject | standard_subject>, <payload unchanged>]
REJECT: "malformed-json: ..."   invalid JSON, not an object, or a duplicated key
        "missing-order-id"
        "invalid-order-id: ..." orderId is not a JSON integer within i64
        "unknown-delivery: ..." delivery missing, not a string, or not express|standard (any case)
        "no-items: ..."         items missing, not an array, or empty
Config (all optional): express_subject (default "orders.express"), standard_subject (default "orders.standard").
"""

import json
import re

from ebbtide_sdk import Message, Reject, kind_of, publish

SUBJECT = re.compile(r"[^\x00-\x20\x7f*>.]+(\.[^\x00-\x20\x7f*>.]+)*")  # a NATS publish subject
I64 = range(-(2**63), 2**63)

routes = {"express": "orders.express", "standard": "orders.standard"}


def init(config: dict[str, str]) -> None:
    for delivery in ("express", "standard"):
        key = f"{delivery}_subject"
        subject = config.get(key, routes[delivery])
        if not isinstance(subject, str):
            raise Reject(f"config: {key} expected a string, got {kind_of(subject)}")
        if not SUBJECT.fullmatch(subject):
            raise Reject(f"config: {key} is not a valid NATS subject")
        routes[delivery] = subject


def handle(message: Message) -> None:
    order = message.json()
    if not isinstance(order, dict):
        raise Reject(f"malformed-json: expected an object, got {kind_of(order)}")
    if "orderId" not in order:
        raise Reject("missing-order-id")
    order_id = order["orderId"]
    if type(order_id) is not int:
        got = "a fractional number" if isinstance(order_id, float) else kind_of(order_id)
        raise Reject(f"invalid-order-id: expected an integer, got {got}")
    if order_id not in I64:
        raise Reject("invalid-order-id: integer out of range")

    if "delivery" not in order:
        raise Reject("unknown-delivery: delivery is missing")
    delivery = order["delivery"]
    if not isinstance(delivery, str):
        raise Reject(f"unknown-delivery: expected a string, got {kind_of(delivery)}")
    subject = routes.get(delivery.lower()) if delivery.isascii() else None
    if subject is None:
        raise Reject(f"unknown-delivery: {json.dumps(delivery, ensure_ascii=False)}")

    if "items" not in order:
        raise Reject("no-items: items is missing")
    items = order["items"]
    if not isinstance(items, list):
        raise Reject(f"no-items: expected an array, got {kind_of(items)}")
    if not items:
        raise Reject("no-items: items is empty")
    publish(subject, message.payload)
