"""One guest instance: a Store of its own, the ABI's buffers, and the one-call-per-message hot path."""

from __future__ import annotations

import ctypes
import wasmtime

from ..errors import GuestFault, GuestInitError, InputTooLarge, ModuleLoadError
from . import _wasmtime_fast as fast
from . import abi
from .engine import BufferLayout, LoadedModule, WasmEngine
from .guest import GuestLimits, classify_trap, unknown_status


class GuestInstance:
    """A core module's instance (the `Guest` protocol). Not thread-safe; one worker owns it at a time."""

    __slots__ = (
        "module", "limits", "_store", "_memory", "_base", "_in_ptr", "input_capacity",
        "_out_ptr", "_out_capacity", "_handle",
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
            module.exports = fast.ExportPicker(store, instance, (abi.EXPORT_MEMORY, abi.EXPORT_HANDLE, abi.EXPORT_INIT))
        layout = module.layout
        memory, handle, init = module.exports.pick(store, instance)
        assert isinstance(memory, wasmtime.Memory)
        self._store = store
        self._memory = memory
        self._in_ptr = layout.input_ptr
        self.input_capacity = layout.input_capacity
        self._out_ptr = layout.output_ptr
        self._out_capacity = layout.output_capacity
        self._base = fast.memory_base(store, memory)
        self._handle = fast.RawCall(store, handle, 2)

        if len(config_json) > self.input_capacity:
            raise GuestInitError(f"config ({len(config_json)} bytes) does not fit the input buffer")
        ctypes.memmove(self._base + self._in_ptr, config_json, len(config_json))
        try:
            status = fast.RawCall(store, init, 1)(len(config_json))
            if status != abi.Status.OK:
                raise GuestInitError(f"{module.path}: configuration refused: {self._read_output().decode('utf-8', 'replace')}")
        except (wasmtime.Trap, wasmtime.WasmtimeError, GuestFault) as exc:
            raise GuestInitError(f"{module.path}: init failed: {exc}") from None

    def handle(self, subject: bytes, payload: bytes) -> tuple[abi.Status, bytes]:
        """Run the guest on one message. Raises InputTooLarge or GuestFault."""
        n_subject = len(subject)
        n_payload = len(payload)
        if n_subject + n_payload > self.input_capacity:
            raise InputTooLarge(f"message of {n_subject + n_payload} bytes exceeds the guest's input buffer ({self.input_capacity})")
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
        output = self._read_output()
        try:
            return abi.Status(status), output
        except ValueError:
            raise unknown_status(status) from None

    def _read_output(self) -> bytes:
        address = self._base + self._out_ptr
        length = int.from_bytes(ctypes.string_at(address, abi.OUTPUT_HEADER_SIZE), "little")
        if length > self._out_capacity - abi.OUTPUT_HEADER_SIZE:
            raise GuestFault("invalid-output", f"output length {length} exceeds the output buffer")
        return ctypes.string_at(address + abi.OUTPUT_HEADER_SIZE, length)

    def memory_size(self) -> int:
        return self._memory.data_len(self._store)


def _read_layout(module: LoadedModule, store: wasmtime.Store, exports: wasmtime.InstanceExports) -> BufferLayout:
    """Check the ABI version and read the buffer addresses (first instance of a module only: every fresh
    instance of a module has the same memory size and buffers)."""
    try:
        version = exports[abi.EXPORT_VERSION](store)
        if version != abi.ABI_VERSION:
            raise ModuleLoadError(f"{module.path}: guest ABI version {version}, this host speaks {abi.ABI_VERSION}")
        layout = BufferLayout(
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
    for name, ptr, cap in (("input", layout.input_ptr, layout.input_capacity),
                           ("output", layout.output_ptr, layout.output_capacity)):
        if ptr < 0 or cap < abi.OUTPUT_HEADER_SIZE or ptr + cap > size:
            raise GuestInitError(f"{module.path}: {name} buffer [{ptr}, +{cap}) is outside memory ({size} bytes)")
    return layout
