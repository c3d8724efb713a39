"""Test a function without NATS: run it on a message as a host would, and look at what became of it.

For function authors (and what `ebbtide new` scaffolds). A message goes through what a host does with it:
the function's limits on the input (`limits.max_payload`, `max_header_bytes`), the guest in a real Wasm
instance with its memory and fuel limits, its effects held against its allowlist (`publish`, `kv`,
`limits.max_effects`, `max_effect_bytes`), and the policy that decides ack, retry or dead letter
(`retry.max_deliver`). Only the server is missing: nothing is published, acked or stored.

    from ebbtide.testing import FunctionUnderTest, Publish

    distributor = FunctionUnderTest.from_manifest("ebbtide.toml", "distributor")  # built if its sources changed
    result = distributor.run(b'{"orderId": 1, "delivery": "Express", "items": [{"sku": "A", "quantity": 1}]}')
    assert result.outcome == "ack"
    assert result.effects == [Publish("orders.express", ...)]

The guest runs through the same loop and spec as a host's pool, shadow runs, canaries and replay
(ebbtide.function), so what a test sees is what a host does. Importing this module needs neither a
nats-server nor a build toolchain (building a function's sources does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from .broker.headers import header_lines_size
from .errors import FaultKind, GuestFault, ManifestError
from .function import FunctionSpec, GuestLoop, Instances
from .manifest import FunctionSection, LoadedManifest, ModuleLanguage, load_manifest
from .outcome import Ack, DeadLetter, Faulted, GuestResult, Retry, after_guest, check_input
from .runtime.abi import Effect, KvPut, Publish, Status, decode_effects
from .runtime.guest import GuestReply

__all__ = ["FunctionUnderTest", "KvPut", "Publish", "Result", "Status"]

OutcomeName = Literal["ack", "retry", "dead-letter"]


@dataclass(frozen=True)
class Result:
    """What became of one message."""

    outcome: OutcomeName  # ack (effects carried out, input acked), retry (redelivered later), dead-letter
    effects: list[Effect] = field(default_factory=list)  # what the guest asked for (Publish, KvPut), if it decodes
    status: Status | None = None  # the guest's answer (OK, REJECT, RETRY); None when it did not answer
    output: bytes = b""  # the guest's output as written (effects, or the words of a REJECT or RETRY)
    reason: str | None = None  # for a dead letter: its Ebbtide-Reason (rejected, effect-refused, payload-too-large...)
    error: str = ""  # what the dead letter or the retry says went wrong ("" when acked)
    fault: FaultKind | None = None  # the guest fault (trap, timeout, memory-limit, invalid-output) behind it
    retry_after_s: float | None = None  # for a retry: the backoff before the redelivery


class FunctionUnderTest:
    """One function, its module loaded into a Wasm engine configured as a host's, run on messages you give it.

    An instance is kept between messages, as a host's worker keeps one; after a guest fault the next message
    gets a fresh one, as in a host."""

    def __init__(
        self,
        function: FunctionSection,
        module: Path,
        lang: ModuleLanguage = "zig",
        *,
        ordered: dict[str, str] | None = None,
        cache_dir: Path | None = None,
        name: str = "function",
    ) -> None:
        """Prefer `from_manifest` or `from_module`. `function`: the function's manifest section; `module`: its
        built file; `ordered`: the manifest's ordered triggers (their publishes get the key appended)."""
        self.spec = FunctionSpec.of_section(name, function, Path(module), lang, ordered=ordered, cache_dir=cache_dir)
        self.function = function
        self.limits = self.spec.limits
        self.allowlist = self.spec.allowlist
        engine = self.spec.engine()
        self.module = self.spec.load(engine)
        self._loop = GuestLoop(Instances(self.spec, engine, self.module), self.allowlist)

    @classmethod
    def from_manifest(cls, manifest: str | Path | LoadedManifest, name: str, *, build: bool = True) -> FunctionUnderTest:
        """Function `name` of a manifest (a path, or one already loaded), with everything it says about it.
        `build`: compile its module from its source folder first, if the sources changed (as `ebbtide build`;
        needs the language's toolchain)."""
        loaded = manifest if isinstance(manifest, LoadedManifest) else load_manifest(manifest)
        fn = loaded.function(name)
        if build:
            from .build import build_modules  # the toolchains, only when building

            build_modules(loaded, [fn.module])
        lang = loaded.spec.modules[fn.module].lang
        return cls(
            fn,
            loaded.module_path(fn.module),
            lang,
            ordered=loaded.ordered_triggers(),
            cache_dir=loaded.build_dir / "cache",
            name=name,
        )

    @classmethod
    def from_module(
        cls, module: str | Path, *, trigger: str = "test.in", lang: ModuleLanguage = "zig", **settings: Any
    ) -> FunctionUnderTest:
        """A built module file, with the settings a `[functions.NAME]` table of the manifest would give it
        (`publish=["out.>"]`, `kv=["bucket"]`, `config={...}`, `limits={"fuel": 1000}`, ...; defaults as there)."""
        try:
            fn = msgspec.convert({"module": "module", "trigger": trigger, **settings}, FunctionSection)
        except msgspec.ValidationError as exc:
            raise ManifestError(f"function settings for {module}: {exc}") from None
        return cls(fn, Path(module), lang)

    def run(
        self, payload: bytes | str, subject: str | None = None, *, headers: dict[str, str] | None = None, delivered: int = 1
    ) -> Result:
        """Run the function on one message: `subject` defaults to its trigger; `headers` count against
        `limits.max_header_bytes`; `delivered`: which delivery this is (retries end in a dead letter at
        `retry.max_deliver`)."""
        data = payload.encode() if isinstance(payload, str) else payload
        subject = subject or self.function.trigger
        if any(token in ("*", ">") for token in subject.split(".")):
            raise ValueError(f"the trigger {subject!r} has wildcards: say which subject the message comes on")
        refused = check_input(len(data), header_lines_size(headers) if headers else 0, self.function.limits)
        if refused is not None:
            return _result(refused)
        replies: list[GuestReply] = []
        (decided,) = self._loop.run([(subject.encode(), data)], replies)
        return _result(after_guest(decided, delivered, self.function.retry), replies[0], decided)


def _result(outcome: Ack | Retry | DeadLetter, reply: GuestReply | None = None, decided: GuestResult | None = None) -> Result:
    """The outcome, with what the guest answered (`reply`) and what that meant (`decided`) when it ran."""
    status: Status | None = None
    output, effects = b"", []
    if type(reply) is tuple:
        status, output = reply
        if status is Status.OK:
            try:
                effects = decode_effects(output)
            except GuestFault:
                effects = []
    fault = decided.kind if isinstance(decided, Faulted) else None
    if isinstance(outcome, Ack):
        return Result("ack", effects, status, output)
    if isinstance(outcome, Retry):
        return Result("retry", effects, status, output, None, outcome.error, fault, outcome.delay_s)
    return Result("dead-letter", effects, status, output, outcome.reason.value, outcome.error, fault)
