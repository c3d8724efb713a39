"""Misbehaving guests are contained: the bad message fails, the instance is replaced, the host goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.headers import H_ERROR, H_REASON
from ebbtide.host import Host
from tests.conftest import chaos_manifest, provision_for, read_stream, wait_until


@pytest.mark.parametrize(
    ("payload", "fault"),
    [
        (b"T-trap", "trap"),
        (b"L-loop", "timeout"),
        (b"M-memory", "memory-limit"),
        (b"G-garbage", "invalid-output"),
        (b"B-bad-status", "invalid-output"),
    ],
)
async def test_guest_fault_fails_only_that_message(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient, payload: bytes, fault: str
) -> None:
    manifest = chaos_manifest(tmp_path)
    js = nc.jetstream()
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url) as host:
        await js.publish("in.chaos", b"good-1")
        await js.publish("in.chaos", payload)
        await js.publish("in.chaos", b"good-2")
        # The faulty message is retried up to max_deliver (3) times, then dead-lettered with the fault.
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=1)
        out = await read_stream(nc, "TEST", "test.out", expected=2)
        pool = host.pools["chaos"]
        assert pool.stats.guest_faults == {fault: 3}
        assert pool.stats.processed == 2
        assert pool.stats.instances_started == 2 + 3  # two workers, and a fresh instance after each fault
        assert pool.stats.instances_stopped == 3
    assert sorted(m.data for m in out) == [b"good-1", b"good-2"]
    assert dead[0].data == payload
    assert dead[0].headers[H_REASON] == "retries-exhausted"
    assert fault in dead[0].headers[H_ERROR]


async def test_effect_outside_allowlist_is_refused(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = chaos_manifest(tmp_path)
    js = nc.jetstream()
    await provision_for(manifest, nats_server.url)
    # A witness: a stream that stores anything published to the forbidden subject, by anyone.
    await js.add_stream(name="WITNESS", subjects=["not.>"])
    async with Host(manifest, nats_server.url) as host:
        await js.publish("in.chaos", b"F-forbidden")
        await js.publish("in.chaos", b"good")
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=1)
        await read_stream(nc, "TEST", "test.out", expected=1)

        async def counted() -> bool:
            return host.pools["chaos"].stats.refused == 1

        await wait_until(counted)
        assert host.pools["chaos"].stats.dead_lettered == 0
    assert dead[0].headers[H_REASON] == "effect-refused"
    assert "'not.allowed' is not allowed" in dead[0].headers[H_ERROR]
    assert dead[0].headers["Ebbtide-Delivery-Count"] == "1"
    # Read once the host stopped: nothing reached the forbidden subject, only the good message went out.
    witness = await js.stream_info("WITNESS")
    assert (witness.state.messages, witness.state.last_seq) == (0, 0)
    assert [m.data for m in await read_stream(nc, "TEST", "test.out")] == [b"good"]


async def test_reject_retry_and_oversized(tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient) -> None:
    manifest = chaos_manifest(tmp_path)
    js = nc.jetstream()
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url) as host:
        await js.publish("in.chaos", b"X-reject")
        await js.publish("in.chaos", b"R-retry")
        await js.publish("in.chaos", b"big" + b"x" * 5000)
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=3)
        assert host.pools["chaos"].stats.retried == 2  # R: nak twice, dead-lettered on the third delivery
    by_reason = {m.headers[H_REASON]: m for m in dead}
    assert set(by_reason) == {"rejected", "retries-exhausted", "payload-too-large"}
    assert by_reason["rejected"].headers[H_ERROR] == "refused by the chaos guest"
    assert by_reason["rejected"].headers["Ebbtide-Delivery-Count"] == "1"
    assert by_reason["retries-exhausted"].headers["Ebbtide-Delivery-Count"] == "3"
    assert "5003 bytes exceeds limits.max_payload (4096)" in by_reason["payload-too-large"].headers[H_ERROR]
    assert by_reason["payload-too-large"].headers["Ebbtide-Original-Subject"] == "in.chaos"


async def test_effects_never_confirmed_are_retried_then_dead_lettered(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path)
    js = nc.jetstream()
    await provision_for(manifest, nats_server.url)
    async with Host(manifest, nats_server.url) as host:
        # The output subject loses its stream: every publish of the effect is refused by the server.
        config = (await js.stream_info("TEST")).config
        config.subjects = ["in.>"]
        await js.update_stream(config)
        await js.publish("in.chaos", b"lost-effect")
        dead = await read_stream(nc, "DLQ", "dlq.chaos", expected=1)
        assert host.pools["chaos"].stats.retried == 2  # max_deliver 3: two retries, then the dead letter
    assert dead[0].data == b"lost-effect"
    assert dead[0].headers[H_REASON] == "retries-exhausted"
    assert "effects not confirmed" in dead[0].headers[H_ERROR]
