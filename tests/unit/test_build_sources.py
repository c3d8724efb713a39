"""A module's sources or its prebuilt file: a typo in `modules.X.source` is an error (exit 2, naming the file
and the key), never a reason to run whatever an earlier build left in build/wasm (issue 13, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wasmtime

from ebbtide.build import PREBUILT_ENV
from ebbtide.manifest import ManifestError, parse_manifest
from tests.conftest import GUESTS, REPO
from tests.deploy_support import dockerfile as dockerfile_reader

EMBEDDED_STOP_S = 60.0  # `up` must refuse at once; a generous bound only so that a broken build cannot hang the suite


def _manifest(tmp_path: Path, module_lines: str) -> Path:
    """A manifest in tmp_path with module `m` and an earlier build of it in tmp_path/build/wasm/m.wasm."""
    wasm = tmp_path / "build" / "wasm" / "m.wasm"
    wasm.parent.mkdir(parents=True)
    wasm.write_bytes(wasmtime.wat2wasm((GUESTS / "chaos.wat").read_text()))
    path = tmp_path / "ebbtide.toml"
    path.write_text(
        textwrap.dedent("""
        build_dir = "build"
        [embedded]
        data_dir = "nats"
        port = 0
        monitor_port = 0
        auth = false
        [streams.S]
        subjects = ["in.>", "out.>"]
        retention = "workqueue"
        [modules.m]
        {module_lines}
        [functions.f]
        module = "m"
        trigger = "in.f"
        publish = ["out.f"]
    """).format(module_lines=module_lines)
    )
    return path


def ebbtide(
    manifest: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in (PREBUILT_ENV, "EBBTIDE_NATS_URL")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "ebbtide", "-m", str(manifest), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=manifest.parent,
    )


@pytest.mark.parametrize("command", [["build"], ["build", "--force"], ["build", "m"], ["up", "--processes", "single"]])
def test_a_typo_in_source_is_an_error_even_with_an_earlier_build(tmp_path: Path, command: list[str]) -> None:
    manifest = _manifest(tmp_path, 'source = "functions/mm"  # a typo: the folder is functions/m')
    (tmp_path / "functions" / "m").mkdir(parents=True)
    done = ebbtide(manifest, *command, timeout=EMBEDDED_STOP_S)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"ebbtide: {manifest}: modules.m.source: {tmp_path / 'functions' / 'mm'} does not exist" in done.stderr
    assert "prebuilt = true" in done.stderr  # what to write if the module really ships built
    assert "up to date" not in done.stdout


def test_a_prebuilt_module_is_used_as_shipped_and_never_compiled(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "prebuilt = true")
    for command in (["build"], ["build", "--force"]):
        done = ebbtide(manifest, *command)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[:2] == ["m", "prebuilt"]


def test_a_prebuilt_module_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "prebuilt = true")
    wasm = tmp_path / "build" / "wasm" / "m.wasm"
    wasm.unlink()
    done = ebbtide(manifest, "build")
    assert done.returncode == 2
    assert f"ebbtide: {manifest}: modules.m.prebuilt: {wasm} does not exist" in done.stderr


def test_the_environment_makes_every_module_prebuilt(tmp_path: Path) -> None:
    """The container image's way: its build stage compiled the modules, the runtime stage has no sources."""
    manifest = _manifest(tmp_path, 'source = "functions/m"')
    done = ebbtide(manifest, "build", env={PREBUILT_ENV: "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["m", "prebuilt"]
    done = ebbtide(manifest, "build", env={PREBUILT_ENV: "maybe"})
    assert done.returncode == 2 and f"${PREBUILT_ENV} must be 1" in done.stderr
    (tmp_path / "build" / "wasm" / "m.wasm").unlink()
    done = ebbtide(manifest, "build", env={PREBUILT_ENV: "1"})
    assert done.returncode == 2 and f"modules.m (${PREBUILT_ENV}=1): " in done.stderr


def test_a_module_needs_a_source_or_prebuilt() -> None:
    text = '[streams.S]\nsubjects = ["in.>"]\n[modules.m]\nlang = "zig"\n[functions.f]\nmodule = "m"\ntrigger = "in.f"\n'
    with pytest.raises(ManifestError, match=r"ebbtide\.toml: modules\.m\.source: required"):
        parse_manifest(text, Path("/tmp/x/ebbtide.toml"))
    assert parse_manifest(text.replace('lang = "zig"', "prebuilt = true"), Path("/tmp/x/ebbtide.toml")).spec.modules["m"].prebuilt


def test_the_image_says_its_modules_ship_built() -> None:
    """The runtime stage holds build/wasm but no functions/: it must say so, or every `ebbtide run` exits 2."""
    image = dockerfile_reader.parse(REPO / "Dockerfile")
    assert image.env("runtime").get(PREBUILT_ENV) == "1"
    repository = parse_manifest((REPO / "ebbtide.toml").read_text(), REPO / "ebbtide.toml")
    assert not any(m.prebuilt for m in repository.spec.modules.values()), "a checkout builds its modules from source"
