"""A function's guest as every path runs it: a pool's workers, shadow runs, canaries, offline replay and
`ebbtide.testing`.

`FunctionSpec` is what the manifest says about running one function, built once: its limits, its allowlist
(with the manifest's ordered triggers, whose publishes need a key), its config, its module file and the
engine settings. `GuestLoop` runs a module's guest on messages until every one has an answer, one instance at
a time: a message that faults fails alone, its instance is dropped (its state may be corrupt) and the
messages after it run on a fresh one, once each. Because all five paths run guests through these two, a
shadow's, a canary's, a replay's and a test's verdict is what the live pool would do with the message.

The contract between a pool and a rollout (rollout/shadow.py, rollout/canary.py) is here too, so neither
imports the other: a pool calls a `RolloutRun` for each batch while one is on, and the run drives the
worker's guests through `WorkerGuests`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .effects import Allowlist
from .errors import GuestFault
from .manifest import FunctionSection, LoadedManifest, ModuleLanguage, config_json
from .outcome import Faulted, GuestResult, guest_result
from .runtime.engine import WasmEngine
from .runtime.guest import MIB, Guest, GuestLimits, GuestModule, GuestReply
from .runtime.guests import load_guest_module, start_guest

if TYPE_CHECKING:
    from .broker.delivery import Incoming

log = logging.getLogger("ebbtide.pool")

MIN_MEMORY_RESERVATION_MIB = 16

Message = tuple[bytes, bytes]  # (subject, payload), as `Guest.handle_batch` takes them


def memory_reservation(memory_mib: int) -> int:
    """The address space (bytes) each instance of an engine reserves, for functions whose largest memory
    limit is `memory_mib`: that, at least MIN_MEMORY_RESERVATION_MIB."""
    return max(memory_mib, MIN_MEMORY_RESERVATION_MIB) * MIB


@dataclass(frozen=True, eq=False)
class FunctionSpec:
    """How a function's guest runs, from its manifest section: the same for every path that runs it."""

    name: str
    section: FunctionSection
    lang: ModuleLanguage
    module_path: Path  # its built module
    limits: GuestLimits
    config_json: bytes  # what its guest's init receives
    allowlist: Allowlist  # its effects, held against `publish`, `kv` and the effect limits; keyed for ordered triggers
    memory_reservation: int  # engine setting: address space per instance
    cache_dir: Path | None = None  # engine setting: compiled code

    @classmethod
    def of(cls, manifest: LoadedManifest, name: str) -> FunctionSpec:
        """Function `name` of a manifest (ManifestError, naming the known ones, if there is none)."""
        fn = manifest.function(name)
        return cls.of_section(
            name,
            fn,
            manifest.module_path(fn.module),
            manifest.spec.modules[fn.module].lang,
            ordered=manifest.ordered_triggers(),
            cache_dir=manifest.build_dir / "cache",
        )

    @classmethod
    def of_section(
        cls,
        name: str,
        section: FunctionSection,
        module_path: Path,
        lang: ModuleLanguage,
        *,
        ordered: dict[str, str] | None = None,
        cache_dir: Path | None = None,
    ) -> FunctionSpec:
        """A function from its section alone (`ebbtide.testing` without a manifest); `ordered`: the manifest's
        ordered triggers (LoadedManifest.ordered_triggers)."""
        return cls(
            name=name,
            section=section,
            lang=lang,
            module_path=module_path,
            limits=GuestLimits.of(section.limits),
            config_json=config_json(section),
            allowlist=Allowlist.of(section, ordered),
            memory_reservation=memory_reservation(section.limits.memory_mib),
            cache_dir=cache_dir,
        )

    def engine(self) -> WasmEngine:
        """An engine for this function alone (a host of several: precompiled.function_engine)."""
        return WasmEngine(memory_reservation=self.memory_reservation, cache_dir=self.cache_dir)

    def load(
        self, engine: WasmEngine, path: Path | None = None, *, sha256: str | None = None, lang: str | None = None
    ) -> GuestModule:
        """The function's built module, checked against the manifest's sha256; or another file (`path`: a
        candidate, checked against `sha256` when given; `lang` when not the function's); with the function's
        WASI grants."""
        return load_guest_module(
            engine,
            path or self.module_path,
            lang or self.lang,
            sha256=self.section.sha256 if path is None else sha256,
            wasi_grants=frozenset(self.section.wasi),
        )

    def start(self, engine: WasmEngine, module: GuestModule) -> Guest:
        """A new instance of `module` with the function's limits and config (GuestInitError if refused)."""
        return start_guest(engine, module, self.limits, self.config_json)


# -- the guest loop --------------------------------------------------------------------------------------


class InstanceSource(Protocol):
    """Where a `GuestLoop` gets its instances: a pool (its live module, which hot reload changes) or
    `Instances` (one module: a candidate, a replayed version, a function under test)."""

    @property
    def module(self) -> GuestModule:
        """The module instances run now: an instance of another is replaced before its next call."""
        ...

    def start_instance(self) -> Guest:
        """A new instance of `module`; raises when none can start."""
        ...

    def instance_stopped(self) -> None:
        """One of its instances was dropped (for a pool's counters)."""
        ...


class Instances:
    """Instances of one module, with a function's settings."""

    def __init__(self, spec: FunctionSpec, engine: WasmEngine, module: GuestModule) -> None:
        self.spec = spec
        self.engine = engine
        self.module = module

    def start_instance(self) -> Guest:
        return self.spec.start(self.engine, self.module)

    def instance_stopped(self) -> None:
        pass


FaultSeen = Callable[[int, Faulted], None]
"""Told of each fault: the message's index in the call's messages, and the fault."""


class GuestLoop:
    """Runs `source`'s guest on messages until every one has an answer, one instance at a time, kept between
    calls (as a worker keeps its instance between batches).

    `Guest.handle_batch` hands the guest as many messages per call as its input buffer takes (one for an ABI
    v1 guest). A message whose answer is a fault (a trap, the time or memory limit, output that does not
    decode) fails alone: its instance is dropped, never reused, its later answers are not trusted either,
    and the messages after it run again on a fresh one, started at once (so a pool keeps its instances). An
    instance that ran out of the call's fuel with no message to blame is dropped too.

    `contain`: a candidate's loop, which never raises: an instance that cannot start, or a host error around
    the call, is a `host-error` fault of every message left. Otherwise (the live module's) those raise, and
    the executor retries the messages. `observe`: told the guest time per message (shared out per call)."""

    def __init__(
        self,
        source: InstanceSource,
        allowlist: Allowlist,
        *,
        observe: Callable[[float], None] | None = None,
        contain: bool = False,
    ) -> None:
        self.source = source
        self.allowlist = allowlist
        self.observe = observe
        self.contain = contain
        self.instance: Guest | None = None

    def run(
        self, messages: Sequence[Message], replies: list[GuestReply] | None = None, on_fault: FaultSeen | None = None
    ) -> list[GuestResult]:
        """Each message's answer, in order, as the policy reads it (outcome.guest_result, with the allowlist);
        the guest's own replies go to `replies` when given."""
        results: list[GuestResult] = []
        allowlist, observe = self.allowlist, self.observe
        while len(results) < len(messages):
            rest = messages[len(results) :] if results else messages
            try:
                instance = self._instance()
                started = time.perf_counter()
                answer = instance.handle_batch(rest)
                if not answer.replies:  # the runtime always answers for at least one message: never loop on it
                    raise RuntimeError(f"handle_batch answered for none of {len(rest)} messages")
            except Exception as exc:
                if not self.contain:
                    raise
                self._contained(exc, rest, results, replies)
                break
            if observe is not None:
                # One observation per message, so a histogram counts messages: the call's time, shared out.
                per_message_s = (time.perf_counter() - started) / len(answer.replies)
            for reply in answer.replies:
                if observe is not None:
                    observe(per_message_s)
                if replies is not None:
                    replies.append(reply)
                result = guest_result(reply, allowlist)
                results.append(result)
                if type(result) is Faulted:
                    if on_fault is not None:
                        on_fault(len(results) - 1, result)
                    self.drop()
                    self._replace()
                    break
            else:
                if answer.instance_failed:  # out of the call's fuel, no message to blame (runtime/instance.py)
                    self.drop()
        return results

    def ready(self) -> None:
        """Start an instance now if there is none (a worker's, before its first message); raises if none can."""
        self._instance()

    def drop(self) -> None:
        """Let the instance go now (its Wasm memory is freed); the next call starts a new one."""
        if self.instance is not None:
            self.instance = None
            self.source.instance_stopped()

    def _instance(self) -> Guest:
        """The instance to call: a new one when there is none or another module was swapped in (hot reload:
        between calls)."""
        instance, source = self.instance, self.source
        if instance is None or instance.module is not source.module:
            self.drop()
            instance = self.instance = source.start_instance()
        return instance

    def _replace(self) -> None:
        """A fresh instance after a fault; one that cannot start is tried again at the next call."""
        try:
            self.instance = self.source.start_instance()
        except Exception:
            log.exception(
                "cannot start a replacement instance of %s; will try again on the next message", self.source.module.path.name
            )

    def _contained(
        self, exc: Exception, rest: Sequence[Message], results: list[GuestResult], replies: list[GuestReply] | None
    ) -> None:
        log.warning("%s failed: %r", self.source.module.path.name, exc)
        self.drop()
        fault = GuestFault("host-error", repr(exc))
        result = Faulted(fault.kind, str(fault))
        results.extend(result for _ in rest)
        if replies is not None:
            replies.extend(fault for _ in rest)


# -- between a pool and a rollout --------------------------------------------------------------------------


class WorkerGuests(Protocol):
    """One worker's guests, as a rollout run drives them (pool.py's workers)."""

    candidate: GuestLoop | None  # the rollout's candidate on this worker, kept by rollout/candidate.py

    def run_live(
        self, batch: Sequence[Incoming], messages: Sequence[Message], replies: list[GuestReply] | None = None
    ) -> list[GuestResult]:
        """The live module's answers to `batch` (`messages`: their subjects and payloads), on the worker's loop."""
        ...


class RolloutRun(Protocol):
    """A candidate module beside the live one (rollout/shadow.py, rollout/canary.py): the pool hands it each
    batch, and it answers for each message as the live loop would."""

    @property
    def candidate_sha256(self) -> str: ...

    def run_guests(self, guests: WorkerGuests, batch: Sequence[Incoming], messages: list[Message]) -> list[GuestResult]: ...


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
