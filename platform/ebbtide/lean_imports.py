"""Start-up cost of third-party imports: what ebbtide does so that a function process loads less.

A function process (one Kubernetes replica) pays its imports in memory and in cold start. nats-py 2.16
reads its own version at import time with `importlib.metadata.version("nats-py")`, which imports
importlib.metadata with zipfile, csv, tempfile and importlib.resources and scans every installed
distribution: ≈ 2.4 MiB of private memory and ≈ 20 ms per process on the 2-core machine (README,
"Memory per replica and cold start"), for a string nats-py only sends in its CONNECT. `install()` (called by
the `ebbtide` command line as it starts, before anything imports nats: never by `import ebbtide`, so an
application that embeds ebbtide imports nats-py as published) hides importlib.metadata while `nats.aio.client`
executes, which makes nats-py fall back to "0.0.0", then sets the real version read from the
distribution's `.dist-info` folder name. A process that already imported importlib.metadata imports
nats-py as usual, and so does one that imports it elsewhere than through the import system's path finder.
tests/integration/test_lean_imports.py fails if nats-py stops doing this or the version it sends changes;
nats-py is pinned in pyproject.toml. (While nats.aio.client executes, any other import of
importlib.metadata fails: processes import nats-py at start-up, from their one thread.)
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType

NATS_CLIENT_MODULE = "nats.aio.client"


def distribution_version(package: str, distribution: str) -> str | None:
    """The installed version of `distribution`, which provides the import package `package`, from the name
    of its `<distribution>-<version>.dist-info` folder beside the package; None if not found that way."""
    spec = PathFinder.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    prefix = distribution.replace("-", "_") + "-"
    for location in spec.submodule_search_locations:
        for info in Path(location).parent.glob(f"{prefix}*.dist-info"):
            return info.name.removeprefix(prefix).removesuffix(".dist-info")
    return None


class _NatsClientWithoutMetadata:
    """A one-shot import hook (sys.meta_path) for nats.aio.client; see the module's docstring."""

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != NATS_CLIENT_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = PathFinder.find_spec(name, path)  # type: ignore[arg-type]
        if spec is None or spec.loader is None or "importlib.metadata" in sys.modules:
            return spec  # nothing to save: let the import go its ordinary way
        exec_module = spec.loader.exec_module

        def exec_without_metadata(module: ModuleType) -> None:
            sys.modules["importlib.metadata"] = None  # type: ignore[assignment]  # `from importlib.metadata import` fails
            try:
                exec_module(module)
            finally:
                del sys.modules["importlib.metadata"]
            version = distribution_version("nats", "nats-py")
            if version is not None:
                module.__version__ = version  # type: ignore[attr-defined]  # read when it sends CONNECT

        spec.loader.exec_module = exec_without_metadata  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Before nats.aio.client is imported (a no-op after)."""
    if NATS_CLIENT_MODULE not in sys.modules and not any(isinstance(f, _NatsClientWithoutMetadata) for f in sys.meta_path):
        sys.meta_path.insert(0, _NatsClientWithoutMetadata())
