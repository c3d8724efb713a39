"""Guest ABI version 1: statuses and the effect encoding (see docs/abi.md).

The guest writes its effects as MessagePack; they are decoded here once, at the edge, into typed
`Struct`s. Anything that does not decode is a guest fault, never a host crash.
"""

from __future__ import annotations

import enum

import msgspec

from ..errors import GuestFault

ABI_VERSION = 1

# Export names, in one place.
EXPORT_MEMORY = "memory"
EXPORT_VERSION = "ebbtide_abi_version"
EXPORT_INPUT_PTR = "ebbtide_input_ptr"
EXPORT_INPUT_CAPACITY = "ebbtide_input_capacity"
EXPORT_OUTPUT_PTR = "ebbtide_output_ptr"
EXPORT_OUTPUT_CAPACITY = "ebbtide_output_capacity"
EXPORT_INIT = "ebbtide_init"
EXPORT_HANDLE = "ebbtide_handle"

OUTPUT_HEADER_SIZE = 4  # little-endian u32 length before the output bytes


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
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise GuestFault("invalid-output", f"effects do not decode: {exc}") from None


def encode_effects(effects: list[Effect]) -> bytes:
    """The guest-side encoding, for tests and tools written in Python."""
    return msgspec.msgpack.encode(effects)
