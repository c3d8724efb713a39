"""What every guest is to the pool, whatever it was built from, and how its failures are named.

A core module (Zig, C, AssemblyScript: `GuestInstance`, the fast path) and a component (Python:
`ComponentGuest`) both satisfy `Guest`. The faults they raise are classified here, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import wasmtime

from ..errors import GuestFault
from .abi import Status

WASM_PAGE = 65536


@dataclass(frozen=True, slots=True)
class GuestLimits:
    memory_bytes: int
    fuel: int  # per message: the time limit, in wasmtime fuel units (about one per instruction)


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


def cause(exc: BaseException) -> str:
    """wasmtime's message is a backtrace followed by the cause; the cause's last line says what happened."""
    text = (exc.message if isinstance(exc, wasmtime.Trap) else str(exc)).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def classify_trap(trap: wasmtime.Trap, limits: GuestLimits, memory_bytes: int | None = None) -> GuestFault:
    """The fault a trap stands for: out of fuel is the time limit; a trap at the memory limit (when the
    guest's memory size is known) is the memory limit; anything else is a trap."""
    if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        return GuestFault("timeout", f"used its fuel limit of {limits.fuel} for one message")
    if memory_bytes is not None and memory_bytes + WASM_PAGE > limits.memory_bytes:
        return GuestFault("memory-limit", f"trapped at its memory limit of {limits.memory_bytes} bytes: {cause(trap)}")
    return GuestFault("trap", cause(trap))


def unknown_status(status: int) -> GuestFault:
    return GuestFault("invalid-output", f"unknown status {status}")
