"""ebbtide: event-driven WebAssembly functions on NATS JetStream.

The public API is what this package exports (`__all__` below) and `ebbtide.testing` (a function run on a
message without NATS, for function authors). Every other module is internal: its names may change without
notice. Importing ebbtide loads nothing else and changes nothing: the NATS client, the Wasm runtime and
the build toolchain are imported when a name that needs them is first used.

    manifest = ebbtide.load_manifest("ebbtide.toml")
    ebbtide.build_modules(manifest)                  # compile the functions (the `build` extra's toolchains)
    nc = await ebbtide.connect(url, name="my-app")   # or a nats-py client of the application's
    await ebbtide.provision(nc, manifest)            # streams, buckets, consumers (admin rights)
    async with ebbtide.Host(manifest, connection=nc, metrics_port=0):
        ...                                          # the functions run in this event loop
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    BuildError,
    DeadLetterError,
    EbbtideError,
    EffectRefused,
    GuestFault,
    GuestInitError,
    InputTooLarge,
    JetStreamError,
    ManifestError,
    MessageError,
    ModuleLoadError,
    NatsConnectionError,
    PublishError,
    RunError,
    UsageError,
)

if TYPE_CHECKING:
    from ._api import provision
    from .broker.connection import connect
    from .broker.credentials import NatsAuth
    from .broker.embedded import EmbeddedNats
    from .build import build_modules
    from .host import Host
    from .manifest import LoadedManifest, load_manifest, parse_manifest

__version__ = "0.1.0"

# Imported from their module when first used (see the module's docstring).
_LAZY = {
    "LoadedManifest": "manifest",
    "load_manifest": "manifest",
    "parse_manifest": "manifest",
    "build_modules": "build",
    "connect": "broker.connection",
    "NatsAuth": "broker.credentials",
    "EmbeddedNats": "broker.embedded",
    "provision": "_api",
    "Host": "host",
}

__all__ = [
    # the manifest
    "LoadedManifest",
    "load_manifest",
    "parse_manifest",
    "build_modules",
    # NATS
    "connect",
    "NatsAuth",
    "EmbeddedNats",
    "provision",
    # running functions
    "Host",
    # errors (ebbtide.errors has the tree)
    "EbbtideError",
    "UsageError",
    "ManifestError",
    "RunError",
    "BuildError",
    "ModuleLoadError",
    "GuestInitError",
    "NatsConnectionError",
    "JetStreamError",
    "PublishError",
    "DeadLetterError",
    "MessageError",
    "GuestFault",
    "InputTooLarge",
    "EffectRefused",
]


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value  # once: later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
