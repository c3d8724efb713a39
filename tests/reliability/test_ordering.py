"""Per-key ordering under faults: every order's events (created, amended, cancelled) applied in sequence
while the pipeline runs as several replicas of each function (separate processes, several instances each),
is scaled up, loses replicas to kill -9, has its nats-server killed and restarted, and is scaled down.

Every write of every outbox key is read back from the bucket's stream in the order it was stored: each
order's eventSeq must come 1, 2, 3, none lost, none applied twice. EBBTIDE_ORDERING_OFF=1 runs the same
test without order_by (the pipeline as fast as it goes, events on the bare subject): it fails, with
writes out of order, which is what the test is there to catch.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ebbtide.broker import EmbeddedNats
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.ordering import entry_subject
from ebbtide.workload.orders import INGRESS_SUBJECT, encode_order, event_msg_id, generate_order_events
from tests.conftest import backlog, manifest_copy, provision_for
from tests.ordering_check import check_outboxes
from tests.reliability.conftest import (
    ORDERS_N,
    PublishStats,
    Report,
    Row,
    connect_client,
    eventually,
    publish_reliably,
    read_dead_letters,
)
from tests.reliability.test_cluster_replicas import Replicas, StatusBoard, when

EVENTS_PER_ORDER = 3
REPLICAS = 2
ORDERING = os.environ.get("EBBTIDE_ORDERING_OFF", "") != "1"
BUCKETS = {"Express": "outbox-express", "Standard": "outbox-standard"}


def ordered_manifest(tmp_path: Path) -> Path:
    """The reference pipeline, every function ordered by orderGuid (unless EBBTIDE_ORDERING_OFF=1); a short
    ack wait, so a killed replica's messages come back soon; buckets keeping every write of an order."""
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 3" + ('\norder_by = "orderGuid"' if ORDERING else ""))
    text = path.read_text().replace(
        "scale = { min = 0, max = 4, target_backlog = 500, cooldown_s = 5 }",
        "scale = { min = 1, max = 3, target_backlog = 200, cooldown_s = 2 }",
    )
    text = text.replace("max_age_s = 86400", "max_age_s = 86400\npartitions = 32")
    for bucket in BUCKETS.values():
        text = text.replace(f"[kv.{bucket}]", f"[kv.{bucket}]\nhistory = {EVENTS_PER_ORDER + 2}")
    path.write_text(text)
    return path


async def writes_stored(nc, buckets: list[str]) -> int:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    return sum([(await js.stream_info(f"KV_{bucket}")).state.last_seq for bucket in buckets])


async def test_every_orders_events_in_sequence_through_scaling_kill_9_and_a_server_restart(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    path = ordered_manifest(tmp_path)
    manifest = load_manifest(path)
    functions = list(manifest.spec.functions)
    events = generate_order_events(ORDERS_N, EVENTS_PER_ORDER, seed=404)
    messages = [(encode_order(event), event_msg_id(event)) for event in events]
    expected: dict[str, dict[str, int]] = {bucket: {} for bucket in BUCKETS.values()}
    for event in events:
        expected[BUCKETS[event.delivery]][str(event.order_id)] = EVENTS_PER_ORDER
    server = EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0).start()
    logs = tmp_path / "logs"
    logs.mkdir()
    replicas = Replicas(path, [server.url], logs)
    nc = await connect_client(server.url)
    started = time.monotonic()
    happened: list[str] = []
    try:
        await provision_for(manifest, server.url)
        board = await StatusBoard(nc).start()
        since = time.time()
        await asyncio.gather(*(replicas.start(f) for f in functions for _ in range(REPLICAS)))
        for function in functions:
            await when(lambda: board.processes(function, REPLICAS, since), f"{REPLICAS} replicas of {function} reporting")

        stats = PublishStats()
        publishing = asyncio.create_task(
            publish_reliably(
                nc, entry_subject(manifest, INGRESS_SUBJECT), messages, spread_s=15.0, confirm_timeout=1.0, stats=stats
            )
        )
        buckets = list(BUCKETS.values())

        async def reached(share: float, event: str) -> None:
            async def enough() -> bool:
                return await writes_stored(nc, buckets) >= len(events) * share

            await eventually(enough, timeout=300, what=f"{share:.0%} of the events stored")
            stored = await writes_stored(nc, buckets)
            assert stored < len(events), f"{event}: the run was already over"
            happened.append(f"{event} at {stored} writes")

        await reached(0.1, "scale up 2->3")
        await asyncio.gather(*(replicas.start(f) for f in functions))
        await reached(0.3, "kill -9 of a replica of the distributor and of receiver-express")
        for function in ("distributor", "receiver-express"):
            victim = replicas.running[function].pop()
            victim.kill()  # SIGKILL: its messages in flight come back after the ack wait, still first in line
            await victim.wait()
        await reached(0.5, "nats-server kill -9, restarted 1.5 s later")
        server.kill()
        await asyncio.sleep(1.5)
        server.start()  # same port, same data folder: consumers and their pending messages as they were
        await reached(0.65, "scale down: SIGTERM to one replica of each function")
        stopping = asyncio.gather(*(replicas.stop_one(f) for f in functions))
        await publishing
        await stopping

        async def finished() -> bool:
            return await writes_stored(nc, buckets) >= len(events) and await backlog(nc) == 0

        await eventually(finished, timeout=400, what="every event applied")
        await replicas.stop_all()
        await board.stop()
        checks = await check_outboxes(nc, expected)
        letters = await read_dead_letters(nc)
        lost = sum(c.lost for c in checks.values())
        twice = sum(c.applied_twice for c in checks.values())
        violations = sum(c.violations for c in checks.values())
        row = Row(
            f"ordered by orderGuid ({'on' if ORDERING else 'OFF'}), {EVENTS_PER_ORDER} events per order, "
            f"{REPLICAS} processes per function scaled 2-3-(kill -9)-2, nats-server kill -9 + restart",
            stats.messages,
            len(events) - lost,
            lost,
            twice,
            len(letters),
            time.monotonic() - started,
            f"{violations} out of order; " + "; ".join(happened),
        )
        reliability_report.add(row)
        print("\n" + "\n".join(f"{bucket}: {check}" for bucket, check in checks.items()))
        assert violations == 0, checks
        row.check(len(events), 0)
        assert all(check.clean for check in checks.values()), checks
        assert [code for _, code in replicas.exit_codes] == [0] * len(replicas.exit_codes), replicas.log_tail()
    except BaseException:
        print(replicas.log_tail()[-6000:])
        raise
    finally:
        await replicas.kill_left_over()
        await nc.close()
        server.stop()
