"""Function runtime: the Wasm engine, guest instances and the guest ABI."""

from .abi import ABI_VERSION, Effect, GuestFault, KvPut, Publish, Status, decode_effects
from .engine import LoadedModule, ModuleLoadError, WasmEngine
from .instance import GuestInitError, GuestInstance, GuestLimits, InputTooLarge

__all__ = [
    "ABI_VERSION", "Effect", "GuestFault", "GuestInitError", "GuestInstance", "GuestLimits", "InputTooLarge",
    "KvPut", "LoadedModule", "ModuleLoadError", "Publish", "Status", "WasmEngine",
    "decode_effects",
]
