"""Guest ABI versions 1 and 2: export names, statuses, the batch framing and the effect encoding
(see docs/abi.md).

The guest writes its effects as MessagePack; they are decoded here once, at the edge, into typed
`Struct`s. Anything that does not decode is a guest fault, never a host crash.
"""

from __future__ import annotations

import enum

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
BATCH_HEADER_SIZE = 4
BATCH_RECORD_HEADER_SIZE = 8


class Status(enum.IntEnum):
    OK = 0
    REJECT = 1  # permanent: dead-letter at once
    RETRY = 2  # transient: redeliver with backoff


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
