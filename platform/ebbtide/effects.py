"""Turning a guest's effects into publishes, within the function's allowlist.

Pure: no I/O here. The pool sends what `plan_effects` returns and acks the input only when the server
has confirmed every publish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .broker.names import kv_subject
from .errors import EffectRefused
from .manifest import FunctionSection
from .ordering import KeyedSubjects
from .runtime.abi import Effect, KvPut, Publish
from .subjects import subject_matches

# NATS KV key characters, dot-separated tokens none of them empty: "a.b" is a key, ".", ".a", "a." and "a..b" are not
# (their subject `$KV.<bucket>.<key>` would have an empty token, which the server refuses).
KV_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
SUBJECT_TOKEN = re.compile(r"^[^\s.*>]+$")
MAX_CHECKED_SUBJECTS = 1024
_UNCHECKED = object()  # not in the cache below yet


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    payload: bytes


class Allowlist:
    def __init__(
        self,
        publish: list[str],
        kv: list[str],
        max_effects: int = 64,
        max_effect_bytes: int = 1 << 20,
        keyed: KeyedSubjects | None = None,
    ) -> None:
        """`keyed`: the ordered functions' triggers, whose publishes get the payload's key appended."""
        self.publish = tuple(publish)
        self.keyed = keyed or KeyedSubjects({})
        self.kv = frozenset(kv)
        self.max_effects = max_effects
        self.max_effect_bytes = max_effect_bytes
        # Guests publish to a handful of subjects over and over: each is checked once. Bounded, so a guest
        # inventing subjects cannot grow it without end (beyond the bound, subjects are checked each time).
        self._checked_subjects: dict[str, str | None] = {}  # subject -> None (allowed) or why not

    @classmethod
    def of(cls, function: FunctionSection, ordered: dict[str, str] | None = None) -> Allowlist:
        """`ordered`: trigger -> order_by field of the manifest's ordered functions (LoadedManifest.ordered_triggers)."""
        limits = function.limits
        return cls(function.publish, function.kv, limits.max_effects, limits.max_effect_bytes, KeyedSubjects(ordered or {}))

    def plan(self, effects: list[Effect]) -> list[Outgoing]:
        """The publishes that carry out `effects`; raises EffectRefused on the first one not allowed."""
        if len(effects) > self.max_effects:
            raise EffectRefused(f"{len(effects)} effects for one message; limits.max_effects is {self.max_effects}")
        outgoing: list[Outgoing] = []
        for effect in effects:
            size = len(effect.payload if isinstance(effect, Publish) else effect.value)
            if size > self.max_effect_bytes:
                raise EffectRefused(f"an effect of {size} bytes; limits.max_effect_bytes is {self.max_effect_bytes}")
            if isinstance(effect, Publish):
                subject = effect.subject
                refusal = self._checked_subjects.get(subject, _UNCHECKED)
                if refusal is _UNCHECKED:
                    refusal = self._check_subject(subject)
                    if len(self._checked_subjects) < MAX_CHECKED_SUBJECTS and len(subject) <= 256:
                        self._checked_subjects[subject] = refusal
                if refusal is not None:
                    raise EffectRefused(refusal)
                if self.keyed:
                    subject = self.keyed.subject_for(subject, effect.payload)
                outgoing.append(Outgoing(subject, effect.payload))
            elif isinstance(effect, KvPut):
                if effect.bucket not in self.kv:
                    raise EffectRefused(f"kv_put into bucket {effect.bucket!r} is not allowed (allowed: {sorted(self.kv)})")
                if not KV_KEY.match(effect.key):
                    raise EffectRefused(f"kv_put with invalid key {effect.key[:100]!r}")
                outgoing.append(Outgoing(kv_subject(effect.bucket, effect.key), effect.value))
        return outgoing

    def _check_subject(self, subject: str) -> str | None:
        if not all(SUBJECT_TOKEN.match(token) for token in subject.split(".")):
            return f"publish to invalid subject {subject[:300]!r}"
        if not any(subject_matches(pattern, subject) for pattern in self.publish):
            return f"publish to {subject[:300]!r} is not allowed (allowed: {list(self.publish)})"
        return None
