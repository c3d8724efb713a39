"""Shared fixtures: a real nats-server per test (own ports, own data folder) and built guest modules."""

from __future__ import annotations

import asyncio
import inspect
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import nats.js.api
import pytest
import wasmtime
from nats.aio.client import Client as NatsClient

from ebbtide.broker import EmbeddedNats, free_port, provision_server
from ebbtide.broker.credentials import NatsAuth
from ebbtide.broker.partitioned_pull import LaneFeed
from ebbtide.broker.partitions import consumer_names, pin_timeout_s
from ebbtide.build import build_modules
from ebbtide.manifest import LoadedManifest, load_manifest, parse_manifest
from ebbtide.ordering import LaneKeys
from ebbtide.workload.orders import Order, encode_order

REPO = Path(__file__).resolve().parent.parent
GUESTS = Path(__file__).resolve().parent / "guests"
# Every module a test builds goes here, never into the checkout's build/: one folder per test session (the
# toolchains' caches and the AssemblyScript compiler are installed once per session), removed at its end.
BUILD_DIR = Path(tempfile.mkdtemp(prefix="ebbtide-tests-build-"))
# What a test run must leave as it found it (see pytest_sessionfinish).
CHECKOUT_STATE = ("build", ".ebbtide")


def _checkout_state() -> dict[str, tuple[int, int]]:
    """Every file under the checkout's build/ and .ebbtide/ (size, mtime), and every untracked file git
    does not ignore (a test writing into the sources). Edits to tracked files are not counted: they are
    the developer's, made while the tests run."""
    state: dict[str, tuple[int, int]] = {}
    for folder in CHECKOUT_STATE:
        for path in (REPO / folder).rglob("*"):
            if path.is_file() or path.is_symlink():
                stat = path.lstat()
                state[str(path.relative_to(REPO))] = (stat.st_size, stat.st_mtime_ns)
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )  # not a git checkout: build/ and .ebbtide/ only
    for name in untracked.stdout.splitlines() if untracked.returncode == 0 else ():
        try:
            stat = (REPO / name).lstat()
        except FileNotFoundError:
            continue
        state[name] = (stat.st_size, stat.st_mtime_ns)
    return state


_STATE_BEFORE = pytest.StashKey[dict[str, tuple[int, int]]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATE_BEFORE] = _checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run when the tests changed the checkout (tests build and write into folders of their own)."""
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    before = session.config.stash.get(_STATE_BEFORE, None)
    if before is None:
        return
    after = _checkout_state()
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", f"the test run changed the checkout ({len(changed)} paths)", red=True)
            for path in changed[:50]:
                reporter.write_line(f"  {path}: {before.get(path, 'absent')} -> {after.get(path, 'absent')}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path / "nats", port=0, monitor_port=0) as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture(scope="session")
def reference_manifest() -> LoadedManifest:
    """The repository's ebbtide.toml, with the Zig functions built into the session's BUILD_DIR."""
    manifest = load_manifest(REPO / "ebbtide.toml")
    manifest = LoadedManifest(msgspec.structs.replace(manifest.spec, build_dir=str(BUILD_DIR)), manifest.path)
    build_modules(manifest)
    return manifest


def manifest_copy(tmp_path: Path, function_settings: str = "") -> tuple[Path, int]:
    """The reference manifest with its own ports and data folder, its modules built from the repository's
    sources into the session's BUILD_DIR.

    `function_settings` (TOML lines) is added to every function. Returns the file and the embedded port.
    """
    port = free_port()
    text = (REPO / "ebbtide.toml").read_text()
    text = text.replace('build_dir = "build"', f'build_dir = "{BUILD_DIR}"')
    text = text.replace('data_dir = ".ebbtide/nats"', f'data_dir = "{tmp_path / "nats"}"')
    text = text.replace("port = 4222", f"port = {port}").replace("monitor_port = 8222", f"monitor_port = {free_port()}")
    for folder in ("functions/distributor", "functions/receiver"):
        text = text.replace(f'source = "{folder}"', f'source = "{REPO / folder}"\nsdk = "{REPO / "functions/sdk"}"')
    if function_settings:
        text = re.sub(r"^(trigger = .*)$", lambda m: m.group(1) + "\n" + function_settings, text, flags=re.M)
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    build_modules(load_manifest(path))  # incremental: built once per session, whichever test comes first
    return path, port


def chaos_manifest(
    tmp_path: Path, extra: str = "", *, fuel: int = 2_000_000, ack_wait_s: float = 30.0, batch: int = 64, guest: str = "chaos"
) -> LoadedManifest:
    """A manifest running tests/guests/chaos.wat (see its header for the behaviours), or another guest of
    tests/guests, as function `chaos` on `in.chaos`; `extra` (TOML lines) goes into the function's table."""
    wasm_dir = tmp_path / "build" / "wasm"
    wasm_dir.mkdir(parents=True, exist_ok=True)
    (wasm_dir / "chaos.wasm").write_bytes(wasmtime.wat2wasm((GUESTS / f"{guest}.wat").read_text()))
    text = (
        textwrap.dedent(f"""
        [streams.TEST]
        subjects = ["in.>", "test.>"]
        retention = "workqueue"

        [modules.chaos]
        prebuilt = true  # tests/guests/chaos.wat, assembled above

        [functions.chaos]
        module = "chaos"
        trigger = "in.chaos"
        publish = ["test.out"]
        batch = {batch}
        ack_wait_s = {ack_wait_s}
        scale = {{ min = 2, max = 2 }}
        limits = {{ memory_mib = 2, fuel = {fuel}, max_payload = 4096 }}
        retry = {{ max_deliver = 3, backoff_ms = [50, 100] }}
    """)
        + extra
    )
    path = tmp_path / "ebbtide.toml"
    path.write_text(text)
    return parse_manifest(text, path)


def one_lane_manifest(tmp_path: Path, ack_wait_s: float) -> LoadedManifest:
    """chaos_manifest's function ordered by `k`, on a stream of one partition: one lane, one pinned consumer."""
    manifest = chaos_manifest(tmp_path, 'order_by = "k"\n', ack_wait_s=ack_wait_s)
    text = manifest.path.read_text().replace('retention = "workqueue"', 'retention = "workqueue"\npartitions = 1')
    manifest.path.write_text(text)
    return parse_manifest(text, manifest.path)


def chaos_lane_feed(nc: NatsClient, manifest: LoadedManifest, hold_max: int = 8) -> LaneFeed:
    """A feed of the chaos function's lanes, as a pool opens it (not started)."""
    function = manifest.function("chaos")
    return LaneFeed(
        nc,
        "TEST",
        "chaos",
        LaneKeys(function.trigger, function.order_by).of,
        consumer_names(manifest, "chaos"),
        pin_timeout_s=pin_timeout_s(function),
        ack_wait_s=function.ack_wait_s,
        hold_max=hold_max,
    )


async def provision_for(manifest: LoadedManifest, url: str, auth: NatsAuth | None = None) -> None:
    """What `ebbtide provision` does (as admin; no credentials by default): hosts no longer create streams
    or consumers, they wait until these exist."""
    await provision_server(url, manifest, auth or NatsAuth())


def port_open(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (a server started by another process)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


async def wait_for_consumers(nc: NatsClient, stream: str = "ORDERS", count: int = 3) -> None:
    """Until the functions started elsewhere (another process) have provisioned their consumers."""

    async def provisioned() -> bool:
        try:
            return len(await nc.jetstream().consumers_info(stream)) == count
        except Exception:
            return False

    await wait_until(provisioned)


async def backlog(nc: NatsClient, stream: str = "ORDERS") -> int:
    """Messages of `stream` its functions have not handled yet: each consumer's num_pending + num_ack_pending,
    the lag KEDA reads. The stream itself keeps handled messages (limits retention), so its count says nothing."""
    return sum(c.num_pending + c.num_ack_pending for c in await nc.jetstream().consumers_info(stream))


async def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll a predicate (plain or async) until it is true; fail the test on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def read_stream(
    nc: NatsClient, stream: str, subject: str | None = None, expected: int | None = None, timeout: float = 30.0
):
    """The messages stored in `stream` (optionally only `subject`), once it holds at least `expected`."""
    js = nc.jetstream()

    async def enough() -> bool:
        try:
            if subject is None:
                return (await js.stream_info(stream)).state.messages >= (expected or 0)
            subjects = (await js.stream_info(stream, subjects_filter=subject)).state.subjects or {}
            return subjects.get(subject, 0) >= (expected or 0)
        except nats.js.errors.NotFoundError:
            return False

    await wait_until(enough, timeout)
    state = (await js.stream_info(stream)).state
    messages = []
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue  # deleted (acked from a work queue, or a KV key written again)
        if subject is None or msg.subject == subject:
            messages.append(msg)
    return messages


# bucket -> key (the orderId) -> the body that was sent: the receivers store an order's payload unchanged.
ExpectedOutboxes = Mapping[str, Mapping[str, bytes]]


def outbox_bodies(orders: Iterable[Order]) -> dict[str, dict[str, bytes]]:
    """Where each order belongs (`outbox-<delivery>`, key = orderId) and the body it was published with
    (`encode_order`): what `outboxes_writes` compares the buckets with."""
    expected: dict[str, dict[str, bytes]] = {"outbox-express": {}, "outbox-standard": {}}
    for order in orders:
        expected[f"outbox-{order.delivery.lower()}"][str(order.order_id)] = encode_order(order)
    return expected


@dataclass(frozen=True)
class OutboxWrites:
    """An outbox bucket compared with the orders that belong in it: every key's last value against the
    body that was sent, and the writes counted, not the keys.

    A bucket keeps one message per key (history 1), so a second write of an order replaces the first and
    counting keys or messages cannot see it. Every write takes the bucket stream's next sequence number
    and nothing is ever removed from it but by a later write of the same key (deletes are denied, tests
    never purge), so the stream's last sequence is the number of writes it stored."""

    stored: int  # orders of `expected` whose key holds exactly the body sent
    lost: int  # orders of `expected` whose key is not in the bucket
    written_twice: int  # writes beyond one per key: a redone effect that was not deduplicated
    strays: int  # keys that do not belong in this bucket
    wrong_body: int = 0  # keys of `expected` whose last value differs from the body sent (empty, truncated, other)
    deleted: int = 0  # keys of `expected` whose last entry is a delete or purge marker

    @classmethod
    def exactly_once(cls, count: int) -> OutboxWrites:
        """What a bucket holding each of `count` orders once, and nothing else, reads as."""
        return cls(stored=count, lost=0, written_twice=0, strays=0)


async def last_values(nc: NatsClient, bucket: str, timeout: float = 60.0) -> dict[str, tuple[str, bytes]]:
    """key -> (operation, value) of each key's last entry in the bucket (operation: PUT, DEL or PURGE).

    Read through an ephemeral consumer (last per subject) until it has given every key the stream's leader
    counts. On a cluster a request can go unanswered for a while (a leader being elected), or the consumer may
    be led on a replica still catching up after a restart, which lacks the newest keys and times out waiting
    for them: the read, which changes nothing, is then started again on a new consumer, until `timeout`."""
    js = nc.jetstream()
    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await _read_last_values(js, stream, prefix)
        except (TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
            if asyncio.get_running_loop().time() > deadline:  # TimeoutError: nats-py's and asyncio's alike
                raise AssertionError(f"{bucket}: its last values not read within {timeout:.0f} s") from exc
            await asyncio.sleep(0.1)  # a refusal can come at once (no responders): not a busy loop


async def _read_last_values(js: nats.js.JetStreamContext, stream: str, prefix: str) -> dict[str, tuple[str, bytes]]:
    keys = (await js.stream_info(stream, subjects_filter=f"{prefix}>")).state.subjects or {}
    found: dict[str, tuple[str, bytes]] = {}
    if not keys:
        return found
    sub = await js.pull_subscribe(
        f"{prefix}>",
        stream=stream,
        config=nats.js.api.ConsumerConfig(
            ack_policy=nats.js.api.AckPolicy.NONE,
            deliver_policy=nats.js.api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=30.0,  # a consumer left by an abandoned attempt goes away by itself
        ),
    )
    try:
        while len(found) < len(keys):
            for msg in await sub.fetch(min(1000, len(keys) - len(found)), timeout=10):
                found[msg.subject.removeprefix(prefix)] = ((msg.headers or {}).get("KV-Operation", "PUT"), msg.data)
    finally:
        await sub.unsubscribe()
    return found


async def outbox_writes(nc: NatsClient, bucket: str, expected: Mapping[str, bytes]) -> OutboxWrites:
    """`expected`: key -> the body sent for it."""
    stream = f"KV_{bucket}"
    js = nc.jetstream()
    state = (await js.stream_info(stream)).state
    per_key: dict[str, int] = {}
    if state.messages:
        per_key = (await js.stream_info(stream, subjects_filter=f"$KV.{bucket}.>")).state.subjects or {}
    writes = state.last_seq
    assert writes >= sum(per_key.values()), (bucket, writes, sum(per_key.values()))  # the premise above
    values = await last_values(nc, bucket) if per_key else {}
    wanted = {str(key): body for key, body in expected.items()}
    deleted = {key for key, (operation, _) in values.items() if operation != "PUT"}
    present = set(values) & set(wanted)
    wrong = {key for key in present - deleted if values[key][1] != wanted[key]}
    return OutboxWrites(
        stored=len(present - deleted - wrong),
        lost=len(set(wanted) - set(values)),
        written_twice=writes - len(per_key),
        strays=len(set(values) - set(wanted)),
        wrong_body=len(wrong),
        deleted=len(present & deleted),
    )


async def outboxes_writes(nc: NatsClient, expected: ExpectedOutboxes) -> dict[str, OutboxWrites]:
    """`outbox_writes` for every bucket of `expected` (bucket -> key -> the body sent)."""
    return {bucket: await outbox_writes(nc, bucket, bodies) for bucket, bodies in expected.items()}


def exactly_once(expected: ExpectedOutboxes) -> dict[str, OutboxWrites]:
    """What `outboxes_writes` returns when every order of `expected` was written once, with the body sent,
    and nothing else."""
    return {bucket: OutboxWrites.exactly_once(len(bodies)) for bucket, bodies in expected.items()}
