"""Hot reload: a new module swapped into a running pool during a steady stream loses and duplicates
nothing; a broken module is refused while the old one keeps working; `up --watch` rebuilds and reloads."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import wasmtime
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from tests.conftest import (
    BUILD_DIR,
    GUESTS,
    REPO,
    chaos_manifest,
    manifest_copy,
    provision_for,
    read_stream,
    wait_for_consumers,
    wait_until,
)

CHAOS = (GUESTS / "chaos.wat").read_text()
# Version 2 of the chaos guest: the same, but the first byte of what it publishes becomes "V".
_COPY = "(memory.copy (i32.const 131098) (local.get $payload) (local.get $len))"
CHAOS_V2 = CHAOS.replace(_COPY, _COPY + "\n    (i32.store8 (i32.const 131098) (i32.const 86))")


async def test_swap_during_a_steady_stream_loses_and_duplicates_nothing(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    assert CHAOS_V2 != CHAOS
    manifest: LoadedManifest = chaos_manifest(tmp_path, batch=8)
    wasm = manifest.module_path("chaos")
    js = nc.jetstream()
    total = 600
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url) as host:
        pool = host.pools["chaos"]
        old_module = pool.module

        async def stream() -> None:
            for i in range(total):
                await js.publish("in.chaos", f"m{i:05d}".encode())
                await asyncio.sleep(0.002)

        publishing = asyncio.create_task(stream())
        await wait_until(lambda: pool.stats.processed >= total // 3)
        wasm.write_bytes(wasmtime.wat2wasm(CHAOS_V2))
        await host.reload()
        assert pool.module is not old_module and pool.stats.reloads == {"ok": 1}
        swapped_at = pool.stats.processed

        # A broken module is refused: the running one goes on.
        wasm.write_bytes(b"\x00asm\x01\x00\x00\x00 not a module")
        await host.reload()
        assert pool.stats.reloads == {"ok": 1, "refused": 1}
        await publishing
        await read_stream(nc, "TEST", "test.out", expected=total)
    out = await read_stream(nc, "TEST", "test.out")  # the host stopped: every output it made is stored

    bodies = [m.data for m in out]
    assert len(bodies) == total  # none lost, none duplicated
    assert sorted(b[1:] for b in bodies) == sorted(f"m{i:05d}".encode()[1:] for i in range(total))
    new = [b for b in bodies if b.startswith(b"V")]
    assert 0 < len(new) <= total - swapped_at + 16  # after the swap only (workers finish their message first)
    assert bodies[-1].startswith(b"V")  # still the new module after the broken one was refused


async def test_up_watch_rebuilds_and_reloads(tmp_path: Path, reference_manifest) -> None:
    """`ebbtide up --watch` in one process: edit the distributor's source, and the running pool takes the
    rebuilt module (an order routed by the new code) without a restart."""
    source = tmp_path / "functions" / "distributor"
    source.mkdir(parents=True)
    main_zig = source / "main.zig"
    main_zig.write_text((REPO / "functions/distributor/main.zig").read_text())
    path, port = manifest_copy(tmp_path)
    text = path.read_text().replace(f'source = "{REPO / "functions/distributor"}"', f'source = "{source}"')
    text = text.replace(f'build_dir = "{BUILD_DIR}"', f'build_dir = "{tmp_path / "build"}"')
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "EBBTIDE_NATS_URL"}
    up = subprocess.Popen(
        [sys.executable, "-m", "ebbtide", "-m", str(path), "up", "--watch", "--processes", "single", "--no-auth"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # the first build of the modules into tmp_path
        while True:
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, max_reconnect_attempts=0)
                break
            except Exception:
                assert up.poll() is None and time.monotonic() < deadline, "ebbtide up did not start"
                await asyncio.sleep(0.2)
        await wait_for_consumers(nc)
        js = nc.jetstream()
        order = b'{"orderId": 7, "delivery": "Drone", "items": [1]}'
        await js.publish("orders.ingress", order)
        await read_stream(nc, "DLQ", expected=1, timeout=30)  # an unknown delivery: dead-lettered

        # The new distributor routes "drone" orders (and no longer "express" ones) to orders.express.
        code = main_zig.read_text()
        assert '"express"' in code
        main_zig.write_text(code.replace('eqlIgnoreCase("express")', 'eqlIgnoreCase("drone")'))

        async def rerouted() -> bool:
            await js.publish("orders.ingress", order.replace(b"7", b"8"))
            try:
                await (await js.key_value("outbox-express")).get("8")
                return True
            except nats.js.errors.NotFoundError:
                return False

        await wait_until(rerouted, timeout=120, interval=2.0)
        await nc.close()
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=30)
    assert up.returncode == 0, output
    assert "watch: rebuilt distributor; reloading" in output and "function distributor: now running module" in output
