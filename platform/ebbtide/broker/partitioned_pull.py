"""Reading an ordered function's lanes (broker/partitions.py): holding them, in batches, one process a lane.

Each lane is a pinned consumer (ADR-42). A process's `LaneFeed` bids for the lanes nobody holds (a pull
request without a pin id: the server pins the first it serves), holds those it wins (every request then
carries the pin id, and one goes out at least every third of the pin timeout: the server keeps the pin only
while the holder keeps asking), and takes each lane's messages in batches of up to `hold_max`. What may run
and when is the `LaneBook`'s (broker/lanes.py): a lane's messages run only after its tenure's barrier, each
key's in stream order, different keys in parallel; the workers (pool.py) take batches with `fetch` and tell
the feed how each message ended (`settled`, `finish`), which frees the key's next messages.

Holders spread over the replicas: each feed announces how many lanes it holds on
`ebbtide.lane_holdings.<function>`; a feed holding two or more than the fewest any live peer holds hands one
over (its queued messages handed back, then the lane unpinned through `$JS.API.CONSUMER.UNPIN`, so a
bidder gets it at once), every `RELEASE_EVERY_S` until balanced. Closing (the pool scaled to zero for
IDLE_HOLD_S, the process stopping) hands every lane over the same way, at once, not after the pin timeout.

Requests answer into an inbox per lane (`<inbox>.<lane>.<request>`): a status (408 expired, 423 wrong pin
id) names the request it answers. Messages the book does not hold (a lane lost meanwhile) are handed back
(nak, so the lane's holder gets them at once); a message held here stays alive with in-progress acks
(`+WPI`) while it waits in a queue, as a batch's messages do while they run.

A lane whose lease lapsed (the process starved or frozen past two thirds of the pin timeout, or its
connection lost) is not given up: nothing of it runs or is acked while the feed asks the server, with a
request that cannot take a message (`max_bytes` 1), whether the pin is still this process's. 409 (a message
too large for it: the server was about to deliver under the pin) or 408 followed by a consumer info that
still names the pin confirm it, and the lease runs from that request; 423 (another pin) or an info naming
no pin or another lose it. The executor's acks wait for that answer (`may_ack`): what this process carried
out while starved is acked, not run again (broker/lanes.py says why that is safe).

A process's workers share one feed (`SharedFeed`): it opens with the first worker and closes with the last.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import _nats_fast, jsapi
from .delivery import Incoming
from .headers import H_DESCRIPTION, H_PIN_ID, H_STATUS
from .lanes import RENEW_AFTER, Held, LaneBook, Probe
from .names import lane_holdings_subject
from .partitions import PRIORITY_GROUP
from .pull import HEARTBEAT, LATE_MARGIN_S, hand_back

log = logging.getLogger("ebbtide.pool")

WATCHDOG_S = 0.1  # renewals, bids, keep-alives, barrier reads and the balance are looked at this often
RETRY_AFTER_ERROR_S = 1.0  # a lane whose request was refused (e.g. consumer deleted) asks again after this
PROBE_FIRST_S = 0.02  # a tenure's barrier is read again after this, doubling up to PROBE_MAX_S ...
PROBE_MAX_S = 0.5  # ... and at once after each message that comes in for it
HOLDINGS_EVERY_S = 2.0  # each feed announces its holdings this often (and at once when they change)
PEER_LIVE_S = 3 * HOLDINGS_EVERY_S  # a peer not heard of for this long is gone (killed)
RELEASE_EVERY_S = 0.5  # at most one lane handed over per this interval, while unbalanced
REST_AFTER_RELEASE_S = 5.0  # no bid for a lane just handed over, so that another process gets it
WRONG_PIN = "423"
TOO_LARGE = "409"  # a confirming request's answer when a message was there for it: the pin was its
EXPIRED = "408"
# A pool scaled to zero keeps its lanes (renewed, three requests per lane per pin timeout) this long: a message
# soon after, a trickle between bursts, is in the feed when its publish wakes the pool, instead of waiting for
# a bid to win the lane again. Longer than the quiet between a busy stretch's bursts (a minute, the ZEISS day),
# so that a process's tasks and requests stay the same from one burst to the next.
IDLE_HOLD_S = 300.0
# A bid expires soon, to be sent again: one waiting at the server when its feed closes cannot be taken back,
# and a message it wins then holds its lane until it expired (close() says why); holders renew every third of
# the pin timeout anyway, so bids at this pace cost the server little.
BID_EXPIRES_S = 1.0
CONFIRM_EXPIRES_S = 0.1  # a confirming request on an idle lane expires this soon (then a consumer info says)
# A holder's request outlives the moment its renewal is due by this much, so that the renewal (sent at the next
# watchdog tick, or later on a busy loop) is at the server before it expires. Without it the lane had no request
# waiting for up to a tick after each renewal time, and a message arriving then waited for the renewal (the
# ordered soak's trickle: now and then an order 30-120 ms instead of ~12 ms).
RENEW_OVERLAP_S = 5 * WATCHDOG_S
BARRIER_REPORT_S = 10.0


def _sequences(reply: str) -> tuple[int, int]:
    """The stream sequence and the consumer's delivery sequence of a JetStream ack subject (one split: this
    runs for every message; broker/delivery.py reads the rest)."""
    tokens = reply.split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[6])
    if len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>... (broker/delivery.py)
        return int(tokens[7]), int(tokens[8])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


class _PendingInfo(jsapi.ApiResponse):
    """What a barrier read, and the confirmation of a lapsed lane's pin, need of CONSUMER.INFO."""

    class Delivered(msgspec.Struct):
        consumer_seq: int = 0

    class PriorityGroup(msgspec.Struct):
        group: str = ""
        pinned_client_id: str = ""

    num_ack_pending: int = 0
    delivered: Delivered = msgspec.field(default_factory=Delivered)
    priority_groups: list[PriorityGroup] = msgspec.field(default_factory=list)


class _Holdings(msgspec.Struct):
    feed: str
    held: int  # lanes held; -1: this feed closed (takes no lane)


@dataclass(slots=True)
class _Request:
    number: int
    sent_at: float
    expires_at: float
    remaining: int  # messages it may still bring
    pin: str | None
    confirms: bool = False  # sent with the pin after the lease lapsed: its answer says whether the pin is still ours


@dataclass(slots=True)
class _LaneIO:
    """One lane's requests and reads."""

    next_subject: str
    info_subject: str
    unpin_subject: str
    requests: deque[_Request] = field(default_factory=deque)
    lapsed_at: float | None = None  # when its lease was seen lapsed (until confirmed or lost)
    ack_wait: tuple[float, float] | None = None  # (the lapse's lease_from, when acks stop waiting for its answer)
    quiet_until: float = 0.0  # no request before this (after an error, or a lane just handed over)
    probing: bool = False
    arrived_since_probe: bool = False
    barrier_report_at: float = 0.0  # a barrier waited for this long is logged (then every BARRIER_REPORT_S)
    probe_at: float | None = None  # next barrier read (None: none needed)
    probe_wait_s: float = PROBE_FIRST_S
    next_number: int = 0


class LaneFeed:
    """Every lane of one ordered function this process holds or bids for."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        function: str,
        key_of: Callable[[str, bytes], str],
        consumers: list[str],
        *,
        pin_timeout_s: float,
        ack_wait_s: float,
        hold_max: int,
    ) -> None:
        self._nc = nc
        self._stream = stream
        self._key_of = key_of  # (subject, payload) -> the key it runs under (ordering.LaneKeys)
        self._keyless_lane = len(consumers) - 1  # the function's own consumer: messages without a key
        self._holdings_subject = lane_holdings_subject(function)
        self.book: LaneBook[Msg] = LaneBook(len(consumers), pin_timeout_s, hold_max, ack_wait_s)
        self._pin_timeout_s = pin_timeout_s
        self._keep_alive_s = ack_wait_s / 3
        self._request_min = max(1, hold_max // 4)  # a held lane asks for more once it has room for this many
        self._inbox = nc.new_inbox()
        self._feed_id = self._inbox.rsplit(".", 1)[1]  # unique: how peers tell this feed's announcements apart
        self._lanes = [
            _LaneIO(
                jsapi.next_message_subject(stream, consumer),
                f"CONSUMER.INFO.{stream}.{consumer}",
                f"CONSUMER.UNPIN.{stream}.{consumer}",
            )
            for consumer in consumers
        ]
        self._waiting: deque[asyncio.Future[None]] = deque()  # workers waiting for a batch, first come first served
        self._wake_scheduled = False
        self._refill: set[int] = set()  # lanes whose messages were settled since the last look at their requests
        self._refill_scheduled = False
        self._lane_subscriptions: list[Subscription] = []  # one per lane, in lane order
        self._holdings_subscription: Subscription | None = None
        self._peers: dict[str, tuple[int, float]] = {}  # feed -> (lanes held, when heard)
        self._announced = -2
        self._announce_at = 0.0
        self._next_release_at = 0.0
        self._next_keep_alive = 0.0
        self._watchdog: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._held_at_close: set[int] = set()
        self._given_back: dict[int, list[Msg]] = {}  # lane -> what came to it after close
        self._giving_back: set[asyncio.Future[None]] = set()  # what came after close: never cancelled
        self.lingering: asyncio.Task[None] | None = None  # the subscriptions kept after close (see close)
        self._handed: dict[int, Held[Msg]] = {}  # id(message) -> its holding, while it is in a batch
        self._reconnects = nc.stats["reconnects"]
        self._lease_changed = asyncio.Event()  # set (and replaced) when a lapsed lane is confirmed or lost
        self.lapses = 0  # leases seen lapsed (a starved or frozen process)

    # -- starting and the watchdog -------------------------------------------------------------------

    async def start(self) -> LaneFeed:
        for lane in range(len(self._lanes)):
            subject = f"{self._inbox}.{lane}.*"
            self._lane_subscriptions.append(await _nats_fast.subscribe_direct(self._nc, subject, self._receiver(lane)))
        self._holdings_subscription = await _nats_fast.subscribe_direct(self._nc, self._holdings_subject, self._on_holdings)
        await self._tend(time.monotonic())
        self._watchdog = asyncio.create_task(self._run_watchdog(), name="ordered-feed-watchdog")
        return self

    async def _run_watchdog(self) -> None:
        while not self._closed:
            await asyncio.sleep(WATCHDOG_S)
            try:
                await self._tend(time.monotonic())
            except Exception as exc:  # connection closing: the next round, or close(), decides
                log.debug("ordered feed: %r", exc)

    async def _tend(self, now: float) -> None:
        """Everything that is due: lapsed leases, requests (renewals, refills, bids), barrier reads,
        keep-alives of queued messages, the holdings announcement and the balance."""
        book = self.book
        self._check_connection()
        for lane, io in enumerate(self._lanes):
            while io.requests and now > io.requests[0].expires_at + LATE_MARGIN_S:
                io.requests.popleft()  # its answer was lost (a reconnect, a restarted server)
            if io.lapsed_at is None and book.lapsed(lane, now):
                # This process did not renew in time (frozen, or its loop stalled): the pin may be gone.
                io.lapsed_at = now
                self.lapses += 1
                log.info("lane %s: lease lapsed; asking the server whether it is still this process's", self._lane_name(io))
            await self._maybe_request(lane, io, now)
            if io.probe_at is not None and now >= io.probe_at and not io.probing:
                self._spawn(self._probe(lane, io))
        if now >= self._next_keep_alive:
            self._next_keep_alive = now + self._keep_alive_s
            await self._keep_queued_alive(now)
        await self._balance(now)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- requests ------------------------------------------------------------------------------------

    async def _maybe_request(self, lane: int, io: _LaneIO, now: float) -> None:
        if self._closed or now < io.quiet_until or not self._nc.is_connected:
            return
        book = self.book
        if book.lapsed(lane, now):
            if not any(request.confirms for request in io.requests):  # one at a time
                await self._request(lane, io, 1, now, confirm=True)
        elif book.holds(lane):
            # Waiting for its barrier, a holder takes whatever comes (what it waits for is among it: the previous
            # holder's messages, redelivered); once clear, what it has room for.
            room = book.room(lane) if book.is_clear(lane) else book.hold_max
            wanted = sum(request.remaining for request in io.requests)
            if book.renew_due(lane, now):
                # What the requests about to expire may still bring is asked again: for the overlap, the server
                # may fill both (over the room by a batch at most, held all the same).
                lasting = sum(r.remaining for r in io.requests if r.expires_at > now + RENEW_OVERLAP_S)
                await self._request(lane, io, max(1, room - lasting), now)  # keeps the pin
            elif room - wanted >= self._request_min:
                await self._request(lane, io, room - wanted, now)
        elif not io.requests:
            await self._request(lane, io, book.hold_max, now)  # a bid

    async def _request(self, lane: int, io: _LaneIO, batch: int, now: float, confirm: bool = False) -> None:
        """A pull request: a bid (no pin held), a holder's (renews the pin while its lease runs), or, `confirm`,
        a lapsed holder's question whether the pin is still its own: it cannot take a message (max_bytes 1),
        so the server answers 409 when one is there for it, 408 at its expiry, 423 when the pin is another's."""
        pin = self.book.pin(lane)
        # A holder's request lapses a little after the next renewal is due (RENEW_OVERLAP_S).
        expires_s = (
            CONFIRM_EXPIRES_S if confirm else self._pin_timeout_s * RENEW_AFTER + RENEW_OVERLAP_S if pin else BID_EXPIRES_S
        )
        body: dict[str, object] = {"batch": batch, "expires": int(expires_s * 1e9), "group": PRIORITY_GROUP}
        if pin:
            body["id"] = pin
        if confirm:
            body["max_bytes"] = 1
        io.next_number += 1
        request = _Request(io.next_number, now, now + expires_s, 0 if confirm else batch, pin, confirm)
        if pin:
            self.book.requested(lane, now)
        io.requests.append(request)
        await self._nc.publish(io.next_subject, json.dumps(body).encode(), reply=f"{self._inbox}.{lane}.{request.number}")

    def _receiver(self, lane: int) -> Callable[[Msg], None]:
        def receive(msg: Msg) -> None:
            self._on_message(lane, msg)

        return receive

    def _on_message(self, lane: int, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get(H_STATUS) if headers and not msg.data else None
        io = self._lanes[lane]
        if status is not None:
            if status != HEARTBEAT:
                self._on_status(lane, io, msg.subject.rsplit(".", 1)[1], status, headers or {})
            return
        book = self.book
        pin = headers.get(H_PIN_ID) if headers else None
        for request in io.requests:  # the server fills a client's requests in the order it got them
            if request.remaining > 0:
                requested_at = request.sent_at
                request.remaining -= 1
                if request.remaining == 0:
                    io.requests.remove(request)
                break
        else:
            requested_at = time.monotonic() - self._pin_timeout_s  # its request was given up on: no lease from it
        if pin is None:
            log.warning("%s: message without a pin id (not a pinned lane: run `ebbtide provision`)", msg.subject)
            self._spawn(hand_back(self._nc, msg))
            return
        if self._closed:
            self._give_back(lane, msg)
            return
        try:
            seq, delivery = _sequences(msg.reply)
        except ValueError:
            log.error("%s: message without a JetStream ack subject; ignored", msg.subject)
            return
        new_tenure = book.pinned(lane, pin, requested_at)
        if book.arrived(lane, msg, seq, self._key_of(msg.subject, msg.data), delivery):
            if book.is_clear(lane):
                self._wake_soon()
            else:
                io.arrived_since_probe = True
        if new_tenure:
            io.lapsed_at, io.probe_wait_s, io.probe_at = None, PROBE_FIRST_S, None
            io.barrier_report_at = time.monotonic() + BARRIER_REPORT_S
            if io.probing:
                io.arrived_since_probe = True
            else:
                self._spawn(self._probe(lane, io))

    def _on_status(self, lane: int, io: _LaneIO, number: str, status: str, headers: dict[str, str]) -> None:
        request = next((r for r in io.requests if str(r.number) == number), None)
        if request is not None:
            io.requests.remove(request)
        code = status.split(" ", 1)[0]
        if code == WRONG_PIN:
            if request is not None and request.pin is not None and request.pin == self.book.pin(lane):
                self._spawn(self._lose(lane, "another process holds it now"))
        elif request is not None and request.confirms and request.pin is not None:
            if code == TOO_LARGE:  # the server was delivering to it under its pin: the pin took the request
                self._confirmed(lane, request)
            elif code == EXPIRED:  # it waited: the pin, or none (timed out), took it; the consumer info says
                self._spawn(self._confirm_by_info(lane, io, request))
        elif code not in (EXPIRED, "404", TOO_LARGE):
            log.warning("pull request on %s answered %s %s", io.next_subject, status, headers.get(H_DESCRIPTION, ""))
            io.quiet_until = time.monotonic() + RETRY_AFTER_ERROR_S

    # -- a lapsed lease ------------------------------------------------------------------------------

    def _confirmed(self, lane: int, request: _Request) -> None:
        assert request.pin is not None
        if self.book.confirmed(lane, request.pin, request.sent_at) and not self.book.lapsed(lane, time.monotonic()):
            io = self._lanes[lane]
            if io.lapsed_at is not None:
                log.info(
                    "lane %s: still this process's (lease lapsed for %.1f s)",
                    self._lane_name(io),
                    time.monotonic() - io.lapsed_at,
                )
                io.lapsed_at = None
            self._lease_news()
            self._wake_all()

    async def _confirm_by_info(self, lane: int, io: _LaneIO, request: _Request) -> None:
        """A confirming request expired (408), so the server took it before: if its consumer info still names
        the pin, the pin was there when it took the request (a pin that timed out never comes back)."""
        try:
            reply = await jsapi.request(self._nc, io.info_subject, None, _PendingInfo)
        except Exception as exc:
            log.debug("pin read of %s: %r", io.info_subject, exc)
            return  # the next confirming request asks again
        if self.book.pin(lane) != request.pin:
            return  # lost or confirmed meanwhile
        if any(group.pinned_client_id == request.pin for group in reply.priority_groups):
            self._confirmed(lane, request)
        else:
            await self._lose(lane, "its pin timed out")

    def _check_connection(self) -> None:
        """A lost connection voids every lease: the server may have restarted, forgetting its pins."""
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects or not self._nc.is_connected:
            self._reconnects = reconnects
            for lane in self.book.held_lanes:
                self.book.void_lease(lane)

    def _lease_news(self) -> None:
        """Wake whoever waits in `may_ack` for a lapsed lane's answer."""
        self._lease_changed.set()
        self._lease_changed = asyncio.Event()

    def _lane_name(self, io: _LaneIO) -> str:
        return io.next_subject.rsplit(".", 1)[1]

    # -- the barrier ---------------------------------------------------------------------------------

    async def _probe(self, lane: int, io: _LaneIO) -> None:
        io.probing, io.arrived_since_probe = True, False
        try:
            probe: Probe = self.book.barrier_probe(lane)
            reply = await jsapi.request(self._nc, io.info_subject, None, _PendingInfo)
            now = time.monotonic()
            clear = self.book.barrier_answer(probe, reply.num_ack_pending, reply.delivered.consumer_seq, now)
            if not clear and now >= io.barrier_report_at:
                io.barrier_report_at = now + BARRIER_REPORT_S
                log.info(
                    "%s: waiting for its barrier: the server counts %d unacked, %d held here",
                    io.info_subject.rsplit(".", 1)[1],
                    reply.num_ack_pending,
                    self.book.held_count(lane),
                )
        except Exception as exc:
            log.debug("barrier read of %s: %r", io.info_subject, exc)
            clear = False
        finally:
            io.probing = False
        if clear or not self.book.holds(lane):
            io.probe_at = None
            if clear:
                self._wake_all()
            return
        if io.arrived_since_probe:  # what the barrier waited for may have come in: look again soon
            io.arrived_since_probe, io.probe_wait_s = False, PROBE_FIRST_S
        io.probe_at = time.monotonic() + io.probe_wait_s
        io.probe_wait_s = min(io.probe_wait_s * 2, PROBE_MAX_S)

    # -- losing, keeping alive, balancing ------------------------------------------------------------

    async def _lose(self, lane: int, why: str) -> None:
        """The lane is no longer held here: its queued messages handed back, each confirmed (the book forgets
        them at once; the caller awaits the confirmations, or spawns this, as the watchdog does: it must
        not wait for them while other lanes' renewals are due)."""
        if not self.book.holds(lane):
            return
        io = self._lanes[lane]
        log.info("lane %s: no longer held here (%s)", self._lane_name(io), why)
        io.probe_at = io.lapsed_at = None
        queued = self.book.lose(lane)
        self._lease_news()
        await asyncio.gather(*(hand_back(self._nc, msg) for msg in queued))

    async def _keep_queued_alive(self, now: float) -> None:
        """+WPI for the messages held here that wait in a queue (a batch's messages get theirs from the pool).
        A lapsed lane's too: a +WPI acks nothing and counts nothing; sent for a message the server has given
        to another holder meanwhile, it only delays that one's redelivery, which its holder keeps alive anyway."""
        book = self.book
        replies = [msg.reply for lane in book.held_lanes for msg in book.queued_messages(lane)]
        if replies and self._nc.is_connected:
            await _nats_fast.write(self._nc, b"".join([_nats_fast.pub(reply, b"+WPI") for reply in replies]), len(replies))

    def _on_holdings(self, msg: Msg) -> None:
        try:
            holdings = msgspec.json.decode(msg.data, type=_Holdings)
        except msgspec.DecodeError:
            return
        if holdings.feed != self._feed_id:
            self._peers[holdings.feed] = (holdings.held, time.monotonic())

    async def _balance(self, now: float) -> None:
        held = self.book.held_lanes
        if self._closed:
            return
        if len(held) != self._announced or now >= self._announce_at:
            await self._announce(len(held), now)
        if now < self._next_release_at or not held:
            return
        live = [count for count, heard in self._peers.values() if now - heard < PEER_LIVE_S and count >= 0]
        if live and len(held) >= min(live) + 2:
            # Half the difference at once (the fewest held messages first), then look again.
            self._next_release_at = now + RELEASE_EVERY_S
            surplus = sorted(held, key=self.book.held_count)[: (len(held) - min(live)) // 2]
            for lane in surplus:
                self._spawn(self._hand_over(lane, now))

    async def _announce(self, held: int, now: float) -> None:
        self._announced, self._announce_at = held, now + HOLDINGS_EVERY_S
        if self._nc.is_connected:
            await self._nc.publish(self._holdings_subject, msgspec.json.encode(_Holdings(self._feed_id, held)))

    async def _hand_over(self, lane: int, now: float) -> None:
        """Let the lane go at once: its queued messages handed back (confirmed), then the pin dropped, so
        that the server pins a bidder now (its barrier waits for what still runs here)."""
        io = self._lanes[lane]
        io.quiet_until = now + REST_AFTER_RELEASE_S
        await self._lose(lane, "handed over")
        await self._unpin(io)

    async def _unpin(self, io: _LaneIO) -> None:
        try:
            await jsapi.request(self._nc, io.unpin_subject, {"group": PRIORITY_GROUP}, jsapi.ApiResponse)
        except Exception as exc:  # the pin times out by itself
            log.warning("could not unpin %s: %r", io.unpin_subject, exc)

    # -- what the workers call -----------------------------------------------------------------------

    def _wake_soon(self) -> None:
        """Wake a waiting worker once the messages being read now are all in: a batch then takes them together
        (the read loop hands over every message of what it received before the event loop runs this)."""
        if not self._wake_scheduled and self._waiting:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_soon(self._wake_scheduled_one)

    def _refill_soon(self, lane: int) -> None:
        """Ask for a lane's next messages as soon as it has room (once per turn of the event loop, whatever was
        settled in it), not at the next watchdog tick: in a burst a lane's held messages are done in less than
        a tick, and each wait for the tick was one a hot key's lane could not catch up."""
        self._refill.add(lane)
        if not self._refill_scheduled:
            self._refill_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_refill)

    def _start_refill(self) -> None:
        self._refill_scheduled = False
        lanes, self._refill = self._refill, set()
        self._spawn(self._request_for(lanes))

    async def _request_for(self, lanes: set[int]) -> None:
        now = time.monotonic()
        try:
            for lane in lanes:
                if self.book.holds(lane) and not self.book.lapsed(lane, now):
                    await self._maybe_request(lane, self._lanes[lane], now)
        except Exception as exc:  # connection closing: the watchdog's next round, or close(), decides
            log.debug("ordered feed: %r", exc)

    def _wake_scheduled_one(self) -> None:
        self._wake_scheduled = False
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # else it gave up waiting (timed out)
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to `batch` messages that may run now (see LaneBook.take); else the first to become ready
        within `wait_s` ([] if none did, or another worker took them first)."""
        taken = self.book.take(batch, time.monotonic())
        if not taken:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await asyncio.wait_for(waiter, wait_s)
            except TimeoutError:
                return []
            taken = self.book.take(batch, time.monotonic())
        if not taken:
            return []
        self._wake_one()  # there may be more, for the next worker waiting
        handed = self._handed
        for held in taken:
            handed[id(held.msg)] = held  # unique while it is in a batch: the batch keeps the message alive
        return [held.msg for held in taken]

    async def may_ack(self, incoming: Incoming) -> bool:
        """Whether this process may ack `incoming` now: at once within its lane's lease; a lapsed lane's
        message once the server has confirmed the pin (False when it went to another process, or no answer
        came within a pin timeout of the lapse's first ack: the message is then queued again, or handed back)."""
        held = self._handed.get(id(incoming.msg))
        if held is None:
            return False  # not in a batch of this feed's
        lane, book = held.lane, self.book
        self._check_connection()
        if book.may_act(lane, now := time.monotonic()):
            return True
        give_up_at = self._ack_wait_ends(lane, now)
        while book.lapsed(lane, now := time.monotonic()) and now < give_up_at and not self._closed:
            try:
                await asyncio.wait_for(self._lease_changed.wait(), give_up_at - now)
            except TimeoutError:
                break
        return book.may_act(lane, time.monotonic())

    def _ack_wait_ends(self, lane: int, now: float) -> float:
        """Until when `may_ack` waits for the server's answer about a lapsed lane: a pin timeout after the first
        ack that asked during this lapse. Once per lapse, not once per message: a batch's acks are asked one
        after another, and a lapse nobody answered (the info reads failing while a cluster elects its leaders)
        held each of them for a pin timeout, a batch for minutes."""
        io = self._lanes[lane]
        lapse = self.book.lease_from(lane)
        if io.ack_wait is None or io.ack_wait[0] != lapse:
            io.ack_wait = (lapse, now + self._pin_timeout_s)
        return io.ack_wait[1]

    def settled(self, incoming: Incoming, retried: bool) -> None:
        held = self._handed.pop(id(incoming.msg), None)
        if held is None:
            return
        if retried:
            self.book.retried(held)
        else:
            self.book.acked(held)
        self._wake_soon()
        self._refill_soon(held.lane)

    def still_held(self, msg: Msg) -> bool:
        """Whether `msg`'s lane is still this process's to keep its messages alive (KeepAlive): a lapsed lane's
        too (see `_keep_queued_alive`), not one lost."""
        held = self._handed.get(id(msg))
        return held is not None and self.book.holds(held.lane)

    async def finish(self, msgs: Sequence[Msg]) -> None:
        """A batch is over: its messages not settled go back to their keys' queues, or are handed back when
        their lane is no longer held here; those the pool handed back (nak'ed at shutdown) wait for their
        redelivery as retried ones do."""
        book = self.book
        for msg in msgs:
            held = self._handed.pop(id(msg), None)
            if held is None:
                continue  # settled (`settled` was told), or never held (the executor ignored it)
            if msg.is_acked:
                book.retried(held)
            elif not book.returned(held):
                # Forgotten before the nak goes: its redelivery may come in while the nak is confirmed (held
                # still, it would be taken for a duplicate, and its key would wait for it forever).
                book.retried(held)
                await hand_back(self._nc, msg)
        self._wake_all()

    async def close(self) -> None:
        """Hand every lane over: stop asking, hand back (nak, confirmed) what nobody took, unpin.

        The requests still waiting at the server cannot be taken back, and the server fills one as long as
        its reply subject has a subscriber (and, racing an unsubscribe, a moment after): a message for a
        lane's last bid would sit unacked until its ack wait, the lane pinned to nobody until the pin timeout
        (the ordered soak's trickle waited ~10 s in most minutes). So each lane's subscription stays until
        its last request has expired (`lingering`, in the background); a message that comes meanwhile ends
        the lane's subscription first (so the server cannot give it back to the same request), then goes back
        with whatever came with it, and once the lane's requests have expired (at most BID_EXPIRES_S for a
        bid: while one waits, UNPIN would pin it again) the pin it brought is let go (`_give_back`)."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        connected = self._nc.is_connected
        now = time.monotonic()
        self._held_at_close = set(self.book.held_lanes)
        if self._holdings_subscription is not None:
            await _unsubscribe([self._holdings_subscription])
        if connected:
            await asyncio.gather(*(self._hand_over(lane, now) for lane in self._held_at_close))
            try:
                await self._nc.publish(self._holdings_subject, msgspec.json.encode(_Holdings(self._feed_id, -1)))
            except Exception:
                pass
        # else the server redelivers them after the ack wait, and the pins time out
        for task in list(self._tasks):
            task.cancel()
        self._wake_all()
        last_expiry = max((r.expires_at for io in self._lanes for r in io.requests), default=now)
        if connected and last_expiry > now:
            self.lingering = asyncio.create_task(self._linger(last_expiry + LATE_MARGIN_S))
        else:
            await _unsubscribe(self._lane_subscriptions)

    async def _linger(self, until: float) -> None:
        try:
            await asyncio.sleep(until - time.monotonic())
        finally:
            await _unsubscribe(self._lane_subscriptions)
            await asyncio.gather(*self._giving_back, return_exceptions=True)

    def _give_back(self, lane: int, msg: Msg) -> None:
        """A message for a request answered after close (`close` says why that happens)."""
        back = self._given_back.get(lane)
        if back is not None:  # the lane's subscription is ending: this came with the first
            back.append(msg)
            return
        self._given_back[lane] = back = [msg]

        async def give_back() -> None:
            subscription = self._lane_subscriptions[lane]
            try:
                await subscription.drain()  # type: ignore[no-untyped-call]  # what is on its way still comes in
            except Exception:
                pass  # connection gone: the server redelivers after the ack wait
            await asyncio.gather(*(hand_back(self._nc, m) for m in back))
            # A lane held at close had its pin dropped then (another process may hold it now: UNPIN takes no
            # pin id); any other was pinned here by the bid this came to.
            if lane not in self._held_at_close:
                io = self._lanes[lane]
                last_expiry = max((r.expires_at for r in io.requests), default=0.0)
                await asyncio.sleep(max(0.0, last_expiry + LATE_MARGIN_S - time.monotonic()))
                await self._unpin(io)

        future = asyncio.ensure_future(give_back())
        self._giving_back.add(future)
        future.add_done_callback(self._giving_back.discard)


async def _unsubscribe(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        try:
            await subscription.unsubscribe()  # type: ignore[no-untyped-call]
        except Exception:
            pass  # connection gone: nothing more can arrive here


class FeedView:
    """One worker's handle on a shared feed: the pool's Consumer, and the executor's KeyOrder for the
    batches it fetched. Closing it lets the feed go."""

    def __init__(self, shared: SharedFeed, feed: LaneFeed) -> None:
        self._shared = shared
        self._feed: LaneFeed | None = feed
        self._last = feed  # for the batch still being settled when the view closes

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        assert self._feed is not None, "fetch on a closed view"
        return await self._feed.fetch(batch, wait_s)

    async def may_ack(self, incoming: Incoming) -> bool:
        return await self._last.may_ack(incoming)

    def settled(self, incoming: Incoming, retried: bool) -> None:
        self._last.settled(incoming, retried)

    def still_held(self, msg: Msg) -> bool:
        return self._last.still_held(msg)

    async def finish(self, msgs: Sequence[Msg]) -> None:
        await self._last.finish(msgs)

    async def close(self) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            await self._shared.release(feed)


class SharedFeed:
    """One LaneFeed for all of a pool's workers: opened by the first; after the last has gone (the pool
    scaled to zero) it keeps the lanes for IDLE_HOLD_S, then closes, or at once when the pool stops."""

    def __init__(self, open_feed: Callable[[], Awaitable[LaneFeed]], idle_hold_s: float = IDLE_HOLD_S) -> None:
        self._open_feed = open_feed
        self._idle_hold_s = idle_hold_s
        self._feed: LaneFeed | None = None
        self._users = 0
        self._lock = asyncio.Lock()
        self._idle_close: asyncio.Task[None] | None = None

    async def view(self) -> FeedView:
        async with self._lock:
            if self._idle_close is not None:
                self._idle_close.cancel()
                self._idle_close = None
            if self._feed is None:
                self._feed = await self._open_feed()
            self._users += 1
            return FeedView(self, self._feed)

    async def release(self, feed: LaneFeed) -> None:
        async with self._lock:
            self._users -= 1
            if self._users == 0 and self._feed is feed:
                self._idle_close = asyncio.create_task(self._close_when_idle(feed))

    async def _close_when_idle(self, feed: LaneFeed) -> None:
        await asyncio.sleep(self._idle_hold_s)
        async with self._lock:
            if self._users == 0 and self._feed is feed:
                self._feed, self._idle_close = None, None
                await feed.close()

    async def close(self) -> None:
        """The pool stops: its lanes go now (to a peer, or a process started later)."""
        async with self._lock:
            if self._idle_close is not None:
                self._idle_close.cancel()
                self._idle_close = None
            feed, self._feed = self._feed, None
            if feed is not None:
                await feed.close()
