"""Shadow runs: the candidate answers the same messages after the live module, in the same worker, and is
only compared with it.

The live module's answers are what the executor carries out, as without a shadow; the candidate's are
judged (`compare`), counted (`ebbtide_shadow_total`), and the first `keep` of each verdict are published
as `Sample`s to the SHADOW stream, without waiting (the stream keeps the first N per subject across
replicas and refuses the rest). Nothing the candidate does is carried out, and nothing it does, raises
or costs beyond its share and its fuel can reach the live answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from ..broker.delivery import Incoming
from ..function import Message, WorkerGuests
from ..outcome import GuestResult
from ..runtime.guest import GuestReply
from .candidate import Candidate
from .compare import Verdict, compare, recorded
from .samples import Sample

log = logging.getLogger("ebbtide.rollout")

PublishSample = Callable[[Sample], None]


class ShadowRun:
    def __init__(self, candidate: Candidate, publish_sample: PublishSample) -> None:
        self.candidate = candidate
        self._publish_sample = publish_sample
        self._sent: dict[Verdict, int] = {}  # samples this host sent per verdict (at most keep each)

    @property
    def candidate_sha256(self) -> str:
        return self.candidate.rollout.candidate_sha256

    def run_guests(self, guests: WorkerGuests, batch: Sequence[Incoming], messages: list[Message]) -> list[GuestResult]:
        live: list[GuestReply] = []
        results = guests.run_live(batch, messages, live)
        try:
            self._judge(guests, batch, messages, live, results)
        except Exception:  # a bug here must not touch the live answers: those are already decided
            log.exception("%s: shadow run failed on a batch; the live answers stand", self.candidate.rollout.function)
        return results

    def _judge(
        self,
        guests: WorkerGuests,
        batch: Sequence[Incoming],
        messages: list[Message],
        live: list[GuestReply],
        live_results: list[GuestResult],
    ) -> None:
        share = self.candidate.share
        chosen = [i for i, incoming in enumerate(batch) if share.takes(incoming.msg)]
        if not chosen:
            return
        replies: list[GuestReply] = []
        results = self.candidate.run(guests, [messages[i] for i in chosen], replies)
        stats = self.candidate.stats
        for i, candidate_reply, candidate_result in zip(chosen, replies, results, strict=True):
            live_answer = recorded(live[i], live_results[i])
            candidate_answer = recorded(candidate_reply, candidate_result)
            verdict = compare(live_answer, candidate_answer)
            stats.count_shadow(verdict.value)
            if self._sent.get(verdict, 0) < self.candidate.rollout.keep:
                self._sent[verdict] = self._sent.get(verdict, 0) + 1
                delivery = batch[i].delivery
                rollout = self.candidate.rollout
                self._publish_sample(
                    Sample(
                        function=rollout.function,
                        verdict=verdict,
                        subject=batch[i].msg.subject,
                        payload=messages[i][1],
                        live=live_answer,
                        candidate=candidate_answer,
                        candidate_sha256=rollout.candidate_sha256,
                        at_ns=time.time_ns(),
                        stream_sequence=delivery.sequence,
                    )
                )
