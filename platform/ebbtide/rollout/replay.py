"""Offline replay: the live module and a candidate run side by side over stored messages (no NATS here).

`ebbtide replay` reads the messages (dead letters, or a range of a stream) and hands them to a `Replay`,
which runs both versions with the function's config and limits, judges each pair with `compare`, and
keeps the counts, the first samples of each verdict and, for dead letters, which ones the candidate would
now handle. Nothing is carried out: the answers are only compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..effects import Allowlist
from ..errors import EffectRefused, GuestFault, GuestInitError, ModuleLoadError, UsageError
from ..manifest import LoadedManifest
from ..precompiled import function_engine
from ..runtime.abi import Status, decode_effects
from ..runtime.engine import WasmEngine
from ..runtime.guest import GuestLimits, GuestReply
from ..runtime.guests import Guest, GuestModule, load_guest_module, start_guest
from .compare import Answer, Verdict, answer_of, compare
from .samples import Sample

CHUNK = 256  # messages per handle_batch call, as a pool's fetch would bring them


@dataclass(frozen=True)
class StoredInput:
    """One stored message to replay."""

    subject: str  # where it was published (a dead letter's original subject)
    payload: bytes
    sequence: int  # in the stream it is read from (the DLQ for dead letters)
    unusable: str = ""  # why it cannot be replayed (e.g. its payload was cut when it was dead-lettered)


@dataclass
class ReplayResult:
    counts: dict[Verdict, int] = field(default_factory=lambda: {verdict: 0 for verdict in Verdict})
    samples: list[Sample] = field(default_factory=list)  # the first `keep` of each verdict, in input order
    would_handle: list[int] = field(default_factory=list)  # sequences the candidate answers ok, effects allowed
    skipped: dict[str, list[int]] = field(default_factory=dict)  # why not replayed -> sequences


@dataclass
class Versions:
    """A function's live module and a candidate, ready to start instances with the function's settings."""

    function: str
    engine: WasmEngine
    live: GuestModule
    candidate: GuestModule
    limits: GuestLimits
    config_json: bytes
    allowlist: Allowlist
    max_payload: int

    def start(self, module: GuestModule) -> Guest:
        return start_guest(self.engine, module, self.limits, self.config_json)


def load_versions(manifest: LoadedManifest, function: str, candidate_path: Path) -> Versions:
    """The function's built module (as `up` runs it: checked against its sha256) and the candidate, with the
    same WASI grants. Either one missing, not loading or refusing its config is a usage error (exit 2)."""
    fn = manifest.function(function)
    lang = manifest.spec.modules[fn.module].lang
    grants = frozenset(fn.wasi)
    engine = function_engine(manifest, [function])  # as a host running it: its compiled code is reused
    versions = Versions(
        function=function,
        engine=engine,
        live=_load(engine, "live", manifest.module_path(fn.module), lang, fn.sha256, grants),
        candidate=_load(engine, "candidate", candidate_path, lang, None, grants),
        limits=GuestLimits.of(fn.limits),
        config_json=manifest.config_json(function),
        allowlist=Allowlist.of(fn),
        max_payload=fn.limits.max_payload,
    )
    for which, module in (("live", versions.live), ("candidate", versions.candidate)):
        try:
            versions.start(module)  # a probe: a module that cannot start fails here, not on a message
        except (GuestInitError, ModuleLoadError, GuestFault) as exc:
            raise UsageError(f"the {which} module {module.path} does not start: {exc}") from None
    return versions


def _load(engine: WasmEngine, which: str, path: Path, lang: str, sha256: str | None, grants: frozenset[str]) -> GuestModule:
    try:
        return load_guest_module(engine, path, lang, sha256=sha256, wasi_grants=grants)
    except ModuleLoadError as exc:
        hint = " (build it: `ebbtide build`)" if which == "live" and not path.exists() else ""
        raise UsageError(f"the {which} module does not load: {exc}{hint}") from None


def run_all(start: Callable[[], Guest], messages: Sequence[tuple[bytes, bytes]], chunk: int = CHUNK) -> list[GuestReply]:
    """Every message's outcome, in order, `chunk` messages per `handle_batch` call, as a pool would get them:
    after a fault the instance is dropped and the messages after it run on a fresh one."""
    outcomes: list[GuestReply] = []
    guest = start()
    while len(outcomes) < len(messages):
        answer = guest.handle_batch(messages[len(outcomes) : len(outcomes) + chunk])
        if not answer.outcomes:
            raise RuntimeError(f"handle_batch answered for none of {len(messages) - len(outcomes)} messages")
        fault = next((i for i, outcome in enumerate(answer.outcomes) if isinstance(outcome, GuestFault)), None)
        # A faulted instance's later answers are not trusted: their messages run again on a fresh one.
        outcomes += answer.outcomes if fault is None else answer.outcomes[: fault + 1]
        if fault is not None or answer.instance_failed:
            guest = start()
    return outcomes


def would_handle(answer: Answer, allowlist: Allowlist) -> bool:
    """Whether a pool would carry this answer out and ack the message: ok, with effects its allowlist takes."""
    if answer.status != Status.OK.name.lower():
        return False
    try:
        allowlist.plan(decode_effects(answer.output))
    except (GuestFault, EffectRefused):
        return False
    return True


class Replay:
    """Judges the candidate against the live module on each input as it is read, a chunk at a time (a long
    stream range is never held whole), keeping the counts and the first `keep` samples of each verdict.

    `dead_letters`: also list the inputs the candidate would now handle."""

    def __init__(self, versions: Versions, *, keep: int, dead_letters: bool = False) -> None:
        self.versions = versions
        self.keep = keep
        self.dead_letters = dead_letters
        self.result = ReplayResult()
        self._batch: list[StoredInput] = []

    def add(self, stored: StoredInput) -> None:
        unusable = stored.unusable or (
            f"over limits.max_payload ({self.versions.max_payload} bytes): never handed to a guest"
            if len(stored.payload) > self.versions.max_payload
            else ""
        )
        if unusable:
            self.result.skipped.setdefault(unusable, []).append(stored.sequence)
            return
        self._batch.append(stored)
        if len(self._batch) >= CHUNK:
            self._judge()

    def finish(self) -> ReplayResult:
        if self._batch:
            self._judge()
        return self.result

    def _judge(self) -> None:
        versions, result, batch = self.versions, self.result, self._batch
        pairs = [(stored.subject.encode(), stored.payload) for stored in batch]
        live = run_all(lambda: versions.start(versions.live), pairs)
        candidate = run_all(lambda: versions.start(versions.candidate), pairs)
        now = time.time_ns()
        for stored, live_outcome, candidate_outcome in zip(batch, live, candidate, strict=True):
            live_answer, candidate_answer = answer_of(live_outcome), answer_of(candidate_outcome)
            verdict = compare(live_answer, candidate_answer)
            result.counts[verdict] += 1
            if result.counts[verdict] <= self.keep:
                result.samples.append(
                    Sample(
                        function=versions.function,
                        verdict=verdict,
                        subject=stored.subject,
                        payload=stored.payload,
                        live=live_answer,
                        candidate=candidate_answer,
                        candidate_sha256=versions.candidate.sha256,
                        at_ns=now,
                        stream_sequence=stored.sequence,
                    )
                )
            if self.dead_letters and would_handle(candidate_answer, versions.allowlist):
                result.would_handle.append(stored.sequence)
        batch.clear()
