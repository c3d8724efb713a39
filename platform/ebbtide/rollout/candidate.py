"""The candidate module as one host runs it: which messages it takes, its instances, and its counters.

`Candidate.handle` runs the candidate over (subject, payload) pairs on the worker's own candidate instance
(started lazily, discarded after a fault like a live one) and never raises: a trap, a timeout, the memory
limit, an instance that cannot start, or a host exception around any of these is an outcome of that
message (a GuestFault), so nothing the candidate does can reach the live path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from nats.aio.msg import Msg

from ..broker.headers import H_MSG_ID
from ..broker.partitions import key_of_stored_subject
from ..errors import GuestFault
from ..runtime.guest import Guest, GuestLimits, GuestModule, GuestReply
from ..runtime.guests import start_guest
from .state import Rollout

if TYPE_CHECKING:
    from ..runtime.engine import WasmEngine

log = logging.getLogger("ebbtide.rollout")

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_HASH_SPACE = 1 << 32


def fnv1a_32(data: bytes) -> int:
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def message_key(msg: Msg, ordered_trigger: str | None = None) -> bytes:
    """What the share is decided on: for an ordered function (`ordered_trigger`), the message's key, so all
    of a key's events go to one version; else its Nats-Msg-Id (the same across redeliveries and replicas),
    else its payload. So a message, and a key, always goes to the same version."""
    if ordered_trigger is not None and msg.subject.startswith(ordered_trigger + "."):
        key = key_of_stored_subject(msg.subject, ordered_trigger)
        if key is not None:
            return key.encode()
    headers = msg.headers
    msg_id = headers.get(H_MSG_ID) if headers else None
    return msg_id.encode() if msg_id else msg.data


class Share:
    """A stable choice of `share` of the messages, by FNV-1a of `message_key`."""

    def __init__(self, share: float, ordered_trigger: str | None = None) -> None:
        self.share = share
        self._below = int(share * _HASH_SPACE)
        self._ordered_trigger = ordered_trigger

    def takes(self, msg: Msg) -> bool:
        return self.share >= 1.0 or fnv1a_32(message_key(msg, self._ordered_trigger)) < self._below


@dataclass
class RolloutStats:
    """Per pool, for the whole life of the process (counters never go back when a rollout ends)."""

    shadow: dict[str, int] = field(default_factory=dict)  # by verdict: same, different, candidate_fault
    canary: dict[tuple[str, str], int] = field(default_factory=dict)  # by (version, result)
    candidate_s: float = 0.0  # guest time spent in candidates (shadow and canary)
    samples_published: int = 0
    rollbacks: int = 0  # canaries this host stopped past a threshold (rollout/follow.py)

    def counts(self) -> dict[str, int]:
        """Flat, for status reports: "shadow.<verdict>" and "canary.<version>.<result>"."""
        flat = {f"shadow.{verdict}": count for verdict, count in self.shadow.items()}
        flat.update({f"canary.{version}.{result}": count for (version, result), count in self.canary.items()})
        return flat

    def count_shadow(self, verdict: str) -> None:
        self.shadow[verdict] = self.shadow.get(verdict, 0) + 1

    def count_canary(self, version: str, result: str) -> None:
        key = (version, result)
        self.canary[key] = self.canary.get(key, 0) + 1


class CandidateSlot(Protocol):
    """Where a worker keeps its candidate instance (pool._Worker)."""

    candidate: Guest | None


class Candidate:
    """A rollout's candidate module, loaded on this host, with the function's limits and config."""

    def __init__(
        self,
        rollout: Rollout,
        module: GuestModule,
        engine: WasmEngine,
        limits: GuestLimits,
        config_json: bytes,
        stats: RolloutStats,
        ordered_trigger: str | None = None,
    ) -> None:
        """`ordered_trigger`: the function's trigger when it has `order_by` (a canary then splits by key)."""
        self.rollout = rollout
        self.module = module
        self.share = Share(rollout.share, ordered_trigger)
        self.stats = stats
        self._engine = engine
        self._limits = limits
        self._config_json = config_json

    def handle(self, slot: CandidateSlot, pairs: Sequence[tuple[bytes, bytes]]) -> list[GuestReply]:
        """The candidate's outcome for every pair, in order; never raises."""
        outcomes: list[GuestReply] = []
        instance = slot.candidate if slot.candidate is not None and slot.candidate.module is self.module else None
        started = time.perf_counter()
        while len(outcomes) < len(pairs):
            rest = pairs[len(outcomes) :]
            try:
                if instance is None:
                    instance = start_guest(self._engine, self.module, self._limits, self._config_json)
                answer = instance.handle_batch(rest)
            except Exception as exc:  # cannot start, or a host error around it: the candidate's fault alone
                log.warning("%s: candidate %s failed: %r", self.rollout.function, self.rollout.candidate_sha256[:12], exc)
                fault = GuestFault("host-error", repr(exc))
                outcomes.extend(fault for _ in rest)
                instance = None
                break
            if not answer.outcomes:
                outcomes.extend(GuestFault("host-error", "answered for no message") for _ in rest)
                instance = None
                break
            for outcome in answer.outcomes:
                outcomes.append(outcome)
                if isinstance(outcome, GuestFault):
                    instance = None  # never reuse a faulted instance; the rest run on a fresh one
                    break
            else:
                if answer.instance_failed:
                    instance = None
        slot.candidate = instance
        self.stats.candidate_s += time.perf_counter() - started
        return outcomes
