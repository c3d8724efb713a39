"""The Wasm engine of one process and its compiled-module cache.

One `wasmtime.Engine` per process, configured for fuel (the per-call time limit) and for memories that
never move (so an instance's memory base address is read once, not per message).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from ..errors import ModuleLoadError
from . import abi, wasi
from ._wasmtime_fast import ExportPicker
from .cache import compile_cached, read_checked

# Every instance reserves this much address space (not memory) for its linear memory; a guest's memory
# limit may not exceed it. Far below wasmtime's 4 GiB default, so thousands of instances fit.
DEFAULT_MEMORY_RESERVATION = 64 * 1024 * 1024

_I32 = wasmtime.ValType.i32()
_REQUIRED_FUNCS: dict[str, tuple[int, int]] = {  # name -> (number of i32 params, number of i32 results)
    abi.EXPORT_VERSION: (0, 1),
    abi.EXPORT_INPUT_PTR: (0, 1),
    abi.EXPORT_INPUT_CAPACITY: (0, 1),
    abi.EXPORT_OUTPUT_PTR: (0, 1),
    abi.EXPORT_OUTPUT_CAPACITY: (0, 1),
    abi.EXPORT_INIT: (1, 1),
    abi.EXPORT_HANDLE: (2, 1),
}
_OPTIONAL_FUNCS: dict[str, tuple[int, int]] = {  # checked when exported; version 2 requires them
    abi.EXPORT_HANDLE_BATCH: (1, 1),
}


@dataclass(frozen=True, slots=True)
class BufferLayout:
    """Where a module's input and output buffers are; fixed per module, so read once."""

    input_ptr: int
    input_capacity: int
    output_ptr: int
    output_capacity: int
    abi_version: int  # 2: takes batches (ebbtide_handle_batch)


@dataclass(eq=False)
class LoadedModule:
    path: Path
    sha256: str
    module: wasmtime.Module
    instance_pre: wasmtime.InstancePre
    layout: BufferLayout | None = field(default=None)  # set by the first instance (ABI version checked then)
    exports: ExportPicker | None = field(default=None)  # memory, init, handle[, handle_batch] by index; set with `layout`


class WasmEngine:
    def __init__(self, *, memory_reservation: int = DEFAULT_MEMORY_RESERVATION, cache_dir: Path | None = None) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.memory_reservation = memory_reservation
        config.memory_may_move = False
        config.memory_guard_size = 64 * 1024
        config.memory_reservation_for_growth = 0
        self.memory_reservation = memory_reservation
        self.engine = wasmtime.Engine(config)
        self._linkers: dict[frozenset[str], wasmtime.Linker] = {}  # by WASI grants (none: links nothing)
        self.cache_dir = cache_dir
        self._modules: dict[tuple[str, frozenset[str]], LoadedModule] = {}  # by sha256 and grants
        # The engine for component guests (Python), made on first use by runtime/guests.py: most
        # processes never load the component runtime.
        self.component_engine: object | None = None

    def cache_name(self, digest: str) -> str:
        """The module's compiled code in the cache, for this engine's configuration: code compiled for another
        memory reservation does not deserialize here, so engines configured differently (a host per
        function, all functions in one host, the tests) each keep their own file instead of recompiling and
        overwriting one another's at every start."""
        return f"{digest}.r{self.memory_reservation}.cwasm"

    def load(self, path: Path, *, sha256: str | None = None, wasi_grants: frozenset[str] = frozenset()) -> LoadedModule:
        """Compile (or fetch from the cache) and check a guest module.

        `sha256`: the digest the module must have (checked before anything of it is compiled or run).
        `wasi_grants`: the WASI groups it may import (runtime/wasi.py); any other import refuses it.
        """
        wasm, digest = read_checked(path, sha256)
        cached = self._modules.get((digest, wasi_grants))
        if cached is not None:
            return cached
        module = self._compile(path, wasm, digest)
        _check_imports(path, module, wasi_grants)
        _check_exports(path, module)
        linker = self._linkers.get(wasi_grants)
        if linker is None:
            linker = self._linkers[wasi_grants] = wasi.linker(self.engine, wasi_grants)
        try:
            instance_pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:  # a granted name imported with another type
            raise ModuleLoadError(f"{path}: imports do not match what the host provides: {exc}") from None
        loaded = LoadedModule(path, digest, module, instance_pre)
        self._modules[(digest, wasi_grants)] = loaded
        return loaded

    def _compile(self, path: Path, wasm: bytes, digest: str) -> wasmtime.Module:
        def compile_module() -> wasmtime.Module:
            try:
                return wasmtime.Module(self.engine, wasm)
            except wasmtime.WasmtimeError as exc:
                raise ModuleLoadError(f"{path}: not a valid WebAssembly module: {exc}") from None

        cached_file = self.cache_dir / self.cache_name(digest) if self.cache_dir else None
        return compile_cached(cached_file, lambda file: wasmtime.Module.deserialize_file(self.engine, file), compile_module)


def _check_imports(path: Path, module: wasmtime.Module, grants: frozenset[str]) -> None:
    refused = wasi.refused_imports(module, grants)
    if refused:
        granted = ", ".join(sorted(grants)) or "nothing"
        raise ModuleLoadError(
            f"{path}: imports {', '.join(refused)}; the function is granted {granted} (see `wasi` in the manifest reference)"
        )


def _check_exports(path: Path, module: wasmtime.Module) -> None:
    exports = {export.name: export.type for export in module.exports}
    if not isinstance(exports.get(abi.EXPORT_MEMORY), wasmtime.MemoryType):
        raise ModuleLoadError(f"{path}: missing export `{abi.EXPORT_MEMORY}` (memory)")
    for name, (nparams, nresults) in (_REQUIRED_FUNCS | _OPTIONAL_FUNCS).items():
        ty = exports.get(name)
        if ty is None and name in _OPTIONAL_FUNCS:
            continue
        if not isinstance(ty, wasmtime.FuncType):
            raise ModuleLoadError(f"{path}: missing exported function `{name}` (guest ABI v1, docs/abi.md)")
        if [str(p) for p in ty.params] != ["i32"] * nparams or [str(r) for r in ty.results] != ["i32"] * nresults:
            raise ModuleLoadError(
                f"{path}: `{name}` has type {ty.params} -> {ty.results}, "
                f"expected {nparams} i32 parameter(s) -> {nresults} i32 result"
            )
