"""Pools follow their consumer's lag: up at once on a burst, back to zero after the cooldown, and awake
within milliseconds when a message reaches an empty pool."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide import controller as controller_module
from ebbtide.broker import EmbeddedNats
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest
from ebbtide.status_reports import PoolStatus, decode_status
from ebbtide.stream_state import stream_state
from ebbtide.workload.orders import encode_order, generate_orders
from tests.conftest import provision_for, wait_until
from tests.integration.test_pipeline import outbox_counts, publish


def quick_cooldown(manifest: LoadedManifest, cooldown_s: float = 1.0) -> LoadedManifest:
    functions = {
        name: msgspec.structs.replace(fn, scale=msgspec.structs.replace(fn.scale, cooldown_s=cooldown_s))
        for name, fn in manifest.spec.functions.items()
    }
    return LoadedManifest(msgspec.structs.replace(manifest.spec, functions=functions), manifest.path)


async def test_burst_scales_up_to_max_and_drains_to_zero(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = quick_cooldown(reference_manifest)
    reports: list[PoolStatus] = []

    async def record(msg) -> None:
        reports.append(decode_status(msg.data))

    await nc.subscribe("ebbtide.status_reports.>", cb=record)
    orders = generate_orders(5_000, seed=21)
    await provision_for(manifest, nats_server.url)
    # The whole burst waits before the pools start: its backlog (5,000, ten times target_backlog) asks for more
    # than scale.max at the first lag read. Published to running pools, a fast machine handled the orders as
    # they came, the backlog never asked for scale.max, and `peak == max` failed (issue 27).
    await publish(nc, [(encode_order(o), o.order_guid) for o in orders])
    distributor = manifest.function("distributor").scale
    assert len(orders) > distributor.max * distributor.target_backlog
    async with Host(manifest, nats_server.url) as host:

        async def stored() -> bool:
            return sum((await outbox_counts(nc)).values()) == len(orders)

        await wait_until(stored, timeout=60)
        peak = max(r.instances for r in reports if r.function == "distributor")
        assert peak == distributor.max

        async def all_zero() -> bool:  # and every instance's Wasm memory released
            return all(pool.live_instances == 0 and pool.in_flight == 0 for pool in host.pools.values())

        await wait_until(all_zero, timeout=15)
        assert host.controllers["distributor"].wakeups >= 1
    assert (await stream_state(nc, "DLQ")).messages == 0


def subscribed_subjects(server: EmbeddedNats) -> set[str]:
    """The subjects somebody subscribes to, as the server lists them (its monitoring endpoint)."""
    with urllib.request.urlopen(f"{server.monitor_url}/subsz?subs=1&limit=10000", timeout=2) as reply:
        return {sub["subject"] for sub in json.loads(reply.read()).get("subscriptions_list") or []}


async def test_message_at_an_empty_pool_is_woken_by_its_bell(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """An idle pool at zero instances wakes on the message itself (its bell: a subscription on the trigger
    subject), not on the idle lag check every few seconds. Asserted through the wake-up path taken, not a
    time: how long it takes is measured by `ebbtide bench` (activation from zero)."""
    manifest = quick_cooldown(reference_manifest, cooldown_s=0.2)
    order = generate_orders(1, seed=4)[0]
    await provision_for(manifest, nats_server.url)
    receiver = f"receiver-{order.delivery.lower()}"
    async with Host(manifest, nats_server.url) as host:
        triggers = {fn.trigger for fn in manifest.spec.functions.values()}

        async def asleep() -> bool:  # every pool at zero, its controller subscribed to its bell
            return all(pool.instances == 0 for pool in host.pools.values()) and triggers <= await asyncio.to_thread(
                subscribed_subjects, nats_server
            )

        await wait_until(asleep)
        woken_before = {name: controller.wakeups for name, controller in host.controllers.items()}
        await publish(nc, [(encode_order(order), order.order_guid)])

        async def stored() -> bool:
            return sum((await outbox_counts(nc)).values()) == 1

        await wait_until(stored)
        # Each pool on the order's way woke once, by its bell; the other receiver slept on.
        for name in ("distributor", receiver):
            assert host.controllers[name].wakeups == woken_before[name] + 1, name
            assert host.controllers[name].bell_wakeups == 1, name
        other = next(name for name in host.controllers if name.startswith("receiver-") and name != receiver)
        assert host.controllers[other].wakeups == woken_before[other]


def with_scale(manifest: LoadedManifest, **scale: float) -> LoadedManifest:
    functions = {
        name: msgspec.structs.replace(fn, scale=msgspec.structs.replace(fn.scale, **scale))
        for name, fn in manifest.spec.functions.items()
    }
    return LoadedManifest(msgspec.structs.replace(manifest.spec, functions=functions), manifest.path)


class OnTheWire:
    """Counts what reaches the server on some subjects: a subscriber in the same account sees every JetStream
    API request a host sends (they are plain publishes), and every status report."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.bodies: dict[str, list[bytes]] = {}

    async def watch(self, nc: NatsClient, name: str, subject: str) -> None:
        self.counts[name] = 0
        self.bodies[name] = []

        async def count(msg) -> None:
            self.counts[name] += 1
            self.bodies[name].append(msg.data)

        await nc.subscribe(subject, cb=count)


async def test_a_quiet_warm_pool_asks_the_server_little(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """A running pool with nothing to do (scale.min 1, no backlog) does not read its lag every control tick
    (TICK_S, 20 a second): the first fetch that brings a message wakes the controller instead; and its idle
    worker sends one pull request per long poll, not a no_wait one before each. Counted on the wire over a few
    seconds: a slower machine can only count less."""
    manifest = with_scale(reference_manifest, min=1)
    await provision_for(manifest, nats_server.url)
    wire = OnTheWire()
    await wire.watch(nc, "lag reads", "$JS.API.CONSUMER.INFO.ORDERS.distributor")
    await wire.watch(nc, "pull requests", "$JS.API.CONSUMER.MSG.NEXT.ORDERS.distributor")
    async with Host(manifest, nats_server.url, ["distributor"]) as host:
        pool = host.pools["distributor"]
        assert pool.instances == 1
        await asyncio.sleep(3.5)  # a window to count in, not a time asserted
        await nc.flush()
        # Before: a lag read every tick (~70 in the window) and a no_wait + a 1 s waiting request per second.
        assert wire.counts["lag reads"] <= 2, wire.counts  # the first tick's, and one per IDLE_REPORT_S (5 s)
        no_wait = [body for body in wire.bodies["pull requests"] if b"no_wait" in body]
        assert len(no_wait) == 1 and wire.counts["pull requests"] >= 2, wire.bodies  # the first fetch's only
        order = generate_orders(1, seed=5)[0]
        await publish(nc, [(encode_order(order), order.order_guid)])
        await wait_until(lambda: pool.stats.processed == 1)  # the quiet pool still takes work at once


async def test_a_pool_asleep_at_zero_reports_without_reading_its_lag(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asleep at zero with no lag, only a publish can bring work, and it rings the bell: the idle loop keeps
    sending its status reports but reads the lag twice (a confirmation), not once per report."""
    monkeypatch.setattr(controller_module, "IDLE_REPORT_S", 0.05)  # many idle rounds, quickly
    manifest = quick_cooldown(reference_manifest, cooldown_s=0.2)
    await provision_for(manifest, nats_server.url)
    wire = OnTheWire()
    await wire.watch(nc, "lag reads", "$JS.API.CONSUMER.INFO.ORDERS.distributor")
    await wire.watch(nc, "reports", "ebbtide.status_reports.distributor")
    async with Host(manifest, nats_server.url, ["distributor"]) as host:
        controller = host.controllers["distributor"]
        await wait_until(lambda: controller.lag_reads_asleep >= 2)
        await nc.flush()
        reads = wire.counts["lag reads"]
        reports = wire.counts["reports"]
        await wait_until(lambda: wire.counts["reports"] >= reports + 10)  # ten idle rounds
        await nc.flush()
        assert wire.counts["lag reads"] - reads <= 1, wire.counts  # before: one per round (10)
        assert controller.lag_reads_asleep == 2
        order = generate_orders(1, seed=5)[0]
        await publish(nc, [(encode_order(order), order.order_guid)])
        await wait_until(lambda: host.pools["distributor"].stats.processed == 1)
        assert controller.bell_wakeups == 1


async def test_a_pool_at_its_maximum_reads_its_lag_a_few_times_a_second(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """Running scale.max instances with a backlog there is nothing to scale up to: the lag is read (and a
    report sent) every AT_MAX_TICK_S, not every TICK_S. Counted on the wire while the backlog lasts: a slower
    machine can only count less."""
    manifest = with_scale(reference_manifest, max=1)
    orders = generate_orders(8_000, seed=9)
    await provision_for(manifest, nats_server.url)
    await publish(nc, [(encode_order(o), o.order_guid) for o in orders])  # the backlog, before the pool wakes
    wire = OnTheWire()
    await wire.watch(nc, "lag reads", "$JS.API.CONSUMER.INFO.ORDERS.distributor")
    async with Host(manifest, nats_server.url, ["distributor"]) as host:
        pool = host.pools["distributor"]
        started = asyncio.get_running_loop().time()
        await wait_until(lambda: pool.stats.processed == len(orders), timeout=120)
        took = asyncio.get_running_loop().time() - started
        await nc.flush()
        # Before: one read per TICK_S (20 a second); now 4 a second, plus the first ones and the last.
        assert wire.counts["lag reads"] <= took / controller_module.AT_MAX_TICK_S + 4, (wire.counts, took)


async def test_a_pool_that_just_drained_to_zero_listens_for_its_bell_at_once(
    reference_manifest: LoadedManifest, nats_server: EmbeddedNats, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trickle after a burst (issue 25): when the cooldown ends and the pool drains to zero, the controller
    goes to sleep on its bell at once. Before, it first waited for a fetch to bring work or for its idle report
    (5 s), and with no worker left nothing could end that wait early: an order arriving then waited seconds.
    The idle report is set to an hour here, so only the bell (or the lag read as it falls asleep) can wake the
    pool: the second order is handled only if the controller listens once it has drained."""
    monkeypatch.setattr(controller_module, "IDLE_REPORT_S", 3600.0)
    manifest = quick_cooldown(reference_manifest, cooldown_s=0.2)
    first, second = generate_orders(2, seed=25)
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url, ["distributor"]) as host:
        pool, controller = host.pools["distributor"], host.controllers["distributor"]
        await publish(nc, [(encode_order(first), first.order_guid)])
        await wait_until(lambda: pool.stats.processed == 1)
        assert controller.wakeups == 1
        await wait_until(lambda: pool.instances == 0)  # the cooldown ended: drained by a control tick
        await pool.released()  # and the stopped worker's last long poll is over: it cannot take the next order
        await publish(nc, [(encode_order(second), second.order_guid)])
        await wait_until(lambda: pool.stats.processed == 2)
        assert controller.wakeups == 2  # the pool woke from zero for it
