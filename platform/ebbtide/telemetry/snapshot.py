"""What a host hands to telemetry: its pools' counters and gauges at one moment.

Hosts produce it (`Host.snapshot()`); `/metrics`, the OTLP push and the status reports only render it.
So telemetry never reaches into a host or a pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .histogram import Histogram


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSnapshot:
    function: str
    processed: int  # acked after all effects were confirmed
    dead_lettered: int  # for any reason but a refused effect
    refused: int  # dead-lettered because the guest asked for an effect outside its allowlist
    retried: int  # nak'ed for redelivery
    dead_letters: dict[str, int]  # by reason (the Ebbtide-Reason header), refused included
    guest_faults: dict[str, int]  # by kind: trap, timeout, memory-limit, invalid-output
    instances_started: int
    instances_stopped: int
    reloads: dict[str, int]  # module swaps by outcome: ok, refused
    live_instances: int  # instances holding Wasm memory
    in_flight: int  # messages fetched and not yet settled
    backlog: int | None  # the consumer's lag at the controller's last reading (None: not read yet)
    oldest_pending_s: float | None  # age of the oldest unhandled message (oldest_pending.py; None: no controller)
    handle: Histogram  # guest call time (live: read it while rendering, do not keep it)
    end_to_end: Histogram  # ingress -> effects confirmed
    shadow: dict[str, int] = field(default_factory=dict)  # shadow verdicts: same, different, candidate_fault
    canary: dict[tuple[str, str], int] = field(default_factory=dict)  # canary answers by (version, result)
    candidate_s: float = 0.0  # guest time spent in rollout candidates
    canary_rollbacks: int = 0  # canaries this process stopped past their thresholds


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    pools: list[PoolSnapshot] = field(default_factory=list)
    nats_connected: bool = False
    ready: bool = False  # what /readyz answers: connected, every pool started and its controller running
    asyncio_tasks: int | None = None  # tasks alive on the host's event loop (None: not taken on the loop)
