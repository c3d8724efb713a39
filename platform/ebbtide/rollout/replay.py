"""Offline replay: the live module and a candidate run side by side over stored messages (no NATS here).

`ebbtide replay` reads the messages (dead letters, or a range of a stream) and hands them to a `Replay`,
which runs both versions as a host's pool does (function.GuestLoop with the function's spec: its config,
limits and allowlist), judges each pair with `compare`, and keeps the counts, the first samples of each
verdict and, for dead letters, which ones the candidate would now handle. Nothing is carried out: the
answers are only compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GuestFault, GuestInitError, ModuleLoadError, UsageError
from ..function import FunctionSpec, GuestLoop, Instances
from ..manifest import LoadedManifest
from ..outcome import Effects
from ..precompiled import function_engine
from ..runtime.engine import WasmEngine
from ..runtime.guest import GuestReply
from ..runtime.guests import GuestModule
from .compare import Verdict, compare, recorded
from .samples import Sample

CHUNK = 256  # messages judged together (one run of each version), as a pool's fetch brings them


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
    """A function's live module and a candidate, ready to start instances with the function's spec."""

    spec: FunctionSpec
    engine: WasmEngine
    live: GuestModule
    candidate: GuestModule

    @property
    def function(self) -> str:
        return self.spec.name

    def loop(self, module: GuestModule) -> GuestLoop:
        """The guest loop a pool's worker would run `module` in."""
        return GuestLoop(Instances(self.spec, self.engine, module), self.spec.allowlist)


def load_versions(manifest: LoadedManifest, function: str, candidate_path: Path) -> Versions:
    """The function's built module (as `up` runs it: checked against its sha256) and the candidate, with the
    same WASI grants. Either one missing, not loading or refusing its config is a usage error (exit 2)."""
    spec = FunctionSpec.of(manifest, function)
    engine = function_engine(manifest, [function])  # as a host running it: its compiled code is reused
    versions = Versions(
        spec=spec,
        engine=engine,
        live=_load(spec, engine, "live", None),
        candidate=_load(spec, engine, "candidate", candidate_path),
    )
    for which, module in (("live", versions.live), ("candidate", versions.candidate)):
        try:
            spec.start(engine, module)  # a probe: a module that cannot start fails here, not on a message
        except (GuestInitError, ModuleLoadError, GuestFault) as exc:
            raise UsageError(f"the {which} module {module.path} does not start: {exc}") from None
    return versions


def _load(spec: FunctionSpec, engine: WasmEngine, which: str, path: Path | None) -> GuestModule:
    try:
        return spec.load(engine, path)
    except ModuleLoadError as exc:
        hint = " (build it: `ebbtide build`)" if path is None and not spec.module_path.exists() else ""
        raise UsageError(f"the {which} module does not load: {exc}{hint}") from None


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
        self._live = versions.loop(versions.live)  # each version's instance is kept between chunks, as a worker's
        self._candidate = versions.loop(versions.candidate)

    def add(self, stored: StoredInput) -> None:
        max_payload = self.versions.spec.section.limits.max_payload
        unusable = stored.unusable or (
            f"over limits.max_payload ({max_payload} bytes): never handed to a guest" if len(stored.payload) > max_payload else ""
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
        messages = [(stored.subject.encode(), stored.payload) for stored in batch]
        live: list[GuestReply] = []
        candidate: list[GuestReply] = []
        live_results = self._live.run(messages, live)
        # What a pool makes of the answers (its allowlist: keys of ordered triggers too).
        candidate_results = self._candidate.run(messages, candidate)
        now = time.time_ns()
        for stored, live_reply, live_result, candidate_reply, candidate_result in zip(
            batch, live, live_results, candidate, candidate_results, strict=True
        ):
            live_answer, candidate_answer = recorded(live_reply, live_result), recorded(candidate_reply, candidate_result)
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
            # A pool would carry it out and ack the message: ok, with effects its allowlist takes.
            if self.dead_letters and type(candidate_result) is Effects:
                result.would_handle.append(stored.sequence)
        batch.clear()
