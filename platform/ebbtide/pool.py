"""A function's pool: Wasm instances, each driven by a worker loop on the function's durable consumer.

A worker fetches a batch, runs the guest once per message, sends every effect as a confirmed publish
(with a `Nats-Msg-Id` derived from the input), waits for the server's confirmations, then acks. A
failure is either permanent (dead-lettered at once) or transient (nak with backoff, dead-lettered after
`retry.max_deliver` deliveries). Workers, and so instances, are added and removed one at a time with
`set_instances`, while messages flow: a removed worker finishes its batch first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from .broker.publisher import MSG_ID, ConfirmedPublisher, PubAck, PublishError
from .broker.pull import PullConsumer
from .deadletter import Reason, dead_letter_headers, fit_payload
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer

from .effects import Allowlist, EffectRefused
from .manifest import LoadedManifest
from .telemetry import tracing
from .telemetry.histogram import END_TO_END_BUCKETS_S, HANDLE_BUCKETS_S, Histogram
from .runtime.guests import Guest, GuestModule, load_guest_module, start_guest
from .runtime import (
    GuestFault, GuestLimits, InputTooLarge, Status, WasmEngine, decode_effects,
)

log = logging.getLogger("ebbtide.pool")

MIB = 1024 * 1024
FETCH_WAIT_S = 1.0  # long-poll length of an idle fetch; also how long a stopping idle worker may take
MAX_REMEMBERED_FAILURES = 100_000
# Server time (ns since the epoch) of the order's publish to the first function's stream. Every effect
# carries it on, so each hop knows how long the order has been travelling (ebbtide_end_to_end_seconds).
INGRESS_AT = "Ebbtide-Ingress-At"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the JetStream ack subject says about a delivered message."""

    stream: str
    sequence: int  # stream sequence: stable across redeliveries, so effect ids derived from it are too
    delivered: int  # 1 on first delivery
    published_ns: int  # server time the message was stored in the stream


def parse_ack_subject(reply: str) -> Delivery:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>            (9 tokens)
    # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    tokens = reply.split(".")
    if len(tokens) == 9:
        base = 2
    elif len(tokens) >= 11:
        base = 4
    else:
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    return Delivery(tokens[base], int(tokens[base + 3]), int(tokens[base + 2]), int(tokens[base + 5]))


def ingress_ns(msg: Msg, delivery: Delivery) -> int:
    """When the order entered the pipeline: carried by an earlier hop, else this message's own publish."""
    carried = msg.headers.get(INGRESS_AT) if msg.headers else None
    # Any client can send this header: only a plain ASCII number is taken (str.isdigit alone accepts "²",
    # which int() refuses, and other scripts' digits).
    if carried is not None and len(carried) <= 19 and carried.isascii() and carried.isdigit():
        return int(carried)
    return delivery.published_ns


@dataclass
class PoolStats:
    processed: int = 0  # acked after all effects were confirmed
    dead_lettered: int = 0  # for any reason but a refused effect
    refused: int = 0  # dead-lettered because the guest asked for an effect outside its allowlist
    retried: int = 0  # nak'ed for redelivery
    guest_faults: dict[str, int] = field(default_factory=dict)  # by kind: trap, timeout, memory-limit, invalid-output
    instances_started: int = 0
    instances_stopped: int = 0  # scaled down, shut down, or discarded after a fault
    reloads: dict[str, int] = field(default_factory=dict)  # module swaps by outcome: ok, refused
    handle: Histogram = field(default_factory=lambda: Histogram(HANDLE_BUCKETS_S))  # guest call time
    end_to_end: Histogram = field(default_factory=lambda: Histogram(END_TO_END_BUCKETS_S))  # ingress -> effects confirmed


@dataclass(slots=True)
class _Pending:
    msg: Msg
    delivery: Delivery
    futures: list[asyncio.Future[PubAck]]
    dead_letter: Reason | None  # the futures carry a dead letter (for this reason), not effects
    spans: list[Span]  # ended when the batch is settled (empty when tracing is off)
    ingress_ns: int = 0  # for the end-to-end latency of messages processed ok


class FunctionPool:
    def __init__(
        self,
        name: str,
        manifest: LoadedManifest,
        engine: WasmEngine,
        nc: NatsClient,
        publisher: ConfirmedPublisher,
        tracer: Tracer | None = None,
    ) -> None:
        fn = manifest.function(name)
        self.name = name
        self.function = fn
        self.engine = engine
        self._manifest = manifest
        self.module = self.load_module()
        self.limits = GuestLimits(memory_bytes=fn.limits.memory_mib * MIB, fuel=fn.limits.fuel)
        self.config_json = manifest.config_json(name)
        self.allowlist = Allowlist.of(fn)
        self.stream = manifest.stream_for(fn.trigger)
        self.dead_letter_subject = manifest.dead_letter_subject(name)
        self.confirm_timeout = min(fn.ack_wait_s / 2, 10.0)
        self.stats = PoolStats()
        self.in_flight = 0  # messages fetched and not yet settled
        self._nc = nc
        self._publisher = publisher
        self._tracer = tracer  # None: tracing off, and no cost on the hot path
        self._workers: list[_Worker] = []
        self._subject_bytes: dict[str, bytes] = {}
        # When each retried message first failed, for its dead letter. Per process: after a restart, or
        # when another replica got the earlier deliveries, the dead letter says the first failure is unknown.
        self._first_failures: dict[tuple[str, int], float] = {}

    # -- instances -------------------------------------------------------------------------------------

    def load_module(self) -> GuestModule:
        """The function's built module, checked against its sha256 and WASI grants (a component for Python)."""
        fn = self.function
        return load_guest_module(self.engine, self._manifest.module_path(fn.module), self._manifest.spec.modules[fn.module].lang,
                                 sha256=fn.sha256, wasi_grants=frozenset(fn.wasi))

    def _instantiate(self) -> Guest:
        return start_guest(self.engine, self.module, self.limits, self.config_json)

    def probe(self) -> None:
        """Start and drop one instance: a module that cannot start fails here, not at the first message."""
        self._instantiate()

    def swap_module(self, module: GuestModule) -> bool:
        """Hot reload: new instances run `module`; each worker finishes its current message on the old
        one and switches before its next. A module that cannot start an instance (init refused, ABI
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
            worker.stopping = True
        for _ in range(count - len(running)):
            consumer = await PullConsumer(self._nc, self.stream, self.name).start()
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

    async def process(self, msgs: list[Msg], instance: Guest | None) -> Guest | None:
        """Handle a fetched batch; returns the instance to use next (a new one after a guest fault)."""
        self.in_flight += len(msgs)
        keep_alive = _KeepAlive(msgs, self.function.ack_wait_s / 3)
        keep_alive_task = asyncio.create_task(keep_alive.run())  # for the waits: effects being confirmed
        try:
            return await self._process(msgs, instance, keep_alive)
        except asyncio.CancelledError:
            await nak_all(msgs)  # shutdown past its grace period
            raise
        finally:
            keep_alive_task.cancel()
            self.in_flight -= len(msgs)

    async def _process(self, msgs: list[Msg], instance: Guest | None, keep_alive: "_KeepAlive") -> Guest | None:
        pending: list[_Pending] = []
        for msg in msgs:
            await keep_alive.maybe_send()
            try:
                delivery = parse_ack_subject(msg.reply)
            except ValueError:
                log.error("%s: message on %s without a JetStream ack subject; ignored", self.name, msg.subject)
                continue
            span = self._process_span(msg, delivery) if self._tracer is not None else None
            try:
                instance = await self._handle(msg, delivery, instance, pending, span)
            except Exception as exc:  # a host bug must not take the worker down; the message is retried
                log.exception("%s: unexpected error on %s #%d", self.name, delivery.stream, delivery.sequence)
                await self._retry(msg, delivery, f"host error: {exc!r}", pending, span)
        if pending:
            await self._settle(pending)
        return instance

    def _process_span(self, msg: Msg, delivery: Delivery) -> Span:
        assert self._tracer is not None
        msg_id = msg.headers.get(MSG_ID) if msg.headers else None
        return self._tracer.start_span(
            f"process {msg.subject}", context=tracing.extract(msg.headers), kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats", "messaging.operation.type": "process", "messaging.operation.name": "process",
                "messaging.destination.name": msg.subject, "messaging.consumer.group.name": self.name,
                "messaging.message.id": msg_id or f"{delivery.stream}:{delivery.sequence}",
                "messaging.message.body.size": len(msg.data), "ebbtide.function": self.name,
                "ebbtide.delivery_count": delivery.delivered,
            },
        )

    def _send_span(self, parent: Span, subject: str, msg_id: str) -> Span:
        assert self._tracer is not None
        return self._tracer.start_span(
            f"send {subject}", context=trace.set_span_in_context(parent), kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "nats", "messaging.operation.type": "send", "messaging.operation.name": "send",
                        "messaging.destination.name": subject, "messaging.message.id": msg_id},
        )

    async def _handle(
        self, msg: Msg, delivery: Delivery, instance: Guest | None, pending: list[_Pending], span: Span | None
    ) -> Guest | None:
        payload = msg.data
        limits = self.function.limits
        if len(payload) > limits.max_payload:
            await self._dead_letter(msg, delivery, Reason.PAYLOAD_TOO_LARGE,
                                    f"payload of {len(payload)} bytes exceeds limits.max_payload ({limits.max_payload})", pending, span)
            return instance
        if msg.headers:
            header_bytes = sum(len(key) + len(value) + 4 for key, value in msg.headers.items())
            if header_bytes > limits.max_header_bytes:
                await self._dead_letter(msg, delivery, Reason.HEADERS_TOO_LARGE,
                                        f"headers of {header_bytes} bytes exceed limits.max_header_bytes ({limits.max_header_bytes})",
                                        pending, span)
                return instance
        subject = self._subject_bytes.get(msg.subject)
        if subject is None:
            subject = self._subject_bytes.setdefault(msg.subject, msg.subject.encode())
        if instance is None or instance.module is not self.module:  # none yet, or a new module was swapped in
            if instance is not None:
                self.stats.instances_stopped += 1
            instance = self.new_instance()
        try:
            started = time.perf_counter()
            try:
                status, output = instance.handle(subject, payload)
            finally:
                self.stats.handle.observe(time.perf_counter() - started)
            if status is Status.OK:
                outgoing = self.allowlist.plan(decode_effects(output))
            elif status is Status.REJECT:
                await self._dead_letter(msg, delivery, Reason.REJECTED, output.decode("utf-8", "replace"), pending, span)
                return instance
            else:
                await self._retry(msg, delivery, "guest asked to retry: " + output.decode("utf-8", "replace"), pending, span)
                return instance
        except InputTooLarge as exc:
            await self._dead_letter(msg, delivery, Reason.PAYLOAD_TOO_LARGE, str(exc), pending, span)
            return instance
        except GuestFault as exc:
            self.stats.guest_faults[exc.kind] = self.stats.guest_faults.get(exc.kind, 0) + 1
            if span is not None:
                span.add_event("guest.fault", {"ebbtide.fault.kind": exc.kind, "exception.message": str(exc)})
            log.warning("%s: guest fault on %s #%d, replacing the instance: %s", self.name, delivery.stream, delivery.sequence, exc)
            await self._retry(msg, delivery, f"guest fault: {exc}", pending, span)
            self.stats.instances_stopped += 1
            return self._replacement()  # never reuse a faulted instance: its state may be corrupt
        except EffectRefused as exc:
            await self._dead_letter(msg, delivery, Reason.EFFECT_REFUSED, str(exc), pending, span)
            return instance
        id_prefix = f"{delivery.stream}:{delivery.sequence}:"
        ingress = ingress_ns(msg, delivery)
        carried = {INGRESS_AT: str(ingress)}
        if span is None:
            futures = [
                await self._publisher.publish(out.subject, out.payload, f"{id_prefix}{i}", carried)
                for i, out in enumerate(outgoing)
            ]
            pending.append(_Pending(msg, delivery, futures, dead_letter=None, spans=[], ingress_ns=ingress))
            return instance
        if not span.is_recording():  # not sampled: pass the decision on to the next hop, build no spans
            headers = tracing.inject(span)
            headers[INGRESS_AT] = carried[INGRESS_AT]
            futures = [
                await self._publisher.publish(out.subject, out.payload, f"{id_prefix}{i}", headers)
                for i, out in enumerate(outgoing)
            ]
            pending.append(_Pending(msg, delivery, futures, dead_letter=None, spans=[], ingress_ns=ingress))
            return instance
        spans, futures = [span], []
        for i, out in enumerate(outgoing):
            send = self._send_span(span, out.subject, f"{id_prefix}{i}")
            spans.append(send)
            headers = tracing.inject(send)
            headers[INGRESS_AT] = carried[INGRESS_AT]
            futures.append(await self._publisher.publish(out.subject, out.payload, f"{id_prefix}{i}", headers))
        pending.append(_Pending(msg, delivery, futures, dead_letter=None, spans=spans, ingress_ns=ingress))
        return instance

    async def _retry(self, msg: Msg, delivery: Delivery, error: str, pending: list[_Pending], span: Span | None) -> None:
        retry = self.function.retry
        key = (delivery.stream, delivery.sequence)
        if key not in self._first_failures:
            if len(self._first_failures) >= MAX_REMEMBERED_FAILURES:
                self._first_failures.pop(next(iter(self._first_failures)))  # oldest first: dicts keep order
            self._first_failures[key] = time.time()
        if delivery.delivered >= retry.max_deliver:
            await self._dead_letter(msg, delivery, Reason.RETRIES_EXHAUSTED,
                                    f"failed {delivery.delivered} deliveries; last error: {error}", pending, span)
            return
        if span is not None:
            span.add_event("retry", {"ebbtide.error": error})
            span.set_status(StatusCode.ERROR, error)
            span.end()
        backoff = retry.backoff_ms[min(delivery.delivered, len(retry.backoff_ms)) - 1] / 1000
        self.stats.retried += 1
        await msg.nak(delay=backoff)

    async def _dead_letter(
        self, msg: Msg, delivery: Delivery, reason: Reason, error: str, pending: list[_Pending], span: Span | None
    ) -> None:
        headers = dead_letter_headers(
            function=self.name, reason=reason, error=error, delivered=delivery.delivered, subject=msg.subject,
            stream=delivery.stream, sequence=delivery.sequence,
            original_msg_id=msg.headers.get(MSG_ID) if msg.headers else None,
            first_failed_at=self._first_failures.pop((delivery.stream, delivery.sequence), None),
        )
        context = {"function": self.name, "stream": delivery.stream, "sequence": delivery.sequence, "reason": reason.value}
        if span is not None:
            context["trace_id"] = format(span.get_span_context().trace_id, "032x")
        log.warning("%s: dead-lettering %s #%d (%s): %s", self.name, delivery.stream, delivery.sequence, reason.value,
                    headers["Ebbtide-Error"], extra=context)
        payload = fit_payload(msg.data, headers, self._nc.max_payload)
        future = await self._publisher.publish(
            self.dead_letter_subject, payload, f"dlq:{delivery.stream}:{delivery.sequence}", headers
        )
        if span is not None:
            span.add_event("dead-lettered", {"ebbtide.reason": reason.value, "ebbtide.error": headers["Ebbtide-Error"]})
            span.set_status(StatusCode.ERROR, f"dead-lettered: {reason.value}")
        pending.append(_Pending(msg, delivery, [future], dead_letter=reason, spans=[span] if span is not None else []))

    async def _settle(self, pending: list[_Pending]) -> None:
        """Wait for every confirmation of the batch, then ack what is done and nak what is not."""
        results = iter(await self._publisher.confirm(
            (future for item in pending for future in item.futures), timeout=self.confirm_timeout
        ))
        follow_up: list[_Pending] = []
        confirmed_at_ns = time.time_ns()
        for item in pending:
            errors = [r for r in (next(results) for _ in item.futures) if isinstance(r, PublishError)]
            for span in item.spans:
                if errors:
                    span.set_status(StatusCode.ERROR, f"effects not confirmed: {errors[0]}")
                span.end()
            if not errors:
                await item.msg.ack()
                if item.dead_letter is Reason.EFFECT_REFUSED:
                    self.stats.refused += 1
                elif item.dead_letter is not None:
                    self.stats.dead_lettered += 1
                else:
                    self.stats.processed += 1
                    self.stats.end_to_end.observe(max(0, confirmed_at_ns - item.ingress_ns) / 1e9)
                continue
            log.warning("%s: effects of %s #%d not confirmed: %s", self.name, item.delivery.stream, item.delivery.sequence, errors[0])
            if item.dead_letter is not None:  # the dead letter itself was not stored: try it all again later
                self.stats.retried += 1
                await item.msg.nak(delay=self.function.retry.backoff_ms[0] / 1000)
            else:  # a transient failure like any other: retried, dead-lettered after retry.max_deliver
                await self._retry(item.msg, item.delivery, f"effects not confirmed: {errors[0]}", follow_up, None)
        if follow_up:
            await self._settle(follow_up)  # dead letters only: no deeper than this


async def nak_all(msgs: list[Msg]) -> None:
    """Hand a batch back for redelivery. A nak for a message already acked is ignored by the server.

    The delay outlives this process's pull requests (<= FETCH_WAIT_S), which would otherwise take the
    redelivery into an inbox nobody reads, until the ack wait.
    """
    for msg in msgs:
        try:
            await msg.nak(delay=FETCH_WAIT_S + 0.5)
        except Exception:
            return  # connection gone: the server redelivers after the ack wait anyway


class _KeepAlive:
    """Tells the server (+WPI, "in progress") every `interval` that a batch is still being worked on, so
    messages that are merely slow (a long batch, effects waiting to be confirmed) are not redelivered."""

    def __init__(self, msgs: list[Msg], interval: float) -> None:
        self.msgs = msgs
        self.interval = interval
        self.last = self.last_yield = time.monotonic()

    async def maybe_send(self) -> None:
        """Called between guest calls, which otherwise run back to back without giving up the event loop."""
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            for msg in self.msgs:
                await msg.in_progress()  # the server ignores it for a message already acked
        if now - self.last_yield >= self.interval / 4:
            # Let the other workers' keep-alives run: their batches wait while this one computes.
            self.last_yield = now
            await asyncio.sleep(0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval / 2)
            await self.maybe_send()


class _Worker:
    """One instance and the loop that feeds it."""

    def __init__(self, pool: FunctionPool, consumer: PullConsumer, instance: Guest) -> None:
        self.pool = pool
        self.consumer = consumer
        self.instance: Guest | None = instance
        self.stopping = False  # finish the current batch, then exit
        self.abandon = False  # shutdown past its grace period: hand back anything fetched from now on
        self.in_batch = False
        self.task = asyncio.create_task(self._run(), name=f"{pool.name}-worker")

    @property
    def done(self) -> bool:
        return self.task.done()

    async def _run(self) -> None:
        pool = self.pool
        batch = pool.function.batch
        try:
            while not self.stopping:
                try:
                    msgs = await self.consumer.fetch(batch, wait_s=FETCH_WAIT_S)
                    if not msgs:  # nothing arrived within the long poll
                        continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return
                except Exception as exc:
                    log.warning("%s: fetch failed (%r); retrying", pool.name, exc)
                    await asyncio.sleep(0.25)
                    continue
                if self.abandon:
                    await nak_all(msgs)
                    return
                self.in_batch = True
                try:
                    self.instance = await pool.process(msgs, self.instance)
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return  # acks cannot go out any more: the server redelivers after the ack wait
                finally:
                    self.in_batch = False
        finally:
            if self.instance is not None:
                self.instance = None  # release the Wasm memory now
                pool.stats.instances_stopped += 1
            await self.consumer.close()
