"""Drives one pool: instances follow the consumer's lag, an idle pool sleeps at zero until a message
rings its bell, and every tick a status report goes out on NATS.

While messages flow, the controller reads the consumer's lag every TICK_S (one `consumer_info`, ~0.3 ms)
and asks the `Scaler` for the instance count (every AT_MAX_TICK_S once it runs `scale.max` instances). A pool that is running but quiet (no lag, nothing in flight,
no fetch brought anything since the last tick: e.g. `scale.min` >= 1, or the cooldown after a burst) is
not polled every tick: its own workers' fetches see new work first, and the first one that brings any
wakes the controller (`FunctionPool.activity`); until then it looks again only when the scaler's cooldown
may end, or after IDLE_REPORT_S. At zero instances it stops polling: it subscribes to the trigger
subject (core NATS, so a publish reaches it at once) and waits. The bell is unsubscribed while the pool
is active, so a burst does not cost the process a second copy of every message. Asleep at zero with a lag
of 0, nothing can arrive but a publish, which rings the bell: once the lag has read 0 twice (the server
counts a stored message into a consumer's `num_pending` a moment after its PubAck, so a publish just before
the bell was subscribed can read as 0 once), it is read again only after a reconnect (the bell may have
missed a publish meanwhile) or every IDLE_LAG_CHECK_S as a safety net.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from .broker.jsapi import first_stored_at
from .oldest_pending import OldestPending
from .pool import FunctionPool
from .scaler import ScalePolicy, Scaler
from .status_reports import STATUS_REQUEST_SUBJECT, PoolStatus, encode_status, status_subject
from .subjects import keyed_subject

log = logging.getLogger("ebbtide.controller")

TICK_S = 0.05  # control interval while messages flow
# ... and while the pool already runs scale.max instances with a backlog: nothing to scale up to, and the lag
# matters again only for the cooldown (seconds), so a lag read and a report 4 times a second, not 20.
AT_MAX_TICK_S = 0.25
# Consumers of an ordered function whose lag one tick reads: one, as for an unordered function (each read costs
# the server 0.15-0.45 ms of CPU; at 4 per tick the reads were a third of what ordering added to the server's
# CPU in a burst). Keys spread evenly over the lanes, so each lane read in turn tells the trend.
LANES_PER_TICK = 1
IDLE_REPORT_S = 5.0  # status report interval while quiet or idle at zero (`top` counts a process live for 10 s)
IDLE_LAG_CHECK_S = 60.0  # asleep at zero: a lag check in case the bell missed a publish for a reason not seen
LAG_CONFIRM_S = 0.25  # asleep at zero: the second lag check, for a publish stored just before the bell rang
OLDEST_READ_TIMEOUT_S = 2.0  # reading the oldest unhandled message's time (oldest_pending.py)


def host_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PoolController:
    def __init__(self, pool: FunctionPool, nc: NatsClient, js: JetStreamContext) -> None:
        scale = pool.function.scale
        self.pool = pool
        self.scaler = Scaler(ScalePolicy(scale.min, scale.max, scale.target_backlog, scale.cooldown_s))
        self.lag = 0
        self.wakeups = 0  # times the pool woke from zero instances
        self.bell_wakeups = 0  # ... of which by a message on the trigger subject (not by a lag check)
        self.lag_reads_asleep = 0  # lag checks made while asleep at zero (what idling costs the server)
        self._nc = nc
        self._js = js
        self._host_id = host_id()
        self._subject = status_subject(pool.name)
        self._last_report = time.monotonic()
        self._last_settled = 0
        self._last_handle_counts = list(pool.stats.handle.counts)  # handle-time percentiles since the last report
        self._task: asyncio.Task[None] | None = None
        self._request_subscription: Subscription | None = None
        self._stopping = False
        self._lane_lags = [0] * len(pool.consumers)  # the last lag read of each consumer (see _read_lag)
        self._next_lane = 0
        self.oldest_pending = OldestPending(len(pool.consumers))
        self._lane_filters = [pool.function.trigger] * len(pool.consumers)  # each consumer's filter subject
        self._oldest_read: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pool.set_instances(self.scaler.policy.min)
        self._request_subscription = await self._nc.subscribe(STATUS_REQUEST_SUBJECT, cb=self._on_status_request)
        self._task = asyncio.create_task(self._run(), name=f"{self.pool.name}-controller")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _on_status_request(self, _msg: Msg) -> None:
        await self._report()

    async def stop(self) -> None:
        self._stopping = True
        if self._oldest_read is not None:
            self._oldest_read.cancel()
        if self._request_subscription is not None:
            try:
                await self._request_subscription.unsubscribe()
            except nats.errors.Error:
                pass  # the connection is already closed: nothing to unsubscribe from
            self._request_subscription = None
        if self._task is not None:
            self._task.cancel()
            # nats-py can turn a cancellation inside a request into an error; the flag ends the loop anyway.
            await asyncio.wait([self._task], timeout=5)
            self._task = None

    async def _run(self) -> None:
        pool = self.pool
        while not self._stopping:
            try:
                if pool.instances == 0 and pool.in_flight == 0:
                    await self._sleep_until_work()
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. NATS unreachable: keep the current size and try again
                if self._stopping:
                    return
                log.warning("%s: control tick failed: %r", pool.name, exc)
                await asyncio.sleep(1.0)
                continue
            await self._until_next_tick()

    async def _until_next_tick(self) -> None:
        """TICK_S while messages flow; while the pool is quiet, until a fetch brings something, the cooldown
        may end, or the next idle report is due; not at all once it has drained to zero."""
        pool = self.pool
        if pool.instances == 0 and pool.in_flight == 0:
            # Drained to zero: no worker is left whose fetch would set `activity`, so this wait would be deaf
            # until the idle report (5 s; issue 25: single orders after a burst waited seconds). `_run` goes to
            # sleep on the bell at once instead.
            return
        if self.lag > 0 or pool.in_flight > 0 or pool.activity.is_set():
            await asyncio.sleep(AT_MAX_TICK_S if self.lag > 0 and pool.instances >= self.scaler.policy.max else TICK_S)
            return
        timeout = IDLE_REPORT_S
        change_at = self.scaler.next_change_at()
        if change_at is not None:
            timeout = min(timeout, max(TICK_S, change_at - time.monotonic()))
        try:
            await asyncio.wait_for(pool.activity.wait(), timeout)
        except TimeoutError:
            pass

    async def _tick(self) -> None:
        self.pool.activity.clear()  # set again by the next fetch that brings messages
        self.lag = await self._read_lag()
        pool = self.pool
        desired = self.scaler.desired(lag=self.lag, in_flight=pool.in_flight, current=pool.instances, now=time.monotonic())
        if desired != pool.instances:
            log.debug("%s: lag %d, instances %d -> %d", pool.name, self.lag, pool.instances, desired)
            await pool.set_instances(desired)
        await self._report()

    async def _sleep_until_work(self) -> None:
        # Not waiting for stopped workers' last long polls (pool.released): their instances are gone already
        # (`_Worker.stop`), and the bell must listen from now on.
        bell = asyncio.Event()

        async def ring(_msg: Msg) -> None:
            bell.set()

        trigger = self.pool.function.trigger
        subscriptions = [await self._nc.subscribe(trigger, cb=ring)]
        if self.pool.function.order_by:  # keyed publishes: <trigger>.<key>
            subscriptions.append(await self._nc.subscribe(keyed_subject(trigger, "*"), cb=ring))
        try:
            zeros_read, lag_checked, reconnects = 0, 0.0, self._nc.stats["reconnects"]
            while True:
                # Checked after subscribing, so a message published just before is not missed (twice: see the
                # module's docstring); again only when the bell may have missed one (a reconnect), or now and
                # then as a safety net.
                now = time.monotonic()
                if reconnects != self._nc.stats["reconnects"]:
                    zeros_read, reconnects = 0, self._nc.stats["reconnects"]
                if zeros_read < 2 or now - lag_checked >= IDLE_LAG_CHECK_S:
                    self.lag = await self._read_lag(every_lane=True)
                    self.lag_reads_asleep += 1
                    zeros_read, lag_checked = zeros_read + 1, now
                if self.lag > 0:
                    break
                if self.scaler.desired(lag=0, in_flight=0, current=0, now=time.monotonic()) > 0:
                    return  # still inside a cooldown: not idle yet
                await self._report()
                try:
                    await asyncio.wait_for(bell.wait(), IDLE_REPORT_S if zeros_read >= 2 else LAG_CONFIRM_S)
                    self.bell_wakeups += 1
                    break
                except TimeoutError:
                    continue
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()
        self.wakeups += 1
        await self.pool.set_instances(self.scaler.wake(time.monotonic()))

    async def _read_lag(self, every_lane: bool = False) -> int:
        """The backlog of the function's consumers: an ordered function's partitions', summed. Those are read
        LANES_PER_TICK at a time in turn (the others' last reading stands), so the requests per tick stay
        few however many partitions there are; `every_lane`: all at once (waking from zero)."""
        stream, consumers, lags = self.pool.stream, self.pool.consumers, self._lane_lags
        if every_lane or len(consumers) <= LANES_PER_TICK:
            lanes = list(range(len(consumers)))
        else:
            lanes = [(self._next_lane + i) % len(consumers) for i in range(LANES_PER_TICK)]
            self._next_lane = (self._next_lane + LANES_PER_TICK) % len(consumers)
        infos = await asyncio.gather(*(self._js.consumer_info(stream, consumers[lane]) for lane in lanes))
        for lane, info in zip(lanes, infos):
            lags[lane] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            self._lane_filters[lane] = info.config.filter_subject or self.pool.function.trigger
            self.oldest_pending.update(lane, info.ack_floor.stream_seq if info.ack_floor else 0, lags[lane])
        self._read_oldest_pending()
        return sum(lags)

    def _read_oldest_pending(self) -> None:
        """Start reading the stored time of a consumer's oldest unhandled message, when one is due (see
        oldest_pending.py); in a task of its own, so a slow or refused read never holds up a control tick."""
        if self._oldest_read is not None and not self._oldest_read.done():
            return
        due = self.oldest_pending.lane_to_read(time.monotonic())
        if due is None:
            return
        lane, first = due
        self._oldest_read = asyncio.create_task(self._read_stored_at(lane, first), name=f"{self.pool.name}-oldest-pending")

    async def _read_stored_at(self, lane: int, first: int) -> None:
        try:
            stored_at = await first_stored_at(self._nc, self.pool.stream, self._lane_filters[lane], first, OLDEST_READ_TIMEOUT_S)
        except Exception as exc:  # no answer in time, or refused (credentials generated before this read was granted)
            log.debug("%s: cannot read the oldest pending message's time: %r", self.pool.name, exc)
            self.oldest_pending.read_failed(lane, time.monotonic())
            return
        self.oldest_pending.read(lane, first - 1, stored_at, time.monotonic())

    @property
    def oldest_pending_s(self) -> float:
        """Age of the function's oldest unhandled message, at the last readings (0: none)."""
        return self.oldest_pending.age(time.time())

    async def _report(self) -> None:
        pool = self.pool
        stats = pool.stats
        now = time.monotonic()
        dead = stats.dead_lettered + stats.refused
        settled = stats.processed + dead
        elapsed = max(now - self._last_report, 1e-6)
        handle, earlier = stats.handle, self._last_handle_counts
        self._last_handle_counts = list(handle.counts)
        sampled = time.time()  # one clock reading for the report's time and the age in it
        status = PoolStatus(
            function=pool.name,
            host_id=self._host_id,
            time=sampled,
            backlog=self.lag,
            instances=pool.live_instances,
            instance_seconds=stats.instance_seconds_now(),
            in_flight=pool.in_flight,
            processed=stats.processed,
            dead_lettered=dead,
            retried=stats.retried,
            guest_faults=sum(stats.guest_faults.values()),
            rate=(settled - self._last_settled) / elapsed,
            handle_p50_us=handle.quantile_since(earlier, 0.5) * 1e6,
            handle_p99_us=handle.quantile_since(earlier, 0.99) * 1e6,
            oldest_pending_s=self.oldest_pending.age(sampled),
            module_sha256=pool.module.sha256,
            candidate_sha256=pool.candidate_sha256,
            rollout=pool.rollout_stats.counts(),
        )
        self._last_report, self._last_settled = now, settled
        if self._nc.is_connected:
            await self._nc.publish(self._subject, encode_status(status))
