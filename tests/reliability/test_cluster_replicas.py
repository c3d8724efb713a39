"""Many replicas on a cluster: each function runs as several `ebbtide run --function F` processes (as a
Kubernetes Deployment's replicas do, sharing the function's durable consumer) against a 3-node cluster with
R3 streams and KV. Mid-run, replicas are stopped (SIGTERM, as a scale-down sends) and started (scale-up),
and the ORDERS stream's leader node is killed with SIGKILL and restarted. Every order is written once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client as NatsClient

from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, PoolStatus, decode_status
from ebbtide.workload.orders import INGRESS_SUBJECT, generate_orders
from tests.conftest import backlog, manifest_copy
from tests.reliability.conftest import (
    ORDERS_N,
    Cluster,
    PublishStats,
    Report,
    Row,
    account,
    dead_letter_accounting,
    eventually,
    expected_outbox,
    finished_run,
    outbox_total,
    provisioned_cluster,
    publish_reliably,
    replicated,
    with_invalid,
)

REPLICAS = 3  # processes per function, as `replicas: 3` of a Deployment
STOP_GRACE_S = 15.0  # a replica told to stop (SIGTERM) finishes its batches within shutdown_grace_s (10 s)


class Replicas:
    """`ebbtide run --function F` processes, started and stopped as an orchestrator would."""

    def __init__(self, manifest_path: Path, urls: list[str], logs: Path) -> None:
        self.manifest_path = manifest_path
        self.url = ",".join(urls)
        self.logs = logs
        self.running: dict[str, list[asyncio.subprocess.Process]] = {}
        self.exit_codes: list[tuple[str, int]] = []
        self._started = 0

    async def start(self, function: str) -> None:
        self._started += 1
        with (self.logs / f"{function}-{self._started}.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ebbtide",
                "-m",
                str(self.manifest_path),
                "run",
                "--function",
                function,
                "--nats-url",
                self.url,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.setdefault(function, []).append(process)

    async def stop_one(self, function: str) -> None:
        """SIGTERM the oldest replica of `function` and wait for it to exit, as a scale-down does."""
        process = self.running[function].pop(0)
        process.send_signal(signal.SIGTERM)
        try:
            self.exit_codes.append((function, await asyncio.wait_for(process.wait(), STOP_GRACE_S)))
        except TimeoutError:
            process.kill()
            self.exit_codes.append((function, await process.wait()))

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop_one(f) for f, processes in self.running.items() for _ in list(processes)))

    async def kill_left_over(self) -> None:
        """After a test, passed or not: kill what still runs."""
        for processes in self.running.values():
            for process in processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()

    def count(self, function: str) -> int:
        return sum(1 for p in self.running.get(function, []) if p.returncode is None)

    def pids(self) -> list[int]:
        return [p.pid for processes in self.running.values() for p in processes if p.returncode is None]

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in sorted(self.logs.glob("*.log")))


class StatusBoard:
    """The latest status report of every process (host_id), from the status subjects."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.latest: dict[str, PoolStatus] = {}

    async def start(self) -> StatusBoard:
        async def record(msg) -> None:  # type: ignore[no-untyped-def]
            status = decode_status(msg.data)
            self.latest[status.host_id] = status

        self._subscription = await self.nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=record)
        return self

    async def processes(self, function: str, count: int, since: float) -> bool:
        """Whether `count` processes of `function` reported since `since` (unix time); asks for reports."""
        await self.nc.publish(STATUS_REQUEST_SUBJECT, b"")
        return sum(1 for s in self.latest.values() if s.function == function and s.time >= since) >= count

    async def reported(self, pids: list[int]) -> bool:
        """Whether each of these processes has reported (so it finished starting up); asks for reports. Before
        a test stops its replicas: one still starting up (a replacement, slowed by a fault) exits 130, not 0."""
        await self.nc.publish(STATUS_REQUEST_SUBJECT, b"")
        seen = {status.host_id.rsplit(":", 1)[1] for status in self.latest.values()}
        return all(str(pid) in seen for pid in pids)

    async def stop(self) -> None:
        await self._subscription.unsubscribe()


async def when(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 90.0) -> None:
    await eventually(predicate, timeout=timeout, interval=0.05, what=what)


async def test_replicas_scaled_up_and_down_on_a_cluster_losing_a_node(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    path, _ = manifest_copy(tmp_path, "ack_wait_s = 2")
    manifest = load_manifest(replicated(path, 3))
    functions = list(manifest.spec.functions)
    orders = generate_orders(ORDERS_N, seed=303)
    expected = expected_outbox(orders)
    messages, invalid = with_invalid(orders, seed=303)
    cluster = Cluster(tmp_path / "cluster").start()
    logs = tmp_path / "logs"
    logs.mkdir()
    replicas = Replicas(path, cluster.urls, logs)
    nc = None
    started = time.monotonic()
    try:
        nc = await provisioned_cluster(cluster, manifest)
        js = nc.jetstream()
        board = await StatusBoard(nc).start()
        since = time.time()
        await asyncio.gather(*(replicas.start(f) for f in functions for _ in range(REPLICAS)))
        for function in functions:
            await when(lambda: board.processes(function, REPLICAS, since), f"{REPLICAS} replicas of {function} reporting")

        stats = PublishStats()
        publishing = asyncio.create_task(
            publish_reliably(nc, INGRESS_SUBJECT, messages, spread_s=20.0, confirm_timeout=1.0, stats=stats)
        )
        events: list[str] = []

        async def stored_at_least(share: float) -> bool:
            return await outbox_total(nc) >= len(orders) * share

        async def mid_run(event: str) -> None:
            counts: list[int] = []

            async def count() -> bool:  # retried: a request may go unanswered while a stream elects its leader
                counts.append(await outbox_total(nc))
                return True

            await eventually(count, timeout=30, what="the outboxes' count")
            assert counts[-1] < len(orders), f"{event}: the run was already over"
            events.append(f"{event} at {counts[-1]} stored")

        # Scale up 3 -> 4: a new replica of each function joins the running consumer.
        await when(lambda: stored_at_least(0.05), "5 % stored")
        await mid_run("scale up 3->4")
        since = time.time()
        await asyncio.gather(*(replicas.start(f) for f in functions))
        # The ORDERS stream leader killed (SIGKILL: no flush, no goodbye), restarted 2 s later from its store.
        await when(lambda: stored_at_least(0.15), "15 % stored")
        leader = (await js.stream_info("ORDERS")).cluster.leader
        victim = cluster.by_name(leader)
        await mid_run(f"kill -9 of {leader} (ORDERS leader)")
        victim.kill()
        await asyncio.sleep(2.0)
        victim.start()
        await mid_run(f"restart of {leader}")
        # Scale down 4 -> 2 once the new replicas run: two of each get SIGTERM and finish their batches.
        for function in functions:
            await when(lambda: board.processes(function, REPLICAS + 1, since), f"{REPLICAS + 1} replicas of {function}")
        await mid_run("scale down 4->2")
        stopping = asyncio.gather(*(replicas.stop_one(f) for f in functions for _ in range(2)))

        await publishing
        await stopping
        await finished_run(nc, expected, len(invalid), "every order stored, every invalid input dead-lettered")
        assert all(replicas.count(f) == REPLICAS - 1 for f in functions), replicas.running
        await when(lambda: board.reported(replicas.pids()), "every replica started")
        processed = {host: s.processed for host, s in board.latest.items()}
        await replicas.stop_all()
        await board.stop()
        outbox, letters = await account(nc, expected)
        missing, doubled, strays = dead_letter_accounting(letters, invalid)
        row = Row(
            f"3-node cluster, {REPLICAS} processes per function scaled 3-4-2, ORDERS leader kill -9 + restart",
            stats.messages,
            outbox.stored,
            outbox.lost + missing,
            outbox.extra_writes + doubled,
            len(letters),
            time.monotonic() - started,
            f"{len(invalid)} invalid; publish retries {stats.retried}, server-deduped {stats.duplicate_acks}; "
            f"{sum(1 for n in processed.values() if n)} processes did work",
        )
        reliability_report.add(row)
        row.check(len(orders), len(invalid))
        assert strays == 0
        assert await backlog(nc) == 0
        assert [code for _, code in replicas.exit_codes] == [0] * len(replicas.exit_codes), (
            replicas.exit_codes,
            replicas.log_tail(),
        )
        assert len(events) == 4, events
        print("\n" + "; ".join(events))
    except BaseException:
        print(replicas.log_tail()[-6000:])
        raise
    finally:
        await replicas.kill_left_over()
        if nc is not None:
            await nc.close()
        cluster.stop()
