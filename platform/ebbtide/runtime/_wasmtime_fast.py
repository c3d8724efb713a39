"""The one place that touches wasmtime-py's private internals.

`Func.__call__` costs ~10 µs per call (type checks, `Val` boxing); `Memory.read/write` copy through
Python lists. On the hot path we instead call `wasmtime_func_call_unchecked` with a preallocated
argument array and copy bytes with `ctypes.memmove` on the memory's base address: ~1 µs per call. A
failed call does what wasmtime-py's own call does after a trap: it raises the exception a Python host
import (runtime/wasi.py) raised during it, if any, and leaves nothing behind in wasmtime-py.

These internals are not a public API: pyproject.toml accepts the wasmtime releases they are tested on, and
tests/unit/test_wasmtime_fast.py fails loudly if the names used here change.
"""

from __future__ import annotations

import ctypes
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # private: pinned version, see module docstring
from wasmtime import _func

_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value


class RawCall:
    """A prebuilt, unchecked call of one exported function with i32 parameters and one i32 result."""

    __slots__ = ("_context", "_func_ref", "_args", "_nargs", "_trap", "_trap_ref")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func, nparams: int) -> None:
        self._context = store._context()
        self._func_ref = ctypes.byref(func._func)
        # One array holds the parameters on entry and the results on return.
        self._nargs = max(nparams, 1)
        self._args = (ffi.wasmtime_val_raw_t * self._nargs)()
        self._new_trap_slot()

    def _new_trap_slot(self) -> None:
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._trap_ref = ctypes.byref(self._trap)

    def __call__(self, *params: int) -> int:
        args = self._args
        for i, value in enumerate(params):
            args[i].i32 = value
        error = ffi.wasmtime_func_call_unchecked(self._context, self._func_ref, args, self._nargs, self._trap_ref)
        if error:
            failure = wasmtime.WasmtimeError._from_ptr(error)
            raise_host_exception()
            raise failure
        if self._trap:
            trap = wasmtime.Trap._from_ptr(self._trap)  # takes ownership of the pointer
            self._new_trap_slot()
            raise_host_exception()
            raise trap
        return args[0].i32


def raise_host_exception() -> None:
    """After a failed call: the exception a Python host import raised during it, if any, as wasmtime-py's
    own `Func.__call__` raises it (else it stays in `_func.LAST_EXCEPTION` and wasmtime-py raises it at
    the next unrelated trap, of any store)."""
    _func.maybe_raise_last_exn()


class ExportPicker:
    """Fetches a few exports of an instance by their index in the module.

    `Instance.exports(store)` wraps every export of the module (dozens for a Zig module built with
    -rdynamic) into Python objects: about 30 µs per instance start. Export indices are fixed per module,
    so they are looked up by name once and each instance fetches only the ones it uses.
    """

    __slots__ = ("indices",)

    def __init__(self, store: wasmtime.Store, instance: wasmtime.Instance, names: tuple[str, ...]) -> None:
        exports = instance.exports(store)
        positions = {name: i for i, name in enumerate(exports)}
        missing = [name for name in names if name not in positions]
        if missing:
            raise KeyError(", ".join(missing))
        self.indices = tuple(positions[name] for name in names)

    def pick(self, store: wasmtime.Store, instance: wasmtime.Instance) -> list[Any]:
        """The exports, as wasmtime.Func / wasmtime.Memory, in the order of the names given at creation."""
        context = store._context()
        instance_ref = ctypes.byref(instance._instance)
        name = ctypes.POINTER(ctypes.c_char)()
        name_len = ctypes.c_size_t(0)
        picked: list[wasmtime.Func | wasmtime.Memory] = []
        for index in self.indices:
            item = ffi.wasmtime_extern_t()
            if not ffi.wasmtime_instance_export_nth(
                context, instance_ref, index, ctypes.byref(name), ctypes.byref(name_len), ctypes.byref(item)
            ):
                raise IndexError(f"export #{index} is missing")
            kind = int(item.kind)  # a c_ubyte field: compare its value
            if kind == _FUNC:
                picked.append(wasmtime.Func._from_raw(item.of.func))
            elif kind == _MEMORY:
                picked.append(wasmtime.Memory._from_raw(item.of.memory))
            else:
                raise TypeError(f"export #{index} is neither a function nor a memory")
        return picked


def set_fuel(store: wasmtime.Store, fuel: int) -> None:
    """Refill the store's fuel without the public wrapper's extra checks."""
    error = ffi.wasmtime_context_set_fuel(store._context(), fuel)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def memory_base(store: wasmtime.Store, memory: wasmtime.Memory) -> int:
    """The address of the first byte of a linear memory (valid while the memory does not move)."""
    pointer: Any = memory.data_ptr(store)
    address = ctypes.cast(pointer, ctypes.c_void_p).value
    if address is None:
        raise RuntimeError("wasm memory has no base address")
    return address


def memory_view(address: int, size: int) -> memoryview:
    """A writable byte view of `size` bytes of a linear memory at `address` (from `memory_base`): packing
    into it and slicing it cost no ctypes call. Valid while its store lives; the memory must not move."""
    return memoryview((ctypes.c_ubyte * size).from_address(address)).cast("B")
