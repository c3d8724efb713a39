"""How the host reads a Python component's `handle-batch` records (runtime/component.py), without Wasm:
the records are the ones functions/sdk-python/ebbtide_sdk.py writes (checked in test_sdk_python.py)."""

from __future__ import annotations

import struct

from ebbtide.errors import GuestFault
from ebbtide.runtime import Status
from ebbtide.runtime.component import MAX_BATCH_BYTES, MAX_INPUT, _pack, _read_replies


def output(*records: tuple[int, bytes], done: int | None = None) -> bytes:
    body = b"".join(struct.pack("<II", status, len(data)) + data for status, data in records)
    return struct.pack("<I", len(records) if done is None else done) + body


def test_replies_in_order() -> None:
    replies: list[object] = []
    failed = _read_replies(output((0, b"\xdc\x00\x00"), (1, b"why"), (2, b"later")), 3, replies)
    assert not failed
    assert replies == [(Status.OK, b"\xdc\x00\x00"), (Status.REJECT, b"why"), (Status.RETRY, b"later")]


def test_a_handler_that_raised_fails_its_message_and_the_instance() -> None:
    replies: list[object] = []
    assert _read_replies(output((0, b"\xdc\x00\x00"), (3, b"KeyError: 'orderId'"), (0, b"")), 3, replies)
    assert replies[0] == (Status.OK, b"\xdc\x00\x00")
    assert isinstance(replies[1], GuestFault) and str(replies[1]) == "trap: KeyError: 'orderId'"
    assert len(replies) == 2  # the rest are not handled: they go to a fresh instance


def test_output_that_is_not_what_the_world_says_is_invalid() -> None:
    for data, count in [(b"", 1), (output((0, b"")), 2), (output((0, b"abc"))[:-1], 1), (output((7, b"")), 1)]:
        replies: list[object] = []
        assert _read_replies(data, count, replies)
        assert isinstance(replies[-1], GuestFault) and replies[-1].kind == "invalid-output", data


def test_batches_are_cut_at_the_batch_size_and_before_a_message_too_large() -> None:
    small = (b"s", b"x" * 1000)
    text, count = _pack([small] * 100, 0)
    assert count == MAX_BATCH_BYTES // 1009
    assert text.encode("latin-1")[:8] == struct.pack("<II", 1, 1000)
    big = (b"s", b"y" * (MAX_INPUT + 1))
    assert _pack([small, big, small], 0)[1] == 1
    assert _pack([(b"s", bytes(range(256)))], 0)[0].encode("latin-1")[9:] == bytes(range(256))  # every byte value
