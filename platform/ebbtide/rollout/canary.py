"""Canaries: a stable share of the messages is handled by the candidate instead of the live module, and its
answers are carried out like the live ones (the same executor and outcome policy).

Which messages: `Share` (FNV-1a of the Nats-Msg-Id, else the payload), so a message goes to the same
version on every delivery and every replica. Each version's answers are counted
(`ebbtide_canary_total{version, result}`), and the candidate's last `window` answers on this host are
watched: when its fault or dead-letter rate passes the record's threshold, the host stops the canary at once
and writes `rolled-back` with the reason, which every replica follows. A message the candidate faulted on
is retried as usual, and after a rollback the live module takes it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence

from ..broker.delivery import Incoming
from ..function import Message, WorkerGuests
from ..outcome import Declined, Effects, Faulted, GuestResult
from ..runtime import Status
from .candidate import Candidate
from .state import Rollout

log = logging.getLogger("ebbtide.rollout")

LIVE = "live"
CANDIDATE = "candidate"


def result_kind(result: GuestResult) -> str:
    """ok | dead_letter (at once: reject, refused effect, too large) | retry | fault."""
    if type(result) is Effects:
        return "ok"
    if isinstance(result, Faulted):
        return "fault"
    if isinstance(result, Declined) and result.status is Status.RETRY:
        return "retry"
    return "dead_letter"


class RollbackWindow:
    """The candidate's last `window` answers on this host; pure: says why to roll back, or None."""

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self._kinds: collections.deque[str] = collections.deque(maxlen=rollout.window)

    def observe(self, kind: str) -> str | None:
        self._kinds.append(kind)
        seen = len(self._kinds)
        if seen < self.rollout.min_messages:
            return None
        for what, limit in (("fault", self.rollout.max_fault_rate), ("dead_letter", self.rollout.max_dead_letter_rate)):
            count = self._kinds.count(what)
            if count / seen > limit:
                rate = count / seen
                return (
                    f"candidate {what.replace('_', '-')} rate {rate:.1%} over its last {seen} messages "
                    f"passed the threshold {limit:.1%}"
                )
        return None


class CanaryRun:
    def __init__(self, candidate: Candidate, roll_back: Callable[[str], None]) -> None:
        self.candidate = candidate
        self.window = RollbackWindow(candidate.rollout)
        self._roll_back = roll_back
        self.stopped = False

    @property
    def candidate_sha256(self) -> str:
        return self.candidate.rollout.candidate_sha256

    def run_guests(self, guests: WorkerGuests, batch: Sequence[Incoming], messages: list[Message]) -> list[GuestResult]:
        share, stats = self.candidate.share, self.candidate.stats
        to_candidate = [not self.stopped and share.takes(incoming.msg) for incoming in batch]
        if not any(to_candidate):
            live_results = guests.run_live(batch, messages)
            for result in live_results:
                stats.count_canary(LIVE, result_kind(result))
            return live_results
        live_at = [i for i, chosen in enumerate(to_candidate) if not chosen]
        candidate_at = [i for i, chosen in enumerate(to_candidate) if chosen]
        results: list[GuestResult | None] = [None] * len(batch)
        if live_at:
            live_results = guests.run_live([batch[i] for i in live_at], [messages[i] for i in live_at])
            for i, result in zip(live_at, live_results, strict=True):
                results[i] = result
                stats.count_canary(LIVE, result_kind(result))
        why = None
        for i, result in zip(candidate_at, self.candidate.run(guests, [messages[i] for i in candidate_at]), strict=True):
            results[i] = result
            kind = result_kind(result)
            stats.count_canary(CANDIDATE, kind)
            why = why or self.window.observe(kind)
        if why is not None and not self.stopped:
            self.stopped = True  # this host stops at once; the others when they read the record
            log.error(
                "%s: rolling the canary %s back: %s", self.candidate.rollout.function, self.candidate.module.sha256[:12], why
            )
            self._roll_back(why)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]
