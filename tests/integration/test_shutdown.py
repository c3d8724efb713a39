"""Slow batches are kept alive (+WPI) instead of redelivered; a stop past its grace period hands the
batch back with a nak, and the next process finishes it: nothing lost, nothing doubled.

The guest (tests/guests/slow.wat) takes at least 25 ms of wall-clock time per message on any machine, and
the test watches what the host tells the server about each message on the JetStream ack subjects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ebbtide.broker import EmbeddedNats, provision
from ebbtide.host import Host
from tests.conftest import chaos_manifest, read_stream, wait_until

SLOW = {"guest": "slow", "extra": 'wasi = ["clock"]\n', "fuel": 1_000_000_000}
MIN_HANDLE_S = 0.025  # tests/guests/slow.wat, per message


@dataclass(frozen=True)
class AckEvent:
    kind: str  # ack, nak, in-progress, term
    sequence: int  # stream sequence: the same message across redeliveries
    delivered: int  # 1 on the first delivery


class AckLog:
    """Every ack, nak and in-progress signal sent for a consumer's messages, by anyone: a subscription on
    its ack subjects ($JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>)."""

    KINDS = {b"": "ack", b"+ACK": "ack", b"+WPI": "in-progress", b"+TERM": "term"}

    def __init__(self) -> None:
        self.events: list[AckEvent] = []

    async def watch(self, nc: NatsClient, stream: str, consumer: str) -> None:
        async def record(msg: Msg) -> None:
            tokens = msg.subject.split(".")
            kind = "nak" if msg.data.startswith(b"-NAK") else self.KINDS.get(msg.data, msg.data.decode())
            self.events.append(AckEvent(kind, sequence=int(tokens[5]), delivered=int(tokens[4])))

        await nc.subscribe(f"$JS.ACK.{stream}.{consumer}.>", cb=record)
        await nc.flush()

    def of(self, kind: str) -> list[AckEvent]:
        return [e for e in self.events if e.kind == kind]


async def test_a_batch_slower_than_the_ack_wait_is_not_redelivered(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    # 40 messages of >= 25 ms in one batch take >= 1 s: twice the 0.5 s ack wait, on any machine.
    ack_wait_s, count = 0.5, 40
    manifest = chaos_manifest(tmp_path, ack_wait_s=ack_wait_s, batch=count, **SLOW)
    js = nc.jetstream()
    await provision(js, manifest)
    for i in range(count):
        await js.publish("in.chaos", b"slow-%d" % i)
    acks = AckLog()
    await acks.watch(nc, "TEST", "chaos")
    async with Host(manifest, nats_server.url) as host:

        async def all_acked() -> bool:
            return len(acks.of("ack")) == count

        await wait_until(all_acked)
        pool = host.pools["chaos"]
        handled_s = pool.stats.handle.sum
        assert pool.stats.processed == count
    info = await js.consumer_info("TEST", "chaos")
    out = await read_stream(nc, "TEST", "test.out")
    # What was exercised: the batch's guest time alone outlasted the ack wait ...
    assert handled_s >= count * MIN_HANDLE_S > ack_wait_s
    # ... the host kept every message of it alive meanwhile, and so each was delivered once and acked once.
    kept_alive = {e.sequence for e in acks.of("in-progress")}
    acked = acks.of("ack")
    assert kept_alive == {e.sequence for e in acked} and len(kept_alive) == count
    assert all(e.delivered == 1 for e in acks.events) and not acks.of("nak")
    assert info.num_redelivered == 0 and info.num_ack_pending == 0
    assert sorted(m.data for m in out) == sorted(b"slow-%d" % i for i in range(count))


async def test_stop_past_the_grace_period_naks_the_batch_for_the_next_process(
    tmp_path: Path, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    manifest = chaos_manifest(tmp_path, batch=64, **SLOW)  # 30 s ack wait: only a nak brings them back soon
    js = nc.jetstream()
    await provision(js, manifest)
    payloads = [b"slow-%d" % i for i in range(200)]  # >= 25 ms each: batches are still running at the stop
    for payload in payloads:
        await js.publish("in.chaos", payload)
    acks = AckLog()
    await acks.watch(nc, "TEST", "chaos")
    host = Host(manifest, nats_server.url)
    await host.start()

    async def busy() -> bool:  # a batch running now (processed alone may be read between two batches)
        pool = host.pools["chaos"]
        return pool.stats.processed >= 10 and pool.in_flight > 0

    await wait_until(busy)
    for pool in host.pools.values():
        await pool.stop(grace_s=0)  # SIGTERM with no time to finish: in-flight batches are nak'ed
    await host.stop()
    await nc.flush()  # every signal the first host sent has reached this client
    naked = {e.sequence for e in acks.of("nak")}
    assert naked, "the stop found no batch in progress: nothing was handed back"

    async with Host(manifest, nats_server.url):
        # Within the 30 s ack wait: the nak'ed batches came back at once, not by expiry.
        async def drained() -> bool:
            info = await js.consumer_info("TEST", "chaos")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(drained, timeout=20)
    out = await read_stream(nc, "TEST", "test.out")  # the hosts stopped: every effect is in
    await nc.flush()
    # Each nak'ed message was delivered again and acked then; each message acked exactly once.
    redelivered_and_acked = {e.sequence for e in acks.of("ack") if e.delivered >= 2}
    assert naked <= redelivered_and_acked, sorted(naked - redelivered_and_acked)[:10]
    acked = [e.sequence for e in acks.of("ack")]
    assert len(acked) == len(set(acked)) == len(payloads)
    # Every payload once: effects published before the stop were deduplicated (Nats-Msg-Id) when redone.
    assert sorted(m.data for m in out) == sorted(payloads)
