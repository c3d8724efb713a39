"""Storage that is bounded and says so (issue 25): a stream at its `max_bytes` and a server whose JetStream store
is full refuse new publishes, the publishers see a clear error, functions whose effects are refused retry without
using up their retries, nothing accepted is lost or written twice, and the pipeline continues once space frees."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.errors import RunError
from ebbtide.host import Host
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, Order, encode_order, generate_orders
from tests.conftest import backlog, exactly_once, manifest_copy, outbox_bodies, outboxes_writes, read_stream, wait_until

MAX_DELIVER = 2  # a failure the message caused would be dead-lettered after this many deliveries


def storage_manifest(tmp_path: Path, max_bytes: int) -> Path:
    """The reference manifest with ORDERS capped at `max_bytes` (0: no cap of its own) and quick, few retries."""
    path, _ = manifest_copy(tmp_path)
    text = path.read_text()
    text = text.replace("max_age_s = 86400", f"max_age_s = 86400\nmax_bytes = {max_bytes}")
    text = text.replace("retry = { max_deliver = 5, backoff_ms = [200, 1000, 5000] }", "")
    text = text.replace("limits = {", f"retry = {{ max_deliver = {MAX_DELIVER}, backoff_ms = [50] }}\nlimits = {{")
    path.write_text(text)
    return path


async def assert_stored_exactly_once(nc: NatsClient, orders: list[Order]) -> None:
    """Each order in its outbox, written once (writes counted), its value the order as published."""
    expected = outbox_bodies(orders)
    assert await outboxes_writes(nc, expected) == exactly_once(expected)


async def retried_past_max_deliver(nc: NatsClient, host: Host, function: str = "distributor") -> None:
    """Until the function's refused messages were retried more than MAX_DELIVER times over: with `lag` of them
    waiting, more than MAX_DELIVER * lag retries means at least one was delivered beyond MAX_DELIVER."""
    pool = host.pools[function]

    async def past() -> bool:
        info = await nc.jetstream().consumer_info("ORDERS", function)
        lag = info.num_pending + info.num_ack_pending
        return lag > 0 and pool.stats.retried > MAX_DELIVER * lag

    await wait_until(past, timeout=60)
    assert pool.stats.dead_lettered == 0 and pool.stats.processed < pool.stats.retried


async def outbox_messages_at_least(nc: NatsClient, count: int) -> bool:
    """While functions run (outboxes_writes counts once they are done: its reads are not one snapshot)."""
    js = nc.jetstream()
    return (
        sum([(await js.stream_info(f"KV_{bucket}")).state.messages for bucket in ("outbox-express", "outbox-standard")]) >= count
    )


async def drained(nc: NatsClient) -> bool:
    return await backlog(nc) == 0


async def ebbtide_publish(manifest: Path, url: str, count: int, seed: int) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ebbtide",
        "--manifest",
        str(manifest),
        "publish",
        "--nats-url",
        url,
        "--count",
        str(count),
        "--seed",
        str(seed),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode or 0, out.decode() + err.decode()


async def test_a_stream_at_its_max_bytes_refuses_publishes_and_the_pipeline_goes_on_once_it_has_room(
    tmp_path: Path, reference_manifest: LoadedManifest
) -> None:
    count, seed = 1_000, 25
    orders = generate_orders(count, seed=seed)
    capped = storage_manifest(tmp_path, max_bytes=200_000)  # ~450 of the burst's ingress copies (882 B per order, 2 copies)
    with EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await provision(js, load_manifest(capped))
        async with Host(load_manifest(capped), server.url) as host:
            # The burst overfills ORDERS: the publisher is refused, and says why and what to do.
            code, output = await ebbtide_publish(capped, server.url, count, seed)
            assert code == 1, output
            assert "refused for lack of space" in output and "maximum bytes exceeded" in output, output
            assert "publish the same messages again once space frees" in output, output
            # A plain NATS client is refused too, with the server's own words.
            extra = generate_orders(1, seed=seed + 1, first_id=count + 1)[0]
            with pytest.raises(nats.js.errors.APIError) as refused:
                await js.publish(INGRESS_SUBJECT, encode_order(extra), headers={"Nats-Msg-Id": extra.order_guid})
            assert (refused.value.err_code, refused.value.description) == (10077, "maximum bytes exceeded")

            stored = await read_stream(nc, "ORDERS", INGRESS_SUBJECT)
            accepted_ids = {int(msg.data.split(b",", 1)[0].split(b":")[1]) for msg in stored}
            accepted = [o for o in orders if o.order_id in accepted_ids]
            assert 0 < len(accepted) < count, len(accepted)
            # The distributor's routed copies are refused as well (ORDERS holds them): retried, never dead-lettered.
            await retried_past_max_deliver(nc, host)
            assert (await js.stream_info("DLQ")).state.messages == 0

            # Space frees: the operator raises the cap and provisions again. Every accepted order goes through, once.
            (tmp_path / "raised").mkdir()
            await provision(js, load_manifest(storage_manifest(tmp_path / "raised", max_bytes=0)))

            await wait_until(lambda: outbox_messages_at_least(nc, len(accepted)), timeout=60)
            await wait_until(lambda: drained(nc), timeout=60)  # every input settled: no effect still on its way
            await assert_stored_exactly_once(nc, accepted)
            # The publisher sends the same burst again: what was stored counts once, the rest now goes in.
            code, output = await ebbtide_publish(capped, server.url, count, seed)
            assert code == 0, output

            await wait_until(lambda: outbox_messages_at_least(nc, count), timeout=60)
            await wait_until(lambda: drained(nc), timeout=60)  # every input settled: no effect still on its way
        await assert_stored_exactly_once(nc, orders)
        assert (await js.stream_info("DLQ")).state.messages == 0
        await nc.drain()


async def test_a_full_jetstream_store_refuses_effects_which_are_retried_until_space_returns(
    tmp_path: Path, reference_manifest: LoadedManifest
) -> None:
    """The server's store itself is full (max_file_store): the stream has no cap of its own, the disk does."""
    count = 500
    orders = generate_orders(count, seed=26)
    path = storage_manifest(tmp_path, max_bytes=0)
    config = tmp_path / "small-store.conf"
    config.write_text("jetstream { max_file_store: 8MB }\n")
    with EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0, config_file=config) as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        manifest = load_manifest(path)
        await provision(js, manifest)
        for order in orders:
            await js.publish(INGRESS_SUBJECT, encode_order(order), headers={"Nats-Msg-Id": order.order_guid})
        # Ballast of the test's own takes the rest of the store, until the server refuses for lack of room.
        await js.add_stream(name="BALLAST", subjects=["ballast.>"])
        filled = 0
        with pytest.raises(nats.js.errors.APIError) as full:
            while True:
                await js.publish("ballast.x", b"b" * 8192)
                filled += 1
        assert (full.value.err_code, full.value.description) == (10023, "insufficient resources"), filled
        async with Host(manifest, server.url) as host:
            await retried_past_max_deliver(nc, host)
            assert host.pools["distributor"].stats.processed == 0
            # Space returns: the ballast goes, and the pipeline carries on where it was.
            await js.delete_stream("BALLAST")

            await wait_until(lambda: outbox_messages_at_least(nc, count), timeout=60)
            await wait_until(lambda: drained(nc), timeout=60)  # every input settled: no effect still on its way
        await assert_stored_exactly_once(nc, orders)
        assert (await js.stream_info("DLQ")).state.messages == 0
        await nc.drain()


async def test_provisioning_says_when_the_server_cannot_reserve_a_streams_max_bytes(
    tmp_path: Path, reference_manifest: LoadedManifest
) -> None:
    """The server reserves max_bytes from its store up front: a cap larger than the store is refused, and
    provisioning names the key to change instead of the server's bare error code."""
    config = tmp_path / "small-store.conf"
    config.write_text("jetstream { max_file_store: 8MB }\n")
    with EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0, config_file=config) as server:
        nc = await nats.connect(server.url)
        with pytest.raises(
            RunError, match=r"stream ORDERS: the server cannot reserve max_bytes 1073741824 \(streams\.ORDERS\.max_bytes\)"
        ):
            await provision(nc.jetstream(), load_manifest(storage_manifest(tmp_path, max_bytes=1 << 30)))
        await nc.drain()
