"""Reading what `shadow report` and `replay` judge from the server: shadow samples, dead letters, a stream range.

Only reads (STREAM.INFO and STREAM.MSG.GET through broker/jsapi.py, which the read-only `observer` may do):
nothing is created on the server, no consumer, no publish.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from .. import dlq_admin
from ..broker import jsapi
from ..broker.headers import H_ORIGINAL_SIZE
from ..errors import JetStreamError, RunError, UsageError
from ..manifest import LoadedManifest
from ..subjects import subject_matches
from .compare import Verdict
from .replay import StoredInput
from .samples import SHADOW_STREAM, Sample, decode_sample, function_filter, sample_subject


@contextlib.contextmanager
def _jetstream(what: str) -> Iterator[None]:
    """JetStream not answering is a run-time failure (exit 1) that says what was being read."""
    try:
        yield
    except NoRespondersError:
        raise RunError(f"{what}: JetStream is not available on this server (no responders)") from None
    except (TimeoutError, NatsTimeoutError):
        raise RunError(
            f"{what}: JetStream did not answer within {jsapi.API_TIMEOUT_S} s (or these credentials may not read it)"
        ) from None


@dataclass(frozen=True)
class KeptSamples:
    counts: dict[Verdict, int]  # samples the stream keeps, per verdict
    samples: list[Sample]  # the first `limit` of each verdict asked for, grouped in that order
    per_subject_limit: int  # the stream's max_msgs_per_subject (-1: none)
    unreadable: int  # stored messages that are not samples (skipped)


async def shadow_samples(nc: NatsClient, function: str, verdicts: Sequence[Verdict], limit: int | None) -> KeptSamples:
    """The counts of `function`'s kept samples, and the first `limit` of each of `verdicts` (oldest first)."""
    with _jetstream(f"reading the {SHADOW_STREAM} stream"):
        try:
            info = await jsapi.stream_info(nc, SHADOW_STREAM, subjects_filter=function_filter(function))
        except JetStreamError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                raise RunError(  # exit 1: no shadow run has kept a sample on this server yet
                    f"no shadow samples: the {SHADOW_STREAM} stream does not exist on this server "
                    "(it is created when the first shadow run starts)"
                ) from None
            raise
        state = info.state or jsapi.StreamState()
        per_subject = state.subjects or {}
        counts = {verdict: per_subject.get(sample_subject(function, verdict), 0) for verdict in Verdict}
        samples: list[Sample] = []
        unreadable = 0
        for verdict in verdicts:
            if not counts[verdict] or limit == 0:
                continue
            kept = 0
            walk = jsapi.stored_messages(nc, SHADOW_STREAM, sample_subject(function, verdict), state.first_seq, state.last_seq)
            async with contextlib.aclosing(walk) as messages:
                async for stored in messages:
                    try:
                        samples.append(decode_sample(stored.payload))
                    except msgspec.DecodeError:
                        unreadable += 1
                        continue
                    kept += 1
                    if limit is not None and kept >= limit:
                        break
    config = info.config or jsapi.StreamConfig()
    return KeptSamples(counts, samples, config.max_msgs_per_subject, unreadable)


async def dead_letter_inputs(nc: NatsClient, manifest: LoadedManifest, function: str) -> list[StoredInput]:
    """The function's dead letters, oldest first, each with its original subject and payload."""
    with _jetstream("reading the dead letters"):
        letters = await dlq_admin.list_dead_letters(nc, manifest, function)
    inputs = []
    for letter in letters:
        unusable = ""
        if letter.headers.get(H_ORIGINAL_SIZE):
            unusable = "payload cut to fit the server's max_payload when it was dead-lettered"
        elif not letter.original_subject:
            unusable = "no original subject (not dead-lettered by ebbtide)"
        inputs.append(StoredInput(letter.original_subject or letter.subject, letter.payload, letter.seq, unusable))
    return inputs


@dataclass(frozen=True)
class StreamRange:
    stream: str
    first: int
    last: int
    retention: str


async def stream_range(nc: NatsClient, stream: str, first: int, last: int | None) -> StreamRange:
    """Checks the range against what the stream holds: [first, last], `last` defaulting to its last message."""
    if first < 1:
        raise UsageError(f"--from-seq must be at least 1, not {first}")
    if last is not None and last < first:
        raise UsageError(f"--to-seq {last} is before --from-seq {first}")
    with _jetstream(f"reading stream {stream}"):
        try:
            info = await jsapi.stream_info(nc, stream)
        except JetStreamError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                raise UsageError(f"no stream {stream!r} on this server") from None
            raise
    state = info.state or jsapi.StreamState()
    if first > state.last_seq:
        raise UsageError(f"--from-seq {first} is past the end of {stream} (its last sequence is {state.last_seq})")
    retention = (info.config or jsapi.StreamConfig()).retention
    return StreamRange(stream, first, min(last, state.last_seq) if last is not None else state.last_seq, retention)


async def stream_inputs(nc: NatsClient, selected: StreamRange, subject_filters: Sequence[str]) -> AsyncIterator[StoredInput]:
    """The messages of the range on any of `subject_filters` (what a function's consumers filter), oldest first.

    The server filters on one subject: several (an ordered function's trigger and its partitions' keyed
    subjects) are read as one walk over the whole range, in stream order, the others skipped here."""
    one = subject_filters[0] if len(subject_filters) == 1 else None
    with _jetstream(f"reading stream {selected.stream}"):
        async for stored in jsapi.stored_messages(nc, selected.stream, one or ">", selected.first, selected.last):
            if one is not None or any(subject_matches(f, stored.subject) for f in subject_filters):
                yield StoredInput(stored.subject, stored.payload, stored.seq)
