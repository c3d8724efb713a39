"""The faults that only time brings (issue 25): a server restarted again and again during a run, a function's
connection cut and restored again and again, and a function process paused (SIGSTOP) for longer than its ack
wait and then continued. Each ends with every order in its outbox exactly once (writes counted, values
compared), nothing dead-lettered; the ordered variant of the pause also checks every order's events were
applied in sequence. Nothing here touches the machine's clock: the pause is a real pause of the process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, free_port
from ebbtide.manifest import LoadedManifest, load_manifest
from ebbtide.ordering import entry_subject
from ebbtide.status_reports import STATUS_REQUEST_SUBJECT
from ebbtide.workload.orders import (
    INGRESS_SUBJECT,
    Order,
    OrderEvent,
    encode_order,
    event_msg_id,
    generate_order_events,
    generate_orders,
)
from tests.conftest import backlog, manifest_copy, provision_for
from tests.ordering_check import check_outboxes
from tests.reliability.conftest import (
    ORDERS_N,
    PublishStats,
    Report,
    Row,
    account,
    connect_client,
    eventually,
    expected_outbox,
    outbox_total,
    publish_reliably,
    read_dead_letters,
)
from tests.reliability.test_cluster_replicas import Replicas, StatusBoard, when

ACK_WAIT_S = 2


def time_fault_manifest(tmp_path: Path, ordered: bool = False) -> Path:
    """The reference pipeline with a short ack wait (held messages come back soon); ordered: by orderGuid in
    32 partitions, its buckets keeping every write of an order (for the sequence check)."""
    path, _ = manifest_copy(tmp_path, f"ack_wait_s = {ACK_WAIT_S}" + ('\norder_by = "orderGuid"' if ordered else ""))
    if ordered:
        text = path.read_text().replace("max_age_s = 86400", "max_age_s = 86400\npartitions = 32")
        for bucket in ("outbox-express", "outbox-standard"):
            text = text.replace(f"[kv.{bucket}]", f"[kv.{bucket}]\nhistory = 5")
        path.write_text(text)
    return path


async def deliveries(nc: NatsClient, function: str) -> int:
    """Deliveries the function's consumers made (an ordered function's partitions too), redeliveries included."""
    infos = await nc.jetstream().consumers_info("ORDERS")
    return sum(i.delivered.consumer_seq for i in infos if i.name == function or i.name.startswith(f"{function}-p"))


class Run:
    """A server, the functions as `ebbtide run` processes, and a client publishing with retries."""

    def __init__(self, tmp_path: Path, path: Path) -> None:
        self.tmp_path, self.path = tmp_path, path
        self.manifest: LoadedManifest = load_manifest(path)
        self.server = EmbeddedNats(tmp_path / "nats-under-test", port=0, monitor_port=0)
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        self.replicas: list[Replicas] = []
        self.started = time.monotonic()

    async def start_server(self) -> NatsClient:
        self.server.start()
        self.nc = await connect_client(self.server.url)
        await provision_for(self.manifest, self.server.url)
        return self.nc

    async def start(self, processes: dict[str, tuple[int, str | None]]) -> NatsClient:
        """`processes`: function -> (replicas, URL to reach the server by; None: the server's own)."""
        if not self.server.running:
            await self.start_server()
        board = await StatusBoard(self.nc).start()
        since = time.time()
        for function, (count, url) in processes.items():
            replicas = Replicas(self.path, [url or self.server.url], self.logs)
            self.replicas.append(replicas)
            for _ in range(count):
                await replicas.start(function)
        for function, (count, _) in processes.items():
            await when(lambda f=function, c=count: board.processes(f, c, since), f"{count} replica(s) of {function} reporting")
        await board.stop()
        return self.nc

    async def finish(self, messages: int) -> None:
        async def done() -> bool:
            return await outbox_total(self.nc) >= messages and await backlog(self.nc) == 0

        await eventually(done, timeout=300, what="every order stored and every input handled")
        for replicas in self.replicas:
            await replicas.stop_all()

    async def close(self) -> None:
        for replicas in self.replicas:
            await replicas.kill_left_over()
        if hasattr(self, "nc"):
            await self.nc.close()
        self.server.stop()

    def log_tail(self) -> str:
        return "\n".join(r.log_tail() for r in self.replicas)[-6000:]


async def exactly_once(run: Run, orders: list[Order], stats: PublishStats, report: Report, name: str, notes: str) -> None:
    outbox, letters = await account(run.nc, expected_outbox(orders))  # writes counted, every value compared
    row = Row(
        name, stats.messages, outbox.stored, outbox.lost, outbox.extra_writes, len(letters), time.monotonic() - run.started, notes
    )
    report.add(row)
    row.check(len(orders), 0)
    for replicas in run.replicas:
        assert [code for _, code in replicas.exit_codes] == [0] * len(replicas.exit_codes), run.log_tail()


async def test_a_server_restarted_again_and_again_during_a_run(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    """The soak's server restarts, compressed: every few seconds instead of every few minutes, alternately
    stopped cleanly and killed (kill -9), each time while orders are being published and handled."""
    run = Run(tmp_path, time_fault_manifest(tmp_path))
    orders = generate_orders(ORDERS_N, seed=2501)
    rounds = 4
    stats = PublishStats()
    restarts: list[str] = []
    try:
        nc = await run.start({f: (1, None) for f in ("distributor", "receiver-express", "receiver-standard")})
        per_round = -(-len(orders) // rounds)
        for n in range(rounds):
            chunk = orders[n * per_round : (n + 1) * per_round]
            publishing = asyncio.create_task(
                publish_reliably(
                    nc, INGRESS_SUBJECT, [(encode_order(o), o.order_guid) for o in chunk], spread_s=3.0, confirm_timeout=1.0
                )
            )
            await asyncio.sleep(1.5)  # publishing and handling under way
            stored = await outbox_total(nc)
            if n % 2:
                run.server.kill()
            else:
                run.server.stop()
            restarts.append(f"{'kill -9' if n % 2 else 'stop'} at {stored} stored")
            await asyncio.sleep(1.0)
            run.server.start()  # same port, same data folder
            round_stats = await publishing
            stats.messages += round_stats.messages
        await run.finish(len(orders))
        await exactly_once(
            run, orders, stats, reliability_report, f"server restarted {rounds} times during a run", "; ".join(restarts)
        )
        assert len(restarts) == rounds
    except BaseException:
        print(run.log_tail())
        raise
    finally:
        await run.close()


class DroppingProxy:
    """A TCP proxy on loopback between clients and a server, that can drop every connection through it at once
    (both sides reset: the client sees its connection die, the server sees its client go)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.accepted = 0
        self.cuts = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
        return self

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._pairs.append((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            client.transport.abort()
            upstream.transport.abort()
        self.cuts += 1

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_functions_connection_cut_and_restored_again_and_again(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report
) -> None:
    """The distributor reaches the server through a proxy that drops its connection every 1.5 s while orders
    flow: its fetches, effects and acks are cut mid-way, again and again; it reconnects each time."""
    run = Run(tmp_path, time_fault_manifest(tmp_path))
    orders = generate_orders(ORDERS_N, seed=2502)
    proxy: DroppingProxy | None = None
    try:
        await run.start_server()
        proxy = await DroppingProxy(run.server.port).start()
        nc = await run.start({"distributor": (1, proxy.url), "receiver-express": (1, None), "receiver-standard": (1, None)})
        stats = PublishStats()
        publishing = asyncio.create_task(
            publish_reliably(
                nc,
                INGRESS_SUBJECT,
                [(encode_order(o), o.order_guid) for o in orders],
                spread_s=12.0,
                confirm_timeout=1.0,
                stats=stats,
            )
        )
        while not publishing.done():
            await asyncio.sleep(1.5)
            proxy.cut()
        await publishing
        cuts_while_publishing = proxy.cuts
        for _ in range(3):  # and while the last of them are handled
            await asyncio.sleep(1.5)
            proxy.cut()
        await run.finish(len(orders))
        assert proxy.accepted > cuts_while_publishing >= 5, (proxy.accepted, proxy.cuts)  # it came back each time
        await exactly_once(
            run,
            orders,
            stats,
            reliability_report,
            "a function's connection cut and restored again and again",
            f"{proxy.cuts} cuts, {proxy.accepted} connections",
        )
    except BaseException:
        print(run.log_tail())
        raise
    finally:
        if proxy is not None:
            await proxy.stop()
        await run.close()


def bytes_in_flight(pid: int) -> int:
    """Bytes process `pid` wrote to its TCP connections that the other end has not read yet: its sockets' send
    queues and the receive queues of their peers (on loopback both ends are in this machine's /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    rows = []  # (local, remote, tx_queue, rx_queue, inode)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                tx, rx = (int(q, 16) for q in fields[4].split(":"))
                rows.append((fields[1], fields[2], tx, rx, fields[9]))
    mine = [row for row in rows if row[4] in inodes]
    peers = {(row[0], row[1]): row[3] for row in rows}
    return sum(tx + peers.get((remote, local), 0) for local, remote, tx, _, _ in mine)


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
async def test_a_function_process_paused_past_its_ack_wait_then_continued(
    tmp_path: Path, reference_manifest: LoadedManifest, reliability_report: Report, ordered: bool
) -> None:
    """A receiver-express replica working through a backlog is stopped (SIGSTOP) with messages in hand, for
    twice its ack wait; a second replica starts meanwhile, and the server gives it what the paused one held;
    then the paused one continues, with effects and acks for deliveries that are long over. Its late effects
    are dropped as duplicates (their Nats-Msg-Id), its late acks change nothing, and, ordered, no order's
    events are applied out of sequence. The pause lands on work by construction: while the victim is the only
    replica, the consumer's unacked messages are all in its hands, and the test pauses it again until some are."""
    run = Run(tmp_path, time_fault_manifest(tmp_path, ordered))
    stats = PublishStats()
    try:
        nc = await run.start({"distributor": (1, None), "receiver-express": (1, None), "receiver-standard": (1, None)})
        express = run.replicas[1]
        subject: str | Callable[[bytes], str] = entry_subject(run.manifest, INGRESS_SUBJECT) if ordered else INGRESS_SUBJECT
        chunk_size = ORDERS_N // 6
        events: list[OrderEvent] = []
        orders: list[Order] = []  # ordered: each order's last event (its outbox entry)
        messages: list[tuple[bytes, str]] = []
        stop_feeding = asyncio.Event()

        async def feed() -> None:
            """Orders in chunks, one after another, until the pause has landed (at least ORDERS_N of them):
            a quiet machine handles a chunk in a blink, and the pause needs the victim to be working."""
            for n in range(60):
                if stop_feeding.is_set() and len(messages) >= ORDERS_N:
                    return
                first = 1 + n * 100_000
                if ordered:
                    chunk_events = generate_order_events(chunk_size // 3, 3, seed=2503 + n, first_id=first)
                    events.extend(chunk_events)
                    orders.extend({e.order_id: e for e in chunk_events}.values())
                    chunk = [(encode_order(e), event_msg_id(e)) for e in chunk_events]
                else:
                    chunk_orders = generate_orders(chunk_size, seed=2503 + n, first_id=first)
                    orders.extend(chunk_orders)
                    chunk = [(encode_order(o), o.order_guid) for o in chunk_orders]
                messages.extend(chunk)
                done = await publish_reliably(nc, subject, chunk, spread_s=2.0, confirm_timeout=1.0)
                stats.messages += done.messages
            raise AssertionError("60 chunks published and the pause never landed on work")

        feeder = asyncio.create_task(feed())
        victim = express.running["receiver-express"][0]
        board = await StatusBoard(nc).start()

        async def victim_busy() -> bool:
            """The victim's own report, asked for just now, says it has messages in hand."""
            asked = time.time()
            await nc.publish(STATUS_REQUEST_SUBJECT, b"")
            await asyncio.sleep(0.02)
            return any(
                host.endswith(f":{victim.pid}") and status.in_flight > 0 and status.time >= asked
                for host, status in board.latest.items()
            )

        async def unacked() -> int:
            infos = await nc.jetstream().consumers_info("ORDERS")
            return sum(
                i.num_ack_pending for i in infos if i.name == "receiver-express" or i.name.startswith("receiver-express-p")
            )

        async def nothing_on_its_way() -> bool:
            return bytes_in_flight(victim.pid) == 0

        held = 0
        while not held:
            await eventually(victim_busy, timeout=120, interval=0.0, what="the receiver-express replica to pause busy")
            os.kill(victim.pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            # Acks it wrote just before the stop still reach the server: count what it holds once they have.
            await eventually(nothing_on_its_way, timeout=30, interval=0.01, what="the paused replica's last bytes read")
            held = await unacked()  # the only replica: what the consumer has out, the victim holds
            if not held:
                os.kill(victim.pid, signal.SIGCONT)  # it was between batches: again
        try:
            since = time.time()
            await express.start("receiver-express")  # the second replica, to take over what the paused one held
            # (the paused one cannot report: one report since the pause is the new replica's)
            await when(lambda: board.processes("receiver-express", 1, since), "the second receiver-express replica reporting")
            await asyncio.sleep(max(0.0, paused_at + ACK_WAIT_S * 2 + 1 - time.monotonic()))  # past its ack wait
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        stop_feeding.set()
        await feeder
        await board.stop()
        await run.finish(len(orders))
        routed = sum(1 for payload, _ in messages if b'"delivery":"Express"' in payload)
        redelivered = await deliveries(nc, "receiver-express") - routed
        notes = f"paused {ACK_WAIT_S * 2 + 1} s holding {held}; {redelivered} deliveries redone"
        if ordered:
            expected = {f"outbox-{b}": {} for b in ("express", "standard")}  # type: dict[str, dict[str, int]]
            for event in events:
                expected[f"outbox-{event.delivery.lower()}"][str(event.order_id)] = 3
            checks = await check_outboxes(nc, expected)
            assert all(check.clean for check in checks.values()), checks
            outbox, _ = await account(nc, expected_outbox(orders))  # each order's last event, its value compared
            assert outbox.lost == 0 and outbox.stored == len(orders), outbox.writes
            letters = await read_dead_letters(nc)
            row = Row(
                "a replica paused (SIGSTOP) past its ack wait, continued; ordered",
                stats.messages,
                len(events) - sum(c.lost for c in checks.values()),
                sum(c.lost for c in checks.values()),
                sum(c.applied_twice for c in checks.values()),
                len(letters),
                time.monotonic() - run.started,
                notes,
            )
            reliability_report.add(row)
            row.check(len(events), 0)
        else:
            await exactly_once(
                run, orders, stats, reliability_report, "a replica paused (SIGSTOP) past its ack wait, continued", notes
            )
        assert redelivered > 0, "nothing the paused replica held was redelivered: the pause did not land on work"
    except BaseException:
        print(run.log_tail())
        raise
    finally:
        await run.close()
