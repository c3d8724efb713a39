"""receiver, in Python, with the ebbtide Python SDK (functions/sdk-python).

The behaviour of functions/receiver/main.zig, as far as Python's json module allows (its syntax error
texts differ):
OK:     ["kv_put", <bucket>, <orderId in decimal>, <payload unchanged>]
REJECT: "malformed-json: ..."   invalid JSON, not an object, or a duplicated key
        "missing-order-id"
        "invalid-order-id: ..." orderId is not a JSON integer within i64
Config: bucket (required), a KV bucket name: [-_a-zA-Z0-9]+, at most 255 bytes.
"""

import re

from ebbtide_sdk import Message, Reject, kind_of, kv_put

BUCKET = re.compile(r"[-_a-zA-Z0-9]{1,255}")
I64 = range(-(2**63), 2**63)

bucket = ""


def init(config: dict[str, str]) -> None:
    global bucket
    value = config.get("bucket")
    if not value:
        raise Reject("config: bucket is required")
    if not isinstance(value, str) or not BUCKET.fullmatch(value):
        raise Reject("config: bucket must match [-_a-zA-Z0-9]+")
    bucket = value


def handle(message: Message) -> None:
    order = message.json()
    if not isinstance(order, dict):
        raise Reject(f"malformed-json: expected an object, got {kind_of(order)}")
    if "orderId" not in order:
        raise Reject("missing-order-id")
    order_id = order["orderId"]
    if type(order_id) is not int:  # bool is not an integer here
        got = "a fractional number" if isinstance(order_id, float) else kind_of(order_id)
        raise Reject(f"invalid-order-id: expected an integer, got {got}")
    if order_id not in I64:
        raise Reject("invalid-order-id: integer out of range")
    kv_put(bucket, str(order_id), message.payload)
