"""receiver, in Python (a component built by componentize-py, run by platform/ebbtide/runtime/component.py).

The behaviour of functions/receiver/main.zig, as far as Python's json module allows (its error texts differ):
OK:     ["kv_put", <bucket>, <orderId in decimal>, <payload unchanged>]
REJECT: "malformed-json: ..."   invalid JSON, not an object, or a duplicated orderId key
        "missing-order-id"
        "invalid-order-id: ..." orderId is not a JSON integer within i64
Config: bucket (required), a KV bucket name: [-_a-zA-Z0-9]+.
"""

import json
import re

import wit_world
from componentize_py_types import Err

OK, REJECT, RETRY = 0, 1, 2
BUCKET = re.compile(r"[-_a-zA-Z0-9]+")
I64 = range(-(2**63), 2**63)
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class DuplicateKey(ValueError):
    pass


def _pairs(pairs: list) -> dict:
    # orderId twice is refused, as by the Zig SDK: which one wins is ambiguous between parsers
    keys = [key for key, _ in pairs]
    if keys.count("orderId") > 1:
        raise DuplicateKey('duplicate key "orderId"')
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"invalid literal {name}")  # NaN, Infinity: not JSON


def _kind(value: object) -> str:
    if isinstance(value, float):
        return "a fractional number"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(type(value), "null")


def _str(s: str) -> bytes:
    data = s.encode()
    n = len(data)
    head = bytes([0xA0 | n]) if n < 32 else b"\xd9" + bytes([n]) if n < 0x100 else b"\xda" + n.to_bytes(2, "big")
    return head + data


def _bin(b: bytes) -> bytes:
    n = len(b)
    return (b"\xc4" + bytes([n]) if n < 0x100 else b"\xc5" + n.to_bytes(2, "big") if n < 0x10000
            else b"\xc6" + n.to_bytes(4, "big")) + b


def kv_put(bucket: str, key: str, value: bytes) -> bytes:
    """One effect, MessagePack: ["kv_put", bucket, key, value]."""
    return b"\x94" + _str("kv_put") + _str(bucket) + _str(key) + _bin(value)


def effects(*encoded: bytes) -> bytes:
    return bytes([0x90 | len(encoded)]) + b"".join(encoded)  # fixarray: fewer than 16 effects


class WitWorld(wit_world.WitWorld):
    bucket = ""

    def init(self, config: str) -> None:
        try:
            settings = json.loads(config or "{}")
        except ValueError as exc:
            raise Err(f"config: malformed-json: {exc}")
        if not isinstance(settings, dict):
            raise Err("config: expected a JSON object")
        bucket = settings.get("bucket")
        if not bucket:
            raise Err("config: bucket is required")
        if not isinstance(bucket, str):
            raise Err("config: bucket must be a string")
        if not BUCKET.fullmatch(bucket):
            raise Err("config: bucket must match [-_a-zA-Z0-9]+")
        WitWorld.bucket = bucket

    def handle(self, subject: str, payload: bytes) -> tuple[int, bytes]:
        try:
            text = payload.decode()  # strict UTF-8 (json.loads would let encoded surrogates pass)
            order = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
            if SURROGATE_ESCAPE.search(text):  # rare: then check that every \uD8xx has its pair
                json.dumps(order, ensure_ascii=False).encode()
        except (ValueError, UnicodeError) as exc:
            return REJECT, f"malformed-json: {exc}".encode()
        if not isinstance(order, dict):
            return REJECT, b"malformed-json: expected an object"
        if "orderId" not in order:
            return REJECT, b"missing-order-id"
        order_id = order["orderId"]
        if isinstance(order_id, bool) or not isinstance(order_id, int):
            return REJECT, f"invalid-order-id: expected an integer, got {_kind(order_id)}".encode()
        if order_id not in I64:
            return REJECT, b"invalid-order-id: integer out of range"
        return OK, effects(kv_put(self.bucket, str(order_id), payload))
