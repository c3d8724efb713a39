"""The candidate module as one host runs it: which messages it takes, its instances, and its counters.

`Candidate.run` runs the candidate over (subject, payload) pairs through the guest loop every path uses
(function.GuestLoop), on the worker's own candidate loop (its instance started lazily, replaced after a
fault like a live one), with the function's spec: the same limits, config and allowlist as the live pool.
It never raises: a trap, a timeout, the memory limit, an instance that cannot start, or a host exception
around any of these is an answer of that message (a fault), so nothing the candidate does can reach the
live path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from nats.aio.msg import Msg

from ..broker.headers import H_MSG_ID
from ..function import FunctionSpec, GuestLoop, Instances, Message, RolloutStats, WorkerGuests
from ..ordering import LaneKeys
from ..outcome import GuestResult
from ..runtime.engine import WasmEngine
from ..runtime.guest import GuestModule, GuestReply
from ..subjects import fnv1a_32
from .state import Rollout

_HASH_SPACE = 1 << 32


def message_key(msg: Msg, lane_keys: LaneKeys | None = None) -> bytes:
    """What the share is decided on: for an ordered function (`lane_keys`), the message's key, so all of a
    key's events go to one version; else (or without a key) its Nats-Msg-Id (the same across redeliveries and
    replicas), else its payload. So a message, and a key, always goes to the same version."""
    if lane_keys is not None:
        key = lane_keys.of(msg.subject, msg.data)
        if key:
            return key.encode()
    headers = msg.headers
    msg_id = headers.get(H_MSG_ID) if headers else None
    return msg_id.encode() if msg_id else msg.data


class Share:
    """A stable choice of `share` of the messages, by FNV-1a of `message_key`."""

    def __init__(self, share: float, lane_keys: LaneKeys | None = None) -> None:
        self.share = share
        self._below = int(share * _HASH_SPACE)
        self._lane_keys = lane_keys

    def takes(self, msg: Msg) -> bool:
        return self.share >= 1.0 or fnv1a_32(message_key(msg, self._lane_keys)) < self._below


class Candidate:
    """A rollout's candidate module, loaded on this host, run with the function's spec."""

    def __init__(
        self, rollout: Rollout, module: GuestModule, engine: WasmEngine, spec: FunctionSpec, stats: RolloutStats
    ) -> None:
        self.rollout = rollout
        self.module = module
        self.spec = spec
        # An ordered function's canary splits by key: all of a key's events go to one version.
        section = spec.section
        self.share = Share(rollout.share, LaneKeys(section.trigger, section.order_by) if section.order_by else None)
        self.stats = stats
        self.instances = Instances(spec, engine, module)

    def run(
        self, guests: WorkerGuests, messages: Sequence[Message], replies: list[GuestReply] | None = None
    ) -> list[GuestResult]:
        """The candidate's answer to every message, in order, on the worker's candidate loop; never raises.
        The guest's own replies go to `replies` when given."""
        loop = guests.candidate
        if loop is None or loop.source is not self.instances:  # the worker's first batch of this candidate
            loop = guests.candidate = GuestLoop(self.instances, self.spec.allowlist, contain=True)
        started = time.perf_counter()
        results = loop.run(messages, replies)
        self.stats.candidate_s += time.perf_counter() - started
        return results
