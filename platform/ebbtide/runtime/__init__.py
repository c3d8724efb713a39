"""Function runtime: the Wasm engine, guest instances and the guest ABI.

abi       the ABI's statuses, export names and effect encoding (pure)
guest     the `Guest` protocol, limits, fault classification
cache     reading a guest file (digest checked) and the compiled-code cache
engine    one wasmtime Engine per process; core modules loaded and checked
instance  one core-module instance and its one-call-per-message hot path
component Python guests as components (loaded only when used)
guests    loading and starting either kind
"""

from ..errors import GuestFault, GuestInitError, InputTooLarge, ModuleLoadError
from .abi import ABI_VERSION, Effect, KvPut, Publish, Status, decode_effects
from .engine import LoadedModule, WasmEngine
from .guest import Guest, GuestLimits, GuestModule
from .instance import GuestInstance

__all__ = [
    "ABI_VERSION",
    "Effect",
    "Guest",
    "GuestFault",
    "GuestInitError",
    "GuestInstance",
    "GuestLimits",
    "GuestModule",
    "InputTooLarge",
    "KvPut",
    "LoadedModule",
    "ModuleLoadError",
    "Publish",
    "Status",
    "WasmEngine",
    "decode_effects",
]
