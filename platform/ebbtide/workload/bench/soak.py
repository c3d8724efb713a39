"""`ebbtide bench --scenario soak [--minutes M]`: the ZEISS day shape, minute after minute, watched for growth.

For each manifest (the reference, unordered; and ordered: every function `order_by = "orderGuid"`, ORDERS in
8 partitions, as deploy/ordered/ebbtide.toml, EVENTS_PER_ORDER events per order) on an embedded nats-server
of its own, with one `ebbtide run` process per function and REPLICAS of `receiver-express`, each minute is:

- a burst at its start (10,000 orders; --orders changes it; for the ordered manifest that many events, in
  orders of EVENTS_PER_ORDER), published at once;
- once the burst is in its outboxes, a trickle: one order every TRICKLE_EVERY_S (ordered: its events at once,
  each waiting for the one before), each message timed from its publish to the distributor's output for it
  and to its outbox write, through every pool's cooldown and wake-up from zero;
- QUIET_S without publishing at its end, so the pools drain to zero, then the sample, once every pool is at
  rest (no instance, nothing in flight, its task count settled): every process's
  `/metrics` (resident and private memory, open fds, asyncio tasks, gc-tracked objects, each function's
  handle-time histogram), the server's resident memory and JetStream store size, the backlog.

After warm-up (the first minutes, WARM_UP_MIN) the slope of each per-process series is fitted (least squares)
and given per 10,000 orders; the burst's end-to-end p99 (publish to outbox write, over the burst's orders)
of the last third of the minutes is compared with the first third after warm-up; the trickle's p99 and
worst. At the end every order is checked in its outbox exactly once: writes counted (the bucket stream's
last sequence against the writes expected), each stored value compared with the last event published for
its order. Figures print as a Markdown table; the series go to results.json and `soak-<manifest>.svg`.

Each burst is also measured for the capacity model (issue 32): the cores two busy processes get just before it
(in the quiet), and per function, over the burst's drain, its processes' instance-seconds and the most
instances they ran at once (from their status reports). After the unordered manifest's minutes, a profile of
the machine is measured (capacity.measure_profile) and the model predicts each minute after warm-up from it
(`model_check`): drain, mean instances while draining and peak instances, beside the measured ones.

The machine's load moves every figure but the counts: quote the load average with them. Each process's log
goes to `logs-<manifest>/<process>.log` in the output folder.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from ...broker import ConfirmedPublisher, EmbeddedNats, connect, free_port, provision
from ...broker.publisher import publish_all
from ...capacity.profile import Profile
from ...manifest import LoadedManifest
from ...ordering import entry_subject
from ...status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX
from ...telemetry.gc_pauses import GC_PAUSE_BUCKETS_S
from ...telemetry.histogram import HANDLE_BUCKETS_S
from ..charts import write_line_chart
from ..orders import INGRESS_SUBJECT, encode_order, event_msg_id, generate_order_events, generate_orders
from . import implementations as impls
from .capacity import TOLERANCE, HostSamples, cores_probe, measure_profile, modelled_cpu_per_order, predict
from .comparison import cpu_seconds
from .options import BenchOptions
from .ordering import ORDERED, ordered_variant
from .report import BenchReport, Section
from .stats import percentile

MINUTE_S = 60.0
WARM_UP_MIN = 3  # minutes left out of the slopes (fewer in a short run: at least two minutes are fitted)
TRICKLE_EVERY_S = 2.0
QUIET_S = 12.0  # the end of each minute: nothing published, pools drain (cooldown 5 s), then the sample
REST_CHECK_S = 1.5  # at rest: two scrapes this far apart agree on every process's task count
AT_REST_WAIT_S = 120.0  # past the minute's end, the longest the sample waits for every pool to be at rest
EVENTS_PER_ORDER = 3  # the ordered manifest's orders: created, amended, cancelled
REPLICAS = {"receiver-express": 2}  # processes per function (others: 1)
ORDER_ID_STRIDE = 1_000_000  # minute k's orders: ids from 1 + k * stride (trickle from the middle of it)
# The bounds (issue 25) for a 30-minute soak; printed beside each figure, asserted by the CI soak.
RSS_SLOPE_BOUND_MIB = 0.1  # per process, MiB per 10,000 orders after warm-up
BURST_P99_RATIO_BOUND = 1.2  # last third of the minutes against the first third after warm-up
TRICKLE_P99_BOUND_MS = 50.0


@dataclass
class ProcessSample:
    rss_mib: float
    private_mib: float
    fds: float
    tasks: float
    gc_objects: float
    gc_pause_ms: float = 0.0  # the process's longest garbage collection in the minute (its bucket's upper bound)


@dataclass
class Minute:
    index: int
    orders: int  # orders published this minute (burst and trickle)
    burst_messages: int
    burst_p99_ms: float
    burst_drain_s: float  # from the burst's first publish until its last outbox write
    peak_backlog: int  # the largest backlog seen during the minute
    backlog_at_sample: int
    trickle_ms: list[float]
    handle_p99_ms: dict[str, float]  # per function, over its processes, this minute
    processes: dict[str, ProcessSample]
    server_rss_mib: float
    store_mib: float
    load_average: float
    at_rest: bool  # sampled with every pool at zero and nothing in flight (else: at AT_REST_WAIT_S past the minute)
    # Per trickle message, as trickle_ms: from its publish until the distributor's output for it was published
    # (the rest of trickle_ms is the receiver's hop): which hop a slow one waited in.
    trickle_routed_ms: list[float] = field(default_factory=list)
    bench_gc_pause_ms: float = 0.0  # this (the measuring) process's longest garbage collection in the minute
    # For the capacity model's check (issue 32): the cores two busy processes got just before the burst
    # (capacity.cores_probe), and per function over the burst's drain (its first publish to its last outbox
    # write), its processes' instance-seconds and the most instances they ran at once (from status reports).
    cores_probed: float = math.nan
    instance_seconds: dict[str, float] = field(default_factory=dict)
    peak_instances: dict[str, int] = field(default_factory=dict)
    # CPU seconds per message of the burst (an order unordered, an event ordered), from its first publish to
    # its last outbox write: each function's processes together, "nats-server", and "publisher" (this process:
    # publishing, and timing every write)
    cpu_per_order: dict[str, float] = field(default_factory=dict)


@dataclass
class Slope:
    first: float
    last: float
    per_10k_orders: float  # least-squares slope after warm-up, per 10,000 orders


@dataclass
class SoakResult:
    manifest: str
    minutes: list[Minute] = field(default_factory=list)
    warm_up: int = 0
    slopes: dict[str, dict[str, Slope]] = field(default_factory=dict)  # process -> series -> slope
    server_slopes: dict[str, Slope] = field(default_factory=dict)
    burst_p99_early_ms: float = math.nan
    burst_p99_late_ms: float = math.nan
    trickle_p99_ms: float = math.nan  # the largest per-minute p99
    trickle_max_ms: float = math.nan
    expected_writes: int = 0
    writes: int = 0
    stored: int = 0
    lost: int = 0
    written_twice: int = 0
    values_differing: int = 0
    dead_letters: int = 0

    @property
    def burst_ratio(self) -> float:
        return self.burst_p99_late_ms / self.burst_p99_early_ms if self.burst_p99_early_ms > 0 else math.nan

    def worst_rss_slope(self) -> tuple[str, float]:
        name, series = max(self.slopes.items(), key=lambda item: item[1]["rss_mib"].per_10k_orders)
        return name, series["rss_mib"].per_10k_orders


class _MeasuringGc:
    """This process's garbage collection while it measures. It times every message with its own clock, so a
    collection while messages arrive adds to their measured latency; with a run's bookkeeping (a million
    entries by its end) a full collection took 230 ms on the development machine. So what it holds after each
    minute is frozen (out of the collector's reach; unfrozen at the end), and the longest collection of each
    minute is recorded beside the latencies (16-82 ms a minute in a 30-minute ordered soak: not the cause of
    its rare slow trickle orders, 2026-12-07)."""

    def __init__(self) -> None:
        self._started = 0.0
        self._longest = 0.0

    def __enter__(self) -> _MeasuringGc:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    def keep_what_is_there(self) -> None:
        gc.freeze()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._longest = max(self._longest, time.perf_counter() - self._started)

    def longest_pause(self) -> float:
        """Seconds: the longest collection since the last call."""
        longest, self._longest = self._longest, 0.0
        return longest


class _Writes:
    """Every outbox write as it happens (a core subscription on the buckets' subjects): when, for which message."""

    def __init__(self, ordered: bool) -> None:
        self.at: dict[tuple[str, int], float] = {}  # (order id, event seq) -> monotonic time of its write
        self.routed_at: dict[tuple[str, int], float] = {}  # ... of the distributor's output for it (trickle only)
        self.trickle: set[tuple[str, int]] = set()  # the trickle's messages: the only ones routed_at keeps
        self._ordered = ordered

    def on_write(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[1]
        seq = _decode_seq(msg.data).event_seq if self._ordered else 0
        self.at.setdefault((key, seq), time.monotonic())

    def on_routed(self, msg: Msg) -> None:
        try:
            routed = _decode_routed(msg.data)
        except msgspec.DecodeError:
            return
        key = (str(routed.order_id), routed.event_seq if self._ordered else 0)
        if key in self.trickle:  # not the bursts': a million more entries for the collector to scan
            self.routed_at.setdefault(key, time.monotonic())


class _Seq(msgspec.Struct):
    event_seq: int = msgspec.field(name="eventSeq", default=0)


class _Routed(_Seq):
    order_id: int = msgspec.field(name="orderId", default=0)


_decode_seq = msgspec.json.Decoder(_Seq).decode
_decode_routed = msgspec.json.Decoder(_Routed).decode


def _messages(first_id: int, count: int, seed: int, ordered: bool) -> list[tuple[bytes, str, tuple[str, int], str]]:
    """(payload, Nats-Msg-Id, write key, bucket) of `count` messages: orders, or events of count/EVENTS orders."""
    out = []
    if ordered:
        for event in generate_order_events(max(1, count // EVENTS_PER_ORDER), EVENTS_PER_ORDER, seed, first_id):
            out.append((encode_order(event), event_msg_id(event), (str(event.order_id), event.event_seq), event.delivery))
    else:
        for order in generate_orders(count, seed, first_id):
            out.append((encode_order(order), order.order_guid, (str(order.order_id), 0), order.delivery))
    return out


def _scrape(port: int) -> dict[str, float]:
    """A process's /metrics, as `name{labels}` -> value (histogram buckets included)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _bucket_counts(metrics: dict[str, float], histogram: str, bounds: Sequence[float], labels: str = "") -> list[float]:
    """The cumulative counts of a histogram of the scrape, by bucket (+Inf last); `labels`: `name="value",`."""
    counts = []
    for bound in (*bounds, math.inf):
        le = "+Inf" if bound == math.inf else repr(float(bound))
        counts.append(metrics.get(f'{histogram}_bucket{{{labels}le="{le}"}}', 0.0))
    return counts


def _handle_counts(metrics: dict[str, float], function: str) -> list[float]:
    return _bucket_counts(metrics, "ebbtide_handle_duration_seconds", HANDLE_BUCKETS_S, f'function="{function}",')


def _gc_pause_counts(metrics: dict[str, float]) -> list[float]:
    return _bucket_counts(metrics, "ebbtide_process_gc_pause_seconds", GC_PAUSE_BUCKETS_S)


def _longest_ms(before: Sequence[float], now: Sequence[float], bounds: Sequence[float]) -> float:
    """The upper bound (ms) of the highest bucket a cumulative histogram gained in since `before`; 0 if none."""
    gained = [n - b for n, b in zip(now, before)]  # cumulative: a bucket's own gain is its step over the one below
    longest = 0.0
    for bound, below, here in zip((*bounds, math.inf), [0.0, *gained], gained):
        if here > below:
            longest = bound * 1000
    return longest


def _p99_from_buckets(cumulative: Sequence[float]) -> float:
    """The upper bound (ms) of the bucket holding the 99th percentile of a cumulative histogram; 0 if empty."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return 0.0
    for bound, count in zip((*HANDLE_BUCKETS_S, math.inf), cumulative):
        if count >= 0.99 * total:
            return bound * 1000 if bound != math.inf else math.inf
    return math.inf


def _proc_mib(pid: int) -> tuple[float, float]:
    """(resident, private) MiB of a process, from /proc; NaN where it cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            kib = sum(int(line.split()[1]) for line in rollup if line.startswith((b"Private_Clean:", b"Private_Dirty:")))
        return rss, kib / 1024
    except (OSError, ValueError, IndexError):
        return math.nan, math.nan


def _store_mib(server: EmbeddedNats) -> float:
    try:
        with urllib.request.urlopen(f"{server.monitor_url}/jsz", timeout=5) as reply:
            return float(msgspec.json.decode(reply.read()).get("storage", 0)) / 2**20
    except (OSError, ValueError):
        return math.nan


def fit_slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 for fewer than two distinct x)."""
    finite = [(x, y) for x, y in points if math.isfinite(y)]
    if len(finite) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in finite)
    mean_y = statistics.fmean(y for _, y in finite)
    spread = sum((x - mean_x) ** 2 for x, _ in finite)
    return sum((x - mean_x) * (y - mean_y) for x, y in finite) / spread if spread > 0 else 0.0


def slopes_per_10k_orders(minutes: Sequence[Minute], warm_up: int, series: Callable[[Minute], float]) -> Slope:
    """`series` after warm-up against the orders published so far: its slope per 10,000 orders."""
    cumulative, points = 0, []
    for minute in minutes:
        cumulative += minute.orders
        if minute.index >= warm_up:
            points.append((cumulative / 10_000, series(minute)))
    values = [series(m) for m in minutes]
    return Slope(values[0] if values else math.nan, values[-1] if values else math.nan, fit_slope(points))


class _Processes:
    """One `ebbtide run --function F` process per function (REPLICAS of some), each with its own /metrics port."""

    def __init__(self, manifest: LoadedManifest, url: str, logs: Path) -> None:
        self.manifest, self.url, self.logs = manifest, url, logs
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self._processes: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for function in self.manifest.spec.functions:
            for replica in range(REPLICAS.get(function, 1)):
                name = f"{function}#{replica + 1}" if REPLICAS.get(function, 1) > 1 else function
                port = free_port()
                self.logs.mkdir(parents=True, exist_ok=True)
                with open(self.logs / f"{name}.log", "wb") as log:  # the child keeps its own copy open
                    process = await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "ebbtide", "--manifest", str(self.manifest.path), "--log-format", "json"),
                        *("run", "--function", function, "--nats-url", self.url, "--metrics-port", str(port)),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                self._processes.append(process)
                self.ports[name], self.pids[name] = port, process.pid

    async def ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for name, port in self.ports.items():
            while True:
                try:
                    await asyncio.to_thread(_scrape, port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"soak: {name} did not serve /metrics within {timeout:.0f} s") from None
                    await asyncio.sleep(0.25)

    async def stop(self) -> None:
        for process in self._processes:
            if process.returncode is None:
                process.terminate()
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _backlog(nc: NatsClient, stream: str = "ORDERS") -> int:
    infos = await nc.jetstream().consumers_info(stream)
    return sum(int(c.num_pending or 0) + int(c.num_ack_pending or 0) for c in infos)


async def run_soak(manifest: LoadedManifest, label: str, minutes: int, burst: int, out_dir: Path, warm_up: int) -> SoakResult:
    """One manifest's soak on a server of its own; `label` is "unordered" or "ordered"."""
    ordered = label == "ordered"
    folder = out_dir / "variants"
    loaded = (
        impls.write_variant(ordered_variant(manifest), ORDERED, folder)
        if ordered
        else impls.write_variant(manifest, impls.DEFAULT, folder)
    )
    result = SoakResult(label, warm_up=warm_up)
    writes = _Writes(ordered)
    expected_last: dict[tuple[str, str], int] = {}  # (bucket, order id) -> hash of its last payload
    expected_writes: dict[str, int] = {"express": 0, "standard": 0}
    data_dir = out_dir / f"nats-soak-{label}"
    # A fresh store: an earlier run's orders (same ids, same keys) would count as this run's writes.
    shutil.rmtree(data_dir, ignore_errors=True)
    with EmbeddedNats(data_dir, port=0, monitor_port=0) as server, _MeasuringGc() as measuring_gc:
        nc = await connect(server.url, name=f"ebbtide-bench-soak-{label}")
        processes = _Processes(loaded, server.url, out_dir / f"logs-{label}")
        try:
            await provision(nc.jetstream(), loaded)
            for bucket in ("outbox-express", "outbox-standard"):
                await nc.subscribe(f"$KV.{bucket}.>", cb=_sync(writes.on_write))
            for fn in loaded.spec.functions.values():  # the distributor's outputs: the receivers' triggers
                if fn.trigger != INGRESS_SUBJECT:
                    for routed in (fn.trigger, f"{fn.trigger}.>"):
                        await nc.subscribe(routed, cb=_sync(writes.on_routed))
            publisher = ConfirmedPublisher(nc)
            await publisher.start()
            subject = entry_subject(loaded, INGRESS_SUBJECT)
            host_samples = HostSamples()
            await nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=host_samples.on_report)
            await processes.start()
            await processes.ready()
            await nc.publish(STATUS_REQUEST_SUBJECT, b"")
            first_scrapes = {name: await asyncio.to_thread(_scrape, port) for name, port in processes.ports.items()}
            previous_handle = {name: _handle_counts(metrics, name.split("#")[0]) for name, metrics in first_scrapes.items()}
            previous_gc = {name: _gc_pause_counts(metrics) for name, metrics in first_scrapes.items()}
            assert server.pid is not None
            cpu_pids: dict[str, list[int]] = {"nats-server": [server.pid], "publisher": [os.getpid()]}
            for name, pid in processes.pids.items():
                cpu_pids.setdefault(name.split("#")[0], []).append(pid)
            for index in range(minutes):
                cores = await cores_probe()  # in the quiet before the minute: the machine the burst will get
                minute_start = time.monotonic()
                messages = _messages(1 + index * ORDER_ID_STRIDE, burst, 250 + index, ordered)
                for payload, _, key, delivery in messages:
                    expected_last[(delivery.lower(), key[0])] = hash(payload)
                    expected_writes[delivery.lower()] += 1
                peak = 0

                async def watch_backlog() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, await _backlog(nc))
                        await asyncio.sleep(1.0)

                watcher = asyncio.create_task(watch_backlog())
                await host_samples.reports_since(nc, time.time(), hosts=len(processes.ports))  # every count before the burst
                cpu_before = {name: sum(map(cpu_seconds, pids)) for name, pids in cpu_pids.items()}
                burst_start, burst_start_unix = time.monotonic(), time.time()
                confirmed, errors = await publish_all(publisher, subject, [(p, i) for p, i, _, _ in messages])
                if errors:
                    raise RuntimeError(f"soak: {len(errors)} burst publishes not confirmed, e.g. {errors[0]}")
                keys = [key for _, _, key, _ in messages]
                quiet_at = minute_start + MINUTE_S - QUIET_S
                while not all(k in writes.at for k in keys) and time.monotonic() < minute_start + MINUTE_S * 3:
                    await asyncio.sleep(0.05)
                cpu_per_order = {
                    name: (sum(map(cpu_seconds, pids)) - cpu_before[name]) / len(messages) for name, pids in cpu_pids.items()
                }
                burst_ms = [(writes.at.get(k, math.inf) - burst_start) * 1000 for k in keys]
                drain_s = max(burst_ms) / 1000
                burst_end_unix = burst_start_unix + drain_s
                await host_samples.reports_since(nc, burst_end_unix)  # each process's count just after the drain
                functions = loaded.spec.functions
                instance_seconds = {f: host_samples.instance_seconds(f, burst_start_unix, burst_end_unix) for f in functions}
                peak_instances = {f: host_samples.peak(f, burst_start_unix, burst_end_unix) for f in functions}
                # The trickle: through the rest of the minute, until its quiet end.
                trickle_ms: list[float] = []
                trickle_routed_ms: list[float] = []
                trickle_orders = 0
                n = 0
                while time.monotonic() + TRICKLE_EVERY_S < quiet_at:
                    await asyncio.sleep(TRICKLE_EVERY_S)
                    one = _messages(
                        1 + index * ORDER_ID_STRIDE + ORDER_ID_STRIDE // 2 + n,
                        EVENTS_PER_ORDER if ordered else 1,
                        10_000 + index * 1000 + n,
                        ordered,
                    )
                    n += 1
                    trickle_orders += 1
                    for payload, _, key, delivery in one:
                        expected_last[(delivery.lower(), key[0])] = hash(payload)
                        expected_writes[delivery.lower()] += 1
                    writes.trickle.update(key for _, _, key, _ in one)
                    sent = time.monotonic()
                    await publish_all(publisher, subject, [(p, i) for p, i, _, _ in one])
                    last_key = one[-1][2]
                    while last_key not in writes.at and time.monotonic() < sent + 10:
                        await asyncio.sleep(0.001)
                    trickle_ms += [(writes.at.get(key, math.inf) - sent) * 1000 for _, _, key, _ in one]
                    trickle_routed_ms += [(writes.routed_at.get(key, math.inf) - sent) * 1000 for _, _, key, _ in one]
                await asyncio.sleep(max(0.0, minute_start + MINUTE_S - 1.0 - time.monotonic()))
                watcher.cancel()
                # The sample, at the quiet end of the minute, once every pool is at rest (no instance, nothing
                # in flight), so that every minute's sample is taken in the same state.
                scraped, at_rest = await _at_rest(processes, deadline=minute_start + MINUTE_S + AT_REST_WAIT_S)
                samples: dict[str, ProcessSample] = {}
                handle_p99: dict[str, float] = {}
                per_function: dict[str, list[float]] = {}
                for name, metrics in scraped.items():
                    gc_counts = _gc_pause_counts(metrics)
                    gc_pause_ms = _longest_ms(previous_gc[name], gc_counts, GC_PAUSE_BUCKETS_S)
                    previous_gc[name] = gc_counts
                    samples[name] = ProcessSample(
                        rss_mib=metrics.get("ebbtide_process_resident_memory_bytes", math.nan) / 2**20,
                        private_mib=metrics.get("ebbtide_process_private_memory_bytes", math.nan) / 2**20,
                        fds=metrics.get("ebbtide_process_open_fds", math.nan),
                        tasks=metrics.get("ebbtide_process_asyncio_tasks", math.nan),
                        gc_objects=metrics.get("ebbtide_process_gc_objects", math.nan),
                        gc_pause_ms=gc_pause_ms,
                    )
                    function = name.split("#")[0]
                    counts = _handle_counts(metrics, function)
                    delta = [now - before for now, before in zip(counts, previous_handle[name])]
                    previous_handle[name] = counts
                    merged = per_function.setdefault(function, [0.0] * len(delta))
                    per_function[function] = [a + b for a, b in zip(merged, delta)]
                for function, delta in per_function.items():
                    handle_p99[function] = _p99_from_buckets(delta)
                server_rss, _ = _proc_mib(server.pid)
                minute = Minute(
                    index=index,
                    orders=len({k[0] for k in keys}) + trickle_orders,
                    burst_messages=confirmed,
                    burst_p99_ms=percentile(burst_ms, 0.99),
                    burst_drain_s=drain_s,
                    peak_backlog=peak,
                    backlog_at_sample=await _backlog(nc),
                    trickle_ms=trickle_ms,
                    trickle_routed_ms=trickle_routed_ms,
                    handle_p99_ms=handle_p99,
                    processes=samples,
                    server_rss_mib=server_rss,
                    store_mib=await asyncio.to_thread(_store_mib, server),
                    load_average=os.getloadavg()[0],
                    at_rest=at_rest,
                    bench_gc_pause_ms=measuring_gc.longest_pause() * 1000,
                    cores_probed=cores,
                    instance_seconds=instance_seconds,
                    peak_instances=peak_instances,
                    cpu_per_order=cpu_per_order,
                )
                measuring_gc.keep_what_is_there()
                result.minutes.append(minute)
                trickle = f"{percentile(trickle_ms, 0.99):.1f}" if trickle_ms else "-"
                slowest = max(range(len(trickle_ms)), key=trickle_ms.__getitem__, default=None)
                if slowest is not None and trickle_ms[slowest] > TRICKLE_P99_BOUND_MS:
                    trickle += (
                        f" (slowest {trickle_ms[slowest]:.0f} ms: {trickle_routed_ms[slowest]:.0f} to the distributor's "
                        f"output, {trickle_ms[slowest] - trickle_routed_ms[slowest]:.0f} from there to its outbox)"
                    )
                print(
                    f"  soak {label} minute {index + 1}/{minutes}: burst {confirmed:,} in {drain_s:.1f} s "
                    f"(p99 {minute.burst_p99_ms:,.0f} ms), trickle p99 {trickle} ms over {len(trickle_ms)}, "
                    f"peak backlog {peak:,}, RSS "
                    + ", ".join(f"{name} {s.rss_mib:.1f}" for name, s in samples.items())
                    + f" MiB, server {server_rss:.0f} MiB, store {minute.store_mib:.0f} MiB, load {minute.load_average:.1f}, "
                    f"longest GC: this process {minute.bench_gc_pause_ms:.0f} ms, "
                    + ", ".join(f"{name} <= {s.gc_pause_ms:g}" for name, s in samples.items())
                    + f" ms; cores probed {cores:.2f}, mean instances while draining "
                    + ", ".join(f"{f} {v / drain_s:.1f}" for f, v in instance_seconds.items())
                    + f", CPU per message {sum(cpu_per_order.values()) * 1e6:.0f} µs",
                    flush=True,
                )
            await _account(nc, result, writes, expected_last, expected_writes)
        finally:
            await processes.stop()
            await nc.close()
    _fit(result)
    return result


async def _at_rest(processes: _Processes, deadline: float) -> tuple[dict[str, dict[str, float]], bool]:
    """Every process's /metrics once all its pools hold no instance and nothing in flight, and its tasks have
    stopped changing (a stopped worker ends its last long poll, an ordered pool's feed closes, a moment after
    its instance is gone): (metrics, True); or as they are at `deadline`: (metrics, False)."""
    previous: dict[str, float] | None = None
    while True:
        scraped = {name: await asyncio.to_thread(_scrape, port) for name, port in processes.ports.items()}
        busy = sum(
            value
            for metrics in scraped.values()
            for name, value in metrics.items()
            if name.startswith(("ebbtide_instances{", "ebbtide_in_flight{"))
        )
        tasks = {name: metrics.get("ebbtide_process_asyncio_tasks", math.nan) for name, metrics in scraped.items()}
        if busy == 0 and tasks == previous:
            return scraped, True
        if time.monotonic() > deadline:
            return scraped, False
        previous = tasks if busy == 0 else None
        await asyncio.sleep(REST_CHECK_S)


def _sync(callback: Callable[[Msg], None]) -> Callable[[Msg], Any]:
    async def run(msg: Msg) -> None:
        callback(msg)

    return run


async def _account(
    nc: NatsClient,
    result: SoakResult,
    writes: _Writes,
    expected_last: dict[tuple[str, str], int],
    expected_writes: dict[str, int],
) -> None:
    """Every order in its outbox exactly once: writes counted from the buckets' streams, values compared."""
    js = nc.jetstream()
    deadline = time.monotonic() + 300
    while await _backlog(nc) > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    result.expected_writes = sum(expected_writes.values())
    for delivery in ("express", "standard"):
        bucket = f"outbox-{delivery}"
        state = (await js.stream_info(f"KV_{bucket}")).state
        wanted = {key for (d, key) in expected_last if d == delivery}
        stored: dict[str, int] = {}
        subscription = await js.subscribe(f"$KV.{bucket}.>", ordered_consumer=True)
        try:
            for _ in range(state.messages):
                msg = await subscription.next_msg(timeout=30)
                stored[msg.subject.rsplit(".", 1)[1]] = hash(msg.data)
        finally:
            await subscription.unsubscribe()
        result.writes += state.last_seq
        result.stored += len(wanted & stored.keys())
        result.lost += len(wanted - stored.keys())
        result.written_twice += state.last_seq - expected_writes[delivery]
        result.values_differing += sum(1 for key in wanted & stored.keys() if stored[key] != expected_last[(delivery, key)])
    result.dead_letters = (await js.stream_info("DLQ")).state.messages


def _fit(result: SoakResult) -> None:
    minutes, warm_up = result.minutes, result.warm_up
    if not minutes:
        return
    for name in minutes[0].processes:
        result.slopes[name] = {
            series: slopes_per_10k_orders(minutes, warm_up, lambda m, s=series, n=name: getattr(m.processes[n], s))  # type: ignore[misc]
            for series in ("rss_mib", "private_mib", "fds", "tasks", "gc_objects")
        }
    result.server_slopes = {
        "rss_mib": slopes_per_10k_orders(minutes, warm_up, lambda m: m.server_rss_mib),
        "store_mib": slopes_per_10k_orders(minutes, warm_up, lambda m: m.store_mib),
    }
    after = [m for m in minutes if m.index >= warm_up] or list(minutes)
    third = max(1, len(after) // 3)
    result.burst_p99_early_ms = statistics.median(m.burst_p99_ms for m in after[:third])
    result.burst_p99_late_ms = statistics.median(m.burst_p99_ms for m in after[-third:])
    trickles = [percentile(m.trickle_ms, 0.99) for m in minutes if m.trickle_ms]
    result.trickle_p99_ms = max(trickles) if trickles else math.nan
    result.trickle_max_ms = max((max(m.trickle_ms) for m in minutes if m.trickle_ms), default=math.nan)


def markdown(results: Sequence[SoakResult]) -> str:
    """The table the README quotes: per process, its slopes; per manifest, latency and exactly-once."""
    lines = [
        "| manifest | process | RSS MiB first → last | RSS slope MiB / 10k orders | private slope | fds | tasks | gc objects / 10k orders |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        after = [m for m in result.minutes if m.index >= result.warm_up]
        for name, series in result.slopes.items():
            fds = sorted({int(m.processes[name].fds) for m in after if math.isfinite(m.processes[name].fds)})
            tasks = sorted({int(m.processes[name].tasks) for m in after if math.isfinite(m.processes[name].tasks)})
            lines.append(
                f"| {result.manifest} | {name} | {series['rss_mib'].first:.1f} → {series['rss_mib'].last:.1f} "
                f"| {series['rss_mib'].per_10k_orders:+.3f} | {series['private_mib'].per_10k_orders:+.3f} "
                f"| {_span(fds)} | {_span(tasks)} | {series['gc_objects'].per_10k_orders:+,.0f} |"
            )
        server = result.server_slopes
        lines.append(
            f"| {result.manifest} | nats-server | {server['rss_mib'].first:.1f} → {server['rss_mib'].last:.1f} "
            f"| {server['rss_mib'].per_10k_orders:+.3f} | store {server['store_mib'].first:.0f} → "
            f"{server['store_mib'].last:.0f} MiB, {server['store_mib'].per_10k_orders:+.2f} MiB / 10k orders | | | |"
        )
    lines += [
        "",
        "| manifest | minutes (warm-up) | orders | burst p99 ms, first → last third (load average) | ratio "
        "| trickle p99 ms: median minute / worst minute / max | handle p99 ms (median minute; a bucket's upper bound) "
        "| burst drained in s (median) | stored / lost / written twice / values differing / dead letters |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for result in results:
        functions = sorted({f for m in result.minutes for f in m.handle_p99_ms})
        handle = ", ".join(f"{f} {statistics.median(m.handle_p99_ms.get(f, 0.0) for m in result.minutes):.2f}" for f in functions)
        after = [m for m in result.minutes if m.index >= result.warm_up] or list(result.minutes)
        third = max(1, len(after) // 3)
        early_load = statistics.fmean(m.load_average for m in after[:third])
        late_load = statistics.fmean(m.load_average for m in after[-third:])
        trickles = [percentile(m.trickle_ms, 0.99) for m in result.minutes if m.trickle_ms]
        median_trickle = statistics.median(trickles) if trickles else math.nan
        lines.append(
            f"| {result.manifest} | {len(result.minutes)} ({result.warm_up}) | {sum(m.orders for m in result.minutes):,} "
            f"| {result.burst_p99_early_ms:,.0f} ({early_load:.1f}) → {result.burst_p99_late_ms:,.0f} ({late_load:.1f}) "
            f"| {result.burst_ratio:.2f} | {median_trickle:.1f} / {result.trickle_p99_ms:.1f} / {result.trickle_max_ms:.1f} | {handle} "
            f"| {statistics.median(m.burst_drain_s for m in result.minutes):.1f} "
            f"| {result.stored:,} / {result.lost} / {result.written_twice} / {result.values_differing} / {result.dead_letters} |"
        )
    loads = [m.load_average for r in results for m in r.minutes]
    lines += ["", f"Load average (1 min) during the run: {min(loads):.1f} to {max(loads):.1f}." if loads else ""]
    return "\n".join(lines)


def _span(values: Sequence[int]) -> str:
    if not values:
        return "-"
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}–{values[-1]}"


def write_chart(result: SoakResult, path: Path) -> Path:
    minutes = result.minutes
    t = [(m.index + 1) * MINUTE_S for m in minutes]
    panels: list[tuple[str, dict[str, list[tuple[float, float]]]]] = [
        (
            "RSS per process (MiB)",
            {name: [(x, m.processes[name].rss_mib) for x, m in zip(t, minutes)] for name in list(minutes[0].processes)[:4]},
        ),
        (
            "nats-server: RSS and JetStream store (MiB)",
            {"RSS": [(x, m.server_rss_mib) for x, m in zip(t, minutes)], "store": [(x, m.store_mib) for x, m in zip(t, minutes)]},
        ),
        (
            "latency p99 (ms): burst end to end, trickle",
            {
                "burst": [(x, m.burst_p99_ms) for x, m in zip(t, minutes)],
                "trickle": [(x, percentile(m.trickle_ms, 0.99) if m.trickle_ms else math.nan) for x, m in zip(t, minutes)],
            },
        ),
        ("peak backlog per minute", {"backlog": [(x, float(m.peak_backlog)) for x, m in zip(t, minutes)]}),
    ]
    return write_line_chart(panels, path, f"ebbtide soak, {result.manifest}: one burst a minute and a trickle")


async def bench_soak(manifest: LoadedManifest, report: BenchReport, quick: bool, out_dir: Path, options: BenchOptions) -> None:
    minutes = options.soak_minutes or (2 if quick else 30)
    burst = options.orders or (2_000 if quick else 10_000)
    warm_up = min(WARM_UP_MIN, max(0, minutes - 2))
    results = []
    for label in options.soak_manifests or ["unordered", "ordered"]:
        print(f"soak: {label} manifest, {minutes} minute(s), a burst of {burst:,} a minute and a trickle", flush=True)
        result = await run_soak(manifest, label, minutes, burst, out_dir, warm_up)
        results.append(result)
        report.files.append(str(write_chart(result, out_dir / f"soak-{label}.svg")))
        report.details[f"soak-{label}"] = asdict(result)
        name, worst = result.worst_rss_slope()
        report.add(
            f"soak {label}: steepest RSS slope ({name})",
            worst,
            "MiB / 10k orders",
            f"least squares over the samples after {warm_up} warm-up minute(s)",
            f"≤ {RSS_SLOPE_BOUND_MIB}",
        )
        report.add(
            f"soak {label}: burst p99 last / first third",
            result.burst_ratio,
            "×",
            "median of per-minute p99",
            f"≤ {BURST_P99_RATIO_BOUND}",
        )
        report.add(
            f"soak {label}: trickle p99, worst minute",
            result.trickle_p99_ms,
            "ms",
            "publish to outbox write",
            f"≤ {TRICKLE_P99_BOUND_MS:g}",
        )
        report.add(
            f"soak {label}: lost + written twice + values differing",
            result.lost + result.written_twice + result.values_differing,
            "orders",
            "buckets' streams read back",
            "0",
        )
    report.sections.append(Section("Soak: the ZEISS day shape, minute after minute", markdown(results)))
    unordered = next((r for r in results if r.manifest == "unordered"), None)
    if unordered is not None and len(unordered.minutes) > unordered.warm_up:
        print("soak: the capacity model's profile of this machine, to predict the unordered minutes", flush=True)
        profile, _ = await measure_profile(manifest, out_dir, burst)
        table, details = model_check(manifest, unordered, profile)
        report.details["soak-model"] = details
        report.add(
            "soak unordered: minutes whose burst drain the capacity model predicts within ±25 %",
            details["drain_within"],
            f"of {len(details['minutes'])}",
            "`ebbtide plan`'s model from a profile measured right after the soak, each minute on the cores probed before it",
            "all",
        )
        report.sections.append(Section("Soak: the capacity model against the unordered minutes", table))


def model_check(manifest: LoadedManifest, result: SoakResult, profile: Profile) -> tuple[str, dict[str, Any]]:
    """The capacity model (issue 32) against the soak's ZEISS shape: each minute after warm-up, its burst
    predicted (its orders, the soak's processes per function, every pool asleep at zero as the soak leaves
    them, the cores probed just before it) beside what was measured: the drain, and per function the mean
    instances while draining (instance-seconds over the drain: the scaling policy's part) and the peak.
    The trickle is left out of the prediction: one order every TRICKLE_EVERY_S, after the drain.

    The model charges the machine's cores for the client publishing the orders too; here that client is the
    soak's own process, which also times every write and every routed order. So each minute is predicted with
    that process's CPU per order as measured in the minute's burst (an input, like the cores probed), not the
    profile's publisher, which only publishes."""
    functions = list(manifest.spec.functions)
    replicas = {f: REPLICAS.get(f, 1) for f in functions}
    minutes = []
    checked = result.minutes[result.warm_up :]
    for m in checked:
        with_this_client = replace(profile, publish_cpu_s=m.cpu_per_order["publisher"])
        drain, instance_s, peaks = predict(manifest, with_this_client, m.cores_probed, m.burst_messages, replicas)
        mean_measured = {f: m.instance_seconds[f] / m.burst_drain_s for f in functions}
        mean_predicted = {f: instance_s[f] / drain for f in functions}
        minutes.append(
            {
                "index": m.index,
                "cores_probed": m.cores_probed,
                "drain_s": (m.burst_drain_s, drain),
                "mean_instances": {f: (mean_measured[f], mean_predicted[f]) for f in functions},
                "peak_instances": {f: (m.peak_instances[f], peaks[f]) for f in functions},
            }
        )

    def error(pair: tuple[float, float]) -> float:
        measured, predicted = pair
        return predicted / measured - 1 if measured else math.nan

    def within(pairs: list[tuple[float, float]]) -> int:
        return sum(1 for pair in pairs if abs(error(pair)) <= TOLERANCE)

    def medians(pairs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)

    drains = [m["drain_s"] for m in minutes]
    rows = [("burst drain, s", drains)] + [
        (f"{f}: mean instances while draining", [m["mean_instances"][f] for m in minutes]) for f in functions
    ]
    lines = [
        f"| figure (medians over {len(minutes)} minutes after warm-up) | measured | predicted | error | minutes within ±{TOLERANCE:.0%} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, pairs in rows:
        measured, predicted = medians(pairs)
        lines.append(
            f"| {name} | {measured:.2f} | {predicted:.2f} | {error((measured, predicted)):+.0%} | {within(pairs)} of {len(pairs)} |"
        )
    peaks = {f: medians([m["peak_instances"][f] for m in minutes]) for f in functions}
    cores = statistics.median(m["cores_probed"] for m in minutes)
    modelled = modelled_cpu_per_order(profile)
    measured_cpu = {name: statistics.median(m.cpu_per_order[name] for m in checked) for name in checked[0].cpu_per_order}
    lines += [
        "",
        "Peak instances, median measured / predicted: "
        + ", ".join(f"{f} {measured:g} / {predicted:g}" for f, (measured, predicted) in peaks.items())
        + f". Processes per function: {', '.join(f'{f} {n}' for f, n in replicas.items())}; cores probed before the "
        f"bursts: {cores:.2f} (median). CPU per order, µs, in the bursts (median) against the profile's: "
        + ", ".join(f"{name} {cpu * 1e6:.0f}/{modelled.get(name, 0) * 1e6:.0f}" for name, cpu in measured_cpu.items())
        + f", all {sum(measured_cpu.values()) * 1e6:.0f}/{sum(modelled.values()) * 1e6:.0f} (the publisher here also times every "
        "write: each minute is predicted with its measured CPU per order, the rest with the profile's).",
    ]
    return "\n".join(lines), {"minutes": minutes, "drain_within": within(drains), "tolerance": TOLERANCE}
