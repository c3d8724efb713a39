"""The supervisor's policy with real child processes: restart backoff doubling up to its cap in a crash
loop, back to the minimum after a healthy run, SIGHUP reload reaching the children in per-function mode,
and terminate() escalating to SIGKILL. The backoff times are Supervisor parameters (defaults 0.5 s, 10 s,
30 s) so that this runs in seconds."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import wasmtime
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.supervisor import Supervisor, terminate
from tests.conftest import chaos_manifest, read_stream, wait_until
from tests.integration.test_hot_reload import CHAOS_V2

MIN_S, MAX_S = 0.1, 0.4


def restarts_logged(caplog: pytest.LogCaptureFixture) -> list[tuple[float, int, float]]:
    """(when, exit code, backoff chosen) of each 'exited ...; restarting in' line, in order."""
    return [
        (r.created, r.args[2], r.args[3])
        for r in caplog.records
        if r.name == "ebbtide.supervisor" and r.msg.startswith("%s (pid %d) exited")
    ]


def starts_logged(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [r.created for r in caplog.records if r.name == "ebbtide.supervisor" and r.msg.startswith("started")]


async def test_a_crash_loop_backs_off_doubling_up_to_the_cap(
    tmp_path: Path, nats_server: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ebbtide.supervisor")
    manifest = chaos_manifest(tmp_path)
    manifest.module_path("chaos").unlink()  # every start fails at once: no module to build or load (exit 1)
    supervisor = Supervisor(
        manifest.path, ["chaos"], nats_server.url, restart_min_s=MIN_S, restart_max_s=MAX_S, healthy_after_s=60
    )
    child = supervisor.children["chaos"]
    await supervisor.start()
    try:
        await wait_until(lambda: child.restarts >= 4, timeout=90)  # each start imports the host: seconds here
    finally:
        await supervisor.stop(grace_s=5)
    restarts = restarts_logged(caplog)
    assert [backoff for _, _, backoff in restarts[:5]] == [0.1, 0.2, 0.4, 0.4, 0.4][: len(restarts[:5])]
    assert len(restarts) >= 4 and all(code in (1, 2) for _, code, _ in restarts)  # a failure, not a signal
    starts = starts_logged(caplog)
    for (exited_at, _, backoff), started_at in zip(restarts, starts[1:]):  # each restart waited its backoff
        assert started_at - exited_at >= backoff - 0.01


async def test_the_backoff_starts_again_from_the_minimum_after_a_healthy_run(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ebbtide.supervisor")
    healthy_after_s = 10.0  # longer than a crashing child lives (it imports the host first: seconds on a busy machine)
    manifest = chaos_manifest(tmp_path)
    wasm = manifest.module_path("chaos")
    module = wasm.read_bytes()
    wasm.unlink()
    await provision(nc.jetstream(), manifest)  # an operator's step: the child's user need not be allowed to
    supervisor = Supervisor(
        manifest.path, ["chaos"], nats_server.url, restart_min_s=MIN_S, restart_max_s=MAX_S, healthy_after_s=healthy_after_s
    )
    child = supervisor.children["chaos"]
    await supervisor.start()
    try:
        await wait_until(lambda: len(restarts_logged(caplog)) >= 3, timeout=90)  # backoff now at the cap
        wasm.write_bytes(module)  # the next start works
        await wait_until(lambda: _stream_exists(nc, "TEST"), timeout=60)  # a child started and provisioned it
        await nc.jetstream().publish("in.chaos", b"healthy")
        await read_stream(nc, "TEST", "test.out", expected=1)  # a child runs and works
        pid = child.pid
        assert pid is not None
        await wait_until(lambda: time.monotonic() - child.started_at > healthy_after_s + 0.1)
        before = len(restarts_logged(caplog))
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: len(restarts_logged(caplog)) > before)
    finally:
        await supervisor.stop(grace_s=10)
    escalated = [backoff for _, _, backoff in restarts_logged(caplog)[:before]]
    assert escalated[-1] == MAX_S
    _, code, backoff = restarts_logged(caplog)[before]
    assert code == -signal.SIGKILL and backoff == MIN_S


async def test_sighup_to_up_reloads_the_module_in_every_child_process(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """`ebbtide up --processes per-function`: SIGHUP to `up` reaches the function processes, which rebuild
    (here: a changed .wasm, no sources) and swap their module without a restart."""
    manifest = chaos_manifest(tmp_path)
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ebbtide",
        "--manifest",
        str(manifest.path),
        "up",
        "--processes",
        "per-function",
        "--nats-url",
        nats_server.url,
        stdin=asyncio.subprocess.DEVNULL,
    )
    js = nc.jetstream()
    try:

        async def answered(payload: bytes) -> bytes | None:
            for msg in await read_stream(nc, "TEST", "test.out"):
                if msg.data[1:] == payload[1:]:
                    return msg.data
            return None

        await wait_until(lambda: _stream_exists(nc, "TEST"))
        await js.publish("in.chaos", b"m-before")
        await wait_until(lambda: answered(b"m-before"))
        assert await answered(b"m-before") == b"m-before"  # the old module

        manifest.module_path("chaos").write_bytes(wasmtime.wat2wasm(CHAOS_V2))
        up.send_signal(signal.SIGHUP)
        sent = 0

        async def new_module_answers() -> bool:  # one message at a time until one comes back from version 2
            nonlocal sent
            payload = f"m-after-{sent}".encode()
            sent += 1
            await js.publish("in.chaos", payload)
            await wait_until(lambda: answered(payload), timeout=10)
            return await answered(payload) == b"V" + payload[1:]

        await wait_until(new_module_answers, timeout=30, interval=0.2)
        assert up.returncode is None  # reloaded, not restarted
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(up.wait(), timeout=30) == 0


async def _stream_exists(nc: NatsClient, stream: str) -> bool:
    try:
        await nc.jetstream().stream_info(stream)
        return True
    except Exception:
        return False


STUBBORN = """
import signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""


async def test_terminate_escalates_to_sigkill_after_the_grace_period() -> None:
    processes = []
    for behaviour in ("ignore", "default"):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STUBBORN, behaviour, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), timeout=30) == b"ready\n"  # its handler is set
        processes.append(process)
    stubborn, polite = processes
    started = time.monotonic()
    await asyncio.wait_for(terminate(processes, grace_s=0.5), timeout=30)
    assert stubborn.returncode == -signal.SIGKILL  # ignored SIGTERM, killed after the grace period
    assert polite.returncode == -signal.SIGTERM  # stopped by SIGTERM, never killed
    assert time.monotonic() - started >= 0.5
