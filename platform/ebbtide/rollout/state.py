"""A function's rollout, as every host reads it: one record per function in the `ebbtide-rollouts` KV bucket (pure).

The CLI writes the record (`shadow start`, `canary`, `promote`, `abort`); every host running the function
watches its key and follows it (rollout/follow.py), so a replica started later, or on another machine, picks
up the same state. A host that sees a canary fail writes `rolled-back` with the reason; every replica
follows that too.

The record also says which module is live: `live_sha256` is a promoted candidate's digest (its bytes are in
the `ebbtide-modules` object store), empty for the manifest's own module. So a restarted replica runs the
promoted module, and `abort` on a promoted record returns every replica to the manifest's module.
"""

from __future__ import annotations

import enum
import re
import time

import msgspec

from ..errors import UsageError


class Mode(enum.StrEnum):
    SHADOW = "shadow"  # the candidate runs after the live module on the same messages; only compared
    CANARY = "canary"  # the candidate handles a share of the messages instead of the live module; acts


class Phase(enum.StrEnum):
    ACTIVE = "active"  # the candidate runs beside the live module
    PROMOTED = "promoted"  # the candidate became the live module (live_sha256)
    ABORTED = "aborted"  # dropped by an operator
    ROLLED_BACK = "rolled-back"  # dropped by a host: the canary's fault or dead-letter rate passed its threshold


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    function: str
    mode: Mode
    candidate_sha256: str
    lang: str  # the module's language (a component for Python): how hosts load it
    share: float  # 0 < share <= 1: the messages the candidate runs on (shadow) or handles (canary)
    phase: Phase = Phase.ACTIVE
    why: str = ""  # who or what changed the phase last
    keep: int = 10  # shadow: samples kept per verdict (the SHADOW stream's max_msgs_per_subject)
    max_fault_rate: float = 0.05  # canary: rolled back when the candidate's faults pass this share ...
    max_dead_letter_rate: float = 0.05  # ... or its immediate dead letters (reject, refused effect) this share
    window: int = 200  # ... of its last `window` messages (on one host), once it has handled min_messages
    min_messages: int = 20
    live_sha256: str = ""  # the live module when it is not the manifest's: a promoted candidate
    live_lang: str = ""
    changed_at: float = 0.0
    # The function's manifest pins its module (functions.F.sha256) and an operator overrode the pin for this
    # rollout (`--override-pin`): only then do hosts carry out a canary's answers or a promotion to another digest.
    pin_override: bool = False

    @property
    def active(self) -> bool:
        return self.phase is Phase.ACTIVE


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Rollout)


def encode_rollout(rollout: Rollout) -> bytes:
    return _encoder.encode(rollout)


def decode_rollout(data: bytes) -> Rollout:
    return _decoder.decode(data)


def changed(rollout: Rollout, phase: Phase, why: str) -> Rollout:
    """The record after a phase change; a promotion makes the candidate the live module."""
    if phase is Phase.PROMOTED:
        return msgspec.structs.replace(
            rollout, phase=phase, why=why, live_sha256=rollout.candidate_sha256, live_lang=rollout.lang, changed_at=time.time()
        )
    if phase is Phase.ABORTED and rollout.phase is Phase.PROMOTED:  # abort after promote: back to the manifest's module
        return msgspec.structs.replace(rollout, phase=phase, why=why, live_sha256="", live_lang="", changed_at=time.time())
    return msgspec.structs.replace(rollout, phase=phase, why=why, changed_at=time.time())


_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_share(text: str, option: str = "--share") -> float:
    """ "5%", "0.05" or "100%" -> a share in (0, 1]."""
    match = _SHARE.match(text)
    if match is None:
        raise UsageError(f"{option} {text!r}: give a percentage (5%) or a fraction (0.05)")
    value = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 < value <= 1:
        raise UsageError(f"{option} {text!r}: must be more than 0 and at most 100%")
    return value
