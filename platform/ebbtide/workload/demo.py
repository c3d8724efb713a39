"""`ebbtide demo`: the ZEISS burst on the embedded server, with a live view and a summary.

Ctrl-C (SIGINT, or SIGTERM) stops it where it is: nothing more is published, the functions and the
embedded server stop, and `ebbtide demo` exits with 130 and no summary. The demo waits on a stop event
rather than being cancelled, because a cancellation can be lost: on Python 3.11, `asyncio.wait_for` (which
nats-py's requests use) returns a reply that arrived together with the cancellation and drops the cancel.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..broker import ConfirmedPublisher, connect, kv_stream_name, provision, publish_all
from ..broker.access import embedded_server
from ..build import build_modules
from ..errors import Interrupted
from ..launch import ProcessMode, running
from ..manifest import LoadedManifest
from ..ordering import entry_subject
from ..status_reports import STATUS_SUBJECT_PREFIX, decode_status
from ..stream_state import stream_state
from ..timeseries import TimeSeries
from .charts import write_scaling_chart
from .orders import INGRESS_SUBJECT, encode_order, event_msg_id, generate_order_events, generate_orders

T = TypeVar("T")


class StopSignals:
    """SIGINT and SIGTERM, while installed, set `stop` (the first one's name in `received`)."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.received: signal.Signals | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.received is None:
            self.received = sig
        self.stop.set()

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted(
                f"demo stopped by {self.received.name}: the functions and the embedded server have stopped", self.received
            )

    async def unless_stopped(self, waiting: Awaitable[T]) -> T:
        """`waiting`'s result, or Interrupted when a signal comes first (`waiting` is then cancelled)."""
        work = asyncio.ensure_future(waiting)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([work, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            self.check()
        return work.result()


@dataclass
class DemoResult:
    orders: int
    published: int
    outbox: dict[str, int]  # bucket -> entries (writes, with several events per order)
    dead_letters: int
    wall_s: float  # first publish -> last outbox write (server time of the write)
    expected: dict[str, int]  # bucket -> entries the generated orders should produce
    chart: Path  # SVG of backlog and instances over time, per function
    events_per_order: int = 1

    @property
    def complete(self) -> bool:
        return self.outbox == self.expected and self.dead_letters == 0

    @property
    def orders_per_s(self) -> float:
        return sum(self.outbox.values()) / self.wall_s if self.wall_s > 0 else 0.0


async def run_demo(
    manifest: LoadedManifest,
    orders: int,
    seed: int,
    data_dir: Path,
    mode: ProcessMode,
    timeout: float = 120.0,
    events_per_order: int = 1,
) -> DemoResult:
    """With `events_per_order` > 1, each order's events (created, amended..., cancelled) are published on
    the entry's keyed subject when it is ordered, and the outboxes are counted in writes (one per event).

    Raises Interrupted on SIGINT or SIGTERM, once what it started has stopped."""
    build_modules(manifest)  # before the signals are ours: Ctrl-C during a build interrupts it at once
    signals = StopSignals()
    signals.install()
    try:
        return await _run_demo(manifest, orders, seed, data_dir, mode, timeout, events_per_order, signals)
    finally:
        signals.remove()


async def _run_demo(
    manifest: LoadedManifest,
    orders: int,
    seed: int,
    data_dir: Path,
    mode: ProcessMode,
    timeout: float,
    events_per_order: int,
    signals: StopSignals,
) -> DemoResult:
    shutil.rmtree(data_dir, ignore_errors=True)  # every demo starts from empty streams
    buckets = {"Express": "outbox-express", "Standard": "outbox-standard"}
    expected = {bucket: 0 for bucket in manifest.spec.kv}
    if events_per_order == 1:
        generated = generate_orders(orders, seed=seed)
        payloads = [(encode_order(order), order.order_guid) for order in generated]
    else:
        events = generate_order_events(orders, events_per_order, seed=seed)
        generated, payloads = list(events), [(encode_order(event), event_msg_id(event)) for event in events]
    for order in generated:
        expected[buckets[order.delivery]] += 1
    subject = entry_subject(manifest, INGRESS_SUBJECT)
    count_writes = events_per_order > 1
    functions = list(manifest.spec.functions)

    with embedded_server(manifest, data_dir / "nats", port=0, monitor_port=0) as (server, access):
        nc = await connect(server.url, name="ebbtide-demo", auth=access.admin)
        try:
            await provision(nc.jetstream(), manifest)  # the admin step `up` runs too: hosts never provision
            series = TimeSeries(start=time.time())
            ready = asyncio.Event()

            async def record(msg) -> None:  # type: ignore[no-untyped-def]
                series.add(decode_status(msg.data))
                if set(series.functions()) >= set(functions):
                    ready.set()

            # Subscribed before the functions start, so their first reports say when they are ready.
            await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=record)
            async with running(manifest, access, mode):
                await signals.unless_stopped(asyncio.wait_for(ready.wait(), 60))
                print(f"embedded nats-server at {server.url}; functions ({mode} process mode): {', '.join(functions)}")
                publisher = ConfirmedPublisher(nc)
                await publisher.start()
                what = f"{orders} orders" + (f" x {events_per_order} events" if events_per_order > 1 else "")
                print(f"publishing {what} to {INGRESS_SUBJECT}{'.<key>' if callable(subject) else ''} ...")
                started = time.time()
                series.start = started
                publishing = asyncio.create_task(publish_all(publisher, subject, payloads))
                try:
                    outbox, dead = await _watch(nc, manifest, sum(expected.values()), started, timeout, signals, count_writes)
                except Interrupted:
                    publishing.cancel()  # publish no more
                    await asyncio.gather(publishing, return_exceptions=True)
                    raise
                published, errors = await publishing
                if errors:
                    print(f"{len(errors)} publishes failed, first: {errors[0]}", file=sys.stderr)
                states = [await stream_state(nc, kv_stream_name(b)) for b in expected]
                last_write = max((s.last_ts.timestamp() for s in states if s.last_ts is not None), default=started)
                drain_s = max(manifest.function(f).scale.cooldown_s for f in functions) + 5
                await signals.unless_stopped(_until_drained(series, functions, timeout=drain_s))
        finally:
            await nc.drain()
    chart = write_scaling_chart(
        series.series(), data_dir / "scaling.svg", title=f"ebbtide demo: {orders} orders, {mode} process mode"
    )
    (data_dir / "scaling.json").write_bytes(series.to_json())
    return DemoResult(orders, published, outbox, dead, max(last_write - started, 0.0), expected, chart, events_per_order)


async def _until_drained(series: TimeSeries, functions: list[str], timeout: float) -> None:
    """Let the chart show the pools falling back to zero after the cooldown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = [samples[-1] for samples in series.series().values() if samples]
        if len(latest) == len(functions) and all(s.instances == 0 for s in latest):
            return
        await asyncio.sleep(0.1)


async def _watch(
    nc, manifest: LoadedManifest, total: int, started: float, timeout: float, signals: StopSignals, count_writes: bool = False
) -> tuple[dict[str, int], int]:
    """Show progress until every order is in an outbox (or dead-lettered), the timeout, or a stop signal.
    `count_writes`: count an outbox's writes (every event of an order), not its entries."""
    live = sys.stdout.isatty()
    last_print = 0.0
    while True:
        if signals.stop.is_set():
            if live:
                print(flush=True)  # end the live line
            signals.check()
        states = {b: await stream_state(nc, kv_stream_name(b)) for b in manifest.spec.kv}
        outbox = {b: state.last_seq if count_writes else state.messages for b, state in states.items()}
        dead = (await stream_state(nc, manifest.spec.dead_letter.stream)).messages
        done = sum(outbox.values()) + dead
        now = time.time()
        finished = done >= total or now - started > timeout
        if finished or now - last_print >= (0.1 if live else 1.0):
            line = f"  {now - started:6.2f} s  " + "  ".join(f"{b}: {n}" for b, n in outbox.items()) + f"  dead letters: {dead}"
            print(("\r" + line) if live else line, end="" if live and not finished else "\n", flush=True)
            last_print = now
        if finished:
            return outbox, dead
        await asyncio.sleep(0.01)


def print_summary(result: DemoResult) -> None:
    print()
    events = result.events_per_order
    print(
        f"orders published     {result.published} / {result.orders}"
        if events == 1
        else f"events published     {result.published} / {result.orders * events} ({result.orders} orders x {events})"
    )
    for bucket, count in result.outbox.items():
        print(f"{bucket:<20} {count} (expected {result.expected[bucket]})")
    print(f"dead letters         {result.dead_letters}")
    print(f"wall time            {result.wall_s:.3f} s (first publish -> last outbox write)")
    print(f"throughput           {result.orders_per_s:,.0f} {'orders' if events == 1 else 'events'}/s")
    print(f"scaling chart        {result.chart}")
    done = "every order is in its outbox exactly once" if events == 1 else "every event written to its order's outbox once"
    print("result               " + (f"OK: {done}" if result.complete else "INCOMPLETE"))
