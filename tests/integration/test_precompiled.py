"""The compiled-module cache: `ebbtide build --precompile` writes what each host's engine needs, so that a
replica's first start only reads it (the image ships it; Kubernetes mounts the root filesystem read-only),
and engines configured differently keep their own compiled code instead of overwriting one another's."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec

from ebbtide.cli import main
from ebbtide.function import FunctionSpec
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.precompiled import function_engine
from ebbtide.runtime import WasmEngine
from tests.conftest import manifest_copy


def cache_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's (inode, mtime): a file rewritten, even with the same bytes, shows."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.iterdir()}


def test_engines_configured_differently_keep_their_own_compiled_code(reference_manifest: LoadedManifest, tmp_path: Path) -> None:
    module = reference_manifest.module_path("distributor")
    cache = tmp_path / "cache"
    for reservation in (16 << 20, 64 << 20):  # a host of one function, the default engine (tests, bench)
        WasmEngine(memory_reservation=reservation, cache_dir=cache).load(module)
    written = cache_state(cache)
    assert len(written) == 2, written
    for reservation in (16 << 20, 64 << 20, 16 << 20):  # processes started again, in any order: only reads
        WasmEngine(memory_reservation=reservation, cache_dir=cache).load(module)
        assert cache_state(cache) == written


def test_build_precompile_fills_the_cache_each_replica_then_only_reads(tmp_path: Path) -> None:
    path, _ = manifest_copy(tmp_path)
    shared = load_manifest(path)
    # Its own build folder (the session's is shared): the built modules, no cache yet.
    build_dir = tmp_path / "build"
    shutil.copytree(shared.build_dir / "wasm", build_dir / "wasm")
    for recipe in (shared.build_dir / "wasm").glob("*.recipe"):
        shutil.copy2(recipe, build_dir / "wasm" / recipe.name)
    manifest = LoadedManifest(msgspec.structs.replace(shared.spec, build_dir=str(build_dir)), shared.path)
    text = path.read_text().replace(f'build_dir = "{shared.spec.build_dir}"', f'build_dir = "{build_dir}"')
    path.write_text(text)

    assert main(["--manifest", str(path), "build", "--precompile"]) == 0
    cache = build_dir / "cache"
    written = cache_state(cache)
    assert len(written) == len(manifest.spec.modules)  # one engine configuration for all three functions here
    for hosted in [[name] for name in manifest.spec.functions] + [list(manifest.spec.functions)]:
        engine = function_engine(manifest, hosted)
        for name in hosted:
            FunctionSpec.of(manifest, name).load(engine)
        assert cache_state(cache) == written, hosted  # deserialized: nothing compiled, nothing written
