"""What the console reads from NATS and does on it: the live ticks, the pages' reads, and the actions.

Reading is done as the read-only `observer` (where generated users exist; otherwise with the configured
credentials), on one connection: the status reports as they come (`ebbtide.status_reports.>`), and once a
tick the dead letters per function, the per-subject counts of the manifest's streams, each outbox
bucket's writes and the rollout records (re-read only when their stream changed). Each tick becomes one
JSON document for every page at once, whatever the number of functions.

Actions (redrive, purge, promote, abort) connect as admin for the one action, only when the console was
started with admin credentials (`Session.actions`); dead letters through dlq_admin's public operations,
rollouts through the same `change_phase` as `ebbtide shadow promote|abort`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from .. import dlq_admin, outbox
from ..broker import jsapi
from ..broker.access import ServerAccess
from ..broker.connection import connect
from ..broker.names import ROLLOUTS_BUCKET, kv_stream_name, kv_subject
from ..errors import EbbtideError, JetStreamError, RunError
from ..manifest import LoadedManifest
from ..rollout.state import Rollout, decode_rollout
from ..status_reports import STATUS_REQUEST_SUBJECT, STATUS_SUBJECT_PREFIX, decode_status
from . import graph, live, views

log = logging.getLogger("ebbtide.console")

TICK_S = 1.0
READ_TIMEOUT_S = 2.0  # a tick's reads: a slow answer delays one tick, it does not stop the page
ROLLOUTS_RETRY_S = 30.0  # records that could not be read (an observer from before the console) are retried this often
SAMPLES_SHOWN = 3  # per verdict on the rollouts page
ACTION_WAIT_S = 10.0  # promote/abort: how long to wait for every replica to follow
QUEUE_TICKS = 4  # a page that falls behind by more loses ticks (each tick is the whole picture, not a delta)

T = TypeVar("T")


class Session(msgspec.Struct, frozen=True):
    """What the page is told about the console itself."""

    server: str  # the NATS URL
    manifest: str
    actions: bool  # redrive, purge, promote and abort are offered
    read_only_why: str  # when not: why
    tick_s: float
    history_s: float


class RolloutView(msgspec.Struct, frozen=True):
    mode: str
    phase: str
    share: float
    why: str
    candidate_sha256: str
    live_sha256: str  # a promoted candidate, "" for the manifest's module
    changed_at: float
    keep: int


class Tick(msgspec.Struct, frozen=True):
    """One update of the whole page."""

    t: float
    functions: list[live.FunctionRow]
    points: dict[str, live.Point]
    edges: list[float]  # per second, in the order of the snapshot's `graph.edges` (no ids: hundreds of edges)
    inflow: dict[str, float]  # subject node id -> per second
    dead_letters: dict[str, int] | None  # function -> letters in the DLQ now; None: could not be read
    rollouts: dict[str, RolloutView]
    problems: list[str]  # what could not be read this tick, and why


class Snapshot(msgspec.Struct, frozen=True):
    """What a page receives first: the session, the graph, the charts' history, the latest tick."""

    session: Session
    graph: graph.Graph
    history: dict[str, list[live.Point]]
    tick: Tick | None


_encoder = msgspec.json.Encoder()


class ActionRefused(EbbtideError):
    """An action asked of a read-only console."""


class Console:
    def __init__(
        self,
        manifest: LoadedManifest,
        access: ServerAccess,
        *,
        read_only_why: str = "",
        trace_url: str | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self.manifest = manifest
        self.access = access
        self.trace_url = trace_url
        self.tick_s = tick_s
        self.session = Session(access.url, str(manifest.path), not read_only_why, read_only_why, tick_s, live.HISTORY_S)
        self.graph = graph.pipeline(manifest)
        self.live = live.Live(list(manifest.spec.functions))
        self._rates = graph.EdgeRates(manifest, self.graph)
        self._streams = graph.streams_to_count(manifest, self.graph)
        self._buckets = list(
            dict.fromkeys(b.split(":", 1)[1] for b in (n.id for n in self.graph.nodes) if b.startswith("bucket:"))
        )
        self._rollouts: dict[str, RolloutView] = {}
        self._rollouts_seq = -1  # the records' stream's last sequence when they were read
        self._rollouts_retry_at = 0.0
        self._latest: Tick | None = None
        self._pages: set[asyncio.Queue[bytes]] = set()
        self._nc: NatsClient | None = None
        self._ticking: asyncio.Task[None] | None = None

    # -- running ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect as the reader (waiting for a server that is not up yet), follow the reports, tick."""
        self._nc = await connect(self.access.url, "ebbtide-console", auth=self.access.for_reading())

        async def on_report(msg: Msg) -> None:
            try:
                self.live.update(decode_status(msg.data))
            except msgspec.DecodeError:
                log.debug("ignoring an unreadable status report on %s", msg.subject)

        await self._nc.subscribe(f"{STATUS_SUBJECT_PREFIX}.>", cb=on_report)
        await self._nc.publish(STATUS_REQUEST_SUBJECT, b"")  # every pool reports now, not at its next tick
        self._ticking = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticking is not None:
            self._ticking.cancel()
            await asyncio.gather(self._ticking, return_exceptions=True)
        self._publish(b"")  # ends every page's stream
        if self._nc is not None:
            await self._nc.drain()

    async def _tick_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                tick = await self.tick()
            except Exception:  # one bad tick must not end the console: say so, and tick again
                log.exception("console: a tick failed")
            else:
                self._publish(b"event: tick\ndata: " + _encoder.encode(tick) + b"\n\n")
            await asyncio.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))

    async def tick(self) -> Tick:
        now = time.time()
        rows, points = self.live.tick(now)
        problems: list[str] = []
        dead_letters, subjects, writes, _ = await asyncio.gather(
            self._read("dead letters", dlq_admin.count_by_function(self._reader, self.manifest), problems),
            self._read("stream counts", self._subject_counts(), problems),
            self._read("outbox writes", self._bucket_writes(), problems),
            self._read("rollout records", self._refresh_rollouts(now), problems),
        )
        rates, inflow = self._rates.observe(
            graph.Counts(
                time=now,
                stream_subjects=subjects or {},
                bucket_writes=writes or {},
                dead_letters=dead_letters or {},
                function_rates={row.name: row.rate for row in rows},
            )
        )
        self._latest = Tick(
            now,
            rows,
            points,
            [round(rates[edge.id], 1) for edge in self.graph.edges],
            {node: round(rate, 1) for node, rate in inflow.items()},
            dead_letters,
            dict(self._rollouts),
            problems,
        )
        return self._latest

    async def _read(self, what: str, reading: Awaitable[T], problems: list[str]) -> T | None:
        try:
            return await asyncio.wait_for(reading, READ_TIMEOUT_S)
        except (TimeoutError, EbbtideError, NatsError) as exc:
            problems.append(f"{what}: {exc or type(exc).__name__}")
            return None

    @property
    def _reader(self) -> NatsClient:
        assert self._nc is not None, "start() first"
        return self._nc

    async def _subject_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for stream in self._streams:
            try:
                info = await jsapi.stream_info(self._reader, stream, subjects_filter=">")
            except JetStreamError as exc:
                if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                    continue  # not provisioned yet
                raise
            counts[stream] = (info.state.subjects if info.state else None) or {}
        return counts

    async def _bucket_writes(self) -> dict[str, int]:
        writes: dict[str, int] = {}
        for bucket in self._buckets:
            try:
                info = await jsapi.stream_info(self._reader, kv_stream_name(bucket))
            except JetStreamError as exc:
                if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                    continue
                raise
            writes[bucket] = info.state.last_seq if info.state else 0
        return writes

    async def _refresh_rollouts(self, now: float) -> None:
        """The records, re-read only when their stream changed; unreadable ones are retried now and then."""
        if now < self._rollouts_retry_at:
            return
        stream = kv_stream_name(ROLLOUTS_BUCKET)
        try:
            # Within the tick's own bound: credentials that may not read the records get no answer at all.
            info = await asyncio.wait_for(jsapi.stream_info(self._reader, stream), READ_TIMEOUT_S / 2)
        except JetStreamError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                self._rollouts = {}
                return
            self._rollouts_retry_at = now + ROLLOUTS_RETRY_S
            raise
        except (TimeoutError, NatsError) as exc:
            self._rollouts_retry_at = now + ROLLOUTS_RETRY_S
            raise RunError(
                f"no answer (an observer from before the console may not read them; retried every {ROLLOUTS_RETRY_S:.0f} s)"
            ) from exc
        state = info.state or jsapi.StreamState()
        if state.last_seq == self._rollouts_seq:
            return
        records: dict[str, RolloutView] = {}
        prefix = kv_subject(ROLLOUTS_BUCKET, "")
        async for stored in jsapi.stored_messages(self._reader, stream, f"{prefix}>", state.first_seq, state.last_seq):
            function = stored.subject.removeprefix(prefix)
            if stored.headers.get(outbox.KV_OPERATION) in ("DEL", "PURGE") or not stored.payload:
                records.pop(function, None)
                continue
            try:
                records[function] = _rollout_view(decode_rollout(stored.payload))
            except msgspec.DecodeError:
                log.debug("ignoring an unreadable rollout record of %s", function)
        self._rollouts, self._rollouts_seq = records, state.last_seq

    # -- pages -------------------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        document = Snapshot(self.session, self.graph, self.live.history(), self._latest)
        return b"event: snapshot\ndata: " + _encoder.encode(document) + b"\n\n"

    @contextlib.asynccontextmanager
    async def page(self) -> AsyncIterator[asyncio.Queue[bytes]]:
        """A page's stream of events: the snapshot, then every tick (b"" when the console stops)."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=QUEUE_TICKS)
        queue.put_nowait(self.snapshot())
        self._pages.add(queue)
        try:
            yield queue
        finally:
            self._pages.discard(queue)

    @property
    def pages(self) -> int:
        return len(self._pages)

    def _publish(self, event: bytes) -> None:
        for queue in self._pages:
            if queue.full():  # a page that does not keep up misses a tick; the next one is whole again
                queue.get_nowait()
            queue.put_nowait(event)

    # -- reads for the pages -----------------------------------------------------------------------------------

    async def dead_letters(self, function: str | None, limit: int) -> list[views.LetterRow]:
        return [
            views.letter_row(letter) for letter in await dlq_admin.list_dead_letters(self._reader, self.manifest, function, limit)
        ]

    async def dead_letter(self, seq: int) -> views.LetterDetail:
        return views.letter_detail(await dlq_admin.show_dead_letter(self._reader, self.manifest, seq))

    async def samples(self, function: str) -> dict[str, Any]:
        from ..rollout import stored
        from ..rollout.report import VERDICT_ORDER

        self.manifest.function(function)
        kept = await stored.shadow_samples(self._reader, function, VERDICT_ORDER, SAMPLES_SHOWN)
        return {
            "function": function,
            "counts": {verdict.value: kept.counts.get(verdict, 0) for verdict in VERDICT_ORDER},
            "kept_per_verdict": kept.per_subject_limit,
            "sequences_of": self.manifest.stream_for(self.manifest.function(function).trigger),
            "samples": [views.sample_view(sample) for sample in kept.samples],
        }

    async def order(self, key: str) -> dict[str, Any]:
        buckets = outbox.outbox_buckets(self.manifest)
        entries = await outbox.get_entries(self._reader, buckets, key)
        return {
            "key": key,
            "buckets": buckets,
            "entries": [views.order_entry(entry, self.trace_url) for entry in entries],
        }

    # -- actions (admin) -------------------------------------------------------------------------------------

    async def redrive(self, function: str | None, seqs: list[int] | None) -> dlq_admin.RedriveResult:
        if function is not None:
            self.manifest.function(function)  # a typo guard, as `ebbtide dlq redrive --function`
        return await self._as_admin("redrive", lambda nc: dlq_admin.redrive(nc, self.manifest, function, seqs))

    async def purge(self, function: str | None) -> int:
        return await self._as_admin("purge", lambda nc: dlq_admin.purge(nc, self.manifest, function))

    async def promote(self, function: str) -> str:
        return await self._change_phase(function, promote=True)

    async def abort(self, function: str) -> str:
        return await self._change_phase(function, promote=False)

    async def _change_phase(self, function: str, promote: bool) -> str:
        from ..commands.rollout import change_phase
        from ..rollout.state import Phase

        pin = self.manifest.function(function).sha256 or ""  # a pinned module is not replaced from the page
        phase = Phase.PROMOTED if promote else Phase.ABORTED
        return await self._as_admin(phase.value, lambda nc: change_phase(nc, function, phase, ACTION_WAIT_S, pin=pin))

    async def _as_admin(self, what: str, action: Callable[[NatsClient], Awaitable[T]]) -> T:
        if not self.session.actions:
            raise ActionRefused(f"{what} refused: this console is read-only ({self.session.read_only_why})")
        try:
            nc = await connect(self.access.url, f"ebbtide-console-{what}", give_up_after_s=5, auth=self.access.admin)
        except ConnectionError as exc:
            raise RunError(f"{what}: {exc}") from None
        try:
            log.info("console: %s", what)
            return await action(nc)
        finally:
            await nc.drain()


def _rollout_view(record: Rollout) -> RolloutView:
    return RolloutView(
        record.mode.value,
        record.phase.value,
        record.share,
        record.why,
        record.candidate_sha256,
        record.live_sha256,
        record.changed_at,
        record.keep,
    )
