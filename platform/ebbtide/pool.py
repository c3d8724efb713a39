"""A function's pool: Wasm instances, each driven by a worker loop on the function's durable consumer.

A worker fetches a batch and hands it to the function's executor (executor.py), which decides and carries
out what becomes of each message (outcome.py: ack after every effect is confirmed, retry with backoff, or
dead-letter); the worker only runs the guest when asked, on its instance, a batch of messages per call
(`Guest.handle_batch`), and replaces an instance that faulted. Workers, and so instances, are added and removed one at a time with `set_instances`, while
messages flow: a removed worker finishes its batch first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .broker.delivery import Incoming, KeepAlive, nak_all
from .broker.partitioned_pull import FeedView, LaneFeed, SharedFeed
from .broker.partitions import consumer_names, ordered_triggers, pin_timeout_s
from .broker.publisher import ConfirmedPublisher
from .broker.pull import PullConsumer
from .effects import Allowlist
from .executor import Executor, PoolStats
from .manifest import LoadedManifest
from .outcome import Faulted, GuestResult, guest_result
from .precompiled import load_function_module
from .rollout.candidate import RolloutStats
from .runtime import GuestLimits, WasmEngine
from .runtime.guest import GuestReply
from .runtime.guests import Guest, GuestModule, start_guest

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

__all__ = ["FETCH_WAIT_S", "Consumer", "FunctionPool", "PoolStats"]


class Consumer(Protocol):
    """What a worker needs of its consumer (broker.pull.PullConsumer; a fake in unit tests)."""

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]: ...

    async def close(self) -> None: ...


class RolloutRun(Protocol):
    """A candidate module beside the live one (rollout/shadow.py, rollout/canary.py): it runs the guests
    of a batch in the worker's place, and answers for each message as `_Worker.run_live` would."""

    @property
    def candidate_sha256(self) -> str: ...

    def run_guests(self, worker: _Worker, batch: Sequence[Incoming], pairs: list[tuple[bytes, bytes]]) -> list[GuestResult]: ...


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
        fn = manifest.function(name)
        self.name = name
        self.function = fn
        self.engine = engine
        self._manifest = manifest
        self.module = self.load_module()
        self.limits = GuestLimits.of(fn.limits)
        self.config_json = manifest.config_json(name)
        self.allowlist = Allowlist.of(fn, ordered_triggers(manifest))
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
            fn.trigger,
            self.consumers,
            pin_timeout_s=pin_timeout_s(fn),
            ack_wait_s=fn.ack_wait_s,
            hold_max=fn.batch,
        ).start()

    # -- instances -------------------------------------------------------------------------------------

    def load_module(self) -> GuestModule:
        """The function's built module, checked against its sha256 and WASI grants (a component for Python)."""
        return load_function_module(self.engine, self._manifest, self.name)

    def _instantiate(self) -> Guest:
        return start_guest(self.engine, self.module, self.limits, self.config_json)

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

    def new_instance(self) -> Guest:
        instance = self._instantiate()
        self.stats.instances_started += 1
        return instance

    def _replacement(self) -> Guest | None:
        try:
            return self.new_instance()
        except Exception:
            log.exception("%s: cannot start a replacement instance; will try again on the next message", self.name)
            return None

    @property
    def instances(self) -> int:
        """Instances that take work (what the scaler steers)."""
        return sum(1 for worker in self._workers if not worker.stopping)

    @property
    def live_instances(self) -> int:
        """Instances holding Wasm memory, including stopped ones finishing their last fetch (<= FETCH_WAIT_S)."""
        return sum(1 for worker in self._workers if worker.instance is not None)

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
            worker = _Worker(self, consumer, self.new_instance())
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
                await asyncio.gather(*late, return_exceptions=True)
        self._workers.clear()

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
    """One instance and the loop that feeds it."""

    def __init__(self, pool: FunctionPool, consumer: Consumer, instance: Guest) -> None:
        self.pool = pool
        self.consumer = consumer
        self.order = consumer if isinstance(consumer, FeedView) else None  # an ordered function's lanes
        self.instance: Guest | None = instance
        self.candidate: Guest | None = None  # a rollout's candidate instance (rollout/candidate.py)
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
            self._discard_instance()
            self.candidate = None

    def run_guests(self, batch: Sequence[Incoming]) -> list[GuestResult]:
        """The guest's answers to `batch`, in order: the live module's (`run_live`), or, while a rollout is
        on, what it makes of the live module's and the candidate's."""
        pool = self.pool
        # Encoded per message, not cached: an ordered function's subjects are one per key (a cache of them grew
        # by every order ever handled), and a cache hit measured no faster than encoding (issue 25).
        pairs = [(incoming.msg.subject.encode(), incoming.msg.data) for incoming in batch]
        rollout = pool.rollout
        if rollout is not None:
            return rollout.run_guests(self, batch, pairs)
        self.candidate = None  # a rollout that ended: release its instance's memory
        return self.run_live(batch, pairs)

    def run_live(
        self, batch: Sequence[Incoming], pairs: list[tuple[bytes, bytes]], outcomes: list[GuestReply] | None = None
    ) -> list[GuestResult]:
        """The live module's answers to `batch` (`pairs`: their subjects and payloads), in order, from
        `Guest.handle_batch` on this worker's instance (one call per input buffer's worth of messages for an
        ABI v2 guest, one per message otherwise); the guest's own outcomes go to `outcomes` when given.

        A message that faults fails alone: the instance is discarded (never reuse a faulted instance: its
        state may be corrupt) and the messages after it run on a fresh one, once each. A new instance is
        also started when a new module was swapped in (hot reload: between calls)."""
        pool = self.pool
        results: list[GuestResult] = []
        observe = pool.stats.handle.observe
        while len(results) < len(pairs):
            instance = self._instance_for_next_call()
            started = time.perf_counter()
            answer = instance.handle_batch(pairs[len(results) :] if results else pairs)
            if not answer.outcomes:  # the runtime always answers for at least one message: never loop on it
                raise RuntimeError(f"{pool.name}: handle_batch answered for none of {len(pairs) - len(results)} messages")
            # One observation per message, so the histogram counts messages: the call's time, shared out.
            per_message_s = (time.perf_counter() - started) / len(answer.outcomes)
            for outcome in answer.outcomes:
                observe(per_message_s)
                if outcomes is not None:
                    outcomes.append(outcome)
                result = self.result_of(outcome)
                results.append(result)
                if type(result) is Faulted:
                    # Trapped, or output that does not decode: later outcomes of this instance are not
                    # trusted either; their messages run again on a fresh one.
                    self._discard_faulted(batch[len(results) - 1], result)
                    break
            else:
                if answer.instance_failed:
                    # Out of the call's fuel with no message to blame (runtime/instance.py `_call_batch`):
                    # the rest, the one running first, go to a fresh instance.
                    self._discard_instance()
        return results

    def _instance_for_next_call(self) -> Guest:
        """This worker's instance: a new one when it has none (a replacement could not start) or a new
        module was swapped in. Raises when none can start (the executor retries the messages)."""
        pool, instance = self.pool, self.instance
        if instance is None or instance.module is not pool.module:
            if instance is not None:
                self._discard_instance()
            instance = self.instance = pool.new_instance()
        return instance

    def result_of(self, outcome: GuestReply) -> GuestResult:
        """What one message's outcome in a batch means to the policy (outcome.py)."""
        return guest_result(outcome, self.pool.allowlist)

    def _discard_faulted(self, incoming: Incoming, fault: Faulted) -> None:
        pool = self.pool
        pool.stats.guest_faults[fault.kind] = pool.stats.guest_faults.get(fault.kind, 0) + 1
        delivery = incoming.delivery
        log.warning(
            "%s: guest fault on %s #%d, replacing the instance: %s", pool.name, delivery.stream, delivery.sequence, fault.error
        )
        self._discard_instance()
        self.instance = pool._replacement()

    def _discard_instance(self) -> None:
        if self.instance is not None:
            self.instance = None
            self.pool.stats.instances_stopped += 1

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
            self._discard_instance()  # the Wasm memory, now
            self.candidate = None
            await self.consumer.close()


def _message_tracer(tracer: Tracer, function: str) -> MessageTracer:
    from .telemetry.message_trace import MessageTracer

    return MessageTracer(tracer, function)
