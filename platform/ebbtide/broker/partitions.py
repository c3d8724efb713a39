"""Per-key ordering on the server: keyed subjects, partitions chosen by the server, one consumer per partition.

A function with `order_by` reads its trigger T in key order. Publishers add the key as one more subject
token (`T.<key>`); the stream's subject transform (StreamConfig.subject_transform, nats-server >= 2.10)
stores each such message as `T.<partition>`, the partition being the server's own `{{partition(P, i)}}`
(FNV-1a of the key token, modulo P): no client hashes anything, and subjects the transform does not match
(the bare trigger, other functions' subjects) are stored unchanged. The stored subject has no key token:
a stream holding a subject per key cost nats-server more to store each message, and every partition's
consumer then searched the stream's many subjects for its own (measured in the README, "Ordering by key");
the holder reads the key from the payload, the field the publisher took it from (ordering.py).

Each partition p has a durable consumer `<function>-p<p>` (a *lane*) filtered on `T.<p>`, in a priority
group with the `pinned_client` policy (ADR-42, nats-server >= 2.11): the server delivers a lane's messages
to one client at a time, the one it pinned, and pins another only once the holder has sent no pull request
for `priority_timeout` (or was unpinned through the API). So one process holds a lane and takes its
messages in batches; what keeps each key in order through a change of holder is the holder's own
discipline (broker/lanes.py, broker/partitioned_pull.py), since a new holder gets the lane's newer
messages first and the old holder's unacked ones only at their ack wait. Messages on the bare trigger
(published without a key) go to the function's own consumer `<function>`, a lane of its own: one sequence.

Pure: names, subjects, the transform and the lanes' consumer configuration, computed from the manifest;
no NATS client needed. The subject grammar itself (keyed subjects, the transform, FNV-1a) is subjects.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..manifest import FunctionSection, LoadedManifest
from ..subjects import stream_transform

MAX_PARTITIONS = 1024
# The priority group of every lane (ADR-42: 1-16 characters); pull requests name it.
PRIORITY_GROUP = "holder"
PINNED_CLIENT = "pinned_client"


@dataclass(frozen=True, slots=True)
class Lane:
    """One durable consumer an ordered function reads, held by one process at a time."""

    consumer: str
    filter_subject: str


def partition_consumer(function: str, partition: int) -> str:
    return f"{function}-p{partition}"


def partition_subject(trigger: str, partition: int) -> str:
    """Where the stream stores the keyed messages of `trigger` that fall in `partition`."""
    return f"{trigger}.{partition}"


def stream_transform_of(manifest: LoadedManifest, stream: str) -> tuple[str, str] | None:
    """The subject transform `stream` needs, None when no ordered function reads it."""
    triggers = sorted(manifest.ordered_triggers(stream))
    if not triggers:
        return None
    return stream_transform(triggers, manifest.spec.streams[stream].partitions)


def lanes(manifest: LoadedManifest, function: str) -> list[Lane]:
    """The consumers a function reads: its own (filtered on the trigger) and, when ordered, one per
    partition. An ordered function's own consumer takes the keyless messages; its index in the list is
    the last."""
    fn = manifest.function(function)
    own = Lane(function, fn.trigger)
    if not fn.order_by:
        return [own]
    partitions = manifest.spec.streams[manifest.stream_for(fn.trigger)].partitions
    return [Lane(partition_consumer(function, p), partition_subject(fn.trigger, p)) for p in range(partitions)] + [own]


def consumer_names(manifest: LoadedManifest, function: str) -> list[str]:
    return [lane.consumer for lane in lanes(manifest, function)]


def pin_timeout_s(function: FunctionSection) -> float:
    """How long a lane stays pinned to a holder that sends no pull request (the consumers'
    `priority_timeout`): how soon another process takes over the lanes of a holder that died or froze.
    Its ack wait, within 2-10 s: a holder renews its pin three times per timeout (broker/partitioned_pull.py),
    and a dead holder's unacked messages come back only after the ack wait anyway."""
    return min(max(function.ack_wait_s, 2.0), 10.0)


def lane_consumer_config(function: FunctionSection, lane: Lane) -> dict[str, object]:
    """A lane's durable consumer, as JetStream's API takes it (nats-py 2.16 has no priority groups).

    max_ack_pending is the function's: the holder bounds what it holds itself (broker/lanes.py); the
    server's bound only stops a runaway. The server never stops redelivering on its own (max_deliver -1):
    the host counts deliveries and dead-letters after retry.max_deliver."""
    return {
        "durable_name": lane.consumer,
        "name": lane.consumer,
        "filter_subject": lane.filter_subject,
        "ack_policy": "explicit",
        "ack_wait": int(function.ack_wait_s * 1e9),
        "max_deliver": -1,
        "max_ack_pending": function.max_ack_pending,
        "deliver_policy": "all",
        "priority_groups": [PRIORITY_GROUP],
        "priority_policy": PINNED_CLIENT,
        "priority_timeout": int(pin_timeout_s(function) * 1e9),
    }
