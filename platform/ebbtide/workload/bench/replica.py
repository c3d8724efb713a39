"""What one function replica costs: its memory, idle, and its cold start from zero replicas.

Each replica is what Kubernetes schedules and KEDA starts from zero, so its memory and its start time are
what a user pays for. Measured on real processes started as compose and Kubernetes start them
(`ebbtide run --function NAME` against an external nats-server), and for `ebbtide up`:

- memory of an idle process: RSS, PSS (shared pages divided among the processes sharing them) and private
  memory (clean + dirty pages no other process maps), from /proc/<pid>/smaps_rollup, a second after it
  reported ready (its first status report: pool and controller running, consumer bound);
- the supervisor of `ebbtide up` (per-function processes): the same, for the process that runs no function;
- each additional function in one process: (`up --processes single` with every function − with one) / (n − 1);
- cold start: from exec of `ebbtide run --function distributor` to ready (first status report) and to the
  first message processed (its effect seen on the output subject), with one order already waiting, as when
  KEDA scales a Deployment from zero on a backlog;
- the floor: a bare interpreter, and one that imported only the libraries a function process needs
  (asyncio, msgspec, uvloop, nats-py, wasmtime-py): their private dirty memory and exec-to-imported time.

Every process runs with ebbtide's bytecode compiled first (compile_package), as in an installed package or
the image.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
from nats.aio.client import Client as NatsClient

from ...broker import ConfirmedPublisher, EmbeddedNats, connect, provision
from ...broker.publisher import PublishBatch
from ...manifest import LoadedManifest, load_manifest
from ...runtime.guest import MIB
from ...status_reports import STATUS_SUBJECT_PREFIX, decode_status
from ..orders import encode_order, generate_orders
from .report import BenchReport
from .tomlwrite import dumps

ZEISS_WASM_APP_MIB = 2.4  # KubeCon EU 2024: one Spin (Wasm) app, against 423 MB for the container
ZEISS_START_S = 34.0  # the same talk: start-up of the Wasm deployment (containers: 60 s)


@dataclass(frozen=True)
class Memory:
    rss: int
    pss: int
    private: int  # Private_Clean + Private_Dirty
    # Private_Dirty: what the process wrote (Python objects, heaps, relocated data). The clean rest is code
    # read from the libraries' files, private only while no other process maps the same file: in a run it
    # varies by several MiB with what else runs (wasmtime's library alone: 7-11 MiB), on a node it is
    # shared by the page cache with every replica of the image.
    private_dirty: int

    def mib(self) -> tuple[float, float, float]:
        return self.rss / MIB, self.pss / MIB, self.private / MIB


def process_memory(pid: int) -> Memory:
    """From /proc/<pid>/smaps_rollup (Linux 4.14+), in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    dirty = fields.get("Private_Dirty", 0)
    return Memory(fields.get("Rss", 0), fields.get("Pss", 0), fields.get("Private_Clean", 0) + dirty, dirty)


def compile_package() -> None:
    """Write ebbtide's bytecode, as `pip install` does in an image: a checkout run with
    PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module at every start (≈ 120 ms and 1 MiB more
    per start on the 2-core machine), which no deployed replica does."""
    compileall.compile_dir(Path(__file__).parents[2], quiet=1)


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def manifest_with(manifest: LoadedManifest, functions: list[str], folder: Path) -> LoadedManifest:
    """The manifest with only `functions` (paths made absolute), as a file the processes load."""
    raw = msgspec.to_builtins(manifest.spec)
    raw["build_dir"] = str(manifest.build_dir)
    raw["embedded"]["data_dir"] = str(manifest.resolve(manifest.spec.embedded.data_dir))
    for module in raw["modules"].values():
        module["source"] = str(manifest.resolve(module["source"]))
        if module.get("sdk"):
            module["sdk"] = str(manifest.resolve(module["sdk"]))
    raw["functions"] = {name: raw["functions"][name] for name in functions}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ebbtide-{'-'.join(functions)}.toml"
    path.write_text("# ebbtide bench: replica measurements\n" + dumps(raw))
    return load_manifest(path)


class _Reports:
    """Status reports as they arrive: the first one of a process says it is ready."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # host_id -> monotonic time of its first report
        self.changed = asyncio.Event()

    async def on_report(self, msg) -> None:  # type: ignore[no-untyped-def]
        status = decode_status(msg.data)
        self.arrived.setdefault(f"{status.function}@{status.host_id}", time.monotonic())
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 60.0) -> float:
        """Monotonic time at which `count` distinct (function, process) pairs had reported."""
        deadline = time.monotonic() + timeout
        while len(self.arrived) < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"only {len(self.arrived)} of {count} status reports within {timeout} s")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass
        return sorted(self.arrived.values())[count - 1]


@asynccontextmanager
async def _ebbtide(
    nc: NatsClient, manifest: LoadedManifest, args: list[str], reports_expected: int
) -> AsyncIterator[tuple[asyncio.subprocess.Process, float, float]]:
    """Start `ebbtide --manifest M <args>`; yield (process, exec time, ready time) once it reported ready."""
    reports = _Reports()
    subscription = await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=reports.on_report)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ebbtide",
        "--manifest",
        str(manifest.path),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "EBBTIDE_METRICS_PORT": "0"},
    )
    try:
        ready = await reports.wait_for(reports_expected)
        yield process, started, ready
    finally:
        await subscription.unsubscribe()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


# What every function process imports before any of ebbtide's own code runs (`ebbtide` itself only installs
# lean_imports' hook, as a function process has it): the floor under the replica's figures.
LIBRARIES = ("ebbtide", "asyncio", "msgspec", "uvloop", "nats.aio.client", "wasmtime")


async def _floor(imports: tuple[str, ...]) -> tuple[Memory, float]:
    """A Python process that imports `imports` and waits: its memory once idle, and exec to imported (ms)."""
    code = f"import sys; import {', '.join(imports) or 'sys'}; print(flush=True); sys.stdin.read()"
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    await process.stdout.readline()
    imported_ms = (time.monotonic() - started) * 1000
    memory = await _settled_memory(process.pid, quiet_s=0.2)
    process.stdin.close()
    await process.wait()
    return memory, imported_ms


async def _settled_memory(pid: int, quiet_s: float = 1.0) -> Memory:
    await asyncio.sleep(quiet_s)  # start-up garbage collected, first idle ticks done
    return process_memory(pid)


async def bench_replica(manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path) -> None:
    tries = 3 if quick else 7
    data_dir = out_dir / "nats-replica"
    shutil.rmtree(data_dir, ignore_errors=True)
    functions = list(manifest.spec.functions)
    folder = out_dir / "replica"
    one = manifest_with(manifest, [functions[0]], folder)
    every = manifest_with(manifest, functions, folder)
    compile_package()
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server:
        nc = await connect(server.url, name="ebbtide-bench-replica")
        try:
            await provision(nc.jetstream(), every)
            url = ["--nats-url", server.url]
            replica: list[Memory] = []
            for _ in range(tries):
                async with _ebbtide(nc, one, ["run", "--function", functions[0], *url], 1) as (process, _, _):
                    replica.append(await _settled_memory(process.pid))
            async with _ebbtide(nc, every, ["up", "--processes", "per-function", *url], len(functions)) as (process, _, _):
                supervisor = await _settled_memory(process.pid)
                children = [process_memory(child) for child in children_of(process.pid)]
            singles: dict[int, Memory] = {}
            for loaded in (one, every):
                count = len(loaded.spec.functions)
                async with _ebbtide(nc, loaded, ["up", "--processes", "single", *url], count) as (process, _, _):
                    singles[count] = await _settled_memory(process.pid)
            cold = await _cold_starts(nc, one, functions[0], url, tries)
        finally:
            await nc.close()
    floors = {imports: [await _floor(imports) for _ in range(tries)] for imports in ((), LIBRARIES)}

    median = sorted(replica, key=lambda m: m.private)[len(replica) // 2]
    rss, pss, private = median.mib()
    report.add(
        "idle function process: private memory",
        private,
        "MiB",
        f"`ebbtide run --function {functions[0]}` against an external nats-server, 1 s after ready; "
        f"median of {tries} processes (RSS {rss:.1f}, PSS {pss:.1f} MiB); /proc/PID/smaps_rollup",
        "≤ 12 MiB",
    )
    report.add(
        "idle function process: private dirty memory",
        sorted(m.private_dirty for m in replica)[len(replica) // 2] / MIB,
        "MiB",
        "the same processes, without the libraries' clean code pages (shared with every other replica on a "
        "node; private here only while no other process maps the same file)",
        "≤ 12 MiB",
    )
    rss, pss, private = supervisor.mib()
    report.add(
        "supervisor of `up`: private memory",
        private,
        "MiB",
        f"`ebbtide up --processes per-function` runs no function itself (RSS {rss:.1f}, PSS {pss:.1f} MiB, "
        f"private dirty {supervisor.private_dirty / MIB:.1f} MiB); its {len(children)} children: private "
        + ", ".join(f"{c.private / MIB:.1f}" for c in children)
        + " MiB",
        "≤ 10 MiB",
    )
    n = len(functions)
    if n > 1:
        extra = (singles[n].private - singles[1].private) / (n - 1) / MIB
        report.add(
            "each additional function in one process: private memory",
            extra,
            "MiB",
            f"(`up --processes single` with {n} functions − with 1) / {n - 1}: "
            f"{singles[n].private / MIB:.1f} − {singles[1].private / MIB:.1f} MiB "
            f"(ZEISS: {ZEISS_WASM_APP_MIB} MB per Wasm app)",
            f"≤ {ZEISS_WASM_APP_MIB} MiB",
        )
    report.add(
        "replica cold start: exec to ready (median)",
        statistics.median(cold.ready_ms),
        "ms",
        f"exec of `ebbtide run --function {functions[0]}` until its first status report (consumer bound); "
        f"{tries} starts, min {min(cold.ready_ms):.0f} ms (ZEISS: {ZEISS_START_S:.0f} s to start the Wasm deployment)",
        "≤ 150 ms",
    )
    report.add(
        "replica cold start: exec to first message processed (median)",
        statistics.median(cold.first_ms),
        "ms",
        f"the same starts, one order waiting in the stream: until its effect reached the output subject; "
        f"min {min(cold.first_ms):.0f} ms",
    )
    report.add(
        "replica cold start: CPU time to first message processed (median)",
        statistics.median(cold.cpu_ms),
        "ms",
        "the same starts: the process's time on a CPU until then (/proc/PID/schedstat), what its start costs "
        f"whatever else runs; it also waited {statistics.median(cold.runqueue_ms):.0f} ms (median) for a CPU busy "
        "with other work",
    )
    for imports, label in (((), "the interpreter alone"), (LIBRARIES, "the interpreter and the libraries")):
        dirty = sorted(memory.private_dirty for memory, _ in floors[imports])[tries // 2] / MIB
        fastest = min(ms for _, ms in floors[imports])
        report.add(
            f"floor: {label}, private dirty memory",
            dirty,
            "MiB",
            (f"`python -c 'import {', '.join(imports)}'`" if imports else "`python -c pass`")
            + f", idle; median of {tries} (exec to imported: min {fastest:.0f} ms). What a function process cannot go below"
            + ("" if imports else " without another runtime"),
        )
    report.details["replica"] = {
        "function_process": [m.__dict__ for m in replica],
        "supervisor": supervisor.__dict__,
        "supervisor_children": [c.__dict__ for c in children],
        "single_process": {str(k): v.__dict__ for k, v in singles.items()},
        "cold_start_ready_ms": cold.ready_ms,
        "cold_start_first_message_ms": cold.first_ms,
        "cold_start_cpu_ms": cold.cpu_ms,
        "cold_start_runqueue_ms": cold.runqueue_ms,
        "floor": {
            " ".join(imports) or "python": [{**m.__dict__, "imported_ms": ms} for m, ms in runs]
            for imports, runs in floors.items()
        },
    }


@dataclass(frozen=True)
class ColdStarts:
    ready_ms: list[float]  # exec to the first status report
    first_ms: list[float]  # exec to the waiting message's effect
    cpu_ms: list[float]  # the process's time on a CPU until then
    runqueue_ms: list[float]  # ... and waiting for one (the machine's other work)


def cpu_and_runqueue_ms(pid: int) -> tuple[float, float]:
    """From /proc/<pid>/schedstat: nanoseconds on a CPU, nanoseconds runnable but waiting for one."""
    with open(f"/proc/{pid}/schedstat") as schedstat:
        on_cpu, waiting, _ = schedstat.read().split()
    return int(on_cpu) / 1e6, int(waiting) / 1e6


async def _cold_starts(nc: NatsClient, manifest: LoadedManifest, function: str, url: list[str], tries: int) -> ColdStarts:
    """Exec to ready and to the first processed message, `tries` times, with one message waiting each time."""
    fn = manifest.function(function)
    outputs = list(fn.publish) or [f"$KV.{bucket}.>" for bucket in fn.kv]
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    effect = asyncio.Event()
    arrived_at = 0.0

    async def on_effect(_msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal arrived_at
        if not effect.is_set():
            arrived_at = time.monotonic()
            effect.set()

    subscriptions = [await nc.subscribe(subject, cb=on_effect) for subject in outputs]
    starts = ColdStarts([], [], [], [])
    try:
        for attempt, order in enumerate(generate_orders(tries, seed=11, first_id=90_000_001)):
            effect.clear()
            batch = PublishBatch()
            publisher.add(batch, fn.trigger, encode_order(order), f"replica-cold-start:{attempt}:{time.time_ns()}")
            await publisher.wait(batch, timeout=10)
            async with _ebbtide(nc, manifest, ["run", "--function", function, *url], 1) as (process, started, ready):
                await asyncio.wait_for(effect.wait(), 30)
                cpu_ms, runqueue_ms = cpu_and_runqueue_ms(process.pid)
                starts.ready_ms.append((ready - started) * 1000)
                starts.first_ms.append((arrived_at - started) * 1000)
                starts.cpu_ms.append(cpu_ms)
                starts.runqueue_ms.append(runqueue_ms)
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
        await publisher.stop()
    return starts
