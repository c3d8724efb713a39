"""Guest ABI versions 1 and 2: export names, statuses, the batch framing and the effect encoding
(see docs/abi.md).

The guest writes its effects as MessagePack; they are decoded here once, at the edge, into typed
`Struct`s. Anything that does not decode is a guest fault, never a host crash.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence

import msgspec

from ..errors import GuestFault

ABI_VERSION = 2  # the newest this host speaks
SUPPORTED_ABI_VERSIONS = frozenset({1, 2})  # 2 = 1 + ebbtide_handle_batch

# Export names, in one place.
EXPORT_MEMORY = "memory"
EXPORT_VERSION = "ebbtide_abi_version"
EXPORT_INPUT_PTR = "ebbtide_input_ptr"
EXPORT_INPUT_CAPACITY = "ebbtide_input_capacity"
EXPORT_OUTPUT_PTR = "ebbtide_output_ptr"
EXPORT_OUTPUT_CAPACITY = "ebbtide_output_capacity"
EXPORT_INIT = "ebbtide_init"
EXPORT_HANDLE = "ebbtide_handle"
EXPORT_HANDLE_BATCH = "ebbtide_handle_batch"  # version 2

OUTPUT_HEADER_SIZE = 4  # little-endian u32 length before the output bytes
# Batches (version 2), all little-endian u32: the output starts with the number of messages done; an input
# record is `subject_len, payload_len` then the bytes, an output record `status, length` then the bytes.
# Packed and read here only, for core modules (runtime/instance.py) and components (runtime/component.py).
BATCH_COUNT = struct.Struct("<I")
BATCH_RECORD_HEADER = struct.Struct("<II")
BATCH_HEADER_SIZE = BATCH_COUNT.size
BATCH_RECORD_HEADER_SIZE = BATCH_RECORD_HEADER.size


class Status(enum.IntEnum):
    OK = 0
    REJECT = 1  # permanent: dead-letter at once
    RETRY = 2  # transient: redeliver with backoff


_STATUSES = tuple(Status)  # by value: 0, 1, 2
assert [status.value for status in _STATUSES] == [0, 1, 2]


def unknown_status(status: int, output: bytes = b"") -> GuestFault:
    return GuestFault("invalid-output", f"unknown status {status}")


def pack_records(messages: Sequence[tuple[bytes, bytes]], start: int, room: int) -> tuple[bytes, int]:
    """Input records for (subject, payload) messages[start:], as many as fit in `room` bytes: the records and
    how many (0: the first does not fit). Joined in Python and copied once: cheaper than a copy per field."""
    header_size = BATCH_RECORD_HEADER_SIZE
    pack_header = BATCH_RECORD_HEADER.pack
    parts: list[bytes] = []
    append = parts.append
    index = start
    total = len(messages)
    while index < total:
        subject, payload = messages[index]
        n_subject = len(subject)
        n_payload = len(payload)
        room -= header_size + n_subject + n_payload
        if room < 0:
            break
        append(pack_header(n_subject, n_payload))
        append(subject)
        append(payload)
        index += 1
    return b"".join(parts), index - start


def read_output_records(
    data: bytes | memoryview,
    count: int,
    end: int,
    append: Callable[[tuple[Status, bytes] | GuestFault], None],
    status_fault: Callable[[int, bytes], GuestFault] = unknown_status,
) -> bool:
    """Reads `count` output records from `data` (after its count, up to `end`) and appends each one's
    (status, output). A record cut short, or longer than what is left, or with a status above RETRY
    (`status_fault` names the fault) ends the reading with a fault appended instead: returns True then."""
    header_size = BATCH_RECORD_HEADER_SIZE
    unpack_header = BATCH_RECORD_HEADER.unpack_from
    statuses = _STATUSES
    pos = BATCH_HEADER_SIZE
    for _ in range(count):
        start = pos + header_size
        if start > end:
            append(GuestFault("invalid-output", "batch output record cut short"))
            return True
        status, length = unpack_header(data, pos)
        pos = start + length
        if pos > end:
            append(GuestFault("invalid-output", f"output length {length} exceeds the batch output"))
            return True
        if status > 2:
            append(status_fault(status, bytes(data[start:pos])))
            return True
        append((statuses[status], bytes(data[start:pos])))
    return False


class Publish(msgspec.Struct, array_like=True, tag="publish", frozen=True):
    subject: str
    payload: bytes


class KvPut(msgspec.Struct, array_like=True, tag="kv_put", frozen=True):
    bucket: str
    key: str
    value: bytes


Effect = Publish | KvPut

_effects_decoder = msgspec.msgpack.Decoder(list[Effect])


def decode_effects(data: bytes) -> list[Effect]:
    try:
        return _effects_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError is a DecodeError; a str not UTF-8 raises
        raise GuestFault("invalid-output", f"effects do not decode: {exc}") from None


def encode_effects(effects: list[Effect]) -> bytes:
    """The guest-side encoding, for tests and tools written in Python."""
    return msgspec.msgpack.encode(effects)
