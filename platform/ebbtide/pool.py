"""A function's pool: Wasm instances, each driven by a worker loop on the function's durable consumer.

A worker fetches a batch and hands it to the function's executor (executor.py), which decides and carries
out what becomes of each message (outcome.py: ack after every effect is confirmed, retry with backoff, or
dead-letter); the worker only runs the guest when asked, on its instance, through the guest loop that
shadow runs, canaries, replay and ebbtide.testing use too (function.GuestLoop: a batch of messages per call,
a fresh instance after a fault). Workers, and so instances, are added and removed one at a time with
`set_instances`, while messages flow: a removed worker finishes its batch first. While a rollout is on, a
worker's batches go through it (function.RolloutRun), which drives the worker's guests (WorkerGuests).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .broker.delivery import Incoming, KeepAlive, nak_all
from .broker.partitioned_pull import FeedView, LaneFeed, SharedFeed
from .broker.partitions import consumer_names, pin_timeout_s
from .broker.publisher import ConfirmedPublisher
from .broker.pull import PullConsumer
from .executor import Executor, PoolStats
from .function import FunctionSpec, GuestLoop, Message, RolloutRun, RolloutStats
from .manifest import LoadedManifest
from .ordering import LaneKeys
from .outcome import Faulted, GuestResult
from .runtime import WasmEngine
from .runtime.guest import GuestReply
from .runtime.guests import Guest, GuestModule

if TYPE_CHECKING:  # OpenTelemetry is loaded only when tracing is on
    from opentelemetry.trace import Tracer

    from .telemetry.message_trace import MessageTracer

log = logging.getLogger("ebbtide.pool")

# Long-poll length of an idle fetch; also how long a stopping idle worker may take: its pull request is not
# cancelled (see stop). Longer polls would cost an idle worker fewer requests (one per poll: broker/pull.py)
# but make every stop and shutdown wait as long.
FETCH_WAIT_S = 1.0
# A batch handed back at shutdown is redelivered after this: it outlives this process's pull requests
# (<= FETCH_WAIT_S), which would otherwise take the redelivery into an inbox nobody reads, until the ack wait.
HAND_BACK_DELAY_S = FETCH_WAIT_S + 0.5
# A cancelled worker ends at its next await (its batch nak'ed on the way); one still running this long after it was
# cancelled would hold a stopping process forever: it is logged, with where it waits, and left behind.
CANCELLED_WORKER_S = 5.0

__all__ = ["FETCH_WAIT_S", "Consumer", "FunctionPool", "PoolStats"]


class Consumer(Protocol):
    """What a worker needs of its consumer (broker.pull.PullConsumer; a fake in unit tests)."""

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]: ...

    async def close(self) -> None: ...


class FunctionPool:
    def __init__(
        self,
        name: str,
        manifest: LoadedManifest,
        engine: WasmEngine,
        nc: NatsClient | None,
        publisher: ConfirmedPublisher,
        tracer: Tracer | None = None,
        *,
        open_consumer: Callable[[], Awaitable[Consumer]] | None = None,
    ) -> None:
        """`open_consumer`: a new consumer for each worker; default: a PullConsumer on `nc` for the
        function's durable consumer (unit tests pass fakes, and no `nc`)."""
        self.spec = FunctionSpec.of(manifest, name)  # limits, allowlist, config: as shadow, canary and replay run it
        fn = self.function = self.spec.section
        self.name = name
        self.engine = engine
        self.module = self.load_module()  # the live module: new instances run it (hot reload swaps it)
        self.stream = manifest.stream_for(fn.trigger)
        self.consumers = consumer_names(manifest, name)  # its own; an ordered function's partitions first
        self.stats = PoolStats()
        self.in_flight = 0  # messages fetched and not yet settled
        self.activity = asyncio.Event()  # set by each fetch that brings messages (wakes a quiet controller)
        self.executor = Executor(
            name,
            fn,
            manifest.dead_letter_subject(name),
            publisher,
            self.stats,
            _message_tracer(tracer, name) if tracer is not None else None,
        )
        self._nc = nc
        self._open_consumer = open_consumer or (self._ordered_consumer if fn.order_by else self._pull_consumer)
        self._ordered_feed = SharedFeed(self._open_ordered_feed)  # the workers of an ordered function share it
        self._workers: list[_Worker] = []
        self.rollout: RolloutRun | None = None  # set and cleared by the host's rollout follower
        self.rollout_stats = RolloutStats()

    @property
    def candidate_sha256(self) -> str:
        """The rollout candidate running beside the live module ("" when none)."""
        return self.rollout.candidate_sha256 if self.rollout is not None else ""

    async def _pull_consumer(self) -> Consumer:
        assert self._nc is not None, "a pool without a NATS connection needs open_consumer"
        return await PullConsumer(self._nc, self.stream, self.name).start()

    async def _ordered_consumer(self) -> Consumer:
        return await self._ordered_feed.view()

    async def _open_ordered_feed(self) -> LaneFeed:
        assert self._nc is not None, "a pool without a NATS connection needs open_consumer"
        fn = self.function
        return await LaneFeed(
            self._nc,
            self.stream,
            self.name,
            LaneKeys(fn.trigger, fn.order_by).of,
            self.consumers,
            pin_timeout_s=pin_timeout_s(fn),
            ack_wait_s=fn.ack_wait_s,
            hold_max=fn.batch,
        ).start()

    # -- instances -------------------------------------------------------------------------------------

    def load_module(self) -> GuestModule:
        """The function's built module, checked against its sha256 and WASI grants (a component for Python)."""
        return self.spec.load(self.engine)

    def _instantiate(self) -> Guest:
        return self.spec.start(self.engine, self.module)

    def probe(self) -> None:
        """Start and drop one instance: a module that cannot start fails here, not at the first message."""
        self._instantiate()

    def swap_module(self, module: GuestModule) -> bool:
        """Hot reload: new instances run `module`; each worker finishes its current message on the old
        one and switches before its next guest call. A module that cannot start an instance (init refused, ABI
        mismatch, trap) is refused with GuestInitError/ModuleLoadError and the old one keeps running.
        Returns False when `module` is the one already running."""
        if module is self.module:
            return False
        running, self.module = self.module, module
        try:
            self._instantiate()  # a probe: fails here, not on a message
        except Exception:
            self.module = running
            raise
        return True

    # The live loops' InstanceSource (function.py): `module` above, and these two.

    def start_instance(self) -> Guest:
        instance = self._instantiate()
        self.stats.instance_started()
        return instance

    def instance_stopped(self) -> None:
        self.stats.instance_stopped()

    @property
    def instances(self) -> int:
        """Instances that take work (what the scaler steers)."""
        return sum(1 for worker in self._workers if not worker.stopping)

    @property
    def live_instances(self) -> int:
        """Instances holding Wasm memory, including stopped ones finishing their last fetch (<= FETCH_WAIT_S)."""
        return sum(1 for worker in self._workers if worker.live.instance is not None)

    async def set_instances(self, count: int) -> None:
        """Start or stop workers (one instance each) until `count` are running.

        A stopped worker finishes the batch it holds, then releases its instance: scaling down never
        abandons a message in flight.
        """
        self._workers = [w for w in self._workers if not w.done]
        running = [w for w in self._workers if not w.stopping]
        for worker in running[count:]:
            worker.stop()
        for _ in range(count - len(running)):
            consumer = await self._open_consumer()
            worker = _Worker(self, consumer)
            self._workers.append(worker)

    async def released(self) -> None:
        """Wait until stopped workers have finished their last fetch and dropped their instances."""
        await asyncio.gather(*(w.task for w in self._workers if w.stopping), return_exceptions=True)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop fetching; let every worker finish its batch (effects confirmed, acks sent) within `grace_s`.

        A batch still running after the grace period is cancelled and handed back with a nak, so the
        server redelivers it at once (to this function's next process) instead of after the ack wait.
        """
        for worker in self._workers:
            worker.stopping = True
        tasks = {w.task: w for w in self._workers}
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_s if grace_s is not None else self.function.shutdown_grace_s)
            if late:
                log.warning("%s: %d worker(s) still busy after the grace period; nak'ing their batches", self.name, len(late))
            for task in late:
                worker = tasks[task]
                worker.abandon = True
                if worker.in_batch:
                    task.cancel()  # the batch is nak'ed (see process)
                # A worker waiting in fetch is not cancelled: its pull request would still take messages
                # into an inbox nobody reads. It naks whatever the fetch brings (<= FETCH_WAIT_S).
            if late:
                _, stuck = await asyncio.wait(late, timeout=FETCH_WAIT_S + 1.0)
                for task in stuck:
                    task.cancel()
                ignored: set[asyncio.Task[None]] = set()
                if stuck:
                    _, ignored = await asyncio.wait(stuck, timeout=CANCELLED_WORKER_S)
                for task in ignored:  # never seen: say where it waits, and let the stop go on
                    log.error("%s: a worker did not end when cancelled; leaving it behind:\n%s", self.name, _stack_of(task))
                await asyncio.gather(*(late - ignored), return_exceptions=True)  # their errors are seen, not raised
        self._workers.clear()
        await self._ordered_feed.close()  # its lanes, kept while scaled to zero, go now

    # -- one batch -------------------------------------------------------------------------------------

    async def process(self, msgs: list[Msg], worker: _Worker) -> None:
        """Hand a fetched batch to the executor, the guest running on `worker`'s instance (an ordered
        function's batch: with its feed as the key order, told at the end what was not settled)."""
        self.in_flight += len(msgs)
        order = worker.order
        keep_alive = KeepAlive(msgs, self.function.ack_wait_s / 3, order.still_held if order is not None else None)
        keep_alive_task = asyncio.create_task(keep_alive.run())  # for the waits: effects being confirmed
        try:
            await self.executor.run_batch(msgs, worker.run_guests, keep_alive, order)
        except asyncio.CancelledError:
            await nak_all(msgs, HAND_BACK_DELAY_S)  # shutdown past its grace period
            raise
        finally:
            keep_alive_task.cancel()
            self.in_flight -= len(msgs)
            if order is not None:
                await order.finish(msgs)


class _Worker:
    """One instance and the loop that feeds it; the `WorkerGuests` a rollout drives (function.py)."""

    def __init__(self, pool: FunctionPool, consumer: Consumer) -> None:
        """Starts the worker's instance (raises if none can start), then its loop."""
        self.pool = pool
        self.consumer = consumer
        self.order = consumer if isinstance(consumer, FeedView) else None  # an ordered function's lanes
        self.live = GuestLoop(pool, pool.spec.allowlist, observe=pool.stats.handle.observe)
        self.live.ready()
        self.candidate: GuestLoop | None = None  # a rollout's candidate (rollout/candidate.py)
        self.stopping = False  # finish the current batch, then exit
        self.abandon = False  # shutdown past its grace period: hand back anything fetched from now on
        self.in_batch = False
        self.task = asyncio.create_task(self._run(), name=f"{pool.name}-worker")

    @property
    def done(self) -> bool:
        return self.task.done()

    def stop(self) -> None:
        """Finish the current batch, then exit. A worker waiting in its fetch drops its instance now (its Wasm
        memory is freed at once; should the fetch still bring messages, a new instance runs them)."""
        self.stopping = True
        if not self.in_batch:
            self._release()

    def run_guests(self, batch: Sequence[Incoming]) -> list[GuestResult]:
        """The guest's answers to `batch`, in order: the live module's (`run_live`), or, while a rollout is
        on, what it makes of the live module's and the candidate's."""
        # Encoded per message, not cached: an ordered function's subjects are one per key (a cache of them grew
        # by every order ever handled), and a cache hit measured no faster than encoding (issue 25).
        messages = [(incoming.msg.subject.encode(), incoming.msg.data) for incoming in batch]
        rollout = self.pool.rollout
        if rollout is not None:
            return rollout.run_guests(self, batch, messages)
        self.candidate = None  # a rollout that ended: release its instance's memory
        return self.run_live(batch, messages)

    def run_live(
        self, batch: Sequence[Incoming], messages: Sequence[Message], replies: list[GuestReply] | None = None
    ) -> list[GuestResult]:
        """The live module's answers to `batch` (`messages`: their subjects and payloads), in order, on this
        worker's loop (function.GuestLoop); each fault is counted and logged."""

        def faulted(index: int, fault: Faulted) -> None:
            stats = self.pool.stats
            stats.guest_faults[fault.kind] = stats.guest_faults.get(fault.kind, 0) + 1
            delivery = batch[index].delivery
            log.warning(
                "%s: guest fault on %s #%d, replacing the instance: %s",
                self.pool.name,
                delivery.stream,
                delivery.sequence,
                fault.error,
            )

        return self.live.run(messages, replies, faulted)

    def _release(self) -> None:
        """Drop the instances now (their Wasm memory)."""
        self.live.drop()
        self.candidate = None

    async def _run(self) -> None:
        pool = self.pool
        batch = pool.function.batch
        try:
            while not self.stopping:
                try:
                    msgs = await self.consumer.fetch(batch, wait_s=FETCH_WAIT_S)
                    if not msgs:  # nothing arrived within the long poll
                        continue
                    pool.activity.set()
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return
                except Exception as exc:
                    log.warning("%s: fetch failed (%r); retrying", pool.name, exc)
                    await asyncio.sleep(0.25)
                    continue
                if self.abandon:
                    await nak_all(msgs, HAND_BACK_DELAY_S)
                    return
                self.in_batch = True
                try:
                    await pool.process(msgs, self)
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return  # acks cannot go out any more: the server redelivers after the ack wait
                finally:
                    self.in_batch = False
        finally:
            self._release()
            await self.consumer.close()


def _message_tracer(tracer: Tracer, function: str) -> MessageTracer:
    from .telemetry.message_trace import MessageTracer

    return MessageTracer(tracer, function)


def _stack_of(task: asyncio.Task[None]) -> str:
    """Where a suspended task waits: each coroutine down its chain of awaits (Task.print_stack shows the first)."""
    lines = []
    awaiting: Any = task.get_coro()
    while awaiting is not None:
        frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
        if frame is not None:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    return "\n".join(lines)
