"""`ebbtide run` against a real nats-server: a server that goes away is waited for (clients reconnect
forever), and a server that closes the connection for good makes the process exit with status 1, so
that its supervisor (or Kubernetes) restarts it (README, "A lost connection").

For nats-py with `max_reconnect_attempts=-1` (broker/connection.py), a stopped server is never "for
good": the client retries until it is back. What is for good: the server refusing the host's credentials
(here its user is removed and the server reloads its configuration: the server drops the connection, and
refuses each reconnect with 'Authorization Violation'). broker/connection.py then closes the connection,
nats-py calls the closed callback, Host._on_lost, and `run` exits 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, free_port, provision
from tests.conftest import chaos_manifest, read_stream, wait_until

ADMIN_PASSWORD, HOST_PASSWORD = "admin-secret", "host-secret"


def write_authorization(config: Path, *, host_allowed: bool) -> None:
    users = [{"user": "admin", "password": ADMIN_PASSWORD}]
    if host_allowed:
        users.append({"user": "host", "password": HOST_PASSWORD})
    # The server name EmbeddedNats gives on the command line: a reload refuses a configuration that changes it.
    server_name = f"ebbtide-{config.with_suffix('.port').read_text()}"
    config.write_text(f"server_name: {json.dumps(server_name)}\nauthorization " + json.dumps({"users": users}) + "\n")


@dataclass
class RunProcess:
    """`ebbtide run --function chaos` in a child process, its stderr collected line by line."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def collect(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "nats.conf"
    path.with_suffix(".port").write_text(str(free_port()))
    write_authorization(path, host_allowed=True)
    return path


@pytest.fixture
def server(tmp_path: Path, config: Path) -> Iterator[EmbeddedNats]:
    port = int(config.with_suffix(".port").read_text())
    with EmbeddedNats(tmp_path / "nats", port=port, monitor_port=0, config_file=config) as started:
        yield started


@pytest.fixture
async def admin(server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await nats.connect(
        server.url, user="admin", password=ADMIN_PASSWORD, max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    yield client
    await client.close()


@pytest.fixture
async def host(tmp_path: Path, server: EmbeddedNats, admin: NatsClient) -> AsyncIterator[RunProcess]:
    manifest = chaos_manifest(tmp_path)
    await provision(admin.jetstream(), manifest)  # an operator's step: the host's user need not be allowed to
    env = {**os.environ, "EBBTIDE_NATS_USER": "host", "EBBTIDE_NATS_PASSWORD": HOST_PASSWORD}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ebbtide",
        "--manifest",
        str(manifest.path),
        "run",
        "--function",
        "chaos",
        "--nats-url",
        server.url,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    run = RunProcess(process)
    collecting = asyncio.create_task(run.collect())
    try:
        await _works(admin, b"before")
        yield run
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await collecting


async def _works(admin: NatsClient, payload: bytes) -> None:
    """The host takes a message and carries out its effect."""
    js = admin.jetstream()

    async def published() -> bool:
        try:
            await js.publish("in.chaos", payload, timeout=1)
            return True
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError):
            return False  # the host has not provisioned the stream yet

    await wait_until(published)
    await wait_until(lambda: _stored(admin, payload))


async def _stored(admin: NatsClient, payload: bytes) -> bool:
    return any(m.data == payload for m in await read_stream(admin, "TEST", "test.out"))


async def test_revoked_credentials_close_the_connection_for_good_and_the_host_exits_1(
    host: RunProcess, server: EmbeddedNats, config: Path
) -> None:
    write_authorization(config, host_allowed=False)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGHUP)  # nats-server reloads its configuration: the host's user is gone
    try:
        code = await asyncio.wait_for(host.process.wait(), timeout=20)
    except TimeoutError:
        raise AssertionError(
            "the host is still running:\n"
            + "".join(line for line in host.lines if "ebbtide.nats" in line or "ebbtide.host" in line)
        ) from None
    assert code == 1
    await wait_until(lambda: host.logged("the NATS connection closed for good"), timeout=5)


async def test_a_stopped_server_is_waited_for_not_given_up_on(host: RunProcess, server: EmbeddedNats, admin: NatsClient) -> None:
    server.stop()
    await wait_until(lambda: host.logged("disconnected from"))  # the host noticed, and is reconnecting
    server.start()  # same port, same data folder, same users
    await _works(admin, b"after the restart")
    assert host.process.returncode is None
    host.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(host.process.wait(), timeout=30) == 0
