"""Names of things on the server that several parts compute (pure: no NATS client needed)."""

from __future__ import annotations

# Rollouts (rollout/): the records every host follows, the candidates' bytes, where hosts publish shadow samples.
ROLLOUTS_BUCKET = "ebbtide-rollouts"
MODULES_BUCKET = "ebbtide-modules"
MODULES_STREAM = f"OBJ_{MODULES_BUCKET}"  # the object store's stream (nats-py's layout)
SHADOW_SUBJECT_PREFIX = "ebbtide.shadow"


def kv_stream_name(bucket: str) -> str:
    """The stream behind a KV bucket, as every NATS client names it."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV bucket stores `key` under."""
    return f"$KV.{bucket}.{key}"


# Where shadow runs keep their samples (rollout/samples.py): the observer reads it for `shadow report`.
SHADOW_STREAM = "SHADOW"


# Where the processes of an ordered function tell each other how many of its lanes each holds
# (broker/partitioned_pull.py), so that holders spread over the replicas.
LANE_HOLDINGS_PREFIX = "ebbtide.lane_holdings"


def lane_holdings_subject(function: str) -> str:
    return f"{LANE_HOLDINGS_PREFIX}.{function}"
