"""The implementations of the reference pipeline that the burst compares, each started as it would run.

Each one binds to the streams and consumers the harness provisioned, runs in processes of its own (one per
function unless said otherwise) and yields the process ids (for RSS) once every consumer is bound.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from ...broker import provision
from ...host import Host
from ...launch import ProcessMode, running, wait_for_reports
from ...manifest import LoadedManifest, load_manifest
from ...status_reports import STATUS_REQUEST_SUBJECT
from ...supervisor import Supervisor, terminate
from ..baselines import READY_LINE, ROLES
from . import tomlwrite

Starter = Callable[[str, NatsClient], AbstractAsyncContextManager[list[int]]]


@dataclass(frozen=True)
class Implementation:
    key: str
    label: str
    how: str
    start: Starter  # (nats url, client) -> context yielding the pids running it


# -- ebbtide, as configured by a manifest variant ------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """An ebbtide configuration: a process mode and settings applied to every function of the manifest."""

    name: str
    mode: ProcessMode
    settings: dict[str, Any] = field(default_factory=dict)  # FunctionSection fields; `scale` merges key by key
    batched: bool = True  # False: allow_batched off on every stream, a PubAck per effect (as before issue 29)

    def describe(self) -> str:
        parts = [f"{self.mode} process mode"] + [f"{k} {v}" for k, v in _flat(self.settings).items()]
        if not self.batched:
            parts.append("allow_batched off (a PubAck per effect)")
        return ", ".join(parts)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


DEFAULT = Variant("default", "per-function")
# The default with a PubAck per effect, as ebbtide published before fast batches (issue 29): run beside the
# default in the burst, so the table shows what they changed.
PUBACK_PER_EFFECT = Variant("puback-per-effect", "per-function", batched=False)
# What the full run tries (the default too); the fastest is kept. --quick does not search: it takes
# FASTEST_KNOWN, the winner of the last full run on this machine kind (README, Performance).
CANDIDATES = (
    DEFAULT,
    Variant("single", "single"),
    Variant("warm", "per-function", {"scale": {"min": 1}}),
    Variant("fewer-instances", "per-function", {"scale": {"max": 2}}),
    Variant("big-batches", "per-function", {"batch": 512, "scale": {"max": 2}}),
    Variant("many-instances", "per-function", {"batch": 128, "scale": {"max": 8, "target_backlog": 100}}),
)
# 2026-11-29, with batch calls into the guest: over 8 bursts of 10,000 each (4 tuning rounds, shared and loaded
# machine), median wall time default 2.49 s, many-instances 2.05, one-instance-big-batches (batch 512,
# scale.max 1) 2.27, single 2.35, fewer-instances 2.71, one-instance 2.76; paired round by round no
# configuration beat the default more often than not: within noise, so the default is kept as the fastest.
# Again after the host CPU work (issue 18), two full runs of 3 alternating rounds each (load average 7-10):
# the search's winner differed (many-instances 2.18 s vs default 3.76; big-batches 3.08 vs 3.52), and in the
# timed repeats right after, the winner was no faster than the default (3.18 vs 3.41 s; 4.52 vs 3.91 s).
FASTEST_KNOWN = "default"


def candidate(name: str) -> Variant:
    for variant in CANDIDATES:
        if variant.name == name:
            return variant
    raise ValueError(f"no ebbtide configuration named {name!r} (known: {', '.join(v.name for v in CANDIDATES)})")


def write_variant(manifest: LoadedManifest, variant: Variant, folder: Path) -> LoadedManifest:
    """The manifest with the variant's settings, as a file (function processes load it), paths made absolute."""
    raw = msgspec.to_builtins(manifest.spec)
    raw["build_dir"] = str(manifest.build_dir)
    raw["embedded"]["data_dir"] = str(manifest.resolve(manifest.spec.embedded.data_dir))
    for module in raw["modules"].values():
        module["source"] = str(manifest.resolve(module["source"]))
        if module.get("sdk"):  # empty: the language's own SDK folder, found by the build
            module["sdk"] = str(manifest.resolve(module["sdk"]))
    if not variant.batched:
        for section in (*raw["streams"].values(), *raw["kv"].values(), raw["dead_letter"]):
            section["allow_batched"] = False
    for function in raw["functions"].values():
        for key, value in variant.settings.items():
            function[key] = {**function[key], **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ebbtide-{variant.name}.toml"
    path.write_text(f"# ebbtide bench variant {variant.name!r}: {variant.describe()}\n" + tomlwrite.dumps(raw))
    return load_manifest(path)


def ebbtide(manifest: LoadedManifest, variant: Variant, folder: Path, key: str, label: str) -> Implementation:
    loaded = write_variant(manifest, variant, folder)
    functions = list(loaded.spec.functions)

    @asynccontextmanager
    async def start(url: str, nc: NatsClient) -> AsyncIterator[list[int]]:
        await provision(nc.jetstream(), loaded)  # this variant's consumer settings; hosts never provision
        reported = asyncio.create_task(wait_for_reports(nc, functions, timeout=60))
        try:
            async with running(loaded, url, variant.mode) as runner:
                while not reported.done():  # ask for reports: a first one may have gone out before we listened
                    await nc.publish(STATUS_REQUEST_SUBJECT, b"")
                    await asyncio.wait([reported], timeout=0.2)
                reported.result()
                yield _pids(runner)
        finally:
            reported.cancel()

    return Implementation(key, label, f"ebbtide, Wasm functions: {variant.describe()}", start)


def _pids(runner: Host | Supervisor) -> list[int]:
    """The processes running the functions (in `single` mode, this one: its RSS includes the benchmark)."""
    if isinstance(runner, Host):
        return [os.getpid()]
    return [c.pid for c in runner.children.values() if c.pid is not None]


# -- baselines: one process per function ---------------------------------------------------------------------


def baseline(
    module: str, key: str, label: str, how: str, roles: tuple[str, ...] = ROLES, args: tuple[str, ...] = ()
) -> Implementation:
    @asynccontextmanager
    async def start(url: str, nc: NatsClient) -> AsyncIterator[list[int]]:
        processes: list[asyncio.subprocess.Process] = []
        try:
            for role in roles:
                processes.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        module,
                        "--nats-url",
                        url,
                        "--role",
                        role,
                        *args,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            for process, role in zip(processes, roles):
                assert process.stdout is not None
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                if line.strip() != READY_LINE.encode():
                    code = await process.wait()
                    raise RuntimeError(f"{module} --role {role} exited ({code}) before it was ready")
            yield [p.pid for p in processes]
        finally:
            await terminate(processes, grace_s=15.0)

    return Implementation(key, label, how, start)


def faststream() -> Implementation:
    return baseline(
        "ebbtide.workload.baselines.faststream_pipeline",
        "faststream",
        "FastStream",
        "FastStream 0.7.8, pure Python handlers, the same validation, routing, streams, durable pull consumers "
        "(PullSub, batch 256, handled concurrently) and KV writes with Nats-Msg-Id; one process per function",
    )


def raw_limit() -> Implementation:
    return baseline(
        "ebbtide.workload.baselines.raw_pipeline",
        "raw",
        "raw nats-py (limit)",
        "nats-py pass-through, no validation, no Wasm: batched fetch (256, 4 loops), confirmed-publish pipeline "
        "with Nats-Msg-Id, ack after confirm; one process per function",
    )


def raw_batched() -> Implementation:
    return baseline(
        "ebbtide.workload.baselines.raw_pipeline",
        "raw-batched",
        "raw nats-py, fast batches",
        "the same pass-through, with the server features ebbtide's host uses, by hand: each fetched batch's "
        "outputs published as one fast batch (ADR-50), confirmed by one PubAck; one process per function",
        args=("--fast-batches",),
    )


def have_faststream() -> bool:
    """FastStream comes with the optional `baseline` extra."""
    return importlib.util.find_spec("faststream") is not None
