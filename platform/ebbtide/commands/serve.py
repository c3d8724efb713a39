"""Running functions: `ebbtide up`, `ebbtide run`, `ebbtide provision`.

`up` and `run` stop on SIGINT/SIGTERM (a signal during start-up too); `up` provisions the server with the
admin credentials in a child process (`ebbtide provision --wait`, as compose and Kubernetes run it)
beside starting the functions, which wait for their consumers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, TypeVar

from ..broker.access import ServerAccess, client_access, configured_url, embedded_server, external_access
from ..broker.credentials import NatsAuth
from ..broker.users import ADMIN_USER, INGRESS_ENV
from ..build import build_modules
from ..errors import BuildError, ManifestError, UsageError
from ..exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED
from ..launch import ProcessMode, running
from ..manifest import LoadedManifest
from ..supervisor import Supervisor

if TYPE_CHECKING:  # a supervisor never loads the host (the runtime, the pools)
    from ..host import Host

log = logging.getLogger("ebbtide")
T = TypeVar("T")


async def _serve(
    manifest: LoadedManifest,
    server: ServerAccess,
    mode: ProcessMode,
    functions: list[str] | None = None,
    verbose: bool = False,
    metrics_port: int | None = None,
    watch: bool = False,
    provision_as: NatsAuth | None = None,
) -> int:
    """Run until SIGINT or SIGTERM, then stop the pools (or child processes) and drain. SIGHUP hot-reloads
    changed modules; `watch` does so whenever a function's sources change.

    `provision_as`: provision the server with these (admin) credentials beside starting the functions,
    which wait for their consumers; a server that is not there yet is retried like the functions' own
    connections, and refused provisioning (not an admin) stops everything with exit code 1.

    A signal during start-up interrupts it wherever it waits (e.g. on a server that never answers): what
    was started is stopped, and the exit code is 130."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    serving = asyncio.current_task()
    assert serving is not None
    signalled: list[signal.Signals] = []
    started = False

    def on_stop_signal(sig: signal.Signals) -> None:
        if not started and not signalled:
            serving.cancel()
        signalled.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    provisioning = (
        asyncio.ensure_future(_provision_in_child(manifest, server.url, provision_as)) if provision_as is not None else None
    )
    try:
        async with running(manifest, server, mode, functions, verbose, metrics_port) as runner:
            started = True
            # What this process holds once started (modules, compiled guests, connections) lives as long as it:
            # out of the collector's reach, a full collection scans only what came after. 38,000 objects took
            # ~10 ms to scan on an idle core, and 100-250 ms of wall time in a burst's CPU contention (the soak).
            gc.freeze()
            return await _serve_until_stopped(manifest, runner, stop, watch, provisioning)
    except asyncio.CancelledError as exc:
        if not signalled:
            raise
        serving.uncancel()
        where = " ".join(getattr(exc, "__notes__", [])) or "during start-up"  # e.g. while connecting to ...: why
        print(f"ebbtide: stopped by {signalled[0].name} {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if provisioning is not None:
            if not provisioning.done():
                provisioning.cancel()
            elif not provisioning.cancelled():
                provisioning.exception()  # seen: a child stopped by the same Ctrl-C is no error to report


async def _serve_until_stopped(
    manifest: LoadedManifest,
    runner: Host | Supervisor,
    stop: asyncio.Event,
    watch: bool,
    provisioning: asyncio.Future[None] | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    def reload() -> None:
        if not isinstance(runner, Supervisor):
            task = asyncio.create_task(runner.reload())
            background.add(task)
            task.add_done_callback(background.discard)
        else:
            runner.reload()

    loop.add_signal_handler(signal.SIGHUP, reload)
    if not isinstance(runner, Supervisor):
        log.info(
            "running %s in this process (pid %d); Ctrl-C to stop, SIGHUP to reload changed modules",
            ", ".join(runner.function_names),
            os.getpid(),
        )
    else:
        log.info(
            "running %s, one supervised process each; Ctrl-C to stop, SIGHUP to reload changed modules",
            ", ".join(runner.children),
        )
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
    if watch:
        waits.append(asyncio.ensure_future(_watch_sources(manifest, reload)))
    if not isinstance(runner, Supervisor):  # a supervisor's children report their own losses by exiting
        waits.append(asyncio.ensure_future(runner.connection_lost.wait()))
    failed = False
    while True:
        pending: list[asyncio.Future[Any]] = [*waits, provisioning] if provisioning is not None else waits
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if provisioning is None or provisioning not in done:
            break
        if provisioning.exception() is not None:
            log.error("provisioning failed, stopping: %s", provisioning.exception())
            failed = True
            break
        log.info("provisioned: streams, KV buckets, dead letters, durable consumers")
        provisioning = None
    for wait in waits:
        wait.cancel()
    loop.remove_signal_handler(signal.SIGHUP)
    if failed or not stop.is_set():
        return EXIT_FAILURE  # provisioning refused, or the connection lost for good: exit so that a supervisor restarts us
    log.info("stopping")
    return 0


async def _watch_sources(manifest: LoadedManifest, reload: Callable[[], None], interval_s: float = 1.0) -> None:
    """`up --watch`: an incremental build every second; whatever was rebuilt is hot-reloaded."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            rebuilt = [r.module for r in await asyncio.to_thread(build_modules, manifest) if r.rebuilt]
        except (BuildError, ManifestError) as exc:  # a half-typed edit: report it, keep running the last good modules
            log.error("watch: build failed, the running modules stay: %s", exc)
            continue
        if rebuilt:
            log.info("watch: rebuilt %s; reloading", ", ".join(rebuilt))
            reload()


def up_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    url = configured_url(manifest, args.nats_url)
    build_modules(manifest)
    if url is not None:
        access = external_access(manifest, url)
        with _console_beside(args, manifest, url):
            return _serve_up(args, manifest, access)  # provisioned with the credentials `up` was given
    with embedded_server(manifest, auth=False if args.no_auth else None) as (server, access):
        log.info("embedded nats-server at %s (monitoring %s, data in %s)", server.url, server.monitor_url, server.data_dir)
        if access.bundle is not None:
            # Where the secrets are, never the secrets themselves (logs are often collected).
            log.info(
                "authentication on: publish orders as the user in %s, or use the admin NKEY seed %s "
                "(--no-auth or [embedded] auth = false turns it off)",
                access.bundle.folder / INGRESS_ENV,
                access.bundle.seed_file(ADMIN_USER),
            )
        else:
            log.warning("authentication is off: anyone who reaches %s may do anything", server.url)
        # With generated users, the console finds their credentials where `ebbtide dlq` finds them.
        with _console_beside(args, manifest, None if access.bundle is not None else server.url):
            return _serve_up(args, manifest, access)  # provisioned as the generated admin user


def _console_beside(args: argparse.Namespace, manifest: LoadedManifest, url: str | None) -> AbstractContextManager[None]:
    """`up --console`: the console's own process beside the functions (`up` itself never loads it)."""
    if args.console is None:
        return nullcontext()
    from .console import console_beside

    return console_beside(manifest, url, args.console)


def _serve_up(args: argparse.Namespace, manifest: LoadedManifest, access: ServerAccess) -> int:
    serving = _serve(
        manifest,
        access,
        args.processes,
        verbose=args.verbose,
        metrics_port=args.metrics_port,
        watch=args.watch,
        provision_as=access.admin,
    )
    if args.processes == "per-function":  # a supervisor only waits on its children: the standard loop does, lighter
        return asyncio.run(serving)
    return _run_fast(serving)


def _run_fast(main: Coroutine[Any, Any, T]) -> T:
    """Where messages flow (a host, provisioning): uvloop's event loop."""
    import uvloop

    return uvloop.run(main)


def run_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    url = configured_url(manifest, args.nats_url)
    if url is None:
        raise UsageError("`run` needs a NATS server: give --nats-url, EBBTIDE_NATS_URL or [nats] url (or use `ebbtide up`)")
    manifest.function(args.function)
    build_modules(manifest, [manifest.function(args.function).module])
    return _run_fast(_serve(manifest, external_access(manifest, url), "single", [args.function], metrics_port=args.metrics_port))


def provision_command(args: argparse.Namespace, manifest: LoadedManifest) -> int:
    from ..broker.provisioning import provision_server, stream_configs

    server = client_access(manifest, args.nats_url)
    _run_fast(provision_server(server.url, manifest, server.admin, give_up_after_s=None if args.wait else 5))
    print(
        f"provisioned on {server.url}: streams {', '.join(str(config.name) for config in stream_configs(manifest))}; "
        f"durable consumers {', '.join(manifest.spec.functions)}"
    )
    return 0


async def _provision_in_child(manifest: LoadedManifest, url: str, auth: NatsAuth) -> None:
    """`ebbtide provision --wait` in a process of its own, as compose and Kubernetes run it: a server that
    is not there yet is waited for; a refusal (not an admin) fails. The child dies with us (a signal)."""
    from ..children import die_with_parent

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ebbtide",
        "--manifest",
        str(manifest.path),
        "provision",
        "--wait",
        "--nats-url",
        url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, **auth.child_env()},
        preexec_fn=die_with_parent(),
    )
    try:
        code = await process.wait()
    except asyncio.CancelledError:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"`ebbtide provision` exited with {code} (its reason is in the log above)")
