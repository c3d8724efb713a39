"""Reading every write of every outbox key back in the order the bucket stored them, and judging it
against the events each order was sent (tests of per-key ordering)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NatsClient
from nats.js import api


class _Written(msgspec.Struct):
    event_seq: int = msgspec.field(name="eventSeq", default=0)


_decode = msgspec.json.Decoder(_Written).decode


@dataclass(frozen=True)
class SequenceCheck:
    keys: int  # orders that should have been written
    writes: int
    violations: int  # writes of an event older than one already written for the key (out of order)
    lost: int  # events never written (among those the bucket's history can still show)
    applied_twice: int  # writes of an event already written for the key
    strays: int  # keys nobody sent
    unjudged: int = 0  # events of hot keys older than the bucket's history keeps: their writes are gone

    @property
    def clean(self) -> bool:
        return self.violations == self.lost == self.applied_twice == self.strays == 0


async def bucket_writes(nc: NatsClient, bucket: str) -> list[tuple[str, int]]:
    """(key, eventSeq) of every write the bucket's stream holds, in stream order: each key's last `history`
    writes (judge() is told the history)."""
    js = nc.jetstream()
    stream = f"KV_{bucket}"
    total = (await js.stream_info(stream)).state.messages
    writes: list[tuple[str, int]] = []
    if not total:
        return writes
    prefix = f"$KV.{bucket}."
    sub = await js.pull_subscribe(
        f"{prefix}>",
        stream=stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL),
    )
    try:
        while len(writes) < total:
            for msg in await sub.fetch(min(1000, total - len(writes)), timeout=5):
                writes.append((msg.subject.removeprefix(prefix), _decode(msg.data).event_seq))
    finally:
        await sub.unsubscribe()
    return writes


def judge(writes: Iterable[tuple[str, int]], expected: Mapping[str, int], history: int | None = None) -> SequenceCheck:
    """`writes`: (key, eventSeq) as the bucket's stream holds them; `expected`: key -> the number of events
    sent for it (eventSeq 1..n); `history`: the writes per key the bucket keeps (None: all of them).

    A key with more events than `history` (a hot key) shows only its last `history` writes: its older events
    cannot be judged lost (they are `unjudged`), the last `history` must all be there, in order."""
    latest: dict[str, int] = {}
    written: dict[str, set[int]] = {}
    violations = twice = strays = count = 0
    for key, seq in writes:
        count += 1
        if key not in expected:
            strays += 1
            continue
        seen = written.setdefault(key, set())
        if seq in seen:
            twice += 1
        elif seq < latest.get(key, 0):
            violations += 1
        seen.add(seq)
        latest[key] = max(latest.get(key, 0), seq)
    lost = unjudged = 0
    for key, n in expected.items():
        first_kept = 1 if history is None else max(1, n - history + 1)
        unjudged += first_kept - 1
        lost += len(set(range(first_kept, n + 1)) - written.get(key, set()))
    return SequenceCheck(len(expected), count, violations, lost, twice, strays, unjudged)


async def check_outboxes(nc: NatsClient, expected: Mapping[str, Mapping[str, int]]) -> dict[str, SequenceCheck]:
    """`expected`: bucket -> key -> events sent; judged against each bucket's history (writes kept per key)."""
    js = nc.jetstream()
    checks = {}
    for bucket, keys in expected.items():
        history = (await js.stream_info(f"KV_{bucket}")).config.max_msgs_per_subject
        checks[bucket] = judge(await bucket_writes(nc, bucket), keys, history if history and history > 0 else None)
    return checks


class _Event(msgspec.Struct):
    order_id: int = msgspec.field(name="orderId", default=0)
    event_seq: int = msgspec.field(name="eventSeq", default=0)


_decode_event = msgspec.json.Decoder(_Event).decode


async def input_order(nc: NatsClient, stream: str, subjects: str) -> dict[str, list[int]]:
    """Each order's eventSeqs in the order `stream` stored them on `subjects` (a limits stream keeps them)."""
    js = nc.jetstream()
    total = (await js.stream_info(stream, subjects_filter=subjects)).state.subjects or {}
    count = sum(total.values())
    order: dict[str, list[int]] = {}
    sub = await js.pull_subscribe(
        subjects,
        stream=stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL),
    )
    try:
        seen = 0
        while seen < count:
            for msg in await sub.fetch(min(1000, count - seen), timeout=5):
                event = _decode_event(msg.data)
                order.setdefault(str(event.order_id), []).append(event.event_seq)
                seen += 1
    finally:
        await sub.unsubscribe()
    return order


def as_stored(writes: Iterable[tuple[str, int]], order: Mapping[str, list[int]]) -> list[tuple[str, int]]:
    """`writes` with each eventSeq replaced by its place (1, 2, ...) in the order the input stream holds its
    key's events: what a pipeline that keeps the stream's order per key must write in ascending order."""
    ranks = {key: {seq: rank for rank, seq in enumerate(seqs, 1)} for key, seqs in order.items()}
    return [(key, ranks.get(key, {}).get(seq, seq)) for key, seq in writes]
