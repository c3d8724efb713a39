"""Guests built as WebAssembly *components* (Python through componentize-py): a separate, slower path.

The world (functions/sdk-python/wit/ebbtide.wit, `ebbtide:function/handler`) carries the
guest ABI v1 contract: `init(config: string) -> result<_, string>` once per instance, and
`handle(subject: string, payload: list<u8>) -> tuple<u32, list<u8>>` once per message, whose status and
output have the ABI v1 meaning and encoding. So `ComponentGuest.handle` returns what
`GuestInstance.handle` returns, and effects are decoded and carried out the same way.

It does not touch the core-module hot path (instance.py). It is slower and heavier, by the nature of
the component model in wasmtime-py (values are lifted and lowered one by one in Python) and of a Python
interpreter in every instance: see docs/functions.md for the measured costs. The Python runtime imports
WASI 0.2; an instance gets an empty WASI context: no files, environment, arguments, stdio or sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import wasmtime
import wasmtime.component as wc

from ..errors import ComponentLoadError, GuestFault, GuestInitError, InputTooLarge
from . import abi
from .cache import compile_cached, read_checked
from .guest import BatchResult, GuestLimits, cause, classify_trap, handle_one_by_one, unknown_status

EXPORT_INIT = "init"
EXPORT_HANDLE = "handle"
# A message never exceeds a core module's input buffer either: the same cap for the same manifest.
MAX_INPUT = 64 * 1024


@dataclass(eq=False)
class LoadedComponent:
    path: Path
    sha256: str
    component: wc.Component


class ComponentEngine:
    """One engine and linker for component guests (fuel on; WASI 0.2 linked, granted nothing per store)."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        self.engine = wasmtime.Engine(config)
        self.linker = wc.Linker(self.engine)
        self.linker.add_wasip2()
        self._cache_dir = cache_dir
        self._components: dict[str, LoadedComponent] = {}

    def load(self, path: Path, *, sha256: str | None = None) -> LoadedComponent:
        """Compile (or fetch from the cache) and check a component; `sha256`: the digest it must have."""
        data, digest = read_checked(path, sha256, "component", ComponentLoadError)
        cached = self._components.get(digest)
        if cached is not None:
            return cached
        component = self._compile(path, data, digest)
        exports = set(component.type.exports(self.engine))
        missing = {EXPORT_INIT, EXPORT_HANDLE} - exports
        if missing:
            raise ComponentLoadError(f"{path}: missing export(s) {', '.join(sorted(missing))} of the ebbtide:function/handler world")
        loaded = LoadedComponent(path, digest, component)
        self._components[digest] = loaded
        return loaded

    def _compile(self, path: Path, data: bytes, digest: str) -> wc.Component:
        # Compiling the ~18 MB Python component takes seconds; deserializing it, tens of milliseconds.
        def compile_component() -> wc.Component:
            try:
                return wc.Component(self.engine, data)
            except wasmtime.WasmtimeError as exc:
                raise ComponentLoadError(f"{path}: not a valid WebAssembly component: {exc}") from None

        cached_file = self._cache_dir / f"{digest}.cwasm-component" if self._cache_dir else None
        return compile_cached(cached_file, lambda file: wc.Component.deserialize_file(self.engine, file), compile_component)


class ComponentGuest:
    """One component instance (the `Guest` protocol); not thread-safe."""

    takes_batches = False  # the world has no batch export: one call per message

    def __init__(self, engine: ComponentEngine, loaded: LoadedComponent, limits: GuestLimits, config_json: bytes) -> None:
        self.module = loaded
        self.limits = limits
        self.input_capacity = MAX_INPUT
        store = wasmtime.Store(engine.engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_wasi(wasmtime.WasiConfig())  # nothing granted
        store.set_fuel(limits.fuel)
        try:
            instance = engine.linker.instantiate(store, loaded.component)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise GuestInitError(f"{loaded.path}: cannot instantiate: {exc}") from None
        init = instance.get_func(store, EXPORT_INIT)
        handle = instance.get_func(store, EXPORT_HANDLE)
        if init is None or handle is None:
            raise GuestInitError(f"{loaded.path}: missing export `{EXPORT_INIT if init is None else EXPORT_HANDLE}`")
        self._store = store
        self._handle = handle
        self.path = loaded.path
        store.set_fuel(limits.fuel)
        try:
            refused = init(store, config_json.decode())
            init.post_return(store)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise GuestInitError(f"{loaded.path}: init failed: {cause(exc)}") from None
        if refused is not None:  # result<_, string>: None is ok, a string the reason
            raise GuestInitError(f"{loaded.path}: configuration refused: {refused}")

    def handle(self, subject: bytes, payload: bytes) -> tuple[abi.Status, bytes]:
        """Run the guest on one message. Raises InputTooLarge or GuestFault."""
        if len(subject) + len(payload) > self.input_capacity:
            raise InputTooLarge(f"message of {len(subject) + len(payload)} bytes exceeds the guest's input cap ({self.input_capacity})")
        store = self._store
        store.set_fuel(self.limits.fuel)
        try:
            status, output = self._handle(store, subject.decode("utf-8", "replace"), payload)
            self._handle.post_return(store)
        except wasmtime.Trap as trap:
            raise classify_trap(trap, self.limits) from None
        except wasmtime.WasmtimeError as exc:
            raise GuestFault("trap", cause(exc)) from None
        try:
            return abi.Status(status), bytes(output)
        except ValueError:
            raise unknown_status(status) from None

    def handle_batch(self, messages: Sequence[tuple[bytes, bytes]]) -> BatchResult:
        return handle_one_by_one(self, messages)
