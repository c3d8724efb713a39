"""The few WASI (preview 1) functions a function may be granted, implemented by the host.

A guest gets nothing by default: a module importing anything that its function's `wasi` list does not
grant is refused at load. There is deliberately no full WASI here (no filesystem, environment,
arguments, sockets or stdio): only these groups, each a couple of functions, and each written so that it
touches nothing but the caller's own memory.

- clock:  clock_time_get, clock_res_get (realtime and monotonic clocks)
- random: random_get (the operating system's CSPRNG)

They are called from Wasm into Python, which costs microseconds per call: fine for a timestamp or an id
per message, which is what they are for.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable

import wasmtime

WASI_MODULE = "wasi_snapshot_preview1"
ERRNO_SUCCESS = 0
ERRNO_FAULT = 21  # a pointer outside the guest's memory
ERRNO_INVAL = 28
MAX_RANDOM_BYTES = 65536
_CLOCKS: dict[int, Callable[[], int]] = {0: time.time_ns, 1: time.monotonic_ns}  # realtime, monotonic

_i32, _i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()


def _write(caller: wasmtime.Caller, pointer: int, data: bytes) -> int:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return ERRNO_FAULT
    if pointer < 0 or pointer + len(data) > memory.data_len(caller):
        return ERRNO_FAULT
    memory.write(caller, data, pointer)
    return ERRNO_SUCCESS


def _clock_time_get(caller: wasmtime.Caller, clock_id: int, _precision: int, time_ptr: int) -> int:
    clock = _CLOCKS.get(clock_id)
    return ERRNO_INVAL if clock is None else _write(caller, time_ptr, struct.pack("<Q", clock()))


def _clock_res_get(caller: wasmtime.Caller, clock_id: int, resolution_ptr: int) -> int:
    return ERRNO_INVAL if clock_id not in _CLOCKS else _write(caller, resolution_ptr, struct.pack("<Q", 1))


def _random_get(caller: wasmtime.Caller, buffer_ptr: int, length: int) -> int:
    if not 0 <= length <= MAX_RANDOM_BYTES:
        return ERRNO_INVAL
    return _write(caller, buffer_ptr, os.urandom(length))


# group -> {import name: (params, implementation)}; every function returns an i32 errno.
GRANTS: dict[str, dict[str, tuple[list[wasmtime.ValType], Callable[..., int]]]] = {
    "clock": {"clock_time_get": ([_i32, _i64, _i32], _clock_time_get), "clock_res_get": ([_i32, _i32], _clock_res_get)},
    "random": {"random_get": ([_i32, _i32], _random_get)},
}
_GROUP_OF = {name: group for group, functions in GRANTS.items() for name in functions}


def linker(engine: wasmtime.Engine, grants: frozenset[str]) -> wasmtime.Linker:
    """A linker that provides exactly the granted groups."""
    result = wasmtime.Linker(engine)
    for group in sorted(grants):
        for name, (params, implementation) in GRANTS[group].items():
            result.define_func(WASI_MODULE, name, wasmtime.FuncType(params, [_i32]), implementation, access_caller=True)
    return result


def refused_imports(module: wasmtime.Module, grants: frozenset[str]) -> list[str]:
    """Each import the grants do not cover, with the grant that would (if any)."""
    refused = []
    for imp in module.imports:
        group = _GROUP_OF.get(imp.name or "") if imp.module == WASI_MODULE else None
        if group is None:
            refused.append(f"{imp.module}.{imp.name} (never provided)")
        elif group not in grants:
            refused.append(f"{imp.module}.{imp.name} (needs the {group!r} grant)")
    return refused
