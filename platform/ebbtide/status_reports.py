"""Pool status reports: what each process's pools publish on NATS, for `ebbtide top`, the demo and charts.

Each host publishes one `PoolStatus` per pool on `ebbtide.status_reports.<function>` (core NATS, fire and forget)
at every control tick while the pool is active and every few seconds while idle. Several processes (or
Kubernetes replicas) may run the same function: tell them apart by `host_id`, add them up per function.
"""

from __future__ import annotations

import msgspec

STATUS_SUBJECT_PREFIX = "ebbtide.status_reports"
# A message here (any payload) makes every pool report at once, e.g. when `ebbtide top` starts.
STATUS_REQUEST_SUBJECT = "ebbtide.status_reports-request"


def status_subject(function: str) -> str:
    return f"{STATUS_SUBJECT_PREFIX}.{function}"


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    function: str
    host_id: str  # "<hostname>:<pid>", one per process
    time: float  # unix seconds when sampled
    backlog: int  # consumer lag as KEDA reads it: num_pending + num_ack_pending (whole consumer, all replicas)
    instances: int  # live Wasm instances in this process
    in_flight: int  # messages this process is working on
    processed: int  # cumulative, this process
    dead_lettered: int  # cumulative, this process
    retried: int  # cumulative, this process
    guest_faults: int  # cumulative, this process
    rate: float  # messages settled per second since the previous report
    handle_p50_us: float  # guest call time percentiles since the previous report (0 when idle)
    handle_p99_us: float
    # Rollouts (rollout/): the live module this process runs, the candidate beside it ("" when none) and its
    # counts, cumulative: "shadow.<verdict>", "canary.<version>.<result>" (`ebbtide shadow status` adds them up).
    module_sha256: str = ""
    candidate_sha256: str = ""
    rollout: dict[str, int] = msgspec.field(default_factory=dict)
    # Added with issue 25 (a default, so that reports of earlier versions still decode): seconds since the
    # function's oldest unhandled message was stored, over its consumers (0: none). See oldest_pending.py.
    oldest_pending_s: float = 0.0
    # Added with issue 32: this process's live instances integrated over time, cumulative (instance-seconds
    # between two reports, exact however far apart they are; the capacity bench's measure).
    instance_seconds: float = 0.0


encode_status = msgspec.json.Encoder().encode
decode_status = msgspec.json.Decoder(PoolStatus).decode
