"""The NATS server fails under a running pipeline: kill -9 and restart, and a cluster losing a node.

Hosts are not told anything: they reconnect by themselves, messages whose acks or effect confirmations
were lost are redelivered after the (short) ack wait, effects are deduplicated by their Nats-Msg-Id,
and the test's publisher retries unconfirmed publishes with the same Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ebbtide.broker import EmbeddedNats
from ebbtide.host import Host
from ebbtide.launch import running
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.workload.orders import INGRESS_SUBJECT, generate_orders
from tests.conftest import backlog, manifest_copy, provision_for
from tests.reliability.conftest import (
    ORDERS_N,
    Cluster,
    MidRunFault,
    PublishStats,
    Report,
    Row,
    account,
    connect_client,
    dead_letter_accounting,
    expected_outbox,
    finished_run,
    provisioned_cluster,
    publish_reliably,
    replicated,
    wait_for_functions,
    with_invalid,
)


# After a restart the server rebuilds its duplicate table from the messages it still stores. ORDERS keeps
# acked messages (limits retention, max_age_s above the duplicate window), so a publish retried after the
# restart, by the client or by a function whose input was redelivered, is still recognised and dropped:
# nothing is processed into a second write (issue 17; with a work-queue stream these rows wrote orders twice).
# Down for longer than the publisher's confirm timeout (1 s), and, per-function, than the ack wait (2 s) too.
@pytest.mark.parametrize(
    ("mode", "down_s"),
    [
        pytest.param("single", 1.5),
        pytest.param("per-function", 4.0),
    ],
)
async def test_nats_server_killed_and_restarted_mid_run(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report, mode: str, down_s: float
) -> None:
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(path)
    orders = generate_orders(ORDERS_N, seed=101)
    expected = expected_outbox(orders)
    messages, invalid = with_invalid(orders, seed=101)
    server = EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0).start()
    nc = await connect_client(server.url)
    started = time.monotonic()
    try:
        await provision_for(manifest, server.url)
        async with running(manifest, server.url, mode) as runner:  # type: ignore[arg-type]
            await wait_for_functions(nc, manifest.spec.functions)
            stats = PublishStats()
            fault = MidRunFault(nc, server.kill, ORDERS_N // 5, stats)  # SIGKILL: no flush, no goodbye
            publishing = asyncio.create_task(
                publish_reliably(
                    nc, INGRESS_SUBJECT, messages, spread_s=2.0, confirm_timeout=1.0, stats=stats, after_send=fault.after_send
                )
            )
            await fault.wait()
            await asyncio.sleep(down_s)
            server.start()  # same port, same data folder
            await publishing
            assert 0 < fault.confirmed_before < len(messages), "the kill did not land while publishing"

            await finished_run(nc, expected, len(invalid), "every order stored, every invalid input dead-lettered")
            # They reconnected by themselves: the same connection (one process), no process restarted.
            if isinstance(runner, Host):
                assert runner.nc is not None and runner.nc.is_connected and runner.nc.stats["reconnects"] >= 1
            else:
                assert all(child.restarts == 0 for child in runner.children.values())
        outbox, letters = await account(nc, expected)
        missing, doubled, strays = dead_letter_accounting(letters, invalid)
        row = Row(
            f"nats-server kill -9, {down_s:g} s down, restart ({mode})",
            stats.messages,
            outbox.stored,
            outbox.lost + missing,
            outbox.extra_writes + doubled,
            len(letters),
            time.monotonic() - started,
            f"{len(invalid)} invalid; publish retries {stats.retried}, server-deduped {stats.duplicate_acks}",
        )
        reliability_report.add(row)
        row.check(len(orders), len(invalid))
        assert await backlog(nc) == 0
    finally:
        await nc.close()
        server.stop()


@pytest.mark.parametrize(
    "url_form",
    [
        "all-nodes",
        "seed-node",
    ],
)
async def test_cluster_node_killed_mid_run(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report, url_form: str
) -> None:
    """R3 streams and KV on a three-node cluster; the ORDERS stream leader is killed mid-run.

    `all-nodes`: the hosts get every node's URL, comma-separated. `seed-node`: the hosts get only the
    node that is killed, and must fail over to the nodes the server advertised (INFO connect_urls).
    """
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(replicated(path, 3))
    assert manifest.spec.streams["ORDERS"].replicas == 3 and manifest.spec.dead_letter.replicas == 3
    assert all(kv.replicas == 3 for kv in manifest.spec.kv.values())
    orders = generate_orders(ORDERS_N, seed=202)
    expected = expected_outbox(orders)
    messages, invalid = with_invalid(orders, seed=202)
    cluster = Cluster(tmp_path / "cluster").start()
    nc = None
    recorded = False
    started = time.monotonic()
    try:
        nc = await provisioned_cluster(cluster, manifest)
        js = nc.jetstream()
        info = await js.stream_info("ORDERS")
        assert info.config.num_replicas == 3 and info.cluster is not None and info.cluster.leader
        assert (await js.stream_info("KV_outbox-express")).config.num_replicas == 3
        victim = cluster.by_name(info.cluster.leader)  # the node leading the ORDERS stream
        hosts_url = ",".join(cluster.urls) if url_form == "all-nodes" else victim.url

        async with running(manifest, hosts_url, "single"):
            stats = PublishStats()
            fault = MidRunFault(nc, victim.kill, ORDERS_N // 5, stats)
            publishing = asyncio.create_task(
                publish_reliably(
                    nc, INGRESS_SUBJECT, messages, spread_s=2.0, confirm_timeout=1.0, stats=stats, after_send=fault.after_send
                )
            )
            await fault.wait()
            await publishing
            assert 0 < fault.confirmed_before < len(messages), "the kill did not land while publishing"

            await finished_run(nc, expected, len(invalid), "every order stored, every invalid input dead-lettered")
            new_leader = (await js.stream_info("ORDERS")).cluster.leader
            assert new_leader and new_leader != f"ebbtide-{victim.port}"
        outbox, letters = await account(nc, expected)
        missing, doubled, strays = dead_letter_accounting(letters, invalid)
        # The surviving replicas hold the dedupe state: nothing is redone, not even an outbox write.
        row = Row(
            f"3-node cluster, ORDERS leader kill -9 ({url_form})",
            stats.messages,
            outbox.stored,
            outbox.lost + missing,
            outbox.extra_writes + doubled,
            len(letters),
            time.monotonic() - started,
            f"{len(invalid)} invalid; publish retries {stats.retried}, server-deduped {stats.duplicate_acks}",
        )
        reliability_report.add(row)
        recorded = True
        row.check(len(orders), len(invalid))
        assert await backlog(nc) == 0
        consumer = await js.consumer_info("ORDERS", "distributor")
        assert consumer.config.num_replicas in (0, 3) and consumer.num_ack_pending == 0
    except Exception as exc:
        if nc is not None and not recorded:
            reliability_report.add(
                Row(  # the run never got going: nothing stored, everything lost
                    f"3-node cluster, ORDERS leader kill -9 ({url_form})",
                    0,
                    0,
                    len(messages),
                    0,
                    0,
                    time.monotonic() - started,
                    f"failed: {type(exc).__name__}: {exc}"[:90],
                )
            )
        raise
    finally:
        if nc is not None:
            await nc.close()
        cluster.stop()
