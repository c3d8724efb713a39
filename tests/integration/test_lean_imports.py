"""What a function process and the supervisor of `ebbtide up` load (issue 18: memory per replica, cold
start): real processes against a real nats-server, each started as `python -m ebbtide` is, and its
sys.modules read when it exits (the supervisor's children are started as usual and not read).

Each module named here once cost a replica memory and start-up time it does not need (README, "Memory per
replica and cold start", has the figures)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import signal
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.manifest import load_manifest
from ebbtide.status_reports import STATUS_SUBJECT_PREFIX
from tests.conftest import manifest_copy, provision_for

# Never in a function process: what only the CLI's other commands, the embedded server, the build toolchain
# or an installed package's metadata need (importlib.metadata brings zipfile, csv and tempfile).
NOT_IN_A_FUNCTION_PROCESS = (
    "importlib.metadata",
    "zipfile",
    "csv",
    "tempfile",
    "bcrypt",
    "nkeys",
    "nacl",
    "opentelemetry",
    "ebbtide.scaffold",
    "ebbtide.broker.embedded",
    "ebbtide.workload.bench.run",
    "ebbtide.workload.orders",
    "ebbtide.commands.workload",
    "ebbtide.console",  # `up --console` runs it as a process of its own
    "ebbtide.commands.console",
    "starlette",
    "uvicorn",
    "grpc",  # `ebbtide scaler` (KEDA's external scaler) and `ebbtide plan` run apart from the functions
    "ebbtide.kedascaler",
    "ebbtide.capacity.model",
    "ebbtide.commands.scaling",
    "ebbtide.commands.exporter",  # `ebbtide nats-exporter`: a process of its own
    "ebbtide.telemetry.nats_monitor",
)
# Never in the supervisor: it runs no function, so none of what runs one, and no fast event loop.
NOT_IN_THE_SUPERVISOR = NOT_IN_A_FUNCTION_PROCESS + (
    "nats",
    "wasmtime",
    "uvloop",
    "ebbtide.host",
    "ebbtide.pool",
    "ebbtide.runtime",
    "ebbtide.telemetry.http",
    "ebbtide.telemetry.metrics",
)


# `python -m ebbtide ARGS`, writing the names in sys.modules to OUT as it exits.
WITH_MODULES_WRITTEN = """
import atexit, runpy, sys
out = sys.argv[1]
sys.argv = ["ebbtide", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write("\\n".join(sys.modules)))
runpy.run_module("ebbtide", run_name="__main__", alter_sys=True)
"""


def loaded(forbidden: tuple[str, ...], modules: set[str]) -> list[str]:
    """The modules (or packages: a name and everything under it) of `forbidden` that were imported."""
    return sorted(m for m in modules if any(m == name or m.startswith(name + ".") for name in forbidden))


async def run_until_reports(nc: NatsClient, args: list[str], reports: int, tmp_path: Path) -> set[str]:
    """`python -m ebbtide ARGS` until `reports` processes sent a status report (ready), then SIGTERM (it
    stops as usual). Returns the modules the process itself had imported."""
    ready: set[str] = set()
    all_ready = asyncio.Event()

    async def on_report(msg) -> None:  # type: ignore[no-untyped-def]
        ready.add(msg.subject)
        if len(ready) >= reports:
            all_ready.set()

    modules = tmp_path / "modules.txt"
    subscription = await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=on_report)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WITH_MODULES_WRITTEN,
        str(modules),
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "EBBTIDE_METRICS_PORT": "0"},
    )
    try:
        await asyncio.wait_for(all_ready.wait(), 60)
    finally:
        await subscription.unsubscribe()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
    return set(modules.read_text().split())


async def test_a_function_process_loads_only_what_runs_a_function(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    path, _ = manifest_copy(tmp_path)
    await provision_for(load_manifest(path), nats_server.url)
    args = ["--manifest", str(path), "run", "--function", "distributor", "--nats-url", nats_server.url]
    modules = await run_until_reports(nc, args, 1, tmp_path)
    assert {"nats.aio.client", "wasmtime", "uvloop", "ebbtide.host"} <= modules  # it did run a function
    assert loaded(NOT_IN_A_FUNCTION_PROCESS, modules) == []


async def test_the_supervisor_loads_no_function_runtime(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    path, _ = manifest_copy(tmp_path)
    manifest = load_manifest(path)
    await provision_for(manifest, nats_server.url)
    args = ["--manifest", str(path), "up", "--processes", "per-function", "--nats-url", nats_server.url]
    modules = await run_until_reports(nc, args, len(manifest.spec.functions), tmp_path)
    assert {"ebbtide.supervisor", "ebbtide.manifest"} <= modules
    assert loaded(NOT_IN_THE_SUPERVISOR, modules) == []


def test_nats_client_is_imported_without_package_metadata_and_says_its_own_version() -> None:
    """lean_imports: nats-py reads its version through importlib.metadata at import time; the `ebbtide`
    command line hides that module while nats.aio.client executes and sets the version from the .dist-info
    folder. If nats-py stops doing so (or the version it would send changes), this fails. `import ebbtide`
    alone does none of it (tests/integration/test_library_untouched.py)."""
    probe = (
        "import sys, ebbtide.lean_imports; ebbtide.lean_imports.install(); import nats.aio.client as client; "
        "print(client.__version__, 'importlib.metadata' in sys.modules, sys.modules.get('importlib.metadata', 1) is None)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [importlib.metadata.version("nats-py"), "False", "False"]
    # Without the command line, nats-py imports as it does without ebbtide (2.13 and later: with the metadata).
    metadata_loaded = "import sys, {}nats.aio.client; print('importlib.metadata' in sys.modules)"
    beside = [
        subprocess.run([sys.executable, "-c", metadata_loaded.format(first)], capture_output=True, text=True, check=True).stdout
        for first in ("ebbtide, ", "")
    ]
    assert beside[0] == beside[1]
