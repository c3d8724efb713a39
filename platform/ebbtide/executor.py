"""Carrying out outcomes: one batch of delivered messages, from the guest's answers to the acks.

For each message of a batch the executor asks the policy (outcome.py) what becomes of it, given the
checks before the guest and the guest's answer (the pool runs the guest), and starts carrying it out:

- `Ack(effects)`: each effect is published with `Nats-Msg-Id: <stream>:<sequence>:<index>` (stable across
  redeliveries, so the stream stores it once) and `Ebbtide-Ingress-At` carried on;
- `DeadLetter`: the input is published to the dead-letter subject with `Nats-Msg-Id:
  dlq:<stream>:<sequence>` and headers that say why;
- `Retry`: the input is nak'ed at once, with the policy's delay.

The publishes go out chunk by chunk, written together (`PublishBatch`; a round's publishes to a stream that
allows it are one fast batch with one PubAck, see broker/publisher.py). Then it waits for the server's
confirmations of the whole batch (one wait, many publishes in flight) and settles each message: ack when
every publish of it was confirmed (the round's acks written together); otherwise the policy says again
(`after_unconfirmed`): effects not confirmed are retried (or dead-lettered once retries are exhausted:
a second, last round of confirmations; effects the server never answered, or refused for lack of space, do
not use up the retries), a
dead letter not confirmed is nak'ed for later.

For an ordered function the batch comes from its lanes (broker/partitioned_pull.py) with each key's
messages in stream order, and `run_batch` gets the feed as `order` (`KeyOrder`): a key's messages after one
that is retried or dead-lettered are not carried out in this batch (the feed queues them again behind it); a message is
acked only while its process still holds its lane (`may_ack`); the feed is told how each message ended
(`settled`). Effects of one key go out in order on one connection, so JetStream stores them in order; when
the server refuses an effect after it stored a later message's of the same key (a full stream that made
room in between), retrying it would apply it out of order: it is dead-lettered instead, its sequence broken
(Reason.OVERTAKEN).

Tracing observes, it does not steer: with a tracer, each message gets a trace object (telemetry/message_trace.py)
that is told what happened and gives the effects' headers; without one, nothing of it runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from nats.aio.msg import Msg

from .broker.delivery import Incoming, KeepAlive, ack_all, parse_ack_subject
from .broker.headers import H_ERROR, H_INGRESS_AT, H_MSG_ID, header_lines_size
from .broker.publisher import ConfirmedPublisher, PublishBatch
from .deadletter import Reason, dead_letter_headers, fit_payload
from .errors import PublishError, PublishRetryLater, PublishUnanswered
from .manifest import FunctionSection
from .ordering import LaneKeys
from .outcome import (
    Ack,
    DeadLetter,
    Faulted,
    GuestResult,
    Outcome,
    Retry,
    after_guest,
    after_host_error,
    after_unconfirmed,
    check_input,
)
from .telemetry.histogram import END_TO_END_BUCKETS_S, HANDLE_BUCKETS_S, Histogram

if TYPE_CHECKING:  # tracing's module (and OpenTelemetry) is loaded only when tracing is on
    from .telemetry.message_trace import MessageTrace, MessageTracer

log = logging.getLogger("ebbtide.pool")  # the name operators filter on: one log for a function's messages

MAX_REMEMBERED_FAILURES = 100_000
SERVER_TROUBLE_LOG_S = 10.0
ORDERED_CHUNK_S = 0.02  # guest time per chunk of an ordered function's batch, at most


@dataclass
class PoolStats:
    processed: int = 0  # acked after all effects were confirmed
    dead_lettered: int = 0  # for any reason but a refused effect
    refused: int = 0  # dead-lettered because the guest asked for an effect outside its allowlist
    retried: int = 0  # nak'ed for redelivery
    dead_letters: dict[str, int] = field(default_factory=dict)  # by reason (deadletter.Reason's values), refused included
    guest_faults: dict[str, int] = field(default_factory=dict)  # by kind: trap, timeout, memory-limit, invalid-output
    instances_started: int = 0
    instances_stopped: int = 0  # scaled down, shut down, or discarded after a fault
    # Live instances integrated over time (what the pool costs; the capacity bench compares it with the model),
    # up to `instances_counted_at` (monotonic): exact, whatever the interval between status reports.
    instance_seconds: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    instances_counted_at: float = field(init=False)  # set from `clock` at creation
    reloads: dict[str, int] = field(default_factory=dict)  # module swaps by outcome: ok, refused
    handle: Histogram = field(default_factory=lambda: Histogram(HANDLE_BUCKETS_S))  # guest time per message
    end_to_end: Histogram = field(default_factory=lambda: Histogram(END_TO_END_BUCKETS_S))  # ingress -> effects confirmed

    def __post_init__(self) -> None:
        self.instances_counted_at = self.clock()

    def instance_started(self) -> None:
        self._count_instance_time()
        self.instances_started += 1

    def instance_stopped(self) -> None:
        self._count_instance_time()
        self.instances_stopped += 1

    def instance_seconds_now(self) -> float:
        live = self.instances_started - self.instances_stopped
        return self.instance_seconds + live * (self.clock() - self.instances_counted_at)

    def _count_instance_time(self) -> None:
        now = self.clock()
        self.instance_seconds += (self.instances_started - self.instances_stopped) * (now - self.instances_counted_at)
        self.instances_counted_at = now


def ingress_ns(incoming: Incoming) -> int:
    """When the order entered the pipeline: carried by an earlier hop, else this message's own publish."""
    headers = incoming.msg.headers
    carried = headers.get(H_INGRESS_AT) if headers else None
    # Any client can send this header: only a plain ASCII number is taken (str.isdigit alone accepts "²",
    # which int() refuses, and other scripts' digits).
    if carried is not None and len(carried) <= 19 and carried.isascii() and carried.isdigit():
        return int(carried)
    return incoming.delivery.published_ns


RunGuests = Callable[[Sequence[Incoming]], list[GuestResult]]
"""The guest's answers to messages, one per message and in their order (the pool: one batch call)."""


class KeyOrder(Protocol):
    """An ordered function's feed (broker/partitioned_pull.py), for the batches it gave out: a message's
    key is its payload's `order_by` field ("" for keyless messages, on the bare trigger: ordering.LaneKeys)."""

    async def may_ack(self, incoming: Incoming) -> bool:
        """Whether this process still holds the message's lane (else another may run it: no ack); for a lane
        whose lease lapsed, once the server has said."""
        ...

    def settled(self, incoming: Incoming, retried: bool) -> None:
        """`incoming` was acked (done or dead-lettered), or nak'ed for a retry (`retried`)."""
        ...


@dataclass(slots=True)
class _Entry:
    """A message of the batch on its way: the checks' outcome, or the guest's answer that leads to one."""

    incoming: Incoming
    trace: MessageTrace | None
    outcome: Outcome | None = None  # decided before the guest ran (checks, host error)
    result: GuestResult | None = None  # the guest's answer
    held_back: bool = False  # ordered: an earlier message of its key in the batch was not acked


@dataclass(slots=True)
class _Pending:
    """A message whose publishes (effects, or its dead letter) await the server's confirmation."""

    incoming: Incoming
    outcome: Ack | DeadLetter
    first: int  # its publishes: results[first:end] of the round's PublishBatch
    end: int
    trace: MessageTrace | None
    ingress_ns: int = 0  # for the end-to-end latency of messages processed ok


class Executor:
    """Carries out the outcomes of one function's messages; shared by its workers."""

    def __init__(
        self,
        name: str,
        function: FunctionSection,
        dead_letter_subject: str,
        publisher: ConfirmedPublisher,
        stats: PoolStats,
        tracer: MessageTracer | None = None,
    ) -> None:
        self.name = name
        self.function = function
        self.dead_letter_subject = dead_letter_subject
        self.confirm_timeout = min(function.ack_wait_s / 2, 10.0)
        self.stats = stats
        self._publisher = publisher
        self._tracer = tracer  # None: tracing off, and no cost on the hot path
        # When each retried message first failed, for its dead letter. Per process: after a restart, or
        # when another replica got the earlier deliveries, the dead letter says the first failure is unknown.
        self._first_failures: dict[tuple[str, int], float] = {}
        self._quiet_until = 0.0  # server-side failures are logged once per SERVER_TROUBLE_LOG_S (_warn_unconfirmed)
        self._quieted = 0
        # Guest time per message in the last chunk (shared by the workers: one guest): sizes the next chunk.
        self._guest_s_per_message: float | None = None
        self._lane_keys = LaneKeys(function.trigger, function.order_by) if function.order_by else None

    async def run_batch(
        self, msgs: Sequence[Msg], run_guests: RunGuests, keep_alive: KeepAlive, order: KeyOrder | None = None
    ) -> None:
        """Decide and carry out every message of a fetched batch, then settle them all.

        The messages that pass the input checks go to the guest together (`run_guests`: one batch call),
        in chunks short enough that the keep-alive and the other workers get the event loop between
        them (see `_chunk_size`); each chunk is carried out, in order, before the next runs. `order`: an
        ordered function's feed (see the module's docstring)."""
        pending: list[_Pending] = []
        batch = PublishBatch()
        entries = self._checked(msgs)
        budget_s = keep_alive.interval / 4  # how often KeepAlive.maybe_send wants to run
        if order is not None:
            # An ordered function's feed renews its lanes' pins from the event loop: a long chunk starving it
            # (a CPU-starved process runs a chunk many times slower than measured) lets leases lapse.
            budget_s = min(budget_s, ORDERED_CHUNK_S)
        held_back: set[str] = set()  # ordered: keys (stored subjects) with a message not acked in this batch
        start = 0
        while start < len(entries):
            await keep_alive.maybe_send()
            end = start + self._chunk_size(len(entries) - start, budget_s)
            chunk = entries[start:end]
            if held_back:
                for entry in chunk:
                    entry.held_back = entry.incoming.msg.subject in held_back
            self._run_guests(chunk, run_guests)
            for entry in chunk:
                if order is None:
                    await self._decide_and_carry_out(entry, pending, batch, None)
                elif entry.held_back or entry.incoming.msg.subject in held_back:
                    entry.held_back = True  # left to the feed: it runs again after the retried one
                elif type(await self._decide_and_carry_out(entry, pending, batch, order)) is not Ack:
                    # Retried or dead-lettered: the key's next message waits until that is settled (acked
                    # once its dead letter is stored, or redelivered).
                    held_back.add(entry.incoming.msg.subject)
            await self._publisher.send(batch)  # this chunk's publishes, while the next one runs
            start = end
        if pending:
            await self.settle(pending, batch, order)

    def _checked(self, msgs: Sequence[Msg]) -> list[_Entry]:
        """The batch's messages with the outcome of the checks before the guest (None: to the guest)."""
        entries: list[_Entry] = []
        limits, tracer = self.function.limits, self._tracer
        for msg in msgs:
            try:
                incoming = Incoming(msg, parse_ack_subject(msg.reply))
            except ValueError:
                log.error("%s: message on %s without a JetStream ack subject; ignored", self.name, msg.subject)
                continue
            entry = _Entry(incoming, tracer.begin(incoming) if tracer is not None else None)
            try:
                entry.outcome = check_input(len(msg.data), header_lines_size(msg.headers) if msg.headers else 0, limits)
            except Exception as exc:  # a host bug must not take the worker down; the message is retried
                entry.outcome = self._host_error(incoming, exc)
            entries.append(entry)
        return entries

    def _chunk_size(self, remaining: int, budget_s: float) -> int:
        """How many messages to hand the guest before giving the event loop back: as many as the last
        chunk's time per message says fit in `budget_s`; one while nothing was measured yet (a slow
        guest's first batch must not outlast the ack wait)."""
        per_message_s = self._guest_s_per_message
        if per_message_s is None:
            return 1
        if per_message_s * remaining <= budget_s:
            return remaining
        return max(1, int(budget_s / per_message_s))

    def _run_guests(self, chunk: list[_Entry], run_guests: RunGuests) -> None:
        """The guest's answers to the chunk's messages that passed the checks, in one call."""
        to_guest = [entry for entry in chunk if entry.outcome is None and not entry.held_back]
        if not to_guest:
            return
        started = time.perf_counter()
        try:
            results = run_guests([entry.incoming for entry in to_guest])
            if len(results) != len(to_guest):
                raise RuntimeError(f"{len(results)} guest results for {len(to_guest)} messages")
        except Exception as exc:  # a host bug (or no instance can start): every message of the call is retried
            for entry in to_guest:
                entry.outcome = self._host_error(entry.incoming, exc)
            return
        self._guest_s_per_message = (time.perf_counter() - started) / len(to_guest)
        for entry, result in zip(to_guest, results):
            entry.result = result

    async def _decide_and_carry_out(
        self, entry: _Entry, pending: list[_Pending], batch: PublishBatch, order: KeyOrder | None
    ) -> Outcome:
        """Decide the entry's outcome and start carrying it out; returns it."""
        incoming, trace = entry.incoming, entry.trace
        delivered = incoming.delivery.delivered
        try:
            outcome = entry.outcome
            if outcome is None:
                result = entry.result
                assert result is not None
                if trace is not None and type(result) is Faulted:
                    trace.fault(result.kind, result.error)
                outcome = after_guest(result, delivered, self.function.retry)
            await self.carry_out(incoming, outcome, pending, batch, trace, order)
        except Exception as exc:  # a host bug must not take the worker down; the message is retried
            outcome = self._host_error(incoming, exc)
            await self.carry_out(incoming, outcome, pending, batch, trace, order)
        return outcome

    def _host_error(self, incoming: Incoming, exc: Exception) -> Retry | DeadLetter:
        delivery = incoming.delivery
        log.error("%s: unexpected error on %s #%d", self.name, delivery.stream, delivery.sequence, exc_info=exc)
        return after_host_error(exc, delivery.delivered, self.function.retry)

    async def carry_out(
        self,
        incoming: Incoming,
        outcome: Outcome,
        pending: list[_Pending],
        batch: PublishBatch,
        trace: MessageTrace | None,
        order: KeyOrder | None = None,
    ) -> None:
        """Start carrying out `outcome`: publish (into `batch`; to `pending`, settled later) or nak at once."""
        if type(outcome) is Ack:
            delivery = incoming.delivery
            ingress = ingress_ns(incoming)
            carried = {H_INGRESS_AT: str(ingress)}
            id_prefix = f"{delivery.stream}:{delivery.sequence}:"
            add = self._publisher.add
            first = len(batch)
            for i, out in enumerate(outcome.effects):
                msg_id = f"{id_prefix}{i}"
                headers = carried if trace is None else trace.effect_headers(carried, out.subject, msg_id)
                add(batch, out.subject, out.payload, msg_id, headers)
            pending.append(_Pending(incoming, outcome, first, len(batch), trace, ingress))
        elif isinstance(outcome, Retry):
            self._remember_failure(incoming)
            if trace is not None:
                trace.retried(outcome.error)
            await self._nak(incoming, outcome, order)
        elif isinstance(outcome, DeadLetter):
            pending.append(self._dead_letter(incoming, outcome, batch, trace))
        else:
            raise TypeError(f"not an outcome: {outcome!r}")

    async def settle(self, pending: list[_Pending], batch: PublishBatch, order: KeyOrder | None = None) -> None:
        """Wait for every confirmation of the batch, then ack what is done and nak what is not.

        Effects not confirmed may end in a dead letter, which is confirmed in one more round; a dead
        letter not confirmed is only nak'ed: so at most two rounds.
        """
        retry = self.function.retry
        while pending:
            await self._publisher.send(batch)  # anything not sent yet
            results = await self._publisher.wait(batch, timeout=self.confirm_timeout)
            follow_up: list[_Pending] = []
            follow_up_batch = PublishBatch()
            done: list[_Pending] = []
            refused = order is not None and any(isinstance(r, PublishError) for r in results)
            overtaken = _overtaken(pending, results) if refused else set()
            for item in pending:
                errors = [r for r in results[item.first : item.end] if isinstance(r, PublishError)]
                if item.trace is not None:
                    item.trace.settled(str(errors[0]) if errors else None)
                incoming, outcome = item.incoming, item.outcome
                if not errors:
                    done.append(item)
                    continue
                delivery = incoming.delivery
                server_side = all(isinstance(error, PublishRetryLater) for error in errors)  # unanswered, store full
                self._warn_unconfirmed(incoming, errors[0], server_side)
                next_outcome = after_unconfirmed(
                    outcome, str(errors[0]), delivery.delivered, retry, server_side=server_side, overtaken=id(item) in overtaken
                )
                if isinstance(outcome, DeadLetter):  # the dead letter itself was not stored: try it all again later
                    assert isinstance(next_outcome, Retry)
                    await self._nak(incoming, next_outcome, order)
                else:  # a transient failure like any other; no trace: its spans have ended
                    await self.carry_out(incoming, next_outcome, follow_up, follow_up_batch, None, order)
            if order is not None:  # no ack for a lane this process may no longer hold: its next holder runs it
                done = [item for item in done if await order.may_ack(item.incoming)]
            # One write for the round's acks (still one ack per message: JetStream has no batched explicit ack).
            await ack_all([item.incoming for item in done])
            confirmed_at_ns = time.time_ns()
            for item in done:
                self._count_done(item.outcome, confirmed_at_ns - item.ingress_ns)
                if order is not None:
                    order.settled(item.incoming, retried=False)
            pending, batch = follow_up, follow_up_batch  # dead letters only

    def _warn_unconfirmed(self, incoming: Incoming, error: PublishError, server_side: bool) -> None:
        """One line per message; for the server's own trouble (a full store, no answers), which hits every
        message alike and may last hours, at most one line per SERVER_TROUBLE_LOG_S, saying how many it stands for."""
        delivery = incoming.delivery
        if server_side:
            now = time.monotonic()
            if now < self._quiet_until:
                self._quieted += 1
                return
            self._quiet_until = now + SERVER_TROUBLE_LOG_S
            also = f" (and {self._quieted} more since the last such line)" if self._quieted else ""
            self._quieted = 0
        else:
            also = ""
        log.warning("%s: effects of %s #%d not confirmed: %s%s", self.name, delivery.stream, delivery.sequence, error, also)

    def _count_done(self, outcome: Ack | DeadLetter, since_ingress_ns: int) -> None:
        if not isinstance(outcome, DeadLetter):
            self.stats.processed += 1
            self.stats.end_to_end.observe(max(0, since_ingress_ns) / 1e9)
        else:
            reason = outcome.reason
            self.stats.dead_letters[reason.value] = self.stats.dead_letters.get(reason.value, 0) + 1
            if reason is Reason.EFFECT_REFUSED:
                self.stats.refused += 1
            else:
                self.stats.dead_lettered += 1

    async def _nak(self, incoming: Incoming, retry: Retry, order: KeyOrder | None) -> None:
        self.stats.retried += 1
        if order is not None:  # first: its redelivery may come in while the nak is being sent
            order.settled(incoming, retried=True)
        await incoming.nak(retry.delay_s)

    def _remember_failure(self, incoming: Incoming) -> None:
        key = (incoming.delivery.stream, incoming.delivery.sequence)
        if key not in self._first_failures:
            if len(self._first_failures) >= MAX_REMEMBERED_FAILURES:
                self._first_failures.pop(next(iter(self._first_failures)))  # oldest first: dicts keep order
            self._first_failures[key] = time.time()

    def _order_key(self, msg: Msg) -> str | None:
        """The key of a message of an ordered function ("" for one published without a key), else None."""
        return None if self._lane_keys is None else self._lane_keys.of(msg.subject, msg.data)

    def _dead_letter(self, incoming: Incoming, outcome: DeadLetter, batch: PublishBatch, trace: MessageTrace | None) -> _Pending:
        msg, delivery, reason = incoming.msg, incoming.delivery, outcome.reason
        first_failed_at = self._first_failures.pop((delivery.stream, delivery.sequence), None)
        if first_failed_at is None and reason is Reason.RETRIES_EXHAUSTED:
            first_failed_at = time.time()  # the only failure this process saw was the last one
        headers = dead_letter_headers(
            function=self.name,
            reason=reason,
            error=outcome.error,
            delivered=delivery.delivered,
            subject=msg.subject,
            stream=delivery.stream,
            sequence=delivery.sequence,
            original_msg_id=msg.headers.get(H_MSG_ID) if msg.headers else None,
            first_failed_at=first_failed_at,
            order_key=self._order_key(msg),
        )
        context = {"function": self.name, "stream": delivery.stream, "sequence": delivery.sequence, "reason": reason.value}
        if trace is not None:
            context["trace_id"] = trace.trace_id
        log.warning(
            "%s: dead-lettering %s #%d (%s): %s",
            self.name,
            delivery.stream,
            delivery.sequence,
            reason.value,
            headers[H_ERROR],
            extra=context,
        )
        payload = fit_payload(msg.data, headers, self._publisher.max_payload)
        index = self._publisher.add(
            batch, self.dead_letter_subject, payload, f"dlq:{delivery.stream}:{delivery.sequence}", headers
        )
        if trace is not None:
            trace.dead_lettered(reason.value, headers[H_ERROR])
        return _Pending(incoming, outcome, index, index + 1, trace)


def _overtaken(pending: Sequence[_Pending], results: Sequence[object]) -> set[int]:
    """Ordered batches: the pending items (by id) whose effects the server refused (an error, not a missing
    answer) after it stored every effect of a later message of the same key. A missing answer is most
    likely stored (the server takes one connection's publishes in order, and it stored the later ones): it
    is retried, and its effects, if stored, are dropped as duplicates."""
    overtaken: set[int] = set()
    stored_later: set[str] = set()  # keys with a later message whose effects were all stored
    for item in reversed(pending):
        errors = [r for r in results[item.first : item.end] if isinstance(r, PublishError)]
        key = item.incoming.msg.subject
        if not errors:
            stored_later.add(key)
        elif key in stored_later and not all(isinstance(error, PublishUnanswered) for error in errors):
            overtaken.add(id(item))
    return overtaken
