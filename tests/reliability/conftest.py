"""Fault-injection suite: shared helpers, and the exactly-once accounting table printed at the end.

Every test runs real nats-server processes (loopback, free ports, its own data folder) and real Wasm
instances. The run size is EBBTIDE_RELIABILITY_ORDERS (default 3000; the full run uses 10000).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from ebbtide.broker import ConfirmedPublisher, EmbeddedNats, PublishError, free_port, provision
from ebbtide.broker.publisher import PublishBatch
from ebbtide.manifest import LoadedManifest
from ebbtide.status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, decode_status
from ebbtide.stream_state import stream_state
from ebbtide.workload.orders import Order, encode_order
from tests.conftest import OutboxWrites, backlog, exactly_once, outbox_bodies, outboxes_writes

ORDERS_N = int(os.environ.get("EBBTIDE_RELIABILITY_ORDERS", "3000"))
OUTBOXES = ("outbox-express", "outbox-standard")
RUN_TIMEOUT_S = 120.0  # a whole run, from the last publish until every order is accounted for
# Per-test limit (pytest-timeout), above the suite's default: a run publishes for up to 90 s, then has
# RUN_TIMEOUT_S to settle, plus servers, processes and clusters starting and stopping.
TEST_TIMEOUT_S = 600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


# -- clients -----------------------------------------------------------------------------------------------


async def connect_client(urls: str | Sequence[str], name: str = "reliability-test") -> NatsClient:
    """The test's own client: reconnects at once and forever, whichever listed server is up."""
    servers = [u for u in urls.split(",") if u] if isinstance(urls, str) else list(urls)

    async def quiet(_error: Exception) -> None:  # disconnects are the point of these tests
        pass

    return await nats.connect(
        servers=servers,
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        connect_timeout=2,
        pending_size=256 * 1024 * 1024,
        error_cb=quiet,
        disconnected_cb=None,
    )


async def eventually(
    predicate: Callable[[], Awaitable[bool]], timeout: float = RUN_TIMEOUT_S, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll until true; a predicate that raises (server down, leader election) counts as not yet."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if await predicate():
                return
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:.0f} s (last error: {last_error!r})")
        await asyncio.sleep(interval)


# -- publishing with retries -------------------------------------------------------------------------------


@dataclass
class PublishStats:
    messages: int = 0  # distinct messages, each confirmed once
    attempts: int = 0  # publishes sent, retries included
    retried: int = 0  # messages that needed more than one attempt
    duplicate_acks: int = 0  # retries the server recognised (PubAck duplicate=true)
    confirmed: int = 0  # messages confirmed so far (for progress checks while publishing)


async def publish_reliably(
    nc: NatsClient,
    subject: str | Callable[[bytes], str],
    messages: Sequence[tuple[bytes, str]],
    *,
    spread_s: float = 0.0,
    chunks: int = 40,
    confirm_timeout: float = 2.0,
    deadline_s: float = 90.0,
    stats: PublishStats | None = None,
    after_send: Callable[[], Awaitable[None]] | None = None,
    in_order: bool = False,
) -> PublishStats:
    """Publish every (payload, msg_id) until the server confirms it, retrying with the same Nats-Msg-Id.

    A publish whose PubAck does not come (server killed, leader election, reconnecting) is sent again
    with the same id, so the stream stores it once. The first pass is spread over `spread_s` seconds
    in `chunks` chunks, so a fault can be injected while publishing is under way; `after_send` runs
    after each first-pass chunk is sent and before its confirmations are awaited (a fault injected
    there hits publishes in flight). Fails the test if anything is still unconfirmed after `deadline_s`.
    `subject`: one for all, or each payload's (an ordered entry's keyed subject). `in_order`: a chunk's
    unconfirmed publishes are sent again until confirmed before the next chunk goes (a publisher of a key's
    events in sequence: retried at the end, they would be stored after later events of their keys).
    """
    stats = stats or PublishStats()
    stats.messages = len(messages)
    publisher = ConfirmedPublisher(nc)
    await publisher.start()
    attempts = [0] * len(messages)
    started = time.monotonic()

    async def send(indices: list[int], hook: Callable[[], Awaitable[None]] | None = None) -> list[int]:
        batch = PublishBatch()
        for i in indices:
            payload, msg_id = messages[i]
            attempts[i] += 1
            stats.attempts += 1
            publisher.add(batch, subject if isinstance(subject, str) else subject(payload), payload, msg_id)
        await publisher.send(batch)
        if hook is not None:
            await hook()
        failed = []
        for i, result in zip(indices, await publisher.wait(batch, confirm_timeout)):
            if isinstance(result, PublishError):
                failed.append(i)
            else:
                stats.confirmed += 1
                stats.duplicate_acks += result.duplicate
        return failed

    size = max(1, -(-len(messages) // chunks))
    unconfirmed: list[int] = []
    for n, start in enumerate(range(0, len(messages), size)):
        failed = await send(list(range(start, min(start + size, len(messages)))), after_send)
        while in_order and failed:
            if time.monotonic() - started > deadline_s:
                raise AssertionError(f"{len(failed)} publish(es) still unconfirmed after {deadline_s:.0f} s")
            await asyncio.sleep(0.2)
            failed = await send(failed)
        unconfirmed += failed
        if spread_s:
            ahead = started + spread_s * (n + 1) / chunks - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    while unconfirmed:
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"{len(unconfirmed)} publish(es) still unconfirmed after {deadline_s:.0f} s")
        await asyncio.sleep(0.2)
        retry, unconfirmed = unconfirmed, []
        for start in range(0, len(retry), 500):
            unconfirmed += await send(retry[start : start + 500])
    stats.retried = sum(1 for a in attempts if a > 1)
    return stats


class MidRunFault:
    """Injects a fault once the run is under way: in the publisher's `after_send` hook (publishes are in
    flight) after at least `threshold` orders are in the outboxes (the functions are busy)."""

    def __init__(self, nc: NatsClient, inject: Callable[[], None], threshold: int, stats: PublishStats) -> None:
        self.nc = nc
        self.inject = inject
        self.threshold = threshold
        self.stats = stats
        self.injected = asyncio.Event()
        self.confirmed_before = -1  # publishes confirmed when the fault hit

    async def after_send(self) -> None:
        if self.injected.is_set() or await outbox_total(self.nc) < self.threshold:
            return
        self.confirmed_before = self.stats.confirmed
        self.inject()
        self.injected.set()

    async def wait(self, timeout: float = 60.0) -> None:
        try:
            await asyncio.wait_for(self.injected.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"the run never reached {self.threshold} stored orders while publishing") from None


# -- run contents -----------------------------------------------------------------------------------------

_INVALID_SAMPLES = (
    b'{"orderId": 5, "delivery": "Express", "items": [',  # malformed JSON
    b'{"delivery": "Express", "items": [{"orderItemId": 1, "sku": "A-1", "quantity": 1}]}',  # no orderId
    b'{"orderId": 7, "delivery": "Drone", "items": [{"orderItemId": 1, "sku": "A-1", "quantity": 1}]}',
    b'{"orderId": 8, "delivery": "Standard", "items": []}',
    b"\x00\xff\xfe not json at all",
)


def with_invalid(orders: Sequence[Order], share: float = 0.01, seed: int = 0) -> tuple[list[tuple[bytes, str]], set[str]]:
    """The orders' (payload, Nats-Msg-Id), with about `share` invalid inputs shuffled in; and the invalid ids."""
    messages = [(encode_order(o), o.order_guid) for o in orders]
    invalid = [
        (_INVALID_SAMPLES[i % len(_INVALID_SAMPLES)], f"invalid-{seed}-{i}") for i in range(max(5, int(len(orders) * share)))
    ]
    messages += invalid
    random.Random(seed).shuffle(messages)
    return messages, {msg_id for _, msg_id in invalid}


def dead_letter_accounting(letters: Sequence, msg_ids: set[str]) -> tuple[int, int, int]:
    """(invalid inputs without a dead letter, dead letters beyond one per input, dead letters of other inputs)."""
    seen: dict[str, int] = {}
    for letter in letters:
        msg_id = (letter.headers or {}).get("Ebbtide-Original-Msg-Id", "?")
        seen[msg_id] = seen.get(msg_id, 0) + 1
    missing = len(msg_ids - set(seen))
    doubled = sum(n - 1 for n in seen.values())
    strays = sum(n for msg_id, n in seen.items() if msg_id not in msg_ids)
    return missing, doubled, strays


# -- what the server holds ---------------------------------------------------------------------------------


async def subject_counts(nc: NatsClient, stream: str, subjects_filter: str) -> dict[str, int]:
    """Messages per subject in `stream`, for the subjects matching the filter (KV keys, here)."""
    info = await nc.jetstream().stream_info(stream, subjects_filter=subjects_filter)
    return dict(info.state.subjects or {})


@dataclass
class Outbox:
    """The outbox buckets compared with the valid orders of a run, in writes (tests.conftest.outbox_writes)."""

    expected: dict[str, dict[str, bytes]]  # bucket -> orderId -> the body sent
    writes: dict[str, OutboxWrites] = field(default_factory=dict)

    @property
    def stored(self) -> int:
        return sum(w.stored for w in self.writes.values())

    @property
    def lost(self) -> int:
        return sum(w.lost for w in self.writes.values())

    @property
    def extra_writes(self) -> int:
        """Outbox writes beyond one per order (a redone effect that was not deduplicated), plus strays."""
        return sum(w.written_twice + w.strays for w in self.writes.values())

    def check(self) -> None:
        """Every valid order in its outbox, written exactly once, and nothing else."""
        assert self.writes == exactly_once(self.expected)


def expected_outbox(orders: Iterable[Order]) -> dict[str, dict[str, bytes]]:
    """bucket -> orderId -> the body sent (tests.conftest.outbox_bodies), for every outbox bucket."""
    bodies = outbox_bodies(orders)
    return {bucket: bodies.get(bucket, {}) for bucket in OUTBOXES}


async def read_outbox(nc: NatsClient, expected: dict[str, dict[str, bytes]]) -> Outbox:
    return Outbox(expected, await outboxes_writes(nc, expected))


async def run_complete(
    nc: NatsClient, expected: dict[str, dict[str, bytes]], dead_letters: int, input_stream: str = "ORDERS"
) -> bool:
    """Every valid order stored, every bad input dead-lettered, every input handled (its consumer's lag 0)."""
    stored = 0
    for bucket in expected:
        stored += (await stream_state(nc, f"KV_{bucket}")).messages
    return (
        stored >= sum(len(ids) for ids in expected.values())
        and (await stream_state(nc, "DLQ")).messages >= dead_letters
        and await backlog(nc, input_stream) == 0
    )


async def outbox_total(nc: NatsClient) -> int:
    return sum([(await stream_state(nc, f"KV_{b}")).messages for b in OUTBOXES])


async def read_dead_letters(nc: NatsClient, stream: str = "DLQ") -> list:
    """Every message of the dead-letter stream."""
    js = nc.jetstream()
    state = (await js.stream_info(stream)).state
    letters = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        try:
            letters.append(await js.get_msg(stream, seq))
        except nats.js.errors.NotFoundError:
            continue
    return letters


async def wait_for_functions(nc: NatsClient, functions: Iterable[str], timeout: float = 60.0) -> None:
    """Until every function has reported its status (its process is up, provisioned and bound)."""
    wanted, seen = set(functions), set()

    async def record(msg) -> None:  # type: ignore[no-untyped-def]
        seen.add(decode_status(msg.data).function)

    subscription = await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=record)
    try:
        deadline = time.monotonic() + timeout
        while not wanted <= seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"no status from {sorted(wanted - seen)} within {timeout:.0f} s")
            await nc.publish(STATUS_REQUEST_SUBJECT, b"")
            await asyncio.sleep(0.25)
    finally:
        await subscription.unsubscribe()


# -- manifests and servers ---------------------------------------------------------------------------------


def replicated(manifest_path: Path, replicas: int = 3) -> Path:
    """Add `replicas = N` to every stream, KV bucket and the dead-letter stream of a manifest copy."""
    text = manifest_path.read_text()
    text = re.sub(r"^(\[(?:streams\.[^\]]+|kv\.[^\]]+|dead_letter)\])$", rf"\1\nreplicas = {replicas}", text, flags=re.M)
    manifest_path.write_text(text)
    return manifest_path


def monitor_json(server: EmbeddedNats, path: str) -> dict:
    with urllib.request.urlopen(f"{server.monitor_url}{path}", timeout=2) as reply:
        return json.loads(reply.read())


def cluster_ready(servers: Sequence[EmbeddedNats]) -> bool:
    """Every node is healthy with JetStream, sees the same meta leader and a meta group of all nodes."""
    leaders = set()
    for server in servers:
        try:
            if monitor_json(server, "/healthz?js-enabled-only=true").get("status") != "ok":
                return False
            meta = monitor_json(server, "/jsz").get("meta_cluster") or {}
        except OSError:
            return False
        if not meta.get("leader") or meta.get("cluster_size") != len(servers):
            return False
        leaders.add(meta["leader"])
    return len(leaders) == 1


class Cluster:
    """Three nats-server nodes with JetStream on loopback, each with its own store."""

    def __init__(self, root: Path, size: int = 3) -> None:
        route_ports = [free_port() for _ in range(size)]
        self.nodes = []
        for i, port in enumerate(route_ports):
            routes = ",".join(f"nats://127.0.0.1:{p}" for p in route_ports if p != port)
            self.nodes.append(
                EmbeddedNats(
                    root / f"node-{i}",
                    port=0,
                    monitor_port=0,
                    extra_args=(
                        "--cluster_name",
                        f"ebbtide-reliability-{route_ports[0]}",
                        "--cluster",
                        f"nats://127.0.0.1:{port}",
                        "--routes",
                        routes,
                    ),
                )
            )

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def by_name(self, server_name: str) -> EmbeddedNats:
        return next(node for node in self.nodes if f"ebbtide-{node.port}" == server_name)


# -- the accounting table ----------------------------------------------------------------------------------


@dataclass
class Row:
    test: str
    sent: int  # messages published (valid and invalid), each counted once
    stored: int  # valid inputs whose effect is stored
    lost: int  # valid inputs without their effect, plus invalid inputs without a dead letter
    written_twice: int  # outbox writes beyond one per order (counted in the bucket's stream) plus doubled dead letters
    dead_lettered: int
    seconds: float
    notes: str = ""
    nodeid: str = ""

    def check(self, valid: int, invalid: int) -> None:
        """Every figure the table prints, as exactly-once requires: each message sent counted once, each valid
        one stored and each invalid one dead-lettered, nothing lost, nothing doubled. (`seconds` is the run's
        duration, printed for reading only: the machines are too noisy for timed assertions.) Doubled
        effects alone raise `Duplicated`, so a row may expect them without hiding anything else."""
        assert (self.sent, self.stored, self.lost, self.dead_lettered) == (valid + invalid, valid, 0, invalid), (
            f"{self.test}: sent {self.sent}, stored {self.stored}, lost {self.lost}, dead-lettered "
            f"{self.dead_lettered}; expected {valid + invalid}, {valid}, 0, {invalid}"
        )
        if self.written_twice:
            raise Duplicated(f"{self.test}: {self.written_twice} outbox write(s) or dead letter(s) beyond one per input")


class Duplicated(AssertionError):
    """A run lost nothing, but stored some effect or dead letter more than once."""


class Report:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def add(self, row: Row) -> None:
        row.nodeid = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
        self.rows.append(row)


_ROWS = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def reliability_report(request: pytest.FixtureRequest) -> Report:
    rows = request.config.stash.setdefault(_ROWS, [])
    return Report(rows)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    rows: list[Row] = config.stash.get(_ROWS, [])
    if not rows:
        return
    outcomes = {
        report.nodeid: outcome
        for outcome in ("passed", "failed", "error", "xfailed", "xpassed")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", "call") == "call"
    }
    terminalreporter.write_sep("=", f"reliability: exactly-once accounting ({ORDERS_N} orders per run)")
    header = ("test", "result", "sent", "stored", "lost", "written twice", "dead-lettered", "seconds", "notes")
    table = [header] + [
        (
            r.test,
            outcomes.get(r.nodeid, "?"),
            str(r.sent),
            str(r.stored),
            str(r.lost),
            str(r.written_twice),
            str(r.dead_lettered),
            f"{r.seconds:.1f}",
            r.notes,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    for n, line in enumerate(table):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])] + [cell.rjust(w) for cell, w in zip(line[2:-1], widths[2:])]
        terminalreporter.write_line("  ".join(cells) + ("  " + line[-1] if line[-1] else ""))
        if n == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))


async def finished_run(nc: NatsClient, expected: dict[str, dict[str, bytes]], dead_letters: int, what: str) -> None:
    """Wait until every order is stored, every invalid input dead-lettered and every input handled.

    Count with `account` only after the functions stopped: then no effect can still be on its way."""

    async def complete() -> bool:
        return await run_complete(nc, expected, dead_letters=dead_letters)

    await eventually(complete, what=what)


async def account(nc: NatsClient, expected: dict[str, dict[str, bytes]]) -> tuple[Outbox, list]:
    """The outboxes (in writes) and the dead letters, once the functions have stopped."""
    return await read_outbox(nc, expected), await read_dead_letters(nc)


async def provisioned_cluster(cluster: Cluster, manifest: LoadedManifest) -> NatsClient:
    """A client of `cluster` once it has a JetStream meta leader and the manifest's R3 streams exist."""
    await eventually(lambda: asyncio.to_thread(cluster_ready, cluster.nodes), timeout=30, what="JetStream meta leader")
    nc = await connect_client(cluster.urls)
    js = nc.jetstream()

    async def provisioned() -> bool:
        await provision(js, manifest)
        return True

    await eventually(provisioned, timeout=30, what="R3 streams created")
    return nc
