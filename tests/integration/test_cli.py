"""The `ebbtide` command as a shell user runs it: separate processes, signals, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats

from ebbtide.stream_state import stream_state
from tests.conftest import manifest_copy, port_open, provision_for, wait_for_consumers, wait_until


def ebbtide(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ebbtide", *args], capture_output=True, text=True, timeout=120, **kwargs)


async def test_up_with_embedded_server_publish_and_sigterm(tmp_path: Path, reference_manifest) -> None:
    manifest, port = manifest_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "EBBTIDE_NATS_URL"}
    up = subprocess.Popen(
        # stdout is a pipe: `auto` would be JSON lines; the option after the command holds for the children too
        [sys.executable, "-m", "ebbtide", "-m", str(manifest), "up", "--log-format", "text"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert up.poll() is None and time.monotonic() < deadline, "ebbtide up did not start its server"
            time.sleep(0.05)
        # Authentication is on by default: the operator's tools use the admin NKEY the server was given.
        nc = await nats.connect(url, nkeys_seed=str(tmp_path / "nats" / "auth" / "admin.nk"))

        await wait_for_consumers(nc)
        published = ebbtide("-m", str(manifest), "publish", "--count", "50", "--seed", "3", env=env)
        assert published.returncode == 0, published.stderr
        assert f"published 50 message(s) to orders.ingress on {url}" in published.stdout

        async def stored() -> bool:
            states = [await stream_state(nc, f"KV_outbox-{kind}") for kind in ("express", "standard")]
            return sum(s.messages for s in states) == 50

        await wait_until(stored)
        await nc.close()
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, output
    assert "embedded nats-server at" in output
    assert "authentication on: publish orders as the user in" in output
    assert "could not drain" not in output  # the host drained before the server stopped
    assert not port_open(port), "the embedded server must stop with the host"
    assert "function distributor on orders.ingress" in output  # a function process's own log line
    assert not [line for line in output.splitlines() if line.startswith("{")], "every process logs as text"


def test_run_without_a_server_is_a_usage_error(tmp_path: Path) -> None:
    manifest, _ = manifest_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "EBBTIDE_NATS_URL"}
    done = ebbtide("-m", str(manifest), "run", "--function", "distributor", env=env)
    assert done.returncode == 2
    assert "`run` needs a NATS server" in done.stderr


def test_unknown_function_and_bad_manifest(tmp_path: Path) -> None:
    manifest, _ = manifest_copy(tmp_path)
    done = ebbtide("-m", str(manifest), "run", "--function", "nope", "--nats-url", "nats://127.0.0.1:1")
    assert done.returncode == 2 and "no function named 'nope'" in done.stderr
    manifest.write_text(manifest.read_text().replace("max_deliver = 5", 'max_deliver = "five"'))
    done = ebbtide("-m", str(manifest), "build")
    assert done.returncode == 2
    assert f"{manifest}: functions.distributor.retry.max_deliver: Expected `int`, got `str`" in done.stderr


async def test_top_shows_every_function_of_a_running_host(reference_manifest, nats_server) -> None:
    from ebbtide.host import Host

    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        done = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebbtide",
            "-m",
            str(reference_manifest.path),
            "top",
            "--nats-url",
            nats_server.url,
            "--iterations",
            "1",
            "--interval",
            "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, stderr.decode()
    screen = stdout.decode()
    assert "FUNCTION" in screen and "BACKLOG" in screen and "INSTANCES" in screen
    rows = {
        line.split()[0]: line.split()
        for line in screen.splitlines()
        if line.split() and line.split()[0] in reference_manifest.spec.functions
    }
    assert set(rows) == set(reference_manifest.spec.functions)
    # idle: no backlog, nothing unhandled (OLDEST "-"), drained to zero instances
    assert all(row[1:4] == ["0", "-", "0"] for row in rows.values()), rows


async def test_dlq_commands(reference_manifest, nats_server) -> None:
    """list, show, redrive and purge from the shell, on dead letters the pipeline produced; `top` counts
    what the dead-letter stream holds now."""
    import nats as nats_client

    from ebbtide.host import Host
    from tests.conftest import read_stream

    async def ebbtide_async(*args: str) -> subprocess.CompletedProcess[str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ebbtide",
            "-m",
            str(reference_manifest.path),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        return subprocess.CompletedProcess(args, process.returncode or 0, out.decode(), err.decode())

    async def cli(action: str, *args: str) -> subprocess.CompletedProcess[str]:
        # The connection options work after the action too (issue 13, item 6).
        return await ebbtide_async("dlq", action, "--nats-url", nats_server.url, *args)

    async def dead_in_top() -> dict[str, str]:
        done = await ebbtide_async("top", "--nats-url", nats_server.url, "--iterations", "1", "--interval", "1")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        header = lines[1].replace("P50 ms", "P50_ms").replace("P99 ms", "P99_ms").split()
        return {
            line.split()[0]: dict(zip(header, line.split()))["DEAD"]
            for line in lines[2:]
            if line.split() and line.split()[0] in reference_manifest.spec.functions
        }

    nc = await nats_client.connect(nats_server.url)
    await provision_for(reference_manifest, nats_server.url)
    async with Host(reference_manifest, nats_server.url):
        js = nc.jetstream()
        await js.publish("orders.ingress", b'{"orderId": 5, "delivery": "Drone", "items": [1]}')
        await js.publish("orders.ingress", b"not json")
        await read_stream(nc, "DLQ", expected=2)

        listed = await cli("list", "--function", "distributor")
        assert listed.returncode == 0, listed.stderr
        assert "unknown-delivery" in listed.stdout and "malformed-json" in listed.stdout
        before = await ebbtide_async("dlq", "--nats-url", nats_server.url, "list")  # and before it, as ever
        assert before.returncode == 0 and before.stdout == (await cli("list")).stdout, before.stderr
        shown = await cli("show", "1")
        assert shown.returncode == 0, shown.stderr
        assert "orders.ingress" in shown.stdout and "Drone" in shown.stdout
        assert (await cli("redrive", "--function", "nope")).returncode == 2
        assert (await cli("purge")).returncode == 2  # needs --yes
        redriven = await cli("redrive")
        assert redriven.returncode == 0, redriven.stderr
        assert "redriven 2" in redriven.stdout
        # Still invalid: both come back as new dead letters, nothing is lost.
        await read_stream(nc, "DLQ", expected=2)
        assert (await dead_in_top())["distributor"] == "2"  # in the stream now, not the 4 dead-lettered so far
        purged = await cli("purge", "--yes")
        assert purged.returncode == 0 and "purged 2 dead letter(s)" in purged.stdout
        assert await dead_in_top() == dict.fromkeys(reference_manifest.spec.functions, "0")
    await nc.close()
