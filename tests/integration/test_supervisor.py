"""One process per function, supervised: a function process killed mid-run is restarted and no order is lost."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.stream_state import stream_state
from ebbtide.supervisor import Supervisor
from ebbtide.workload.orders import encode_order, generate_orders
from tests.conftest import (
    backlog,
    exactly_once,
    manifest_copy,
    outbox_bodies,
    outboxes_writes,
    provision_for,
    wait_for_consumers,
    wait_until,
)
from tests.integration.test_pipeline import outbox_counts, publish


async def test_killed_function_process_is_restarted_and_nothing_is_lost(
    tmp_path: Path, reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    # A short ack wait, so the killed process's unacked messages come back within the test.
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(path)
    orders = generate_orders(10_000, seed=9)
    await provision_for(manifest, nats_server.url)
    expected = outbox_bodies(orders)
    supervisor = Supervisor(path, list(manifest.spec.functions), nats_server.url)
    await supervisor.start()
    try:
        await wait_for_consumers(nc)
        publishing = asyncio.create_task(publish(nc, [(encode_order(o), o.order_guid) for o in orders]))

        async def receiver_busy() -> bool:
            return (await outbox_counts(nc))["outbox-standard"] >= 500

        await wait_until(receiver_busy)
        victim = supervisor.children["receiver-standard"]
        first_pid = victim.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await publishing

        async def complete() -> bool:
            counts = await outbox_counts(nc)
            return sum(counts.values()) >= len(orders) and await backlog(nc) == 0

        await wait_until(complete, timeout=90)
        assert victim.restarts == 1 and victim.pid != first_pid
        assert victim.exit_codes[0] == -signal.SIGKILL
        assert supervisor.children["distributor"].restarts == 0
    finally:
        await supervisor.stop()
    assert all(child.process.returncode == 0 for child in supervisor.children.values())
    # Counted once every process has stopped, so no write can still be on its way: each order written
    # once (the killed process's redelivered messages redid effects the server deduplicated), nothing else.
    assert await outboxes_writes(nc, expected) == exactly_once(expected)
    assert (await stream_state(nc, "DLQ")).messages == 0
