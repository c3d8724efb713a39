"""The scaler's hand-written protobuf codec against protobuf's own classes for externalscaler.proto: what one
encodes the other decodes to the same values, both ways; unknown fields are skipped; bad bytes are a
WireError, never anything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ebbtide.errors import WireError
from ebbtide.kedascaler.wire import (
    GetMetricSpecResponse,
    GetMetricsRequest,
    GetMetricsResponse,
    IsActiveResponse,
    MetricSpec,
    MetricValue,
    ScaledObjectRef,
)
from tests.keda_proto import KedaProto, keda_proto_fixture  # noqa: F401 (the fixture keda_proto)

text = st.text(max_size=40)
int64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
double = st.floats(allow_nan=False)
refs = st.builds(ScaledObjectRef, text, text, st.dictionaries(text, text, max_size=4))


def theirs_ref(pb: object, ref: ScaledObjectRef) -> object:
    return pb.ScaledObjectRef(name=ref.name, namespace=ref.namespace, scalerMetadata=ref.scaler_metadata)  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(ref=refs, name=text)
def test_requests_as_keda_sends_them(keda_proto: KedaProto, ref: ScaledObjectRef, name: str) -> None:
    pb = keda_proto.messages
    assert ScaledObjectRef.decode(theirs_ref(pb, ref).SerializeToString()) == ref
    request = pb.GetMetricsRequest(scaledObjectRef=theirs_ref(pb, ref), metricName=name)
    assert GetMetricsRequest.decode(request.SerializeToString()) == GetMetricsRequest(ref, name)
    # ... and ours read by protobuf (the test client's side).
    decoded = pb.GetMetricsRequest.FromString(GetMetricsRequest(ref, name).encode())
    assert (decoded.scaledObjectRef.name, dict(decoded.scaledObjectRef.scalerMetadata), decoded.metricName) == (
        ref.name,
        ref.scaler_metadata,
        name,
    )


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(st.builds(MetricSpec, text, int64, double), max_size=3),
    values=st.lists(st.builds(MetricValue, text, int64, double), max_size=3),
    active=st.booleans(),
)
def test_answers_as_keda_reads_them(
    keda_proto: KedaProto, specs: list[MetricSpec], values: list[MetricValue], active: bool
) -> None:
    pb = keda_proto.messages
    theirs = pb.GetMetricSpecResponse.FromString(GetMetricSpecResponse(specs).encode())
    assert [(s.metricName, s.targetSize, s.targetSizeFloat) for s in theirs.metricSpecs] == [
        (s.metric_name, s.target_size, s.target_size_float) for s in specs
    ]
    theirs_values = pb.GetMetricsResponse.FromString(GetMetricsResponse(values).encode())
    assert [(v.metricName, v.metricValue, v.metricValueFloat) for v in theirs_values.metricValues] == [
        (v.metric_name, v.metric_value, v.metric_value_float) for v in values
    ]
    assert pb.IsActiveResponse.FromString(IsActiveResponse(active).encode()).result is active
    # Both ways: protobuf's bytes decode to ours.
    assert GetMetricSpecResponse.decode(theirs.SerializeToString()) == GetMetricSpecResponse(specs)
    assert GetMetricsResponse.decode(theirs_values.SerializeToString()) == GetMetricsResponse(values)
    assert IsActiveResponse.decode(pb.IsActiveResponse(result=active).SerializeToString()) == IsActiveResponse(active)


def test_fields_a_newer_sender_adds_are_skipped() -> None:
    ref = ScaledObjectRef("distributor", "ebbtide", {"function": "distributor"})
    unknown = bytes([9 << 3 | 0, 150, 1]) + bytes([10 << 3 | 2, 3]) + b"abc" + bytes([11 << 3 | 1]) + b"\x00" * 8
    unknown += bytes([12 << 3 | 5]) + b"\x00" * 4
    assert ScaledObjectRef.decode(ref.encode() + unknown) == ref
    assert ScaledObjectRef.decode(unknown + ref.encode()) == ref


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # a string announcing 5 bytes, 3 there
        b"\x0a",  # a length missing
        b"\x08",  # a varint missing
        b"\x0b",  # wire type 3 (groups): not in proto3
        b"\x00\x01",  # field number 0
        b"\x08" + b"\xff" * 11,  # a varint longer than ten bytes
        b"\x0a\x02\xff\xfe",  # a name that is not UTF-8
        b"\x09" + b"\x00" * 8,  # name as a fixed64
    ],
)
def test_bad_bytes_are_a_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        ScaledObjectRef.decode(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_any_bytes_decode_or_are_refused_cleanly(data: bytes) -> None:
    for message in (ScaledObjectRef, GetMetricsRequest, IsActiveResponse, GetMetricSpecResponse, GetMetricsResponse):
        try:
            message.decode(data)
        except WireError:
            pass
