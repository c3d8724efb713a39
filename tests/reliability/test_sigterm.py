"""SIGTERM to `ebbtide up --processes per-function` mid-run, with messages in flight, then a restart.

The command must stop cleanly (exit 0, within its grace period, no child left behind) and the
restarted one must finish the run: every order stored exactly once, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from ebbtide.broker import EmbeddedNats
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, generate_orders
from tests.conftest import backlog, manifest_copy
from tests.reliability.conftest import (
    ORDERS_N,
    MidRunFault,
    PublishStats,
    Report,
    Row,
    account,
    connect_client,
    dead_letter_accounting,
    expected_outbox,
    finished_run,
    publish_reliably,
    read_outbox,
    wait_for_functions,
    with_invalid,
)


async def start_up(manifest_path: Path, url: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebbtide",
            "-m",
            str(manifest_path),
            "up",
            "--processes",
            "per-function",
            "--nats-url",
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def stop_with_sigterm(process: asyncio.subprocess.Process, grace_s: float) -> tuple[int, float, list[int]]:
    """SIGTERM `ebbtide up`; (exit code, seconds to exit, its children that outlived it)."""
    kids = children(process.pid)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.wait(), grace_s + 10)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"`ebbtide up` still running {grace_s + 10:.0f} s after SIGTERM") from None
    return code, time.monotonic() - sent, [k for k in kids if alive(k)]


async def test_sigterm_mid_run_then_restart(
    tmp_path: Path, reference_manifest: LoadedManifest, nats_server: EmbeddedNats, reliability_report: Report
) -> None:
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(path)
    functions = list(manifest.spec.functions)
    # What `ebbtide up` gives its children to finish their batches (launch.running), on top of their own.
    grace_s = max(getattr(manifest.function(f), "shutdown_grace_s", 10.0) for f in functions) + 5
    orders = generate_orders(ORDERS_N, seed=505)
    expected = expected_outbox(orders)
    messages, invalid = with_invalid(orders, seed=505)
    log = tmp_path / "ebbtide-up.log"
    nc = await connect_client(nats_server.url)
    started = time.monotonic()
    process = await start_up(path, nats_server.url, log)
    started_processes = [process]
    try:
        await wait_for_functions(nc, functions)
        stats = PublishStats()
        fault = MidRunFault(nc, lambda: process.send_signal(signal.SIGTERM), ORDERS_N // 3, stats)
        kids = children(process.pid)
        assert len(kids) == len(functions)
        publishing = asyncio.create_task(
            publish_reliably(nc, INGRESS_SUBJECT, messages, spread_s=3.0, stats=stats, after_send=fault.after_send)
        )
        await fault.wait()
        in_flight = await backlog(nc)  # published, not yet acked
        sent = time.monotonic()
        code = await asyncio.wait_for(process.wait(), grace_s + 10)
        first_stop_s = time.monotonic() - sent
        left = [k for k in kids if alive(k)]
        await publishing  # the server is up: the rest of the run waits in the stream
        waiting = await backlog(nc)
        stored_before_restart = (await read_outbox(nc, expected)).stored
        assert code == 0, log.read_text()[-3000:]
        assert first_stop_s <= grace_s, f"stopped in {first_stop_s:.1f} s, grace period {grace_s:.0f} s"
        assert not left, f"children still running after `ebbtide up` exited: {left}"
        assert in_flight > 0 and 0 < stored_before_restart < ORDERS_N and waiting > 0

        process = await start_up(path, nats_server.url, log)
        started_processes.append(process)
        await wait_for_functions(nc, functions)

        await finished_run(nc, expected, len(invalid), "every order stored, every invalid input dead-lettered, after the restart")
        code, second_stop_s, left = await stop_with_sigterm(process, grace_s)
        outbox, letters = await account(nc, expected)  # every function stopped: nothing still on its way
        missing, doubled, strays = dead_letter_accounting(letters, invalid)
        row = Row(
            "SIGTERM `ebbtide up` mid-run + restart",
            stats.messages,
            outbox.stored,
            outbox.lost + missing,
            outbox.extra_writes + doubled,
            len(letters),
            time.monotonic() - started,
            f"{len(invalid)} invalid; in flight at SIGTERM {in_flight}, exit in {first_stop_s:.1f} s, "
            f"{waiting} waited for the restart",
        )
        reliability_report.add(row)
        assert code == 0 and second_stop_s <= grace_s and not left, (code, second_stop_s, left)
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        row.check(len(orders), len(invalid))
        assert await backlog(nc) == 0
    finally:
        for started_process in started_processes:
            if started_process.returncode is None:
                started_process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(started_process.wait(), grace_s + 10)
                except TimeoutError:
                    pass
            try:
                os.killpg(started_process.pid, signal.SIGKILL)  # whatever that session left behind
            except ProcessLookupError:
                pass
        await nc.close()
