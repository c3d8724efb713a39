"""The pool on an in-memory broker: real Wasm instances (tests/guests/chaos.wat), a fake consumer that
hands out queued batches, and the real publisher and nats-py messages on FakeNats (tests/unit/fakes.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from nats.aio.msg import Msg

import ebbtide
from ebbtide.broker.publisher import ConfirmedPublisher
from ebbtide.pool import HAND_BACK_DELAY_S, FunctionPool
from ebbtide.runtime import Publish, WasmEngine
from ebbtide.runtime.abi import encode_effects
from ebbtide.runtime.guest import BatchResult, Guest
from tests.conftest import chaos_manifest, wait_until

from .fakes import FakeConsumer, FakeNats, nak_delay_s

ACK = b""


async def start_pool(tmp_path: Path, nc: FakeNats, **manifest_options: object) -> tuple[FunctionPool, list[FakeConsumer]]:
    manifest = chaos_manifest(tmp_path, **manifest_options)  # type: ignore[arg-type]
    publisher = ConfirmedPublisher(nc)  # type: ignore[arg-type]
    await publisher.start()
    consumers: list[FakeConsumer] = []

    async def open_consumer() -> FakeConsumer:
        consumers.append(FakeConsumer())
        return consumers[-1]

    pool = FunctionPool("chaos", manifest, WasmEngine(), None, publisher, open_consumer=open_consumer)
    return pool, consumers


def settled(nc: FakeNats, msgs: list[Msg]):
    return lambda: all(nc.acks(m) for m in msgs)


async def test_a_worker_runs_each_message_on_its_instance_and_settles_it(tmp_path: Path) -> None:
    nc = FakeNats()
    pool, consumers = await start_pool(tmp_path, nc)
    await pool.set_instances(1)
    good, reject, trap, retry, refused = msgs = [
        nc.delivery(payload, sequence=i + 1)
        for i, payload in enumerate([b"good", b"X-reject", b"T-trap", b"R-retry", b"F-forbidden"])
    ]
    await consumers[0].batches.put(msgs)
    await wait_until(settled(nc, msgs), timeout=10)
    await pool.stop(grace_s=5)

    assert [p.payload for p in nc.sent_to("test.out")] == [b"good"]
    assert nc.acks(good) == [ACK] and nc.acks(reject) == [ACK] and nc.acks(refused) == [ACK]
    assert [nak_delay_s(a) for a in nc.acks(trap) + nc.acks(retry)] == [0.05, 0.05]
    reasons = [p.headers["Ebbtide-Reason"] for p in nc.sent_to("dlq.chaos") if p.headers]
    assert reasons == ["rejected", "effect-refused"]
    stats = pool.stats
    assert (stats.processed, stats.dead_lettered, stats.refused, stats.retried) == (1, 1, 1, 2)
    assert stats.guest_faults == {"trap": 1}
    assert stats.instances_started == 2  # the worker's, and a fresh one after the trap
    assert stats.instances_stopped == 2  # the trapped one, and the last one at stop
    assert stats.handle.count == 5  # each guest call recorded once
    assert consumers[0].closed and pool.in_flight == 0


async def test_set_instances_starts_and_stops_workers_each_on_its_own_consumer(tmp_path: Path) -> None:
    nc = FakeNats()
    pool, consumers = await start_pool(tmp_path, nc)
    await pool.set_instances(3)
    assert pool.instances == 3 and pool.live_instances == 3 and len(consumers) == 3
    await pool.set_instances(1)
    assert pool.instances == 1
    await pool.released()  # the stopped workers' fetches end, and their instances go
    assert pool.live_instances == 1
    assert sum(c.closed for c in consumers) == 2
    msg = nc.delivery(b"after scaling down", sequence=1)
    running = next(c for c in consumers if not c.closed)
    await running.batches.put([msg])
    await wait_until(settled(nc, [msg]), timeout=10)
    assert nc.acks(msg) == [ACK]
    await pool.stop(grace_s=5)
    assert all(c.closed for c in consumers) and pool.live_instances == 0
    assert pool.stats.instances_started == 3 and pool.stats.instances_stopped == 3


async def test_a_worker_stopped_while_waiting_for_messages_frees_its_instance_at_once(tmp_path: Path) -> None:
    """Scaling down does not wait for the stopped worker's long poll to end before its Wasm memory is freed
    (and the controller can listen for the next message at once); should that poll still bring a batch, a
    new instance runs it, and the worker exits after it."""
    nc = FakeNats()
    pool, consumers = await start_pool(tmp_path, nc)
    await pool.set_instances(1)
    polling = asyncio.Event()
    fetch = consumers[0].fetch

    async def long_poll(batch: int, wait_s: float) -> list[Msg]:  # waits as long as it takes
        polling.set()
        return await consumers[0].batches.get()

    consumers[0].fetch = long_poll  # type: ignore[method-assign]
    await polling.wait()
    await pool.set_instances(0)
    assert pool.live_instances == 0 and pool.stats.instances_stopped == 1  # before: 1 live until the poll ended
    consumers[0].fetch = fetch  # type: ignore[method-assign]
    msg = nc.delivery(b"late", sequence=1)
    await consumers[0].batches.put([msg])  # what the stopped worker's last fetch brings
    await wait_until(settled(nc, [msg]), timeout=10)
    assert nc.acks(msg) == [ACK]
    await pool.released()
    assert consumers[0].closed and pool.live_instances == 0
    assert pool.stats.instances_started == 2 and pool.stats.instances_stopped == 2


async def test_a_swapped_module_runs_from_the_next_message(tmp_path: Path) -> None:
    nc = FakeNats()
    pool, consumers = await start_pool(tmp_path, nc)
    await pool.set_instances(1)
    first = nc.delivery(b"one", sequence=1)
    await consumers[0].batches.put([first])
    await wait_until(settled(nc, [first]), timeout=10)
    wasm = tmp_path / "build" / "wasm" / "chaos.wasm"
    wasm.write_bytes(wasm.read_bytes() + b"\x00\x03\x02v2")  # a custom section: a new build, same behaviour
    assert pool.swap_module(pool.load_module()) is True
    second = nc.delivery(b"two", sequence=2)
    await consumers[0].batches.put([second])
    await wait_until(settled(nc, [second]), timeout=10)
    await pool.stop(grace_s=5)
    assert [p.payload for p in nc.sent_to("test.out")] == [b"one", b"two"]
    assert pool.stats.instances_started == 2  # the new module got a new instance before the second message


async def test_stop_past_the_grace_period_hands_the_batch_back(tmp_path: Path) -> None:
    # No PubAck ever comes for the effects: the batch cannot finish before the stop, whichever of the guest's
    # chunks or the wait for confirmations the stop finds it in (the fake answers within one loop iteration,
    # so with answers the batch could settle between the stop's start and its zero grace period).
    nc = FakeNats(unanswered={"test.out"})
    pool, consumers = await start_pool(tmp_path, nc, fuel=1_000_000_000)
    await pool.set_instances(1)
    msgs = [nc.delivery(b"S-slow-%d" % i, sequence=i + 1) for i in range(200)]  # ~20 ms each, unloaded
    await consumers[0].batches.put(msgs)
    await wait_until(lambda: pool.in_flight == len(msgs), timeout=10)
    await pool.stop(grace_s=0)
    assert all(nc.acks(m) for m in msgs)  # every message answered: none waits for the ack wait
    # The pool settles a fetched batch chunk by chunk, so what finished before the stop may be acked; the
    # rest is handed back at once. Each message is either acked once (and counted) or handed back.
    handed_back = [m for m in msgs if nc.acks(m)[-1] != ACK]
    assert handed_back, "the stop came before the batch was done: something must be handed back"
    assert {nak_delay_s(nc.acks(m)[-1]) for m in handed_back} == {HAND_BACK_DELAY_S}
    assert pool.stats.processed == len(msgs) - len(handed_back)
    assert all(nc.acks(m) == [ACK] for m in msgs if m not in handed_back)
    assert pool.in_flight == 0 and consumers[0].closed


class RecordingGuest:
    """A real instance, and each `handle_batch` call the pool makes on it: (instance number, payloads)."""

    def __init__(self, guest: Guest, number: int, calls: list[tuple[int, list[bytes]]]) -> None:
        self._guest, self._number, self._calls = guest, number, calls

    def handle_batch(self, messages: Sequence[tuple[bytes, bytes]]) -> BatchResult:
        self._calls.append((self._number, [payload for _, payload in messages]))
        return self._guest.handle_batch(messages)

    def __getattr__(self, name: str) -> object:  # module, input_capacity, takes_batches: the real instance's
        return getattr(self._guest, name)


def publish_test_out(body: bytes) -> bytes:
    """A payload batch.wat (which outputs its input) turns into an effect publishing `body` to test.out."""
    return encode_effects([Publish("test.out", body)])


@pytest.mark.parametrize(
    ("guest", "payload_of"),
    [
        ("chaos", lambda body: body),  # ABI v1: handle_batch calls it once per message
        ("batch", publish_test_out),  # ABI v2: one call for the whole batch
    ],
)
async def test_a_trap_mid_batch_fails_only_its_message_and_the_rest_run_once_on_a_fresh_instance(
    tmp_path: Path, guest: str, payload_of: Callable[[bytes], bytes]
) -> None:
    nc = FakeNats()
    # ack_wait_s: a long keep-alive budget, so the executor's chunks are known (the first message alone,
    # while nothing was measured yet; then the rest of the batch in one call), however loaded the machine.
    pool, consumers = await start_pool(tmp_path, nc, guest=guest, ack_wait_s=3600.0)
    calls: list[tuple[int, list[bytes]]] = []
    instantiate, numbers = pool._instantiate, itertools.count()
    pool._instantiate = lambda: RecordingGuest(instantiate(), next(numbers), calls)  # type: ignore[method-assign]
    await pool.set_instances(1)
    bodies = [b"m0", b"m1", b"m2", b"T-trap", b"m4", b"m5"]
    payloads = [body if body.startswith(b"T") else payload_of(body) for body in bodies]
    msgs = [nc.delivery(payload, sequence=i + 1) for i, payload in enumerate(payloads)]
    await consumers[0].batches.put(msgs)
    await wait_until(settled(nc, msgs), timeout=10)
    await pool.stop(grace_s=5)

    assert (
        calls
        == [
            (0, payloads[:1]),
            (0, payloads[1:]),  # traps at T-trap: m1 and m2 keep their outcome ...
            (1, payloads[4:]),  # ... and only the messages after it run again, on a fresh instance
        ]
    )
    # every other message was processed exactly once, in order; the trapped one is retried
    assert [p.payload for p in nc.sent_to("test.out")] == [b"m0", b"m1", b"m2", b"m4", b"m5"]
    assert all(nc.acks(m) == [ACK] for i, m in enumerate(msgs) if i != 3)
    assert [nak_delay_s(a) for a in nc.acks(msgs[3])] == [0.05]
    stats = pool.stats
    assert (stats.processed, stats.retried, stats.guest_faults) == (5, 1, {"trap": 1})
    assert (stats.instances_started, stats.instances_stopped) == (2, 2)  # the trapped one, and the last at stop
    assert stats.handle.count == 6  # one observation per message, each handled once


async def test_the_pool_keeps_nothing_per_subject_it_has_seen(tmp_path: Path) -> None:
    """A function's messages may arrive on one subject per key (a wildcard trigger; an ordered function's
    did, `<trigger>.<partition>.<key>`, until the stored subject dropped the key): a host that remembers
    anything per subject grows with every order it ever handled (issue 25: a cache of encoded subjects grew
    1.4-2.4 MiB per 10,000 orders). Memory allocated by ebbtide's own code and still
    held after thousands of new subjects must not grow with them."""
    import tracemalloc

    nc = FakeNats()
    pool, consumers = await start_pool(tmp_path, nc)
    await pool.set_instances(1)
    sequence = itertools.count(1)

    async def run(count: int) -> None:
        msgs = [
            nc.delivery(b"good", sequence=(n := next(sequence)), subject=f"in.chaos.{n % 32}.key-{n:012d}") for _ in range(count)
        ]
        done = pool.stats.processed + count
        for start in range(0, count, 64):
            await consumers[0].batches.put(msgs[start : start + 64])
        await wait_until(lambda: pool.stats.processed >= done, timeout=60)  # (settled() would scan every ack per message)

    await run(500)  # warm-up: histograms, the publisher's and executor's first allocations
    tracemalloc.start()  # traces what is allocated from here on, and still held when the snapshot is taken
    try:
        await run(5000)
        nc.published.clear()  # the fake's record of what was sent (it keeps parts of what the host built)
        held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, str(Path(ebbtide.__file__).parent / "*"))])
    finally:
        tracemalloc.stop()
    await pool.stop(grace_s=5)
    # The removed cache held ~105 bytes per subject here (525 kB for 5,000).
    assert sum(stat.size for stat in held.statistics("filename")) < 64 * 1024, [
        str(stat) for stat in held.statistics("lineno")[:5]
    ]


class StubbornConsumer(FakeConsumer):
    """Its close() swallows the first cancellation and then waits for ever: a worker that will not end."""

    async def close(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        await asyncio.Event().wait()


async def test_a_worker_that_ignores_its_cancellation_is_logged_and_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("ebbtide.pool.CANCELLED_WORKER_S", 0.1)
    manifest = chaos_manifest(tmp_path)
    nc = FakeNats()
    publisher = ConfirmedPublisher(nc)  # type: ignore[arg-type]
    await publisher.start()
    consumer = StubbornConsumer()

    async def open_consumer() -> FakeConsumer:
        return consumer

    pool = FunctionPool("chaos", manifest, WasmEngine(), None, publisher, open_consumer=open_consumer)
    await pool.set_instances(1)
    worker_tasks = [task for task in asyncio.all_tasks() if task.get_name() == "chaos-worker"]
    await asyncio.wait_for(pool.stop(grace_s=0), timeout=10)  # returns: the stop does not hang on it
    assert "a worker did not end when cancelled" in caplog.text and "in close" in caplog.text  # where it waits
    for task in worker_tasks:  # the second cancellation ends it
        task.cancel()
    await asyncio.gather(*worker_tasks, return_exceptions=True)
