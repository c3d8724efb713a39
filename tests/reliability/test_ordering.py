"""Per-key ordering under faults: every order's events (created, amended, cancelled) applied in sequence
while the pipeline runs as several replicas of each function (separate processes, several instances each),
whose lanes change holders: scaled up, replicas killed with kill -9, a holder frozen with SIGSTOP past its
pin timeout and then continued, a function scaled down to zero and back, nats-server killed and restarted,
and on a 3-node cluster the ORDERS leader killed.

Every write of every outbox key is read back from the bucket's stream in the order it was stored: each
order's eventSeq must come 1, 2, 3, none lost, none applied twice. EBBTIDE_ORDERING_OFF=1 runs the first
test without order_by (the pipeline as fast as it goes, events on the bare subject): it fails, with writes
out of order, which is what the test is there to catch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats
from ebbtide.broker.names import lane_holdings_subject
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.ordering import entry_subject
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, event_msg_id, generate_order_events
from tests.conftest import backlog, manifest_copy, provision_for
from tests.ordering_check import as_stored, bucket_writes, input_order, judge
from tests.reliability.conftest import (
    ORDERS_N,
    Cluster,
    PublishStats,
    Report,
    Row,
    connect_client,
    eventually,
    provisioned_cluster,
    publish_reliably,
    replicated,
)
from tests.reliability.test_cluster_replicas import Replicas, StatusBoard, when

EVENTS_PER_ORDER = 3
REPLICAS = 2
ORDERING = os.environ.get("EBBTIDE_ORDERING_OFF", "") != "1"
BUCKETS = {"Express": "outbox-express", "Standard": "outbox-standard"}
ACK_WAIT_S = 3  # also the lanes' pin timeout (clamped to 2-10 s: broker/partitions.pin_timeout_s)


def ordered_manifest(tmp_path: Path) -> Path:
    """The reference pipeline, every function ordered by orderGuid (unless EBBTIDE_ORDERING_OFF=1); a short
    ack wait, so a killed replica's messages come back soon; buckets keeping every write of an order."""
    path, _ = manifest_copy(tmp_path, f"ack_wait_s = {ACK_WAIT_S}" + ('\norder_by = "orderGuid"' if ORDERING else ""))
    text = path.read_text().replace(
        "scale = { min = 0, max = 4, target_backlog = 500, cooldown_s = 5 }",
        "scale = { min = 1, max = 3, target_backlog = 200, cooldown_s = 2 }",
    )
    text = text.replace("max_age_s = 86400", "max_age_s = 86400\npartitions = 8")
    for bucket in BUCKETS.values():
        text = text.replace(f"[kv.{bucket}]", f"[kv.{bucket}]\nhistory = {EVENTS_PER_ORDER + 2}")
    path.write_text(text)
    return path


async def writes_stored(nc: NatsClient, buckets: list[str]) -> int:
    js = nc.jetstream()
    return sum([(await js.stream_info(f"KV_{bucket}")).state.last_seq for bucket in buckets])


class Holdings:
    """How many lanes each process of each function holds, from their announcements."""

    def __init__(self, nc: NatsClient, functions: list[str]) -> None:
        self.nc = nc
        self.functions = functions
        self.latest: dict[str, dict[str, int]] = {f: {} for f in functions}

    async def start(self) -> Holdings:
        self._subscriptions = []
        for function in self.functions:

            async def record(msg, function: str = function) -> None:  # type: ignore[no-untyped-def]
                holding = msgspec.json.decode(msg.data)
                self.latest[function][holding["feed"]] = holding["held"]

            self._subscriptions.append(await self.nc.subscribe(lane_holdings_subject(function), cb=record))
        return self

    def holders(self, function: str) -> int:
        return sum(1 for held in self.latest[function].values() if held > 0)

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()


@dataclass
class Setting:
    """What faults act on."""

    replicas: Replicas
    functions: list[str]
    server: EmbeddedNats | None  # a single server
    cluster: Cluster | None

    async def restart_server(self) -> None:
        assert self.server is not None
        self.server.kill()
        await asyncio.sleep(1.5)
        self.server.start()  # same port, same data folder: consumers and their pending messages as they were


@dataclass
class Fault:
    share: float  # of the events stored, when it happens
    what: str
    act: Callable[[], Awaitable[None]]


async def run_ordered(
    tmp_path: Path,
    reliability_report: Report,
    title: str,
    faults: Callable[[Setting], list[Fault]],
    cluster_size: int = 0,
) -> None:
    """ORDERS_N orders (EBBTIDE_RELIABILITY_ORDERS) x 3 events through REPLICAS processes per function, with
    `faults` along the way."""
    path = ordered_manifest(tmp_path)
    if cluster_size:
        replicated(path, cluster_size)
    manifest = load_manifest(path)
    functions = list(manifest.spec.functions)
    events = generate_order_events(ORDERS_N, EVENTS_PER_ORDER, seed=404)
    messages = [(encode_order(event), event_msg_id(event)) for event in events]
    expected: dict[str, dict[str, int]] = {bucket: {} for bucket in BUCKETS.values()}
    for event in events:
        expected[BUCKETS[event.delivery]][str(event.order_id)] = EVENTS_PER_ORDER
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster(tmp_path / "cluster", cluster_size).start() if cluster_size else None
    server = None if cluster else EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0).start()
    urls = cluster.urls if cluster else [server.url]  # type: ignore[union-attr]
    replicas = Replicas(path, urls, logs)
    started = time.monotonic()
    happened: list[str] = []
    nc: NatsClient | None = None

    try:
        if cluster:
            nc = await provisioned_cluster(cluster, manifest)
        else:
            nc = await connect_client(urls[0])
            await provision_for(manifest, urls[0])
        board = await StatusBoard(nc).start()
        holdings = await Holdings(nc, functions).start()
        since = time.time()
        await asyncio.gather(*(replicas.start(f) for f in functions for _ in range(REPLICAS)))
        for function in functions:
            await when(lambda: board.processes(function, REPLICAS, since), f"{REPLICAS} replicas of {function} reporting")

        stats = PublishStats()
        publishing = asyncio.create_task(
            publish_reliably(
                nc,
                entry_subject(manifest, INGRESS_SUBJECT),
                messages,
                spread_s=15.0,
                confirm_timeout=1.0,
                stats=stats,
                in_order=True,
                deadline_s=300.0,  # 30,000 publishes on a loaded cluster, each chunk confirmed before the next
            )
        )
        buckets = list(BUCKETS.values())
        client = nc

        async def count() -> int:
            counted: list[int] = []

            async def read() -> bool:  # retried: a request may go unanswered while a stream elects its leader
                counted.append(await writes_stored(client, buckets))
                return True

            await eventually(read, timeout=60, what="the outboxes' count")
            return counted[-1]

        spread: dict[str, int] = {}
        for fault in faults(Setting(replicas, functions, server, cluster)):

            async def reached(share: float = fault.share) -> bool:
                return await count() >= len(events) * share

            await eventually(reached, timeout=300, what=f"{fault.share:.0%} of the events stored")
            stored = await count()
            assert stored < len(events), f"{fault.what}: the run was already over"
            if not spread:  # before the first fault: every replica started and took its share
                spread.update({f: holdings.holders(f) for f in functions})
            happened.append(f"{fault.what} at {stored} writes")
            await fault.act()
        await publishing

        async def finished() -> bool:
            return await count() >= len(events) and await backlog(client) == 0

        await eventually(finished, timeout=400, what="every event applied")
        await eventually(lambda: board.reported(replicas.pids()), timeout=90, what="every replica started")
        await replicas.stop_all()
        await board.stop()
        await holdings.stop()
        # Judged against the order the input stream holds each key's events in (the publisher sends a key's
        # events in sequence, each confirmed before the next chunk: it is counted too, for the record).
        stored = await input_order(nc, "ORDERS", f"{INGRESS_SUBJECT}.>" if ORDERING else INGRESS_SUBJECT)
        input_late = sum(1 for seqs in stored.values() for a, b in zip(seqs, seqs[1:]) if b < a)
        checks = {bucket: judge(as_stored(await bucket_writes(nc, bucket), stored), keys) for bucket, keys in expected.items()}
        lost = sum(c.lost for c in checks.values())
        twice = sum(c.applied_twice for c in checks.values())
        violations = sum(c.violations for c in checks.values())
        row = Row(
            f"ordered by orderGuid ({'on' if ORDERING else 'OFF'}), {EVENTS_PER_ORDER} events per order, {title}",
            stats.messages,
            len(events) - lost,
            lost,
            twice,
            0,
            time.monotonic() - started,
            f"{violations} out of order ({input_late} events stored out of their sequence by the publisher); lane holders per function before the faults {spread}; "
            + "; ".join(happened),
        )
        reliability_report.add(row)
        print("\n" + "\n".join(f"{bucket}: {check}" for bucket, check in checks.items()) + "\n" + "; ".join(happened))
        assert violations == 0, checks
        row.check(len(events), 0)
        assert all(check.clean for check in checks.values()), checks
        if ORDERING:  # the holders spread over the replicas
            assert all(count >= 2 for count in spread.values()), spread
        assert [code for _, code in replicas.exit_codes] == [0] * len(replicas.exit_codes), replicas.log_tail()
    except BaseException:
        print(replicas.log_tail()[-6000:])
        raise
    finally:
        await replicas.kill_left_over()
        if nc is not None:
            await nc.close()
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()


async def kill_one(replicas: Replicas, function: str) -> None:
    victim = replicas.running[function].pop()
    victim.kill()  # SIGKILL: its lanes are taken over after the pin timeout, its unacked messages at their ack wait
    await victim.wait()


async def test_every_orders_events_in_sequence_through_scaling_kill_9_and_a_server_restart(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    def faults(setting: Setting) -> list[Fault]:
        replicas, functions = setting.replicas, setting.functions

        async def scale_up() -> None:
            await asyncio.gather(*(replicas.start(f) for f in functions))

        async def kill_replicas() -> None:
            await asyncio.gather(*(kill_one(replicas, f) for f in ("distributor", "receiver-express")))

        async def scale_down() -> None:
            await asyncio.gather(*(replicas.stop_one(f) for f in functions))

        return [
            Fault(0.1, "scale up 2->3", scale_up),
            Fault(0.3, "kill -9 of a replica of the distributor and of receiver-express", kill_replicas),
            Fault(0.5, "nats-server kill -9, restarted 1.5 s later", setting.restart_server),
            Fault(0.65, "scale down: SIGTERM to one replica of each function", scale_down),
        ]

    await run_ordered(
        tmp_path,
        reliability_report,
        f"{REPLICAS} processes per function scaled 2-3-(kill -9)-2, nats-server kill -9 + restart",
        faults,
    )


@pytest.mark.skipif(not ORDERING, reason="holder changes are ordered lanes' (EBBTIDE_ORDERING_OFF=1 runs the first test)")
async def test_holders_frozen_killed_and_scaled_to_zero_keep_every_key_in_order(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    """The faults that change a lane's holder: a holder frozen (SIGSTOP) past its pin timeout and its ack
    wait, then continued (it wakes holding messages the new holder also got: its late effects must be
    dropped as duplicates, and it must ack nothing); a holder killed; a function scaled down to zero and
    back; the server restarted."""
    frozen_s = 2 * ACK_WAIT_S + 1  # past the pin timeout and the ack wait of what it held

    def faults(setting: Setting) -> list[Fault]:
        replicas = setting.replicas

        async def freeze() -> None:
            victims = [replicas.running[f][0] for f in ("distributor", "receiver-standard")]
            for victim in victims:
                victim.send_signal(signal.SIGSTOP)
            await asyncio.sleep(frozen_s)
            for victim in victims:
                victim.send_signal(signal.SIGCONT)

        async def kill_holder() -> None:
            await kill_one(replicas, "receiver-express")
            await replicas.start("receiver-express")

        async def to_zero_and_back() -> None:
            while replicas.count("receiver-standard"):
                await replicas.stop_one("receiver-standard")  # SIGTERM: hands its lanes over at once
            await asyncio.sleep(2.0)
            await asyncio.gather(*(replicas.start("receiver-standard") for _ in range(REPLICAS)))

        return [
            Fault(0.15, f"SIGSTOP of a distributor and a receiver-standard replica for {frozen_s} s, then SIGCONT", freeze),
            Fault(0.35, "kill -9 of a receiver-express replica (a new one started)", kill_holder),
            Fault(0.5, "receiver-standard scaled to zero (SIGTERM to each) and back to 2 after 2 s", to_zero_and_back),
            Fault(0.7, "nats-server kill -9, restarted 1.5 s later", setting.restart_server),
        ]

    await run_ordered(tmp_path, reliability_report, "lane holders frozen, killed, scaled to zero, server restarted", faults)


@pytest.mark.skipif(not ORDERING, reason="holder changes are ordered lanes' (EBBTIDE_ORDERING_OFF=1 runs the first test)")
async def test_every_key_in_order_on_a_cluster_losing_the_orders_leader(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    """R3 streams and lanes on 3 nodes: the ORDERS leader killed with SIGKILL and restarted (the lanes'
    pins are dropped with their leaders), a replica frozen past its pin timeout meanwhile."""

    def faults(setting: Setting) -> list[Fault]:
        replicas, cluster = setting.replicas, setting.cluster
        assert cluster is not None

        async def kill_leader() -> None:
            nc = await connect_client(cluster.urls)
            try:
                leader = (await nc.jetstream().stream_info("ORDERS")).cluster.leader
            finally:
                await nc.close()
            node = cluster.by_name(leader)
            node.kill()
            await asyncio.sleep(2.0)
            node.start()

        async def freeze() -> None:
            victim = replicas.running["receiver-express"][0]
            victim.send_signal(signal.SIGSTOP)
            await asyncio.sleep(2 * ACK_WAIT_S + 1)
            victim.send_signal(signal.SIGCONT)

        return [
            Fault(0.2, "kill -9 of the ORDERS leader, restarted 2 s later", kill_leader),
            Fault(0.5, f"SIGSTOP of a receiver-express replica for {2 * ACK_WAIT_S + 1} s", freeze),
        ]

    await run_ordered(tmp_path, reliability_report, "3-node cluster, ORDERS leader kill -9, a holder frozen", faults, 3)
