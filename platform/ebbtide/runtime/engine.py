"""The Wasm engine of one process and its compiled-module cache.

One `wasmtime.Engine` per process, configured for fuel (the per-call time limit) and for memories that
never move (so an instance's memory base address is read once, not per message).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import wasmtime
import wasmtime.component

from . import abi, wasi
from ._wasmtime_fast import ExportPicker

if TYPE_CHECKING:
    from .component import ComponentEngine

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


class ModuleLoadError(Exception):
    """A module file is missing, does not compile, or does not implement the guest ABI."""


@dataclass(frozen=True, slots=True)
class BufferLayout:
    """Where a module's input and output buffers are; fixed per module, so read once."""

    input_ptr: int
    input_capacity: int
    output_ptr: int
    output_capacity: int


@dataclass(eq=False)
class LoadedModule:
    path: Path
    sha256: str
    module: wasmtime.Module
    instance_pre: wasmtime.InstancePre
    layout: BufferLayout | None = field(default=None)  # set by the first instance (ABI version checked then)
    exports: ExportPicker | None = field(default=None)  # memory, handle, init by index; set with `layout`


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
        self._cache_dir = cache_dir
        self._modules: dict[tuple[str, frozenset[str]], LoadedModule] = {}  # by sha256 and grants
        self._components: "ComponentEngine | None" = None

    @property
    def components(self) -> "ComponentEngine":
        """The engine for component guests (Python), made on first use: most processes never need it."""
        if self._components is None:
            from .component import ComponentEngine

            self._components = ComponentEngine(cache_dir=self._cache_dir)
        return self._components

    def load(self, path: Path, *, sha256: str | None = None, wasi_grants: frozenset[str] = frozenset()) -> LoadedModule:
        """Compile (or fetch from the cache) and check a guest module.

        `sha256`: the digest the module must have (checked before anything of it is compiled or run).
        `wasi_grants`: the WASI groups it may import (runtime/wasi.py); any other import refuses it.
        """
        try:
            wasm = path.read_bytes()
        except OSError as exc:
            raise ModuleLoadError(f"{path}: cannot read module ({exc.strerror}); run `ebbtide build`") from None
        digest = hashlib.sha256(wasm).hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise ModuleLoadError(f"{path}: its sha256 is {digest}, the manifest expects {sha256.lower()}; refusing to load it")
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

        cached_file = self._cache_dir / f"{digest}.cwasm" if self._cache_dir else None
        return compile_cached(cached_file, lambda file: wasmtime.Module.deserialize_file(self.engine, file), compile_module)


Compiled = TypeVar("Compiled", wasmtime.Module, "wasmtime.component.Component")


def compile_cached(cached_file: Path | None, deserialize: Callable[[str], Compiled], compile: Callable[[], Compiled]) -> Compiled:
    """Deserialize the compiled code from `cached_file` when it is there and usable, else compile and
    store it (written under a temporary name, then renamed: processes may share the cache)."""
    if cached_file is not None and cached_file.exists():
        try:
            return deserialize(str(cached_file))
        except wasmtime.WasmtimeError:
            cached_file.unlink(missing_ok=True)  # built by another wasmtime or engine config
    compiled = compile()
    if cached_file is not None:
        cached_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(compiled.serialize())
        tmp.replace(cached_file)
    return compiled


def _check_imports(path: Path, module: wasmtime.Module, grants: frozenset[str]) -> None:
    refused = wasi.refused_imports(module, grants)
    if refused:
        granted = ", ".join(sorted(grants)) or "nothing"
        raise ModuleLoadError(f"{path}: imports {', '.join(refused)}; the function is granted {granted} "
                              "(see `wasi` in the manifest reference)")


def _check_exports(path: Path, module: wasmtime.Module) -> None:
    exports = {export.name: export.type for export in module.exports}
    if not isinstance(exports.get(abi.EXPORT_MEMORY), wasmtime.MemoryType):
        raise ModuleLoadError(f"{path}: missing export `{abi.EXPORT_MEMORY}` (memory)")
    for name, (nparams, nresults) in _REQUIRED_FUNCS.items():
        ty = exports.get(name)
        if not isinstance(ty, wasmtime.FuncType):
            raise ModuleLoadError(f"{path}: missing exported function `{name}` (guest ABI v{abi.ABI_VERSION}, docs/abi.md)")
        if [str(p) for p in ty.params] != ["i32"] * nparams or [str(r) for r in ty.results] != ["i32"] * nresults:
            raise ModuleLoadError(
                f"{path}: `{name}` has type {ty.params} -> {ty.results}, "
                f"expected {nparams} i32 parameter(s) -> {nresults} i32 result"
            )
