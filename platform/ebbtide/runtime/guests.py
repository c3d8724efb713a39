"""Loading and starting a function's guest, whatever it was built from: a core module (Zig, C,
AssemblyScript: GuestInstance, the fast path) or a component (Python: ComponentGuest, runtime/component.py).
Both have the same `handle(subject, payload) -> (Status, output)` contract."""

from __future__ import annotations

from pathlib import Path

from .component import ComponentGuest, LoadedComponent
from .engine import LoadedModule, WasmEngine
from .instance import GuestInstance, GuestLimits

COMPONENT_LANGUAGES = frozenset({"python"})

Guest = GuestInstance | ComponentGuest
GuestModule = LoadedModule | LoadedComponent


def load_guest_module(engine: WasmEngine, path: Path, lang: str, *, sha256: str | None = None,
                      wasi_grants: frozenset[str] = frozenset()) -> GuestModule:
    if lang in COMPONENT_LANGUAGES:
        return engine.components.load(path, sha256=sha256)
    return engine.load(path, sha256=sha256, wasi_grants=wasi_grants)


def start_guest(engine: WasmEngine, module: GuestModule, limits: GuestLimits, config_json: bytes) -> Guest:
    if isinstance(module, LoadedComponent):
        return ComponentGuest(engine.components, module, limits, config_json)
    return GuestInstance(engine, module, limits, config_json)
