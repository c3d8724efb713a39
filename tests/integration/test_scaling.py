"""Pools follow their consumer's lag: up at once on a burst, back to zero after the cooldown, and awake
within milliseconds when a message reaches an empty pool."""

from __future__ import annotations

import asyncio
import time

import msgspec
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.workload.orders import encode_order, generate_orders
from ebbtide.state import stream_state
from ebbtide.status import PoolStatus, decode_status
from tests.conftest import wait_until
from tests.integration.test_pipeline import outbox_counts, publish


def quick_cooldown(manifest: LoadedManifest, cooldown_s: float = 1.0) -> LoadedManifest:
    functions = {
        name: msgspec.structs.replace(fn, scale=msgspec.structs.replace(fn.scale, cooldown_s=cooldown_s))
        for name, fn in manifest.spec.functions.items()
    }
    return LoadedManifest(msgspec.structs.replace(manifest.spec, functions=functions), manifest.path)


async def test_burst_scales_up_to_max_and_drains_to_zero(reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = quick_cooldown(reference_manifest)
    reports: list[PoolStatus] = []

    async def record(msg) -> None:
        reports.append(decode_status(msg.data))

    await nc.subscribe("ebbtide.status.>", cb=record)
    orders = generate_orders(5_000, seed=21)
    async with Host(manifest, nats_server.url) as host:
        assert all(pool.instances == 0 for pool in host.pools.values())
        await publish(nc, [(encode_order(o), o.order_guid) for o in orders])

        async def stored() -> bool:
            return sum((await outbox_counts(nc)).values()) == len(orders)

        await wait_until(stored, timeout=60)
        peak = max(r.instances for r in reports if r.function == "distributor")
        assert peak == manifest.function("distributor").scale.max

        async def all_zero() -> bool:  # and every instance's Wasm memory released
            return all(pool.live_instances == 0 and pool.in_flight == 0 for pool in host.pools.values())

        await wait_until(all_zero, timeout=15)
        assert host.controllers["distributor"].wakeups >= 1
    assert (await stream_state(nc, "DLQ")).messages == 0


async def test_message_at_an_empty_pool_is_processed_in_milliseconds(reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = quick_cooldown(reference_manifest, cooldown_s=0.2)
    order = generate_orders(1, seed=4)[0]
    async with Host(manifest, nats_server.url) as host:
        async def idle() -> bool:
            return all(pool.instances == 0 for pool in host.pools.values())

        await wait_until(idle)
        await asyncio.sleep(0.3)  # well past the cooldown: every controller is waiting on its bell
        started = time.monotonic()
        await publish(nc, [(encode_order(order), order.order_guid)])

        async def stored() -> bool:
            return sum((await outbox_counts(nc)).values()) == 1

        await wait_until(stored, interval=0.002)
        print(f"activation from zero through both functions: {(time.monotonic() - started) * 1000:.1f} ms")
        # Woken by the message itself (the bell), not by the idle lag check every few seconds.
        assert host.controllers["distributor"].bell_wakeups == 1
        assert host.controllers[f"receiver-{order.delivery.lower()}"].bell_wakeups == 1
