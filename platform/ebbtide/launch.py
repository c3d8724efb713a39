"""Running a manifest's functions: all in this process, or one supervised process per function."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

from .broker.access import ServerAccess, external_access
from .manifest import LoadedManifest
from .status_reports import STATUS_SUBJECT_PREFIX, decode_status
from .supervisor import Supervisor

if TYPE_CHECKING:  # per-function mode never loads the host (the runtime, the pools): its children do
    from nats.aio.client import Client as NatsClient

    from .host import Host

ProcessMode = Literal["single", "per-function"]
PROCESS_MODES: tuple[ProcessMode, ...] = ("single", "per-function")
# Measured on this project's 2-core machine (README, Performance): the 10,000-order burst takes
# 0.82 s with each function in its own process, 1.13 s with all in one.
DEFAULT_PROCESS_MODE: ProcessMode = "per-function"


@asynccontextmanager
async def running(
    manifest: LoadedManifest,
    server: ServerAccess | str,
    mode: ProcessMode,
    functions: list[str] | None = None,
    verbose: bool = False,
    metrics_port: int | None = None,
) -> AsyncIterator[Host | Supervisor]:
    """`server`: a URL (credentials from EBBTIDE_NATS_* or the manifest) or a server with its users.
    `metrics_port` overrides [telemetry] metrics_port (0: off)."""
    access = external_access(manifest, server) if isinstance(server, str) else server
    names = functions if functions is not None else list(manifest.spec.functions)
    if mode == "single":
        from .host import Host

        async with Host(manifest, access.url, names, metrics_port, auth=access.for_functions(names)) as host:
            yield host
        return
    base_port = manifest.spec.telemetry.metrics_port if metrics_port is None else metrics_port
    supervisor = Supervisor(
        manifest.path,
        names,
        access.url,
        verbose=verbose,
        metrics_port=base_port,
        child_env=lambda function: access.for_functions([function]).child_env(),
    )
    try:
        await supervisor.start()  # inside: a start interrupted by a signal stops the children started so far
        yield supervisor
    finally:
        # Children get their own grace period to finish in-flight batches, and a little more to exit.
        await supervisor.stop(grace_s=max(manifest.function(n).shutdown_grace_s for n in names) + 5)


async def wait_for_reports(nc: NatsClient, functions: list[str], timeout: float = 60.0) -> None:
    """Until every function has sent a status report: its process is up, provisioned and bound."""
    seen: set[str] = set()
    done = asyncio.Event()

    async def record(msg) -> None:  # type: ignore[no-untyped-def]
        seen.add(decode_status(msg.data).function)
        if seen >= set(functions):
            done.set()

    subscription = await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=record)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except TimeoutError:
        raise RuntimeError(f"no status from {sorted(set(functions) - seen)} within {timeout} s") from None
    finally:
        await subscription.unsubscribe()
