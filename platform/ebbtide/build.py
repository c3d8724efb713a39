"""`ebbtide build`: compile each module of the manifest from source into <build_dir>/wasm/<module>.wasm.

Incremental: a module is rebuilt only when a source file (its own or the guest SDK's) is newer than
its output. Built files never go into git (see .gitignore).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .manifest import LoadedManifest, ManifestError

class BuildError(Exception):
    pass


@dataclass(frozen=True)
class BuildResult:
    module: str
    output: Path
    rebuilt: bool


def _zig_command() -> list[str]:
    try:
        import ziglang  # noqa: F401  (the ziglang package from PyPI carries the Zig toolchain)
    except ImportError:
        raise BuildError("the Zig toolchain is missing: pip install ziglang (or: pip install -e '.[build]')") from None
    return [sys.executable, "-m", "ziglang"]


def _sources(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*.zig") if path.is_file()]


def build_modules(manifest: LoadedManifest, modules: list[str] | None = None, force: bool = False) -> list[BuildResult]:
    spec = manifest.spec
    names = modules if modules is not None else list(spec.modules)
    results = []
    for name in names:
        if name not in spec.modules:
            raise ManifestError(f"{manifest.path}: no module named {name!r} under [modules]")
        source_dir = manifest.resolve(spec.modules[name].source)
        sdk = manifest.resolve(spec.modules[name].sdk)
        main = source_dir / "main.zig"
        output = manifest.module_path(name)
        if not source_dir.exists() and output.exists():
            # A container image ships built modules without their sources (nor Zig): use them as they are.
            results.append(BuildResult(name, output, rebuilt=False))
            continue
        if not main.exists():
            raise BuildError(f"module {name}: {main} not found (modules.{name}.source in {manifest.path})")
        inputs = _sources(source_dir) + _sources(sdk)
        if not force and output.exists() and output.stat().st_mtime >= max(p.stat().st_mtime for p in inputs):
            results.append(BuildResult(name, output, rebuilt=False))
            continue
        _compile_zig(manifest, name, main, sdk / "ebbtide.zig", output)
        results.append(BuildResult(name, output, rebuilt=True))
    return results


def _compile_zig(manifest: LoadedManifest, name: str, main: Path, sdk: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    cache = manifest.build_dir / "zig-cache"
    tmp_output = output.with_suffix(".wasm.tmp")
    command = [
        *_zig_command(), "build-exe",
        "-target", "wasm32-freestanding", "-O", "ReleaseSmall", "-fno-entry", "-rdynamic",
        "--stack", "16384",  # nothing recurses and the big buffers are static
        # Without explicit cache folders Zig writes .zig-cache/ into the working directory.
        "--cache-dir", str(cache / "local"), "--global-cache-dir", str(cache / "global"),
        "--dep", "ebbtide", f"-Mroot={main}", f"-Mebbtide={sdk}",
        f"-femit-bin={tmp_output}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"module {name}: zig build-exe failed:\n{done.stderr.strip()}")
    tmp_output.replace(output)  # an interrupted build never leaves a half-written module
