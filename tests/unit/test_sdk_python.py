"""The Python guest SDK (functions/sdk-python/ebbtide_sdk.py) run natively: its ABI v2 batch records,
its MessagePack (checked against msgspec and against the Zig SDK's exact bytes) and its reason rules.
The same code runs inside the component (tests/integration/test_languages.py runs it there)."""

from __future__ import annotations

import sys
from typing import Any

import msgspec
import pytest

from ebbtide.errors import GuestFault
from ebbtide.runtime import decode_effects
from ebbtide.runtime.abi import BATCH_COUNT, KvPut, Publish, Status, pack_records, read_output_records
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "functions/sdk-python"))
import ebbtide_sdk  # noqa: E402
from ebbtide_sdk import Function, Message, Reject, Retry, kv_put, publish  # noqa: E402


def run(handler: Any, *payloads: bytes, subject: bytes = b"in") -> list[tuple[int, bytes]]:
    """The SDK's `handle_batch` on records the host packs, its output read as the host reads it (runtime/abi.py:
    the same functions serve core modules and components): (status, output) per message; a handler that
    raised reads as (RAISED, its text)."""
    messages = [(subject, p) for p in payloads]
    packed, count = pack_records(messages, 0, 1 << 20)
    assert count == len(messages)
    output = Function(handler).handle_batch(packed)
    assert BATCH_COUNT.unpack_from(output)[0] == count
    read: list[tuple[int, bytes]] = []
    raised_fault = GuestFault("trap", "the handler raised")

    def append(outcome: tuple[Status, bytes] | GuestFault) -> None:
        if outcome is not raised_fault:
            assert not isinstance(outcome, GuestFault), outcome
            read.append(outcome)

    def raised(status: int, text: bytes) -> GuestFault:
        read.append((status, text))
        return raised_fault

    read_output_records(output, count, len(output), append, raised)
    return read


def test_effects_are_the_zig_sdks_bytes() -> None:
    def handle(message: Message) -> None:
        publish("orders.express", message.payload)
        kv_put("outbox", "12", "é")

    [(status, output)] = run(handle, b"x" * 300)
    # array16 of effects, fixstr / str8 and bin8 / bin16, as functions/sdk/ebbtide.zig writes them
    assert status == ebbtide_sdk.OK
    assert output == (
        b"\xdc\x00\x02"
        + b"\x93\xa7publish\xaeorders.express\xc5\x01\x2c"
        + b"x" * 300
        + b"\x94\xa6kv_put\xa6outbox\xa212\xc4\x02\xc3\xa9"
    )
    assert decode_effects(output) == [Publish("orders.express", b"x" * 300), KvPut("outbox", "12", "é".encode())]


@pytest.mark.parametrize("size", [0, 31, 32, 255, 256, 65535, 65536])
def test_string_and_binary_sizes_decode(size: int) -> None:
    def handle(message: Message) -> None:
        publish("s" * min(size, 300), b"b" * size)

    [(status, output)] = run(handle, b"")
    assert status == ebbtide_sdk.OK
    assert msgspec.msgpack.decode(output) == [["publish", "s" * min(size, 300), b"b" * size]]


def test_a_batch_keeps_order_and_gives_each_message_its_outcome() -> None:
    def handle(message: Message) -> None:
        value = message.json()
        if value == "retry":
            raise Retry("later")
        if not isinstance(value, int):
            raise Reject(f"not a number: {value!r}")
        kv_put("b", str(value), message.subject)

    result = run(handle, b"1", b'"x"', b'"retry"', b"2", subject=b"s.\xc3\xa9")
    assert [status for status, _ in result] == [0, 1, 2, 0]
    assert result[1][1] == b"not a number: 'x'"
    assert result[2][1] == b"later"
    assert decode_effects(result[3][1]) == [KvPut("b", "2", "s.é".encode())]
    assert run(handle) == []  # an empty batch


def test_reject_without_a_reason_and_effects_dropped_on_reject() -> None:
    def handle(message: Message) -> None:
        publish("a", b"dropped")
        raise Reject

    assert run(handle, b"") == [(ebbtide_sdk.REJECT, b"no reason given")]


def test_reasons_are_capped_at_a_character_boundary() -> None:
    def handle(message: Message) -> None:
        raise Reject("x" + "é" * 600)

    [(status, reason)] = run(handle, b"")
    assert status == ebbtide_sdk.REJECT
    assert reason == ("x" + "é" * 255).encode() + b"..."  # 511 bytes: the next "é" would cut at 512
    lone = run(lambda m: (_ for _ in ()).throw(Reject("a\udc80b")), b"")
    assert lone == [(ebbtide_sdk.REJECT, b"a?b")]


def test_any_other_exception_is_reported_as_raised() -> None:
    def handle(message: Message) -> None:
        publish("a", b"x")
        raise KeyError("orderId")

    assert run(handle, b"") == [(ebbtide_sdk.RAISED, b"KeyError: 'orderId'")]
    with pytest.raises(RuntimeError, match="only allowed while a message is handled"):
        publish("a", b"x")  # outside a handler


def test_effects_that_do_not_fit_the_output_cap_are_an_overflow() -> None:
    def handle(message: Message) -> None:
        for _ in range(int(message.payload)):
            publish("a", b"x" * 1000)

    assert run(handle, b"65")[0][0] == ebbtide_sdk.OK
    assert run(handle, b"70") == [(ebbtide_sdk.REJECT, b"output buffer overflow")]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xff", "malformed-json: invalid UTF-8 at offset 0"),
        (b'{"a":"\xed\xa0\x80"}', "malformed-json: invalid UTF-8 at offset 6"),
        (b'{"a":1,"a":2}', 'malformed-json: duplicate key "a"'),
        (b'[{"k":1,"k":1}]', 'malformed-json: duplicate key "k"'),
        (b'{"a": NaN}', "malformed-json: invalid literal NaN"),
        (b'{"a":"\\ud800"}', "malformed-json: "),
        (b"", "malformed-json: "),
        (b"[1] x", "malformed-json: "),
    ],
)
def test_json_is_strict(payload: bytes, reason: str) -> None:
    [(status, output)] = run(lambda message: message.json(), payload)
    assert status == ebbtide_sdk.REJECT
    assert output.decode().startswith(reason), output


def test_json_is_decoded_once() -> None:
    message = Message("s", b'{"a":"\\ud800\\udc00","b":[1.5,true,null]}')
    assert message.json() is message.json() == {"a": "\U00010000", "b": [1.5, True, None]}


@pytest.mark.parametrize(
    "config, refused",
    [
        ('{"bucket":"b"}', None),
        ("{}", "config: bucket is required"),
        ("[]", "config: expected a JSON object"),
        ("{", "config: malformed-json: "),
    ],
)
def test_config_reaches_the_init_hook_as_a_dict(config: str, refused: str | None) -> None:
    seen: list[dict[str, str]] = []

    def init(settings: dict[str, str]) -> None:
        seen.append(settings)
        if "bucket" not in settings:
            raise Reject("config: bucket is required")

    result = Function(lambda m: None, init).configure(config)
    if refused is None:
        assert result is None and seen == [{"bucket": "b"}]
    else:
        assert result is not None and result.startswith(refused)
    assert Function(lambda m: None).configure("{}") is None  # no init hook: any object is accepted
    assert Function(lambda m: None, lambda c: 1 / 0).configure("{}") == "ZeroDivisionError: division by zero"
