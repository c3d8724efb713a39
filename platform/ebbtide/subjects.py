"""The NATS subject grammar as ebbtide uses it: matching and routing by pattern, keyed subjects, the
partitioning transform, FNV-1a.

A leaf: pure functions of strings and bytes, importing nothing of ebbtide, so that the manifest (which checks
subjects), the broker (which provisions the transform) and the rollout code (which splits messages by a
stable hash) all use one definition and none of them has to import another.

Keyed subjects (functions.X.order_by, see broker/partitions.py): a publisher sends a message of key K meant
for trigger T to `T.K`; the stream's subject transform stores it as `T.<partition>`, the partition being
the server's `{{partition(P, i)}}`, which is FNV-1a of the key token modulo P. The stored subject drops the
key: a subject per key cost the server on every store and on every read of a partition (ordering.py says
where the key is read from instead).
"""

from __future__ import annotations

import re

KEY_TOKEN = re.compile(r"^[^\s.*>]{1,128}$")  # one NATS subject token: no dots, wildcards or whitespace

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` matches one token, `>` one or more trailing tokens."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, token in enumerate(p_tokens):
        if token == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        if token != "*" and token != s_tokens[i]:
            return False
    return len(p_tokens) == len(s_tokens)


def keyed_subject(trigger: str, key: str) -> str:
    """Where a publisher sends a message of `key` for an ordered function on `trigger`."""
    return f"{trigger}.{key}"


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a: the server's hash for `{{partition(P, i)}}`, and the rollouts' stable share."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def fnv1a_partition(key: str, partitions: int) -> int:
    """The partition the server's `{{partition(P, i)}}` gives `key` (32-bit FNV-1a, modulo P).

    Nothing in the host needs it (the server decides); for clients that want to know, and for the tests
    that check it is the server's function."""
    return fnv1a_32(key.encode()) % partitions


def stream_transform(triggers: list[str], partitions: int) -> tuple[str, str]:
    """The (src, dest) subject transform that partitions every trigger of `triggers` (one stream's ordered
    triggers) by the key token that follows it: `T.<key>` is stored as `T.<partition>`. Raises ValueError
    when they cannot share one transform (the server keeps one per stream): they must be literal subjects of
    the same number of tokens."""
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
    dest = ".".join([*dest_tokens, f"{{{{partition({partitions},{key})}}}}"])
    return src, dest


class SubjectRoutes:
    """The value of the first pattern that matches a subject (`get`): a pattern `a.b.>` is a prefix test, a
    literal one a comparison, others go token by token. The first CACHED subjects asked for are remembered
    (a distributor's few routes); the cache never grows past that (a receiver's KV keys are unbounded)."""

    CACHED = 256

    def __init__(self, routes: list[tuple[str, str | None]]) -> None:
        self._routes = [(pattern, _prefix_of(pattern), value) for pattern, value in routes]
        self._known: dict[str, str | None] = {}

    def get(self, subject: str) -> str | None:
        try:
            return self._known[subject]
        except KeyError:
            pass
        found = self._match(subject)
        if len(self._known) < self.CACHED:
            self._known[subject] = found
        return found

    def _match(self, subject: str) -> str | None:
        for pattern, prefix, value in self._routes:
            if prefix is not None:
                if subject.startswith(prefix) and len(subject) > len(prefix):
                    return value
            elif subject == pattern or subject_matches(pattern, subject):
                return value
        return None


def _prefix_of(pattern: str) -> str | None:
    """`a.b.` for `a.b.>`; None for a pattern with `*` or without `>`."""
    return pattern[:-1] if pattern.endswith(".>") and "*" not in pattern else None
