"""Comparing what two versions of a function answer for the same message (pure: no I/O).

Guests are deterministic (their output is a function of the input, the config and, only when granted,
clock and random), so a candidate module that answers a message differently from the live one would act
differently. Shadow runs, canaries and replay all reduce a guest's answer to an `Answer` and judge a pair
of them with `compare`; `render` shows a pair side by side for people.
"""

from __future__ import annotations

import difflib
import enum

import msgspec

from ..errors import GuestFault, InputTooLarge
from ..runtime.abi import KvPut, Publish, Status, decode_effects
from ..runtime.guest import GuestReply


class Verdict(enum.StrEnum):
    SAME = "same"  # same status, and the same effects byte for byte, in order
    DIFFERENT = "different"  # the candidate would act differently
    CANDIDATE_FAULT = "candidate_fault"  # the candidate trapped, ran out of fuel or memory, or wrote bad output


class Answer(msgspec.Struct, frozen=True):
    """What one guest answered for one message.

    `status` is "ok", "reject", "retry" or "fault"; `output` is the ABI's effect encoding for "ok", the
    guest's own words for "reject"/"retry", and the fault's description for "fault" (an input too large for
    the guest's buffer is a fault of that version too: the other version may take it)."""

    status: str
    output: bytes


def answer_of(outcome: GuestReply) -> Answer:
    """The `Answer` for one entry of `BatchResult.outcomes` (or what `Guest.handle` returned or raised)."""
    if isinstance(outcome, tuple):
        status, output = outcome
        return Answer(Status(status).name.lower(), output)
    if isinstance(outcome, GuestFault | InputTooLarge):
        return Answer("fault", str(outcome).encode())
    raise TypeError(f"not a guest outcome: {outcome!r}")


def compare(live: Answer, candidate: Answer) -> Verdict:
    """A candidate fault is its own verdict (whatever the live module did); otherwise same or different."""
    if candidate.status == "fault":
        return Verdict.CANDIDATE_FAULT
    if live == candidate:
        return Verdict.SAME
    return Verdict.DIFFERENT


def describe(answer: Answer) -> list[str]:
    """One line per effect (or the status and words), readable: what `render` diffs."""
    if answer.status != "ok":
        return [f"{answer.status.upper()}: {answer.output.decode('utf-8', 'replace')}"]
    try:
        effects = decode_effects(answer.output)
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


def render(live: Answer, candidate: Answer, *, live_name: str = "live", candidate_name: str = "candidate") -> str:
    """A unified diff of the two answers' effects, one effect per line ('same' when there is none)."""
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
