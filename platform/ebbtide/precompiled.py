"""Each function's compiled code, ready before its first start.

A host compiles its functions' modules with its own engine (runtime/engine.py), configured from the
manifest, and keeps the compiled code in <build_dir>/cache. Compiling costs 70-135 ms on the 2-core
machine, deserializing the cached code about 0.5 ms (README, "Memory per replica and cold start").
`ebbtide build --precompile` fills the cache for every engine a host of the manifest uses (one function per
process, as each replica runs it, and all of them in one process), so that a replica started from zero
deserializes: the image ships the cache, and a read-only root filesystem (Kubernetes) only reads it.
Code compiled for another engine configuration (a manifest with other memory limits) or for a CPU with
features the node lacks does not deserialize: that host compiles, as it would without the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from .function import FunctionSpec, memory_reservation
from .manifest import LoadedManifest
from .runtime import WasmEngine


def function_engine(manifest: LoadedManifest, functions: list[str]) -> WasmEngine:
    """The engine of a host that runs `functions`: compiled code fits only an engine configured alike."""
    memory_limit = max(manifest.function(name).limits.memory_mib for name in functions)
    return WasmEngine(memory_reservation=memory_reservation(memory_limit), cache_dir=manifest.build_dir / "cache")


@dataclass(frozen=True)
class Precompiled:
    function: str
    memory_reservation: int  # of the engine it was compiled for


def precompile(manifest: LoadedManifest) -> list[Precompiled]:
    """Compile every function's module into the cache for each engine it may run in (already there: read)."""
    names = list(manifest.spec.functions)
    hosts = [[name] for name in names] + ([names] if len(names) > 1 else [])
    done: list[Precompiled] = []
    for functions in hosts:
        engine = function_engine(manifest, functions)
        for name in functions:
            FunctionSpec.of(manifest, name).load(engine)
            entry = Precompiled(name, engine.memory_reservation)
            if entry not in done:
                done.append(entry)
    return done
