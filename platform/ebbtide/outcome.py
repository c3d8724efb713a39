"""What becomes of one delivered message: a pure policy, no I/O (executor.py carries the outcome out).

Every message ends in one of three outcomes:

- `Ack(effects)`: publish the effects, each confirmed by the server, then ack the input;
- `Retry(delay_s, error)`: nak the input, to be redelivered after `delay_s` (retry.backoff_ms);
- `DeadLetter(reason, error)`: publish the input to the function's dead-letter subject, confirmed, then
  ack it.

The inputs are what happened to the message, in the order they can happen:

1. the checks before the guest runs (`check_input`): a payload or header block over the function's
   limits is dead-lettered unread;
2. the guest's answer (`guest_result`, then `after_guest`): effects within the allowlist (`Effects`), a refused effect
   (`Refused`), REJECT or RETRY (`Declined`), a fault of the instance (`Faulted`) or an input larger than
   the guest's buffer (`TooLarge`);
3. the server's confirmations (`after_unconfirmed`): effects not confirmed are a transient failure like
   any other; a dead letter not confirmed is nak'ed to try it all again later.

Transient failures are retried with backoff and dead-lettered after `retry.max_deliver` deliveries
(`transient`). A permanent failure is dead-lettered at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from .deadletter import Reason
from .effects import Allowlist, Outgoing
from .errors import EffectRefused, FaultKind, GuestFault, InputTooLarge
from .manifest import LimitsSection, RetrySection
from .runtime.abi import Status, decode_effects
from .runtime.guest import GuestReply


class _Value(msgspec.Struct, frozen=True, gc=False):
    """Immutable values; msgspec Structs rather than frozen dataclasses as two are built per message,
    and a frozen dataclass takes ~1 µs to build here against ~0.2 µs (no reference cycles: gc=False)."""


# -- outcomes --------------------------------------------------------------------------------------------


class Ack(_Value, frozen=True):
    """Done: publish `effects` (each confirmed by the server), then ack the input."""

    effects: Sequence[Outgoing] = ()


class Retry(_Value, frozen=True):
    """A transient failure: nak the input for redelivery after `delay_s`."""

    delay_s: float
    error: str


class DeadLetter(_Value, frozen=True):
    """Give up: store the input on the dead-letter subject, saying why (headers), then ack it."""

    reason: Reason
    error: str


Outcome = Ack | Retry | DeadLetter


# -- what the guest answered -----------------------------------------------------------------------------


class Effects(_Value, frozen=True):
    """Status OK, and every effect the guest asked for is within its allowlist."""

    outgoing: Sequence[Outgoing]


class Refused(_Value, frozen=True):
    """Status OK, but an effect is outside the allowlist or malformed (effects.EffectRefused)."""

    error: str


class Declined(_Value, frozen=True):
    """The guest answered REJECT (permanent) or RETRY (transient), with its own words."""

    status: Status
    message: str


class Faulted(_Value, frozen=True):
    """The instance failed (trap, timeout, memory-limit, invalid-output): transient, on a new instance."""

    kind: FaultKind
    error: str


class TooLarge(_Value, frozen=True):
    """The input does not fit the guest's input buffer (runtime.InputTooLarge)."""

    error: str


GuestResult = Effects | Refused | Declined | Faulted | TooLarge


def guest_result(reply: GuestReply, allowlist: Allowlist) -> GuestResult:
    """What the guest's reply to one message means: its effects decoded and held against the function's
    allowlist and limits (what a host and `ebbtide.testing` make of it alike)."""
    if type(reply) is tuple:
        status, output = reply
        if status is not Status.OK:
            return Declined(status, output.decode("utf-8", "replace"))
        try:
            return Effects(allowlist.plan(decode_effects(output)))
        except EffectRefused as exc:
            return Refused(str(exc))
        except GuestFault as exc:
            return Faulted(exc.kind, str(exc))
    if isinstance(reply, InputTooLarge):
        return TooLarge(str(reply))
    assert isinstance(reply, GuestFault)
    return Faulted(reply.kind, str(reply))


# -- the policy ------------------------------------------------------------------------------------------


def check_input(payload_bytes: int, header_bytes: int, limits: LimitsSection) -> DeadLetter | None:
    """Before the guest runs: a payload or header block over the limits is dead-lettered unread."""
    if payload_bytes > limits.max_payload:
        return DeadLetter(
            Reason.PAYLOAD_TOO_LARGE, f"payload of {payload_bytes} bytes exceeds limits.max_payload ({limits.max_payload})"
        )
    if header_bytes > limits.max_header_bytes:
        return DeadLetter(
            Reason.HEADERS_TOO_LARGE,
            f"headers of {header_bytes} bytes exceed limits.max_header_bytes ({limits.max_header_bytes})",
        )
    return None


def backoff_s(delivered: int, retry: RetrySection) -> float:
    """The delay before redelivery after the `delivered`-th delivery failed (the last delay repeats)."""
    return retry.backoff_ms[min(delivered, len(retry.backoff_ms)) - 1] / 1000


def transient(error: str, delivered: int, retry: RetrySection) -> Retry | DeadLetter:
    """A failure that may pass: retried with backoff, dead-lettered after `retry.max_deliver` deliveries."""
    if delivered >= retry.max_deliver:
        return DeadLetter(Reason.RETRIES_EXHAUSTED, f"failed {delivered} deliveries; last error: {error}")
    return Retry(backoff_s(delivered, retry), error)


def after_guest(result: GuestResult, delivered: int, retry: RetrySection) -> Outcome:
    """What the guest's answer to the `delivered`-th delivery of a message leads to."""
    if type(result) is Effects:  # the common case first
        return Ack(result.outgoing)
    if isinstance(result, Declined):
        if result.status is Status.REJECT:
            return DeadLetter(Reason.REJECTED, result.message)
        return transient("guest asked to retry: " + result.message, delivered, retry)
    if isinstance(result, Faulted):
        return transient(f"guest fault: {result.error}", delivered, retry)
    if isinstance(result, Refused):
        return DeadLetter(Reason.EFFECT_REFUSED, result.error)
    if isinstance(result, TooLarge):
        return DeadLetter(Reason.PAYLOAD_TOO_LARGE, result.error)
    raise TypeError(f"not a guest result: {result!r}")


def after_host_error(error: BaseException, delivered: int, retry: RetrySection) -> Retry | DeadLetter:
    """A bug in the host while handling the message must not take the worker down: the message is retried."""
    return transient(f"host error: {error!r}", delivered, retry)


def after_unconfirmed(
    outcome: Ack | DeadLetter,
    error: str,
    delivered: int,
    retry: RetrySection,
    *,
    server_side: bool = False,
    overtaken: bool = False,
) -> Retry | DeadLetter:
    """The server did not confirm every publish of `outcome` (`error` says why for the first one).

    Effects not confirmed are a transient failure like any other, except when every one of them failed for
    a reason of the server's (`server_side`: no answer in time, not sent while disconnected, or refused for
    lack of space: errors.PublishRetryLater): then the server is the trouble, e.g. a stream electing a new
    leader, or a full store, for longer than the retries last, and the message is retried with backoff
    without using up its retries (dead-lettering healthy orders during a failover or while the disk is full
    would lose nothing but still be wrong). A dead letter not confirmed was not stored: the input is nak'ed to try it all again
    later (never dead-lettered a second time here, so carrying out outcomes ends after at most two rounds
    of confirmations). Effects of an ordered function's message refused after a later message of its key
    was stored (`overtaken`) cannot be applied in order any more: dead-lettered at once, the sequence broken.
    """
    if isinstance(outcome, DeadLetter):
        return Retry(backoff_s(1, retry), f"dead letter not confirmed: {error}")
    if overtaken:
        return DeadLetter(Reason.OVERTAKEN, f"effects refused after a later message of the same key was applied: {error}")
    if server_side:
        return Retry(backoff_s(delivered, retry), f"effects not confirmed: {error}")
    return transient(f"effects not confirmed: {error}", delivered, retry)
