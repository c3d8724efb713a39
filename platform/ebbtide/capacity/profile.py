"""What one order costs, per function and for nats-server: the model's inputs, measured by `ebbtide bench
--scenario capacity` (results.json, details.capacity.profile) or built in (measured on the project's 2-core
machine). Pure: a profile from a dict, the pipeline from the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..manifest import LoadedManifest
from ..subjects import subject_matches


@dataclass(frozen=True)
class FunctionProfile:
    cpu_s: float  # CPU seconds of the function's process per message it handles (one process: at most one core)
    server_cpu_s: float  # nats-server CPU per message of this function: delivery, ack, its effects and their PubAcks
    messages_per_order: float  # messages it handles per order published (a receiver: its share of the orders)
    memory_mib: float  # resident memory of one replica (its pod's working set), idle
    rate_per_s: float = 0.0  # measured alone: one replica through a batch (for the record; the model uses cpu_s)

    @property
    def replica_rate(self) -> float:
        """Messages per second one replica handles with a core to itself."""
        return 1.0 / self.cpu_s


@dataclass(frozen=True)
class Profile:
    functions: dict[str, FunctionProfile]
    publish_cpu_s: float  # the publisher's CPU per order (bench runs publish from the benchmark's process)
    server_publish_cpu_s: float  # nats-server CPU per order published to the entry subject and stored
    publish_rate: float  # orders/s one publisher reached alone (bench runs only: a real burst arrives at once)
    cold_start_s: float  # a replica's process, exec to ready
    stored_bytes_per_order: float  # JetStream bytes per order over every stream (one copy: R1)
    instance_memory_mib: float = 0.02  # each live Wasm instance
    # What a replica costs while its function has work, beyond its messages (its control loop's lag reads and
    # status reports, its workers' pull requests), its process's and the server's, in cores.
    replica_overhead_cores: float = 0.0
    source: str = ""  # where it was measured, when, and how loaded the machine was
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> Profile:
        try:
            functions = {name: FunctionProfile(**values) for name, values in data["functions"].items()}
            fields = {k: v for k, v in data.items() if k not in ("functions", "source")}
            return cls(functions=functions, source=data.get("source") or source, **fields)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: not a capacity profile ({exc})") from None


def profile_of_results(results: dict[str, Any], source: str) -> Profile:
    """The profile a bench run wrote (`ebbtide bench --scenario capacity`)."""
    capacity = (results.get("details") or {}).get("capacity") or {}
    if "profile" not in capacity:
        raise ValueError(f"{source}: no capacity profile in it (run `ebbtide bench --scenario capacity`)")
    return Profile.from_dict(capacity["profile"], source)


def check_covers(profile: Profile, manifest: LoadedManifest) -> None:
    missing = sorted(set(manifest.spec.functions) - set(profile.functions))
    if missing:
        raise ValueError(f"the profile ({profile.source}) has no figures for {', '.join(missing)}: measure it with this manifest")


# Built in: `ebbtide bench --scenario capacity` on the project's development machine (2 vCPUs, Debian 12,
# Python 3.11), 2026-12-07 05:36 UTC, load average 13-21 from other work (CPU per message holds under load;
# rates do not). The cold start is the quieter `--scenario replica` median of 2026-11-29 (README, Performance):
# under that load a start took 3.1 s. A profile measured on your own machine (--profile) replaces it.
DEFAULT = Profile(
    functions={
        "distributor": FunctionProfile(cpu_s=84e-6, server_cpu_s=46e-6, messages_per_order=1.0, memory_mib=44.0),
        "receiver-express": FunctionProfile(cpu_s=89e-6, server_cpu_s=55e-6, messages_per_order=0.307, memory_mib=44.0),
        "receiver-standard": FunctionProfile(cpu_s=100e-6, server_cpu_s=70e-6, messages_per_order=0.693, memory_mib=44.3),
    },
    publish_cpu_s=27e-6,
    server_publish_cpu_s=19e-6,
    publish_rate=4_013.0,
    cold_start_s=0.32,
    stored_bytes_per_order=1_369.0,
    # 6.3 and 14.0 ms per busy replica-second in two runs of the same hour, by a way the bench has since
    # dropped (4 processes against 1: 0 to 105 ms from run to run; workload/bench/capacity.py); 1 % of a pod's core
    replica_overhead_cores=0.010,
    source="built in: ebbtide bench --scenario capacity on the project's 2-core machine, 2026-12-07 (CPU per message, "
    "memory, storage); cold start 0.32 s from --scenario replica, 2026-11-29",
)


# -- the pipeline ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """Which function feeds which, from the manifest: a function's input is the entry (no function publishes
    to its trigger) or the effects of the functions allowed to publish there."""

    order: tuple[str, ...]  # upstream before downstream
    upstream: dict[str, tuple[str, ...]]

    @property
    def entries(self) -> tuple[str, ...]:
        return tuple(f for f in self.order if not self.upstream[f])

    @property
    def leaves(self) -> tuple[str, ...]:
        fed = {u for ups in self.upstream.values() for u in ups}
        return tuple(f for f in self.order if f not in fed)


def pipeline_of(manifest: LoadedManifest) -> Pipeline:
    functions = manifest.spec.functions
    upstream = {
        name: tuple(
            other for other, o in functions.items() if other != name and any(subject_matches(p, fn.trigger) for p in o.publish)
        )
        for name, fn in functions.items()
    }
    order: list[str] = []
    while len(order) < len(functions):
        ready = [f for f in functions if f not in order and all(u in order for u in upstream[f])]
        if not ready:
            raise ValueError(f"the functions feed each other in a cycle: {', '.join(f for f in functions if f not in order)}")
        order += ready
    return Pipeline(tuple(order), upstream)
