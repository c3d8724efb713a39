"""What every guest is to the pool, whatever it was built from, and how its failures are named.

A core module (Zig, C, AssemblyScript: `GuestInstance`, the fast path) and a component (Python:
`ComponentGuest`) both satisfy `Guest`. The faults they raise are classified here, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import wasmtime

from ..errors import GuestFault, InputTooLarge
from .abi import Status

if TYPE_CHECKING:
    from ..manifest import LimitsSection

WASM_PAGE = 65536
MIB = 1024 * 1024  # the manifest's limits are in MiB


@dataclass(frozen=True, slots=True)
class GuestLimits:
    memory_bytes: int
    fuel: int  # per message: the time limit, in wasmtime fuel units (about one per instruction)

    @classmethod
    def of(cls, limits: LimitsSection) -> GuestLimits:
        """A function's `limits` from its manifest section."""
        return cls(limits.memory_mib * MIB, limits.fuel)


# What the guest gave for one message of a batch: its status and output (what `Guest.handle` returns), or the
# error `Guest.handle` would have raised for it (InputTooLarge: dead-letter it; GuestFault: it failed). The
# host reads it as an outcome.GuestResult (effects decoded, allowlist applied), which decides the message's
# outcome.Outcome (ack, retry, dead letter).
GuestReply = tuple[Status, bytes] | GuestFault | InputTooLarge


@dataclass(slots=True)
class BatchResult:
    """What `Guest.handle_batch` did with a list of messages.

    `replies[i]` belongs to `messages[i]`; messages past `len(replies)` were not handled. When
    `instance_failed`, the instance faulted (a trap, the fuel of the batch, bad output): discard it and
    hand the messages not handled to a fresh instance. Messages before the fault keep their reply.
    """

    replies: list[GuestReply]
    instance_failed: bool = False


class GuestModule(Protocol):
    """A loaded module or component: its file and digest (what hot reload compares)."""

    @property
    def path(self) -> Path: ...

    @property
    def sha256(self) -> str: ...


class Guest(Protocol):
    """One running instance; not thread-safe: one worker owns it at a time."""

    @property
    def module(self) -> GuestModule: ...

    @property
    def input_capacity(self) -> int: ...

    def handle(self, subject: bytes, payload: bytes) -> tuple[Status, bytes]:
        """Run the guest on one message: its status and output (ABI v1 encoding).

        Raises InputTooLarge (the message does not fit) or GuestFault (replace the instance)."""
        ...

    @property
    def takes_batches(self) -> bool:
        """Whether `handle_batch` hands several messages to the guest per call (ABI v2)."""
        ...

    def handle_batch(self, messages: Sequence[tuple[bytes, bytes]]) -> BatchResult:
        """Run the guest on (subject, payload) pairs, in order: each gets the reply `handle` would give it.

        A guest that takes batches is called once per input buffer's worth of messages; any other is
        called once per message. Raises nothing for a message's failure: see BatchResult."""
        ...


def handle_one_by_one(guest: Guest, messages: Sequence[tuple[bytes, bytes]]) -> BatchResult:
    """`handle_batch` for a guest called once per message (ABI v1, components), stopping at a fault."""
    replies: list[GuestReply] = []
    for subject, payload in messages:
        try:
            replies.append(guest.handle(subject, payload))
        except InputTooLarge as too_large:
            replies.append(too_large)
        except GuestFault as fault:
            replies.append(fault)
            return BatchResult(replies, instance_failed=True)
    return BatchResult(replies)


def cause(exc: BaseException) -> str:
    """wasmtime's message is a backtrace followed by the cause; the cause's last line says what happened."""
    text = (exc.message if isinstance(exc, wasmtime.Trap) else str(exc)).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def classify_trap(
    trap: wasmtime.Trap, limits: GuestLimits, memory_bytes: int | None = None, *, batch_size: int = 1
) -> GuestFault:
    """The fault a trap stands for: out of fuel is the time limit (in a batch call: the message used the
    fuel of the whole call, `batch_size` messages' worth, by itself); a trap at the memory limit (when the
    guest's memory size is known) is the memory limit; anything else is a trap."""
    if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        if batch_size > 1:
            return GuestFault("timeout", f"used the fuel of a batch of {batch_size} messages ({limits.fuel} each) by itself")
        return GuestFault("timeout", f"used its fuel limit of {limits.fuel} for one message")
    if memory_bytes is not None and memory_bytes + WASM_PAGE > limits.memory_bytes:
        return GuestFault("memory-limit", f"trapped at its memory limit of {limits.memory_bytes} bytes: {cause(trap)}")
    return GuestFault("trap", cause(trap))


def host_import_failed(exc: Exception) -> GuestFault:
    """A Python host import (WASI) raised during the call: the call was cut short, so the instance's state
    is not trusted (replaced, as after a trap) and the message is retried."""
    return GuestFault("trap", f"a host import raised {exc!r}")
