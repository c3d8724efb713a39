"""Per-key ordering on the server: keyed subjects, partitions chosen by the server, one consumer per partition.

A function with `order_by` reads its trigger T in key order. Publishers add the key as one more subject
token (`T.<key>`); the stream's subject transform (StreamConfig.subject_transform, nats-server >= 2.10)
stores each such message as `T.<partition>.<key>`, the partition being the server's own
`{{partition(P, i)}}` (FNV-1a of the key token, modulo P): no client hashes anything, and subjects the
transform does not match (the bare trigger, other functions' subjects) are stored unchanged.

Each partition p has a durable consumer `<function>-p<p>` filtered on `T.<p>.*` with max_ack_pending = 1:
the server delivers a partition's next message only once the one before was acked or terminated, by
whichever replica holds it. A nak with a delay keeps it pending, so a retried message blocks its partition
until it succeeds or is dead-lettered; a killed holder's message comes back after the ack wait, before
anything later. Messages on the bare trigger (published without a key) go to the function's usual consumer
`<function>`, also one at a time: they are one sequence of their own, never left unconsumed.

Pure: names, subjects and the transform, computed from the manifest; no NATS client needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..manifest import LoadedManifest

KEY_TOKEN = re.compile(r"^[^\s.*>]{1,128}$")  # one NATS subject token: no dots, wildcards or whitespace
MAX_PARTITIONS = 1024


@dataclass(frozen=True, slots=True)
class Lane:
    """One durable consumer an ordered function reads, one message at a time."""

    consumer: str
    filter_subject: str


def partition_consumer(function: str, partition: int) -> str:
    return f"{function}-p{partition}"


def keyed_subject(trigger: str, key: str) -> str:
    """Where a publisher sends a message of `key` for an ordered function on `trigger`."""
    return f"{trigger}.{key}"


def key_of_stored_subject(subject: str, trigger: str) -> str | None:
    """The key of a message as the stream stores it (`T.<partition>.<key>`), None for the bare trigger."""
    if subject == trigger:
        return None
    return subject.rsplit(".", 1)[1]


def fnv1a_partition(key: str, partitions: int) -> int:
    """The partition the server's `{{partition(P, i)}}` gives `key` (32-bit FNV-1a, modulo P).

    Nothing in the host needs it (the server decides); for clients that want to know, and for the tests
    that check it is the server's function."""
    digest = 0x811C9DC5
    for byte in key.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions


def stream_transform(triggers: list[str], partitions: int) -> tuple[str, str]:
    """The (src, dest) subject transform that partitions every trigger of `triggers` (one stream's ordered
    triggers) by the key token that follows it. Raises ValueError when they cannot share one transform
    (the server keeps one per stream): they must be literal subjects of the same number of tokens."""
    split = [trigger.split(".") for trigger in triggers]
    lengths = {len(tokens) for tokens in split}
    if len(lengths) != 1:
        raise ValueError(f"ordered triggers of one stream must have the same number of tokens: {', '.join(triggers)}")
    for trigger in triggers:
        if any(token in ("*", ">") for token in trigger.split(".")):
            raise ValueError(f"an ordered trigger must be a literal subject, not the wildcard {trigger!r}")
    src_tokens: list[str] = []
    dest_tokens: list[str] = []
    wildcards = 0
    for position in zip(*split):
        if len(set(position)) == 1:
            src_tokens.append(position[0])
            dest_tokens.append(position[0])
        else:
            wildcards += 1
            src_tokens.append("*")
            dest_tokens.append(f"{{{{wildcard({wildcards})}}}}")
    key = wildcards + 1
    src = ".".join([*src_tokens, "*"])
    dest = ".".join([*dest_tokens, f"{{{{partition({partitions},{key})}}}}", f"{{{{wildcard({key})}}}}"])
    return src, dest


def ordered_triggers(manifest: LoadedManifest, stream: str | None = None) -> dict[str, str]:
    """Trigger -> order_by field of every ordered function (of `stream` only, when given)."""
    return {
        fn.trigger: fn.order_by
        for fn in manifest.spec.functions.values()
        if fn.order_by and (stream is None or manifest.stream_for(fn.trigger) == stream)
    }


def stream_transform_of(manifest: LoadedManifest, stream: str) -> tuple[str, str] | None:
    """The subject transform `stream` needs, None when no ordered function reads it."""
    triggers = sorted(ordered_triggers(manifest, stream))
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
    return [Lane(partition_consumer(function, p), f"{fn.trigger}.{p}.*") for p in range(partitions)] + [own]


def consumer_names(manifest: LoadedManifest, function: str) -> list[str]:
    return [lane.consumer for lane in lanes(manifest, function)]
