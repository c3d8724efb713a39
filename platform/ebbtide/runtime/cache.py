"""Reading a guest file (checked against its expected digest) and caching its compiled code on disk.

One home for both kinds of guest: core modules (`engine.py`) and components (`component.py`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import wasmtime

from ..errors import ModuleLoadError

Compiled = TypeVar("Compiled")


def read_checked(
    path: Path, sha256: str | None, what: str = "module", error: type[ModuleLoadError] = ModuleLoadError
) -> tuple[bytes, str]:
    """The file's bytes and hex digest; refused (before anything of it is compiled or run) when the
    manifest pins another `sha256`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror}); run `ebbtide build`") from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise error(f"{path}: its sha256 is {digest}, the manifest expects {sha256.lower()}; refusing to load it")
    return data, digest


def compile_cached(cached_file: Path | None, deserialize: Callable[[str], Compiled], compile: Callable[[], Compiled]) -> Compiled:
    """Deserialize the compiled code from `cached_file` when it is there and usable, else compile and
    store it (written under a temporary name, then renamed: processes may share the cache). A cache
    folder that cannot be written (a read-only image) only costs the compile."""
    if cached_file is not None and cached_file.exists():
        try:
            return deserialize(str(cached_file))
        except wasmtime.WasmtimeError:
            try:
                cached_file.unlink(missing_ok=True)  # built by another wasmtime or engine config
            except OSError:
                pass
    compiled = compile()
    if cached_file is not None:
        try:
            cached_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(compiled.serialize())  # type: ignore[attr-defined]
            tmp.replace(cached_file)
        except OSError:
            pass  # read-only: run from the compiled code in memory
    return compiled
