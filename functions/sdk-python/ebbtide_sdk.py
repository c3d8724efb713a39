"""ebbtide's Python guest SDK: write a function as plain Python.

    # app.py
    from ebbtide_sdk import Message, Reject, kv_put

    bucket = ""

    def init(config: dict[str, str]) -> None:       # optional: once per instance, the manifest's config
        global bucket
        bucket = config.get("bucket") or ""
        if not bucket:
            raise Reject("config: bucket is required")

    def handle(message: Message) -> None:            # once per message
        order = message.json()                        # strict JSON; Reject("malformed-json: ...") if not
        if "orderId" not in order:
            raise Reject("missing-order-id")          # permanent: dead-lettered with this reason
        kv_put(bucket, str(order["orderId"]), message.payload)

`handle` emits effects with `publish(subject, data)` and `kv_put(bucket, key, value)` (data: bytes or
str); they are carried out by the host after the handler returns, and only if it returns. `raise
Reject(reason)` dead-letters the message, `raise Retry(reason)` redelivers it later (effects emitted
before are dropped). Any other exception fails the message like a trap in a core module: the instance is
replaced and the message retried, then dead-lettered with the exception's text.

The rest of this module is the glue to the guest ABI v2 (docs/abi.md): it decodes the batch records the
host sends, runs `handle` on each message and encodes effects and reasons exactly as the Zig, C and
AssemblyScript SDKs do (MessagePack, array16 of effects; reasons capped at 512 bytes). It imports nothing
outside the standard library and runs in any Python too, so a function can be tested natively.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable
from struct import Struct
from typing import Any

__all__ = ["Message", "Reject", "Retry", "publish", "kv_put", "kind_of", "Function"]

OK, REJECT, RETRY, RAISED = 0, 1, 2, 3  # RAISED: the handler raised something else (the host treats it as a trap)
# The Zig SDK's limits, so that the same message gets the same outcome in every language.
MAX_REASON = 512
MAX_OUTPUT = 64 * 1024 + 1024 - 4
MAX_EFFECTS = 0xFFFF
OVERFLOW = b"output buffer overflow"

_U32 = Struct("<I")
_U32_PAIR = Struct("<II")


class Reject(Exception):
    """Raise to refuse a message for good: it is dead-lettered at once with `reason`."""

    def __init__(self, reason: str = "no reason given") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raise on a transient failure: the message is redelivered with backoff, dead-lettered after the last try."""

    def __init__(self, reason: str = "no reason given") -> None:
        super().__init__(reason)
        self.reason = reason


# -- JSON: strict, as the other SDKs (RFC 8259, UTF-8, no NaN/Infinity, no lone surrogates, no duplicate keys)

class _Malformed(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Malformed(f"duplicate key {json.dumps(key, ensure_ascii=False)}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> None:
    raise _Malformed(f"invalid literal {name}")


# The C scanner, called directly (JSONDecoder.decode adds two Python frames and two regex matches per
# document); the pairs hook is what finds duplicate keys, once per object.
_SCAN = json.scanner.make_scanner(json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constant))
_JSON_SPACE = " \t\n\r"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _decode_json(payload: bytes) -> Any:
    try:
        text = payload.decode()  # strict UTF-8: json.loads(bytes) would accept encoded surrogates
    except UnicodeDecodeError as exc:
        raise Reject(f"malformed-json: invalid UTF-8 at offset {exc.start}") from None
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        try:
            value, end = _SCAN(text, start)
        except StopIteration as missing:
            raise json.JSONDecodeError("Expecting value", text, missing.value) from None
        if end != len(text) and text[end:].strip(_JSON_SPACE):
            raise json.JSONDecodeError("Extra data", text, end + len(text[end:]) - len(text[end:].lstrip(_JSON_SPACE)))
        if "\\u" in text and _SURROGATE_ESCAPE.search(text):  # rare: every \uD8xx must have its pair
            json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise Reject(f"malformed-json: {exc}") from None
    return value


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def kind_of(value: Any) -> str:
    """What a decoded JSON value is, in the words the other SDKs use in reasons ("an object", "null", ...)."""
    return _KINDS.get(type(value), "null")


class Message:
    """One message: `subject` (str), `payload` (bytes); `json()` decodes the payload (once)."""

    __slots__ = ("subject", "payload", "_json")

    def __init__(self, subject: str, payload: bytes) -> None:
        self.subject = subject
        self.payload = payload
        self._json: Any = _NOT_DECODED

    def json(self) -> Any:
        """The payload as strict JSON; raises Reject("malformed-json: ...") when it is not."""
        if self._json is _NOT_DECODED:
            self._json = _decode_json(self.payload)
        return self._json

    def text(self) -> str:
        """The payload as UTF-8 text; raises Reject("invalid-utf8: ...") when it is not."""
        try:
            return self.payload.decode()
        except UnicodeDecodeError as exc:
            raise Reject(f"invalid-utf8: at offset {exc.start}") from None

    def __repr__(self) -> str:
        return f"Message(subject={self.subject!r}, payload={self.payload[:60]!r})"


_NOT_DECODED = object()


# -- Effects: MessagePack, byte for byte what the Zig SDK writes ----------------------------------------------

_FIXSTR = [bytes((0xA0 | n,)) for n in range(32)]
_BIN8 = [bytes((0xC4, n)) for n in range(256)]
_NAMES: dict[str, bytes] = {}  # encoded subjects and bucket names: a function uses a handful
_MAX_NAMES = 256


def _str(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    return (_FIXSTR[n] if n < 32 else _sized(0xD9, n)) + data


def _name(text: str) -> bytes:
    encoded = _NAMES.get(text)
    if encoded is None:
        encoded = _str(text)
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[text] = encoded
    return encoded


def _bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if type(data) is bytes:
        return data
    return data.encode() if isinstance(data, str) else bytes(data)


def _sized(tag8: int, n: int) -> bytes:
    """The 8/16/32-bit length header: tag8, tag8+1, tag8+2 (str8.. 0xd9, bin8.. 0xc4)."""
    if n < 0x100:
        return bytes((tag8, n))
    if n < 0x10000:
        return bytes((tag8 + 1, n >> 8, n & 0xFF))
    return bytes((tag8 + 2,)) + n.to_bytes(4, "big")


_PUBLISH = b"\x93" + _str("publish")
_KV_PUT = b"\x94" + _str("kv_put")


class _Effects:
    """The effects of the message being handled, as MessagePack pieces joined once (None outside a handler)."""

    parts: list[bytes] | None = None
    count = 0


def publish(subject: str, data: bytes | str) -> None:
    """Publish `data` to `subject` (must be in the function's `publish` allowlist) once the handler returns."""
    parts = _Effects.parts
    if parts is None:
        raise RuntimeError("publish() is only allowed while a message is handled")
    data = _bytes(data)
    n = len(data)
    parts += (_PUBLISH, _name(subject), _BIN8[n] if n < 0x100 else _sized(0xC4, n), data)
    _Effects.count += 1


def kv_put(bucket: str, key: str, value: bytes | str) -> None:
    """Write `value` under `key` in the KV bucket `bucket` (in the function's `kv` allowlist) once the handler returns."""
    parts = _Effects.parts
    if parts is None:
        raise RuntimeError("kv_put() is only allowed while a message is handled")
    value = _bytes(value)
    n = len(value)
    parts += (_KV_PUT, _name(bucket), _str(key), _BIN8[n] if n < 0x100 else _sized(0xC4, n), value)
    _Effects.count += 1


def _reason(text: str) -> bytes:
    """UTF-8, at most 512 bytes cut at a character boundary and then marked with "...", as the other SDKs."""
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_REASON:
        return data
    return data[:MAX_REASON].decode("utf-8", "ignore").encode() + b"..."


def _exception_text(exc: BaseException) -> bytes:
    return _reason(f"{type(exc).__name__}: {exc}")


# -- The runner: config, then batches ------------------------------------------------------------------------

Handler = Callable[[Message], Any]
Init = Callable[[dict[str, str]], Any]


class Function:
    """A handler (and optional init hook) behind the ABI: what the component glue calls."""

    def __init__(self, handle: Handler, init: Init | None = None) -> None:
        self.handle = handle
        self.init = init

    def configure(self, config_json: str) -> str | None:
        """Runs the init hook on the config (a JSON object of strings); returns the reason it was refused, or None."""
        try:
            config = json.loads(config_json or "{}")
        except ValueError as exc:
            return f"config: malformed-json: {exc}"
        if not isinstance(config, dict):
            return "config: expected a JSON object"
        if self.init is None:
            return None
        try:
            self.init(config)
        except (Reject, Retry) as refused:
            return _reason(refused.reason).decode()
        except Exception as exc:  # noqa: BLE001 - a failed init refuses the config with what went wrong
            return _exception_text(exc).decode()
        return None

    def handle_one(self, subject: str, payload: bytes) -> tuple[int, bytes]:
        """One message: its status and output (ABI v1 encoding), or RAISED and the exception's text."""
        parts: list[bytes] = []
        _Effects.parts = parts
        _Effects.count = 0
        try:
            self.handle(Message(subject, payload))
        except Reject as rejected:
            return REJECT, _reason(rejected.reason)
        except Retry as retried:
            return RETRY, _reason(retried.reason)
        except Exception as exc:  # noqa: BLE001 - reported to the host, which fails the message as a trap
            return RAISED, _exception_text(exc)
        finally:
            _Effects.parts = None
        count = _Effects.count
        parts.insert(0, b"\xdc" + count.to_bytes(2, "big") if count <= MAX_EFFECTS else b"")
        output = b"".join(parts)
        if count > MAX_EFFECTS or len(output) > MAX_OUTPUT:
            return REJECT, OVERFLOW
        return OK, output

    def handle_batch(self, records: bytes) -> bytes:
        """ABI v2 batch records in, `done` and one (status, length, output) record per message out."""
        out: list[bytes] = [b""]
        append = out.append
        unpack = _U32_PAIR.unpack_from
        pack = _U32_PAIR.pack
        handle_one = self.handle_one
        subjects: dict[bytes, str] = {}  # a batch has few subjects: decode each once
        pos, end, done = 0, len(records), 0
        while pos < end:
            subject_len, payload_len = unpack(records, pos)
            pos += 8
            raw_subject = records[pos:pos + subject_len]
            subject = subjects.get(raw_subject)
            if subject is None:
                subject = subjects[raw_subject] = raw_subject.decode("utf-8", "replace")
            pos += subject_len
            payload = records[pos:pos + payload_len]
            pos += payload_len
            status, output = handle_one(subject, payload)
            append(pack(status, len(output)))
            append(output)
            done += 1
        out[0] = _U32.pack(done)
        return b"".join(out)
