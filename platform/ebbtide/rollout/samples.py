"""The shadow samples: the first messages of each verdict, kept with the input and both answers (pure).

Hosts publish a `Sample` to `sample_subject(function, verdict)` in the `SHADOW_STREAM` stream, which keeps
at most N per subject and refuses the rest (discard new per subject), so the first N of each kind are what
stays, whichever replica saw them. `ebbtide shadow report F` and `ebbtide replay` read and render them.
"""

from __future__ import annotations

import msgspec

from ..broker.names import SHADOW_STREAM, SHADOW_SUBJECT_PREFIX
from .compare import RecordedReply, Verdict

__all__ = [
    "SHADOW_STREAM",
    "SHADOW_SUBJECT_PREFIX",
    "Sample",
    "decode_sample",
    "encode_sample",
    "function_filter",
    "sample_subject",
]


class Sample(msgspec.Struct, frozen=True):
    function: str
    verdict: Verdict
    subject: str  # the input message's subject
    payload: bytes  # the input message
    live: RecordedReply
    candidate: RecordedReply
    candidate_sha256: str
    at_ns: int  # when it was judged (time.time_ns())
    stream_sequence: int = 0  # the input's sequence in its stream, when known


def sample_subject(function: str, verdict: Verdict) -> str:
    return f"{SHADOW_SUBJECT_PREFIX}.{function}.{verdict.value}"


def function_filter(function: str) -> str:
    """The subject filter for every sample of one function."""
    return f"{SHADOW_SUBJECT_PREFIX}.{function}.*"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Sample)


def encode_sample(sample: Sample) -> bytes:
    return _encoder.encode(sample)


def decode_sample(data: bytes) -> Sample:
    return _decoder.decode(data)
