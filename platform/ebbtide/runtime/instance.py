"""One guest instance: a Store of its own, the ABI's buffers, and the hot paths: one call per message
(ABI v1) or per batch of messages (ABI v2)."""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from typing import Any

import wasmtime

from ..errors import GuestFault, GuestInitError, InputTooLarge, ModuleLoadError
from . import _wasmtime_fast as fast
from . import abi
from .abi import unknown_status
from .engine import BufferLayout, LoadedModule, WasmEngine
from .guest import BatchResult, GuestLimits, GuestReply, classify_trap, handle_one_by_one, host_import_failed

_BASE_EXPORTS = (abi.EXPORT_MEMORY, abi.EXPORT_INIT, abi.EXPORT_HANDLE)
_DONE = abi.BATCH_COUNT  # the batch output's count of messages done


class GuestInstance:
    """A core module's instance (the `Guest` protocol). Not thread-safe; one worker owns it at a time."""

    __slots__ = (
        "module",
        "limits",
        "_store",
        "_memory",
        "_base",
        "_in_ptr",
        "input_capacity",
        "_out_ptr",
        "_out_capacity",
        "_handle",
        "takes_batches",
        "_handle_batch",
        "_buffer_views",
    )

    def __init__(self, engine: WasmEngine, module: LoadedModule, limits: GuestLimits, config_json: bytes) -> None:
        if limits.memory_bytes > engine.memory_reservation:
            raise GuestInitError(
                f"memory limit {limits.memory_bytes} bytes exceeds the engine's reservation {engine.memory_reservation}"
            )
        self.module = module
        self.limits = limits
        store = wasmtime.Store(engine.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_fuel(limits.fuel)
        try:
            instance = module.instance_pre.instantiate(store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise GuestInitError(f"{module.path}: cannot instantiate: {exc}") from None
        if module.layout is None or module.exports is None:  # the module's first instance: check the ABI once
            exports = instance.exports(store)
            module.layout = _read_layout(module, store, exports)
            batch_export = (abi.EXPORT_HANDLE_BATCH,) if module.layout.abi_version >= 2 else ()
            module.exports = fast.ExportPicker(store, instance, _BASE_EXPORTS + batch_export)
        layout = module.layout
        memory, init, handle, *handle_batch = module.exports.pick(store, instance)
        assert isinstance(memory, wasmtime.Memory)
        self._store = store
        self._memory = memory
        self._in_ptr = layout.input_ptr
        self.input_capacity = layout.input_capacity
        self._out_ptr = layout.output_ptr
        self._out_capacity = layout.output_capacity
        self._base = fast.memory_base(store, memory)
        self._handle = fast.RawCall(store, handle, 2)
        self.takes_batches = bool(handle_batch)
        if handle_batch:
            self._handle_batch = fast.RawCall(store, handle_batch[0], 1)
        # (input, output) views for batches, made by the first batch: a few µs an instance start need not pay
        self._buffer_views: tuple[memoryview, memoryview] | None = None

        if len(config_json) > self.input_capacity:
            raise GuestInitError(f"config ({len(config_json)} bytes) does not fit the input buffer")
        ctypes.memmove(self._base + self._in_ptr, config_json, len(config_json))
        try:
            status = fast.RawCall(store, init, 1)(len(config_json))
            refusal = self._read_output().decode("utf-8", "replace") if status != abi.Status.OK else None
        except (wasmtime.Trap, wasmtime.WasmtimeError, GuestFault) as exc:
            raise GuestInitError(f"{module.path}: init failed: {exc}") from None
        except Exception as exc:  # a host import (WASI) raised
            raise GuestInitError(f"{module.path}: init failed: {host_import_failed(exc)}") from exc
        if refusal is not None:
            raise GuestInitError(f"{module.path}: configuration refused: {refusal}")

    def handle(self, subject: bytes, payload: bytes) -> tuple[abi.Status, bytes]:
        """Run the guest on one message. Raises InputTooLarge or GuestFault."""
        n_subject = len(subject)
        n_payload = len(payload)
        if n_subject + n_payload > self.input_capacity:
            raise InputTooLarge(
                f"message of {n_subject + n_payload} bytes exceeds the guest's input buffer ({self.input_capacity})"
            )
        address = self._base + self._in_ptr
        ctypes.memmove(address, subject, n_subject)
        ctypes.memmove(address + n_subject, payload, n_payload)
        fast.set_fuel(self._store, self.limits.fuel)
        try:
            status = self._handle(n_subject, n_payload)
        except wasmtime.Trap as trap:
            raise classify_trap(trap, self.limits, self._memory.data_len(self._store)) from None
        except wasmtime.WasmtimeError as exc:
            raise GuestFault("trap", str(exc)) from None
        except Exception as exc:
            raise host_import_failed(exc) from exc
        output = self._read_output()
        try:
            return abi.Status(status), output
        except ValueError:
            raise unknown_status(status) from None

    def handle_batch(self, messages: Sequence[tuple[bytes, bytes]]) -> BatchResult:
        """Run the guest on (subject, payload) pairs: one call per input buffer's worth of messages (ABI v2),
        or one per message for a v1 guest. See `Guest.handle_batch` and BatchResult."""
        if not self.takes_batches:
            return handle_one_by_one(self, messages)
        if self._buffer_views is None:  # the memory never moves: records are packed and read in place
            self._buffer_views = (
                fast.memory_view(self._base + self._in_ptr, self.input_capacity),
                fast.memory_view(self._base + self._out_ptr, self._out_capacity),
            )
        input_view, output_view = self._buffer_views
        replies: list[GuestReply] = []
        total = len(messages)
        while len(replies) < total:
            count = self._pack(input_view, messages, len(replies))
            if count == 0:
                # The next message does not fit as a record (8 bytes more than alone): it goes alone.
                single = handle_one_by_one(self, messages[len(replies) : len(replies) + 1])
                replies += single.replies
                if single.instance_failed:
                    return BatchResult(replies, instance_failed=True)
            elif self._call_batch(output_view, count, replies):
                return BatchResult(replies, instance_failed=True)
        return BatchResult(replies)

    def _pack(self, view: memoryview, messages: Sequence[tuple[bytes, bytes]], start: int) -> int:
        """Writes records for messages[start:] into the input buffer while they fit; returns how many."""
        records, count = abi.pack_records(messages, start, self.input_capacity)
        view[: len(records)] = records
        return count

    def _call_batch(self, view: memoryview, count: int, replies: list[GuestReply]) -> bool:
        """One `ebbtide_handle_batch` call on the `count` packed records; appends the replies of the messages
        it finished (and of the one that faulted). Returns whether the instance failed.

        Fuel: the call gets `count` messages' worth. A trap ends the call; the guest's progress counter
        says which messages finished before it. Out of fuel, the message running is charged only when it
        was the call's first (it alone used the whole budget, at least one message's limit); otherwise the
        earlier messages may have spent the budget, so it and the rest are left for a fresh instance,
        where it runs first."""
        fast.set_fuel(self._store, self.limits.fuel * count)
        _DONE.pack_into(view, 0, 0)  # `done`: a trap before the guest's first write reads 0, not a stale count
        fault: GuestFault | None = None
        try:
            handled = self._handle_batch(count)
        except wasmtime.Trap as trap:
            handled = -1
            if trap.trap_code != wasmtime.TrapCode.OUT_OF_FUEL or _DONE.unpack_from(view, 0)[0] == 0:
                fault = classify_trap(trap, self.limits, self._memory.data_len(self._store), batch_size=count)
        except wasmtime.WasmtimeError as exc:
            handled, fault = -1, GuestFault("trap", str(exc))
        except Exception as exc:
            handled, fault = -1, host_import_failed(exc)
        done: int = _DONE.unpack_from(view, 0)[0]
        if not 0 <= done <= count or (handled >= 0 and handled != done):
            replies.append(GuestFault("invalid-output", f"batch of {count}: handled {handled}, counter {done}"))
            return True
        if abi.read_output_records(view, done, self._out_capacity, replies.append):
            return True
        if handled < 0:  # trapped
            if fault is not None:
                replies.append(fault)
            return True
        if done == 0:
            replies.append(GuestFault("invalid-output", f"handled none of a batch of {count}"))
            return True
        return False

    def _read_output(self) -> bytes:
        address = self._base + self._out_ptr
        length = int.from_bytes(ctypes.string_at(address, abi.OUTPUT_HEADER_SIZE), "little")
        if length > self._out_capacity - abi.OUTPUT_HEADER_SIZE:
            raise GuestFault("invalid-output", f"output length {length} exceeds the output buffer")
        return ctypes.string_at(address + abi.OUTPUT_HEADER_SIZE, length)

    def memory_size(self) -> int:
        return self._memory.data_len(self._store)


def _read_layout(module: LoadedModule, store: wasmtime.Store, exports: Mapping[str, Any]) -> BufferLayout:
    """Check the ABI version and read the buffer addresses (first instance of a module only: every fresh
    instance of a module has the same memory size and buffers)."""
    try:
        version = exports[abi.EXPORT_VERSION](store)
        if version not in abi.SUPPORTED_ABI_VERSIONS:
            spoken = ", ".join(map(str, sorted(abi.SUPPORTED_ABI_VERSIONS)))
            raise ModuleLoadError(f"{module.path}: guest ABI version {version}, this host speaks {spoken}")
        if version >= 2 and abi.EXPORT_HANDLE_BATCH not in exports:
            raise ModuleLoadError(f"{module.path}: guest ABI version {version} without `{abi.EXPORT_HANDLE_BATCH}`")
        layout = BufferLayout(
            abi_version=version,
            input_ptr=exports[abi.EXPORT_INPUT_PTR](store),
            input_capacity=exports[abi.EXPORT_INPUT_CAPACITY](store),
            output_ptr=exports[abi.EXPORT_OUTPUT_PTR](store),
            output_capacity=exports[abi.EXPORT_OUTPUT_CAPACITY](store),
        )
    except wasmtime.Trap as exc:
        raise GuestInitError(f"{module.path}: trapped while reporting its buffers: {exc}") from None
    memory = exports[abi.EXPORT_MEMORY]
    assert isinstance(memory, wasmtime.Memory)
    size = memory.data_len(store)
    for name, ptr, cap in (
        ("input", layout.input_ptr, layout.input_capacity),
        ("output", layout.output_ptr, layout.output_capacity),
    ):
        minimum = abi.BATCH_HEADER_SIZE + abi.BATCH_RECORD_HEADER_SIZE if version >= 2 else abi.OUTPUT_HEADER_SIZE
        if ptr < 0 or cap < minimum or ptr + cap > size:
            raise GuestInitError(f"{module.path}: {name} buffer [{ptr}, +{cap}) is outside memory ({size} bytes)")
    return layout
