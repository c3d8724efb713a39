"""Names of things on the server that several parts compute (pure: no NATS client needed)."""

from __future__ import annotations


def kv_stream_name(bucket: str) -> str:
    """The stream behind a KV bucket, as every NATS client names it."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV bucket stores `key` under."""
    return f"$KV.{bucket}.{key}"


# Where shadow runs keep their samples (rollout/samples.py): the observer reads it for `shadow report`.
SHADOW_STREAM = "SHADOW"
