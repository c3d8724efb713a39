"""Metrics rendered from a host's snapshot: Prometheus text (format 0.0.4) for /metrics; `otlp.py` pushes
the same families over OTLP.

The host hands over a `HostSnapshot` (telemetry/snapshot.py) of what its pools and controllers already
keep; this module only renders it, and knows nothing of hosts or pools. A scrape costs a few dict
lookups per function and adds nothing to the message path. Counters are per process and start at zero
with it; Prometheus' rate() handles restarts.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ..deadletter import Reason
from . import gc_pauses
from .histogram import END_TO_END_BUCKETS_S, HANDLE_BUCKETS_S, Histogram
from .snapshot import HostSnapshot

__all__ = [
    "CONTENT_TYPE",
    "END_TO_END_BUCKETS_S",
    "HANDLE_BUCKETS_S",
    "Family",
    "Histogram",
    "collect",
    "render_metrics",
    "render_prometheus",
    "resident_memory_bytes",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Reported at 0 before they first happen, so that the series exist and rate()/increase() see the first one.
GUEST_FAULT_KINDS = ("trap", "timeout", "memory-limit", "invalid-output")
SHADOW_RESULTS = ("same", "different", "candidate_fault")
CANARY_RESULTS = ("ok", "dead_letter", "retry", "fault")
DEAD_LETTER_REASONS = tuple(reason.value for reason in Reason)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


Kind = Literal["counter", "gauge", "histogram"]


@dataclass
class Family:
    """One metric: its Prometheus name (counters end in _total), kind, help and samples by labels.

    Both exports are made from these: the Prometheus text (`render_prometheus`) and OTLP (`otlp.py`).
    """

    name: str
    kind: Kind
    help: str
    samples: list[tuple[dict[str, str], float | Histogram]] = field(default_factory=list)

    def add(self, value: float | Histogram, **labels: str) -> None:
        self.samples.append((labels, value))


def resident_memory_bytes() -> int | None:
    """This process's resident set size from /proc/self/statm (Linux); None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def private_memory_bytes() -> int | None:
    """Private_Clean + Private_Dirty of this process (Linux /proc/self/smaps_rollup); None where unavailable."""
    try:
        with open("/proc/self/smaps_rollup", "rb") as rollup:
            kib = sum(int(line.split()[1]) for line in rollup if line.startswith((b"Private_Clean:", b"Private_Dirty:")))
    except (OSError, ValueError, IndexError):
        return None
    return kib * 1024


def open_fds() -> int | None:
    """Open file descriptors of this process (Linux /proc/self/fd); None where unavailable."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def collect(snapshot: HostSnapshot) -> list[Family]:
    """Every metric of a host's snapshot (pools not started yet are simply absent)."""
    messages = Family(
        "ebbtide_messages_total",
        "counter",
        "Message outcomes in this process: ok (effects confirmed, acked), "
        "dead_lettered (acked after its dead letter was stored), refused (dead-lettered for an effect "
        "outside the allowlist), retried (nak'ed for redelivery).",
    )
    dead_letters = Family(
        "ebbtide_dead_letters_total",
        "counter",
        "Messages dead-lettered, by reason (the dead letter's Ebbtide-Reason header): rejected, payload-too-large, "
        "headers-too-large, effect-refused, retries-exhausted.",
    )
    faults = Family(
        "ebbtide_guest_faults_total", "counter", "Guest faults (the instance was replaced and the message retried), by kind."
    )
    instances = Family("ebbtide_instances", "gauge", "Live Wasm instances of the function in this process.")
    in_flight = Family("ebbtide_in_flight", "gauge", "Messages fetched by this process and not yet settled.")
    backlog = Family(
        "ebbtide_backlog",
        "gauge",
        "Consumer lag (num_pending + num_ack_pending, whole consumer) at the controller's last reading.",
    )
    oldest_pending = Family(
        "ebbtide_oldest_pending_seconds",
        "gauge",
        "Seconds since the function's oldest unhandled message (not yet acked or dead-lettered; an ordered "
        "function: over its partitions) was stored, at the controller's last readings; 0 when there is none. "
        "Every process of a function reports it for the whole function: take the max over processes.",
    )
    starts = Family("ebbtide_instance_starts_total", "counter", "Wasm instances started (scaling up, replacements).")
    stops = Family(
        "ebbtide_instance_stops_total",
        "counter",
        "Wasm instances stopped (scaling down, shutdown, discarded after a guest fault).",
    )
    reloads = Family(
        "ebbtide_module_reloads_total",
        "counter",
        "Hot reloads of the function's module: ok (swapped in), refused (did not build, load or start; "
        "the old module kept running).",
    )
    handle = Family(
        "ebbtide_handle_duration_seconds",
        "histogram",
        "Guest time per message (input copy, call, output read): a batch call's time divided among the "
        "messages it handled, one observation per message.",
    )
    end_to_end = Family(
        "ebbtide_end_to_end_seconds",
        "histogram",
        "From the publish of the order to orders.ingress (its server timestamp) until this function's "
        "effects were confirmed, per message processed ok; for the receivers: ingress to outbox write.",
    )
    shadow = Family(
        "ebbtide_shadow_total",
        "counter",
        "Shadow runs: messages the candidate module also answered, by verdict against the live module "
        "(same status and effects byte for byte; different; candidate_fault: it trapped, timed out, hit its memory limit).",
    )
    canary = Family(
        "ebbtide_canary_total",
        "counter",
        "Canary: messages answered by each version (live, candidate), by result: ok, dead_letter (at once), retry, fault.",
    )
    candidate_time = Family(
        "ebbtide_candidate_seconds_total", "counter", "Guest time spent running rollout candidates (shadow and canary)."
    )
    rollbacks = Family(
        "ebbtide_canary_rollbacks_total",
        "counter",
        "Canaries this process rolled back: the candidate passed its fault or dead-letter threshold.",
    )
    ready = Family(
        "ebbtide_ready",
        "gauge",
        "1 while this process is ready (/readyz: connected to NATS, every pool and controller running), for each "
        "function it runs; else 0.",
    )

    for stats in snapshot.pools:
        name = stats.function
        messages.add(stats.processed, function=name, outcome="ok")
        messages.add(stats.dead_lettered, function=name, outcome="dead_lettered")
        messages.add(stats.refused, function=name, outcome="refused")
        messages.add(stats.retried, function=name, outcome="retried")
        reasons = dict.fromkeys(DEAD_LETTER_REASONS, 0)
        reasons.update(stats.dead_letters)
        for reason, count in reasons.items():
            dead_letters.add(count, function=name, reason=reason)
        kinds = dict.fromkeys(GUEST_FAULT_KINDS, 0)
        kinds.update(stats.guest_faults)
        for kind, count in kinds.items():
            faults.add(count, function=name, kind=kind)
        instances.add(stats.live_instances, function=name)
        in_flight.add(stats.in_flight, function=name)
        if stats.backlog is not None:
            backlog.add(stats.backlog, function=name)
        if stats.oldest_pending_s is not None:
            oldest_pending.add(stats.oldest_pending_s, function=name)
        starts.add(stats.instances_started, function=name)
        stops.add(stats.instances_stopped, function=name)
        for outcome in ("ok", "refused"):
            reloads.add(stats.reloads.get(outcome, 0), function=name, outcome=outcome)
        handle.add(stats.handle, function=name)
        end_to_end.add(stats.end_to_end, function=name)
        rollbacks.add(stats.canary_rollbacks, function=name)
        ready.add(1 if snapshot.ready else 0, function=name)
        if stats.shadow or stats.canary:  # only functions that ran a candidate in this process
            for result in SHADOW_RESULTS:
                shadow.add(stats.shadow.get(result, 0), function=name, result=result)
            for version in ("live", "candidate"):
                for result in CANARY_RESULTS:
                    canary.add(stats.canary.get((version, result), 0), function=name, version=version, result=result)
            candidate_time.add(stats.candidate_s, function=name)

    connected = Family("ebbtide_nats_connected", "gauge", "1 while the host's NATS connection is up, else 0.")
    connected.add(1 if snapshot.nats_connected else 0)
    families = [
        *(messages, dead_letters, faults, instances, in_flight, backlog, oldest_pending, starts, stops, reloads),
        *(handle, end_to_end, rollbacks, ready, connected),
        *(family for family in (shadow, canary, candidate_time) if family.samples),
    ]
    families += _process_families(snapshot)
    return families


def _process_families(snapshot: HostSnapshot) -> list[Family]:
    """What a long run watches for leaks (the soak: `ebbtide bench --scenario soak`): memory, descriptors,
    tasks and Python objects of this process, each flat in a healthy host."""
    families = []
    readings: list[tuple[str, str, float | None]] = [
        ("ebbtide_process_resident_memory_bytes", "Resident memory of this process in bytes.", resident_memory_bytes()),
        (
            "ebbtide_process_private_memory_bytes",
            "Memory of this process no other process shares (Private_Clean + Private_Dirty, /proc/self/smaps_rollup), "
            "in bytes: what it alone costs the machine.",
            private_memory_bytes(),
        ),
        ("ebbtide_process_open_fds", "Open file descriptors of this process.", open_fds()),
        ("ebbtide_process_asyncio_tasks", "Tasks alive on the host's event loop.", snapshot.asyncio_tasks),
        (
            "ebbtide_process_gc_objects",
            "Python objects tracked by the garbage collector (len(gc.get_objects()); a few ms per scrape).",
            len(gc.get_objects()),
        ),
    ]
    for name, help_text, value in readings:
        if value is not None:
            family = Family(name, "gauge", help_text)
            family.add(value)
            families.append(family)
    pauses = Family(
        "ebbtide_process_gc_pause_seconds",
        "histogram",
        "How long each garbage collection stopped this process (every message it holds waits), in seconds.",
    )
    pauses.add(gc_pauses.timed().histogram)
    families.append(pauses)
    return families


def render_metrics(snapshot: HostSnapshot) -> str:
    return render_prometheus(collect(snapshot))


def render_prometheus(families: Iterable[Family]) -> str:
    """The text exposition format 0.0.4."""
    lines: list[str] = []
    for family in families:
        lines += [f"# HELP {family.name} {_escape_help(family.help)}", f"# TYPE {family.name} {family.kind}"]
        for labels, value in family.samples:
            if isinstance(value, Histogram):
                cumulative = 0
                for bound, count in zip((*value.bounds, math.inf), value.counts):
                    cumulative += count
                    lines.append(_sample(family.name + "_bucket", {**labels, "le": _format_value(bound)}, cumulative))
                lines.append(_sample(family.name + "_sum", labels, value.sum))
                lines.append(_sample(family.name + "_count", labels, cumulative))
            else:
                lines.append(_sample(family.name, labels, value))
    return "\n".join(lines) + "\n"


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_format_value(value)}"
    rendered = ",".join(f'{key}="{escape_label_value(str(val))}"' for key, val in labels.items())
    return f"{name}{{{rendered}}} {_format_value(value)}"
