"""Shared fixtures: a real nats-server per test (own ports, own data folder) and built guest modules."""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import wasmtime
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, free_port
from ebbtide.build import build_modules
from ebbtide.manifest import LoadedManifest, load_manifest, parse_manifest

REPO = Path(__file__).resolve().parent.parent
GUESTS = Path(__file__).resolve().parent / "guests"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0) as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture(scope="session")
def reference_manifest() -> LoadedManifest:
    """The repository's ebbtide.toml, with the Zig functions built (incrementally) into build/."""
    manifest = load_manifest(REPO / "ebbtide.toml")
    build_modules(manifest)
    return manifest


def manifest_copy(tmp_path: Path, function_settings: str = "") -> tuple[Path, int]:
    """The reference manifest with its own ports and data folder, building from the repository's sources.

    `function_settings` (TOML lines) is added to every function. Returns the file and the embedded port.
    """
    port = free_port()
    text = (REPO / "ebbtide.toml").read_text()
    text = text.replace('build_dir = "build"', f'build_dir = "{REPO / "build"}"')
    text = text.replace('data_dir = ".ebbtide/nats"', f'data_dir = "{tmp_path / "nats"}"')
    text = text.replace("port = 4222", f"port = {port}").replace("monitor_port = 8222", f"monitor_port = {free_port()}")
    for folder in ("functions/distributor", "functions/receiver"):
        text = text.replace(f'source = "{folder}"', f'source = "{REPO / folder}"\nsdk = "{REPO / "functions/sdk"}"')
    if function_settings:
        text = re.sub(r'^(trigger = .*)$', lambda m: m.group(1) + "\n" + function_settings, text, flags=re.M)
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    return path, port


def chaos_manifest(tmp_path: Path, extra: str = "", *, fuel: int = 2_000_000, ack_wait_s: float = 30.0, batch: int = 64) -> LoadedManifest:
    """A manifest running tests/guests/chaos.wat (see its header for the behaviours) on `in.chaos`."""
    wasm_dir = tmp_path / "build" / "wasm"
    wasm_dir.mkdir(parents=True, exist_ok=True)
    (wasm_dir / "chaos.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / "chaos.wat").read_text()))
    text = textwrap.dedent(f"""
        [streams.TEST]
        subjects = ["in.>", "test.>"]
        retention = "workqueue"

        [modules.chaos]
        prebuilt = true  # tests/guests/chaos.wat, assembled above

        [functions.chaos]
        module = "chaos"
        trigger = "in.chaos"
        publish = ["test.out"]
        batch = {batch}
        ack_wait_s = {ack_wait_s}
        scale = {{ min = 2, max = 2 }}
        limits = {{ memory_mib = 2, fuel = {fuel}, max_payload = 4096 }}
        retry = {{ max_deliver = 3, backoff_ms = [50, 100] }}
    """) + extra
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    return parse_manifest(text, path)


def port_open(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (a server started by another process)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


async def wait_for_consumers(nc: NatsClient, stream: str = "ORDERS", count: int = 3) -> None:
    """Until the functions started elsewhere (another process) have provisioned their consumers."""

    async def provisioned() -> bool:
        try:
            return len(await nc.jetstream().consumers_info(stream)) == count
        except Exception:
            return False

    await wait_until(provisioned)


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll a predicate (plain or async) until it is true; fail the test on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def read_stream(nc: NatsClient, stream: str, subject: str | None = None, expected: int | None = None, timeout: float = 30.0):
    """The messages stored in `stream` (optionally only `subject`), once it holds at least `expected`."""
    js = nc.jetstream()

    async def enough() -> bool:
        try:
            if subject is None:
                return (await js.stream_info(stream)).state.messages >= (expected or 0)
            subjects = (await js.stream_info(stream, subjects_filter=subject)).state.subjects or {}
            return subjects.get(subject, 0) >= (expected or 0)
        except nats.js.errors.NotFoundError:
            return False

    await wait_until(enough, timeout)
    state = (await js.stream_info(stream)).state
    messages = []
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue  # deleted (acked from a work queue)
        if subject is None or msg.subject == subject:
            messages.append(msg)
    return messages
