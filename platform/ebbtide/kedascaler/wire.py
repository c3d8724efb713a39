"""The protobuf messages of KEDA's external scaler interface (externalscaler.proto beside this file), encoded
and decoded by hand. Pure: bytes in, dataclasses out, and back.

Why by hand: the interface is seven small messages of strings, a bool, an int64, a double, a map and two
repeated fields, frozen by KEDA for years. Generating code from the .proto would mean committing generated
files (the project commits nothing built) or running protoc at build time, which needs grpcio-tools and
protobuf in the image for ~100 lines of encoding; gRPC itself (grpcio) takes any serializer. So the
codec is written here against the wire format (protobuf's "Encoding" reference: varints, tags, length-
delimited fields, little-endian doubles, proto3 defaults left out, unknown fields skipped), and the tests
check it both ways against protobuf's own classes generated from the .proto into a temporary folder.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import WireError

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_UINT64 = (1 << 64) - 1


# -- the messages (field numbers in the .proto) ---------------------------------------------------------------


@dataclass(frozen=True)
class ScaledObjectRef:
    name: str = ""  # 1
    namespace: str = ""  # 2
    scaler_metadata: dict[str, str] = field(default_factory=dict)  # 3: map<string, string>

    def encode(self) -> bytes:
        entries = b"".join(_length(3, _string(1, key) + _string(2, value)) for key, value in sorted(self.scaler_metadata.items()))
        return _string(1, self.name) + _string(2, self.namespace) + entries

    @classmethod
    def decode(cls, data: bytes) -> ScaledObjectRef:
        name, namespace, metadata = "", "", {}
        for number, kind, value in _fields(data):
            if number == 1:
                name = _text(kind, value)
            elif number == 2:
                namespace = _text(kind, value)
            elif number == 3:
                key, entry_value = "", ""
                for entry_number, entry_kind, item in _fields(_bytes(kind, value)):
                    if entry_number == 1:
                        key = _text(entry_kind, item)
                    elif entry_number == 2:
                        entry_value = _text(entry_kind, item)
                metadata[key] = entry_value
        return cls(name, namespace, metadata)


@dataclass(frozen=True)
class IsActiveResponse:
    result: bool = False  # 1

    def encode(self) -> bytes:
        return _key(1, _VARINT) + _varint(1) if self.result else b""

    @classmethod
    def decode(cls, data: bytes) -> IsActiveResponse:
        result = False
        for number, kind, value in _fields(data):
            if number == 1:
                result = _int(kind, value) != 0
        return cls(result)


@dataclass(frozen=True)
class MetricSpec:
    metric_name: str = ""  # 1
    target_size: int = 0  # 2: int64 (older KEDA)
    target_size_float: float = 0.0  # 3: double

    def encode(self) -> bytes:
        return _string(1, self.metric_name) + _int64(2, self.target_size) + _double(3, self.target_size_float)

    @classmethod
    def decode(cls, data: bytes) -> MetricSpec:
        name, size, size_float = "", 0, 0.0
        for number, kind, value in _fields(data):
            if number == 1:
                name = _text(kind, value)
            elif number == 2:
                size = _signed(_int(kind, value))
            elif number == 3:
                size_float = _float(kind, value)
        return cls(name, size, size_float)


@dataclass(frozen=True)
class GetMetricSpecResponse:
    metric_specs: list[MetricSpec] = field(default_factory=list)  # 1: repeated

    def encode(self) -> bytes:
        return b"".join(_length(1, spec.encode()) for spec in self.metric_specs)

    @classmethod
    def decode(cls, data: bytes) -> GetMetricSpecResponse:
        return cls([MetricSpec.decode(_bytes(kind, value)) for number, kind, value in _fields(data) if number == 1])


@dataclass(frozen=True)
class GetMetricsRequest:
    scaled_object_ref: ScaledObjectRef = field(default_factory=ScaledObjectRef)  # 1
    metric_name: str = ""  # 2

    def encode(self) -> bytes:
        return _length(1, self.scaled_object_ref.encode()) + _string(2, self.metric_name)

    @classmethod
    def decode(cls, data: bytes) -> GetMetricsRequest:
        ref, name = ScaledObjectRef(), ""
        for number, kind, value in _fields(data):
            if number == 1:
                ref = ScaledObjectRef.decode(_bytes(kind, value))
            elif number == 2:
                name = _text(kind, value)
        return cls(ref, name)


@dataclass(frozen=True)
class MetricValue:
    metric_name: str = ""  # 1
    metric_value: int = 0  # 2: int64 (older KEDA)
    metric_value_float: float = 0.0  # 3: double

    def encode(self) -> bytes:
        return _string(1, self.metric_name) + _int64(2, self.metric_value) + _double(3, self.metric_value_float)

    @classmethod
    def decode(cls, data: bytes) -> MetricValue:
        name, value_int, value_float = "", 0, 0.0
        for number, kind, value in _fields(data):
            if number == 1:
                name = _text(kind, value)
            elif number == 2:
                value_int = _signed(_int(kind, value))
            elif number == 3:
                value_float = _float(kind, value)
        return cls(name, value_int, value_float)


@dataclass(frozen=True)
class GetMetricsResponse:
    metric_values: list[MetricValue] = field(default_factory=list)  # 1: repeated

    def encode(self) -> bytes:
        return b"".join(_length(1, value.encode()) for value in self.metric_values)

    @classmethod
    def decode(cls, data: bytes) -> GetMetricsResponse:
        return cls([MetricValue.decode(_bytes(kind, value)) for number, kind, value in _fields(data) if number == 1])


# -- encoding -----------------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= _UINT64  # a negative int64 is its two's complement, ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, kind: int) -> bytes:
    return _varint(number << 3 | kind)


def _length(number: int, body: bytes) -> bytes:
    return _key(number, _LENGTH) + _varint(len(body)) + body


def _string(number: int, text: str) -> bytes:
    return _length(number, text.encode()) if text else b""  # proto3: the default is not sent


def _int64(number: int, value: int) -> bytes:
    if not -(1 << 63) <= value < 1 << 63:
        raise WireError(f"field {number}: {value} does not fit an int64")
    return _key(number, _VARINT) + _varint(value) if value else b""


def _double(number: int, value: float) -> bytes:
    return _key(number, _FIXED64) + struct.pack("<d", value) if value != 0.0 else b""


# -- decoding -----------------------------------------------------------------------------------------------------

Value = int | bytes


def _fields(data: bytes) -> Iterator[tuple[int, int, Value]]:
    """(field number, wire type, value) of each field; a varint's value is an int, anything else its bytes.
    Fields of other numbers are returned too, for the caller to skip (what a newer sender may add)."""
    position, end = 0, len(data)
    while position < end:
        key, position = _read_varint(data, position)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if kind == _VARINT:
            value, position = _read_varint(data, position)
            yield number, kind, value
            continue
        if kind == _LENGTH:
            size, position = _read_varint(data, position)
        elif kind == _FIXED64:
            size = 8
        elif kind == _FIXED32:
            size = 4
        else:
            raise WireError(f"field {number}: unsupported wire type {kind}")
        if position + size > end:
            raise WireError(f"field {number}: {size} bytes announced, {end - position} left")
        yield number, kind, data[position : position + size]
        position += size


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise WireError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _UINT64, position
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than ten bytes")


def _int(kind: int, value: Value) -> int:
    if kind != _VARINT or not isinstance(value, int):
        raise WireError(f"expected a varint, got wire type {kind}")
    return value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _bytes(kind: int, value: Value) -> bytes:
    if kind != _LENGTH or not isinstance(value, bytes):
        raise WireError(f"expected a length-delimited field, got wire type {kind}")
    return value


def _text(kind: int, value: Value) -> str:
    try:
        return _bytes(kind, value).decode()
    except UnicodeDecodeError:
        raise WireError("a string field that is not UTF-8") from None


def _float(kind: int, value: Value) -> float:
    if kind != _FIXED64 or not isinstance(value, bytes):
        raise WireError(f"expected a double, got wire type {kind}")
    result: float = struct.unpack("<d", value)[0]
    return result
