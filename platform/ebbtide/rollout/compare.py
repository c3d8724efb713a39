"""Comparing what two versions of a function reply to the same message (pure: no I/O).

Guests are deterministic (their output is a function of the input, the config and, only when granted,
clock and random), so a candidate module that answers a message differently from the live one would act
differently. Shadow runs and replay record a guest's reply (runtime.guest.GuestReply) as a `RecordedReply`,
the form a shadow sample stores, and judge a pair of them with `compare`; `render` shows a pair side by
side for people.
"""

from __future__ import annotations

import difflib
import enum

import msgspec

from ..errors import GuestFault, InputTooLarge
from ..outcome import Faulted, GuestResult
from ..runtime.abi import KvPut, Publish, Status, decode_effects
from ..runtime.guest import GuestReply


class Verdict(enum.StrEnum):
    SAME = "same"  # same status, and the same effects byte for byte, in order
    DIFFERENT = "different"  # the candidate would act differently
    CANDIDATE_FAULT = "candidate_fault"  # the candidate trapped, ran out of fuel or memory, or wrote bad output


class RecordedReply(msgspec.Struct, frozen=True):
    """What one guest replied to one message, as a shadow sample stores it.

    `status` is "ok", "reject", "retry" or "fault"; `output` is the ABI's effect encoding for "ok", the
    guest's own words for "reject"/"retry", and the fault's description for "fault" (an input too large for
    the guest's buffer is a fault of that version too: the other version may take it)."""

    status: str
    output: bytes


def recorded(reply: GuestReply, result: GuestResult | None = None) -> RecordedReply:
    """The `RecordedReply` of one entry of `BatchResult.replies` (or what `Guest.handle` returned or raised).
    `result`: what the guest loop made of it (function.GuestLoop): output that does not decode is a fault
    there, and so here."""
    if type(result) is Faulted and isinstance(reply, tuple):
        return RecordedReply("fault", result.error.encode())
    if isinstance(reply, tuple):
        status, output = reply
        return RecordedReply(Status(status).name.lower(), output)
    if isinstance(reply, GuestFault | InputTooLarge):
        return RecordedReply("fault", str(reply).encode())
    raise TypeError(f"not a guest reply: {reply!r}")


def compare(live: RecordedReply, candidate: RecordedReply) -> Verdict:
    """A candidate fault is its own verdict (whatever the live module did); otherwise same or different."""
    if candidate.status == "fault":
        return Verdict.CANDIDATE_FAULT
    if live == candidate:
        return Verdict.SAME
    return Verdict.DIFFERENT


def describe(reply: RecordedReply) -> list[str]:
    """One line per effect (or the status and words), readable: what `render` diffs."""
    if reply.status != "ok":
        return [f"{reply.status.upper()}: {reply.output.decode('utf-8', 'replace')}"]
    try:
        effects = decode_effects(reply.output)
    except GuestFault as exc:
        return [f"OK, but {exc}"]
    if not effects:
        return ["OK, no effects"]
    lines = []
    for effect in effects:
        if isinstance(effect, Publish):
            lines.append(f"publish {effect.subject}: {_text(effect.payload)}")
        elif isinstance(effect, KvPut):
            lines.append(f"kv_put {effect.bucket}/{effect.key}: {_text(effect.value)}")
    return lines


def render(live: RecordedReply, candidate: RecordedReply, *, live_name: str = "live", candidate_name: str = "candidate") -> str:
    """A unified diff of the two replies' effects, one effect per line ('same' when there is none)."""
    diff = difflib.unified_diff(describe(live), describe(candidate), live_name, candidate_name, lineterm="", n=10)
    return "\n".join(diff) or "same"


def _text(data: bytes, limit: int = 400) -> str:
    text = data.decode("utf-8", "replace") if data.isascii() or _utf8(data) else data.hex()
    return text if len(text) <= limit else text[:limit] + f"... ({len(data)} bytes)"


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
