"""What one process holds of an ordered function's lanes, and which of those messages it may run (pure).

A lane (broker/partitions.py) is a pinned consumer: the server delivers its messages to the one client it
pinned, in batches. Pins alone do not keep a key's order (measured on nats-server 2.15.1, see
tests/integration/test_pinned_lanes.py): a holder that sent no pull request for `priority_timeout` loses
the lane, the next holder gets the lane's newer messages at once and the old holder's unacked ones only at
their ack wait. So this book keeps the invariant itself: **a message runs only when no earlier message of
its lane's key is pending anywhere**:

- *Within a holding*, each key's messages run in stream order: a key's queued messages go to one batch
  together (the guest handles them in order, the executor sends their effects in order on one connection,
  and JetStream stores them in the order it receives them), and the key's next messages wait until that
  batch has settled them. A message retried (nak'ed) keeps its key waiting until it is redelivered here; a
  message an earlier one held back in its batch goes back to the head of its key's queue.
- *After a change of holder* (a new pin id: a new *tenure*), nothing of the lane runs until the server
  counts no unacked message of the lane but the ones this process holds: `num_ack_pending` equals what it
  holds that the server had delivered when it answered (`delivered.consumer_seq`), read with no ack or nak
  of the lane sent meanwhile. Anything pending elsewhere (the old holder's unacked messages) either gets
  acked by it or comes back here at its ack wait; then each key's messages, old and new, run in stream
  order.
- *A holder acts on a lane only within its lease*: it acks, and takes messages to run, only while the
  server surely still pins it. Every pull request carrying the pin restarts the server's pin timer; one is
  sent every third of the pin timeout, and the lease runs two thirds of it from the last one sent while the
  lease ran (such a request reaches the server before the pin could time out: the last third is the margin
  for what is on its way, acks included). A request sent after the lease lapsed (the process was starved
  or frozen) may reach a server that has dropped the pin, so it proves nothing by being sent: the lane is
  *lapsed*, and this process runs and acks nothing of it, until the server answers such a request in a way
  that names the pin (`confirmed`: then its timer restarted when it took the request, and the lease runs
  from that request) or refuses it (423: another process holds it now; `lose`). The pin id being the same,
  no other process had the lane in between: nothing of it can be pending elsewhere, and the holding goes
  on (no barrier) with the messages it held, whose effects may already be confirmed: they are acked, not
  run again. (Before this, a lapsed lease gave the lane up: held messages ran again after it came back; in
  a bench at load 25 a message ran again past the streams' duplicate window, 416 outbox writes repeated.)
- *Why an ack only within the lease*: the server acks by stream sequence, whoever the message is now with.
  A stale holder's ack of a message the server has since redelivered to a new holder would take one off the
  new holder's count while something else is still pending elsewhere, and clear its barrier too early. A
  message can be redelivered to another process only once the pin moved, which it cannot within the lease.
  A stale holder (frozen past the pin timeout, then continued) finds its pin refused and acks nothing; its
  late effects carry the input's stream sequence in `Nats-Msg-Id`, so JetStream drops them as duplicates of
  the new holder's (within the stream's duplicate window).
- *What a holder may assume*: within its lease it is the only process the lane's messages go to; its own
  messages are pending nowhere else. Not that the lane's messages finish in stream order: keys run in
  parallel, so an ack of one message says nothing of the lane's earlier ones (a cumulative ack, AckAll,
  would ack messages still queued or retrying here: never use it on a lane).

Messages are opaque here (`M`): the I/O (broker/partitioned_pull.py) reads the stream sequence, the key,
the delivery sequence and the pin id from each, and sends the acks, naks and requests this book implies.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

M = TypeVar("M")

RENEW_AFTER = 1 / 3  # of the pin timeout after the last pull request: send another (it restarts the pin's timer)
ACT_WITHIN = 2 / 3  # ... and ack nothing of the lane past this (the pin may be gone by then)


@dataclass(slots=True)
class Held(Generic[M]):
    """A message held here: `take` hands these out, and they come back settled (`acked`, `retried`) or not
    (`returned`)."""

    msg: M
    lane: int
    seq: int  # stream sequence
    key: str
    delivery: int  # the consumer's delivery sequence of the delivery held
    in_batch: bool = False


@dataclass(slots=True)
class _Key:
    queued: list[int] = field(default_factory=list)  # stream sequences, ascending
    busy: int = 0  # its messages in a batch, or retried and not redelivered yet
    retrying: set[int] | None = None  # made when first needed: most keys never retry
    listed: bool = False  # on the ready list


@dataclass(slots=True)
class _Lane(Generic[M]):
    pin: str | None = None  # the pin id while this process holds the lane
    clear: bool = False  # the tenure's barrier has passed
    last_request_at: float = float("-inf")  # the last pull request carrying the pin (or the bid that won it)
    held: dict[int, Held[M]] = field(default_factory=dict)  # by stream sequence
    keys: dict[str, _Key] = field(default_factory=dict)
    settlements: int = 0  # acks and naks sent: a barrier read spanning one is inconclusive
    short_since: float | None = None  # since when the server has counted fewer pending than held here


@dataclass(frozen=True, slots=True)
class Probe:
    """A barrier read in flight: what the lane's settlements were when it was sent."""

    lane: int
    settlements: int


class LaneBook(Generic[M]):
    """The lanes of one ordered function in one process: which it holds, their messages, what may run."""

    def __init__(self, lanes: int, pin_timeout_s: float, hold_max: int, ack_wait_s: float) -> None:
        self.pin_timeout_s = pin_timeout_s
        self.hold_max = hold_max  # messages held per lane, queued and in batches
        # The server counting fewer pending than held here for this long (a message acked behind this
        # holder's back, or deleted by the stream's limits) no longer hides anything pending elsewhere:
        # whatever another holder still had has come back here or been acked.
        self.short_grace_s = ack_wait_s + pin_timeout_s
        self._lanes = [_Lane[M]() for _ in range(lanes)]
        self._ready: deque[tuple[int, str]] = deque()  # keys that may run, in the order they became ready

    # -- holding -------------------------------------------------------------------------------------

    def holds(self, lane: int) -> bool:
        return self._lanes[lane].pin is not None

    def pin(self, lane: int) -> str | None:
        return self._lanes[lane].pin

    @property
    def held_lanes(self) -> list[int]:
        return [i for i, lane in enumerate(self._lanes) if lane.pin is not None]

    def is_clear(self, lane: int) -> bool:
        return self._lanes[lane].clear

    def requested(self, lane: int, at: float) -> bool:
        """A pull request carrying the lane's pin went out at `at` (monotonic). True when it was sent within
        the lease, which it then extends (the server restarts the pin's timer when it takes it); False when
        the lease had lapsed: it may reach a server that dropped the pin, so only the server's answer says
        (`confirmed`)."""
        state = self._lanes[lane]
        if state.pin is not None and self.may_act(lane, at):
            state.last_request_at = at
            return True
        return False

    def confirmed(self, lane: int, pin: str, requested_at: float) -> bool:
        """The server still had `pin` when it took the request sent at `requested_at`: its timer restarted
        then, so the lease runs from that request. True when that renews the lease of a lane held here under
        `pin` (a lapsed lane holds on, with what it held)."""
        state = self._lanes[lane]
        if state.pin != pin or requested_at <= state.last_request_at:
            return False
        state.last_request_at = requested_at
        return True

    def lease_from(self, lane: int) -> float:
        """When the lane's lease runs from (its last request within the lease, or the one the server confirmed):
        what tells one lapse from the next."""
        return self._lanes[lane].last_request_at

    def void_lease(self, lane: int) -> None:
        """What the lease rests on may be gone (the connection was lost: the server may have restarted and
        forgotten the pin): the lane is lapsed until the server confirms the pin again."""
        self._lanes[lane].last_request_at = float("-inf")

    def renew_due(self, lane: int, now: float) -> bool:
        state = self._lanes[lane]
        return state.pin is not None and now >= state.last_request_at + self.pin_timeout_s * RENEW_AFTER

    def may_act(self, lane: int, now: float) -> bool:
        """Whether this process may run and ack the lane's messages now (its lease: see the module's docstring)."""
        state = self._lanes[lane]
        return state.pin is not None and now < state.last_request_at + self.pin_timeout_s * ACT_WITHIN

    def lapsed(self, lane: int, now: float) -> bool:
        """Held here, but past its lease: nothing of it runs or is acked until the server confirms the pin."""
        return self._lanes[lane].pin is not None and not self.may_act(lane, now)

    def holding(self, lane: int, seq: int) -> Held[M] | None:
        """The message of `lane` with stream sequence `seq`, when held here."""
        return self._lanes[lane].held.get(seq)

    def room(self, lane: int) -> int:
        return self.hold_max - len(self._lanes[lane].held)

    def held_count(self, lane: int) -> int:
        return len(self._lanes[lane].held)

    # -- arrivals ------------------------------------------------------------------------------------

    def pinned(self, lane: int, pin: str, requested_at: float) -> bool:
        """A message of `lane` came with `pin`, on the request sent at `requested_at` (monotonic). True when
        that starts a tenure (the lane was not held here under this pin): check the barrier
        (`barrier_probe`, `barrier_answer`) before anything of it runs. Whatever this process still holds of
        the lane from before (batches of an earlier tenure) is still pending on the server, and counts as
        its own."""
        state = self._lanes[lane]
        if pin == state.pin:
            # No lease from it: which request a message answers is known only by order, and answers to a
            # request given up on may still be on their way (only `requested` and `confirmed` renew it).
            return False
        state.pin, state.clear, state.short_since = pin, False, None
        state.last_request_at = requested_at
        return True

    def arrived(self, lane: int, msg: M, seq: int, key: str, delivery: int) -> bool:
        """A message delivered on a lane held here (`pinned` first). False for a message already held
        here (redelivered after its ack wait): the one held stays (the server acks by stream sequence)."""
        state = self._lanes[lane]
        if seq in state.held or state.pin is None:
            return False
        state.held[seq] = Held(msg, lane, seq, key, delivery)
        entry = state.keys.get(key)
        if entry is None:
            entry = state.keys[key] = _Key()
        elif entry.retrying and seq in entry.retrying:
            entry.retrying.discard(seq)
            entry.busy -= 1
        bisect.insort(entry.queued, seq)
        self._list_if_ready(lane, key, entry)
        return True

    def barrier_probe(self, lane: int) -> Probe:
        return Probe(lane, self._lanes[lane].settlements)

    def barrier_answer(self, probe: Probe, num_ack_pending: int, delivered_consumer_seq: int, now: float) -> bool:
        """The lane's consumer info, read since `probe`: whether the lane's tenure is clear (now or before)."""
        state = self._lanes[probe.lane]
        if state.pin is None or state.clear:
            return state.clear
        if state.settlements != probe.settlements:
            return False  # an ack or nak crossed the read: the count may include it or not
        mine = sum(1 for held in state.held.values() if held.delivery <= delivered_consumer_seq)
        if num_ack_pending < mine:
            if state.short_since is None:
                state.short_since = now
            if now - state.short_since < self.short_grace_s:
                return False
        elif num_ack_pending > mine:
            state.short_since = None
            return False
        state.clear = True
        for key, entry in state.keys.items():
            self._list_if_ready(probe.lane, key, entry)
        return True

    # -- running -------------------------------------------------------------------------------------

    def take(self, batch: int, now: float) -> list[Held[M]]:
        """Up to `batch` messages that may run now: for each key taken, its queued messages in stream
        order, together (its next ones wait until these are settled)."""
        taken: list[Held[M]] = []
        ready = self._ready
        later: list[tuple[int, str]] = []  # lanes whose lease is short right now: renewed soon, or lost
        while ready and len(taken) < batch:
            lane_index, key = ready.popleft()
            state = self._lanes[lane_index]
            entry = state.keys.get(key)
            if entry is None or not entry.listed:
                continue
            if not self.may_act(lane_index, now):
                later.append((lane_index, key))
                continue
            entry.listed = False
            if not (entry.queued and entry.busy == 0 and state.clear):
                continue
            run = entry.queued[: batch - len(taken)]
            del entry.queued[: len(run)]
            entry.busy += len(run)
            for seq in run:
                held = state.held[seq]
                held.in_batch = True
                taken.append(held)
        ready.extend(later)
        return taken

    def acked(self, held: Held[M]) -> None:
        """Settled for good (acked: effects confirmed, or dead-lettered)."""
        state = self._lanes[held.lane]
        state.settlements += 1
        if state.held.get(held.seq) is held:
            del state.held[held.seq]
            held.in_batch = False
            self._release_key(held.lane, state, held.key)

    def retried(self, held: Held[M]) -> None:
        """Nak'ed: to be redelivered; its key's later messages wait for it (here, or with the next holder)."""
        state = self._lanes[held.lane]
        state.settlements += 1
        if state.held.get(held.seq) is not held:
            return
        del state.held[held.seq]
        held.in_batch = False
        if state.pin is not None:
            entry = state.keys[held.key]
            if entry.retrying is None:
                entry.retrying = set()
            entry.retrying.add(held.seq)  # still busy until it comes back
        else:
            self._release_key(held.lane, state, held.key)

    def returned(self, held: Held[M]) -> bool:
        """`held`, of a batch, not carried out (an earlier one of its key held it back, or the holding lapsed):
        back to the head of its key's queue, True; False when the lane is no longer held here (the caller
        hands it back, then calls `retried`)."""
        state = self._lanes[held.lane]
        if state.held.get(held.seq) is not held or not held.in_batch:
            return True  # settled meanwhile (and maybe delivered again since)
        if state.pin is None:
            return False
        held.in_batch = False
        entry = state.keys[held.key]
        entry.busy -= 1
        bisect.insort(entry.queued, held.seq)
        self._list_if_ready(held.lane, held.key, entry)
        return True

    def lose(self, lane: int) -> list[M]:
        """The lane is no longer held here (its pin refused or timed out, or handed over): its queued messages,
        to hand back (nak) at once; its messages in batches finish (or come back) as they will."""
        state = self._lanes[lane]
        state.pin, state.clear, state.short_since = None, False, None
        queued = [held for held in state.held.values() if not held.in_batch]
        for held in queued:
            del state.held[held.seq]
        for key, entry in list(state.keys.items()):
            entry.listed = False  # its place on the ready list is skipped
            entry.queued.clear()
            if entry.retrying:
                entry.busy -= len(entry.retrying)
                entry.retrying = None
            if entry.busy == 0:
                del state.keys[key]
        state.settlements += len(queued)
        return [held.msg for held in queued]

    def queued_messages(self, lane: int) -> Iterator[M]:
        """The lane's messages held here and not in a batch (they need a keep-alive of their own)."""
        return (held.msg for held in self._lanes[lane].held.values() if not held.in_batch)

    # -- internals -----------------------------------------------------------------------------------

    def _release_key(self, lane: int, state: _Lane[M], key: str) -> None:
        entry = state.keys[key]
        entry.busy -= 1
        if entry.busy == 0 and not entry.queued and not entry.retrying:
            del state.keys[key]
        else:
            self._list_if_ready(lane, key, entry)

    def _list_if_ready(self, lane: int, key: str, entry: _Key) -> None:
        if entry.queued and entry.busy == 0 and not entry.listed and self._lanes[lane].clear:
            entry.listed = True
            self._ready.append((lane, key))
