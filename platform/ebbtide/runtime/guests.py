"""Loading and starting a function's guest, whatever it was built from: a core module (Zig, C,
AssemblyScript: `GuestInstance`, the fast path) or a component (Python: `ComponentGuest`,
runtime/component.py). Both satisfy the `Guest` protocol (runtime/guest.py).

The component runtime is imported only when a component is loaded: most processes never need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .engine import LoadedModule, WasmEngine
from .guest import Guest, GuestLimits, GuestModule
from .instance import GuestInstance

if TYPE_CHECKING:  # type-only: importing it would load the component runtime in every process
    from .component import ComponentEngine

COMPONENT_LANGUAGES = frozenset({"python"})

__all__ = ["COMPONENT_LANGUAGES", "Guest", "GuestModule", "load_guest_module", "start_guest"]


def _component_engine(engine: WasmEngine) -> ComponentEngine:
    from .component import ComponentEngine

    if not isinstance(engine.component_engine, ComponentEngine):
        engine.component_engine = ComponentEngine(cache_dir=engine.cache_dir)
    return engine.component_engine


def load_guest_module(
    engine: WasmEngine, path: Path, lang: str, *, sha256: str | None = None, wasi_grants: frozenset[str] = frozenset()
) -> GuestModule:
    if lang in COMPONENT_LANGUAGES:
        return _component_engine(engine).load(path, sha256=sha256)
    return engine.load(path, sha256=sha256, wasi_grants=wasi_grants)


def start_guest(engine: WasmEngine, module: GuestModule, limits: GuestLimits, config_json: bytes) -> Guest:
    if isinstance(module, LoadedModule):
        return GuestInstance(engine, module, limits, config_json)
    from .component import ComponentGuest, LoadedComponent

    assert isinstance(module, LoadedComponent)
    return ComponentGuest(_component_engine(engine), module, limits, config_json)
