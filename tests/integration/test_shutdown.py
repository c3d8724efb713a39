"""Slow batches are kept alive (+WPI) instead of redelivered; a stop past its grace period hands the
batch back with a nak, and the next process finishes it: nothing lost, nothing doubled."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.host import Host
from tests.conftest import chaos_manifest, read_stream, wait_until


async def test_a_batch_slower_than_the_ack_wait_is_not_redelivered(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    # 40 slow messages (~20 ms each) in one batch take ~0.8 s, longer than the 0.5 s ack wait.
    manifest = chaos_manifest(tmp_path, fuel=1_000_000_000, ack_wait_s=0.5, batch=40)
    js = nc.jetstream()
    await provision(js, manifest)
    for i in range(40):
        await js.publish("in.chaos", b"S-slow-%d" % i)
    async with Host(manifest, nats_server.url) as host:
        out = await read_stream(nc, "TEST", "test.out", expected=40)

        async def all_acked() -> bool:
            return (await js.consumer_info("TEST", "chaos")).num_ack_pending == 0

        await wait_until(all_acked)
        info = await js.consumer_info("TEST", "chaos")
        assert host.pools["chaos"].stats.processed == 40
    assert info.num_redelivered == 0
    assert sorted(m.data for m in out) == sorted(b"S-slow-%d" % i for i in range(40))


async def test_stop_past_the_grace_period_naks_the_batch_for_the_next_process(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = chaos_manifest(tmp_path, fuel=1_000_000_000, batch=64)  # 30 s ack wait: only a nak brings them back soon
    js = nc.jetstream()
    await provision(js, manifest)
    payloads = [b"S-slow-%d" % i for i in range(200)]
    for payload in payloads:
        await js.publish("in.chaos", payload)
    host = Host(manifest, nats_server.url)
    await host.start()

    async def busy() -> bool:
        return host.pools["chaos"].stats.processed >= 10

    await wait_until(busy)
    for pool in host.pools.values():
        await pool.stop(grace_s=0)  # SIGTERM with no time to finish: in-flight batches are nak'ed
    await host.stop()

    async with Host(manifest, nats_server.url):
        # Well within the 30 s ack wait: the nak'ed batches came back at once, not by expiry.
        out = await read_stream(nc, "TEST", "test.out", expected=len(payloads), timeout=20)

        async def drained() -> bool:
            return (await js.consumer_info("TEST", "chaos")).num_pending == 0

        await wait_until(drained)
    # Every payload once: effects published before the stop were deduplicated (Nats-Msg-Id) when redone.
    assert sorted(m.data for m in out) == sorted(payloads)
