"""The LaneBook (broker/lanes.py), pure: what an ordered function's process may run of the lanes it holds."""

from __future__ import annotations

from ebbtide.broker.lanes import ACT_WITHIN, LaneBook

PIN_S = 3.0


def book(lanes: int = 2, hold_max: int = 100) -> LaneBook[str]:
    return LaneBook(lanes, PIN_S, hold_max, ack_wait_s=3.0)


def hold(b: LaneBook[str], lane: int, *messages: tuple[int, str], pin: str = "pin-a", at: float = 0.0) -> None:
    """Deliver `messages` ((stream seq, key)) on `lane` under `pin`; delivery sequence = stream seq."""
    for seq, key in messages:
        b.pinned(lane, pin, at)
        b.arrived(lane, f"{key}#{seq}", seq, key, seq)


def take(b: LaneBook[str], batch: int, now: float) -> list[str]:
    return [held.msg for held in b.take(batch, now)]


def settle(b: LaneBook[str], lane: int, seq: int, retried: bool = False) -> None:
    held = b.holding(lane, seq)
    assert held is not None
    (b.retried if retried else b.acked)(held)


def clear(b: LaneBook[str], lane: int, now: float = 0.1) -> bool:
    held = b.held_count(lane)
    return b.barrier_answer(b.barrier_probe(lane), held, 10**9, now)


def test_a_tenure_runs_nothing_until_nothing_of_the_lane_is_pending_elsewhere() -> None:
    b = book()
    hold(b, 0, (5, "k1"), (6, "k2"))
    assert take(b, 10, 0.1) == []  # a new tenure: its barrier first
    # The server counts three unacked: one is still with the previous holder.
    assert not b.barrier_answer(b.barrier_probe(0), 3, 10**9, 0.1)
    assert take(b, 10, 0.1) == []
    # An ack crossed the read: inconclusive, whatever the count.
    probe = b.barrier_probe(0)
    hold(b, 0, (7, "k3"))
    settle(b, 0, 7)
    assert not b.barrier_answer(probe, 2, 10**9, 0.1)
    # Deliveries the server made after it counted are not compared (delivery sequence 6 > 5).
    assert not b.barrier_answer(b.barrier_probe(0), 2, 5, 0.1)
    assert b.barrier_answer(b.barrier_probe(0), 2, 6, 0.1)
    assert sorted(take(b, 10, 0.1)) == ["k1#5", "k2#6"]


def test_each_key_runs_in_stream_order_its_next_messages_after_the_batch_settles() -> None:
    b = book()
    hold(b, 0, (1, "a"), (2, "b"), (3, "a"))
    assert clear(b, 0)
    assert take(b, 10, 0.1) == ["a#1", "a#3", "b#2"]  # a key's queued messages together, in order
    hold(b, 0, (4, "a"), (5, "c"))
    assert take(b, 10, 0.1) == ["c#5"]  # a's 4 waits: 1 and 3 are in a batch
    settle(b, 0, 1)
    assert take(b, 10, 0.1) == []
    settle(b, 0, 3)
    assert take(b, 10, 0.1) == ["a#4"]


def test_a_retried_message_holds_back_its_key_until_it_comes_back() -> None:
    b = book()
    hold(b, 0, (1, "a"), (2, "a"), (3, "b"))
    assert clear(b, 0)
    taken = b.take(10, 0.1)
    assert [held.msg for held in taken] == ["a#1", "a#2", "b#3"]
    settle(b, 0, 1, retried=True)  # nak'ed with a delay
    assert b.returned(taken[1])  # held back in its batch by the retry: queued again
    settle(b, 0, 3)
    hold(b, 0, (4, "b"))
    assert take(b, 10, 0.1) == ["b#4"]  # other keys go on
    hold(b, 0, (1, "a"))  # redelivered
    assert take(b, 10, 0.1) == ["a#1", "a#2"]


def test_a_lapsed_lease_runs_nothing_until_the_server_confirms_the_pin_and_then_goes_on_with_what_it_held() -> None:
    b = book()
    hold(b, 0, (1, "a"), (2, "b"), at=0.0)
    assert clear(b, 0)
    lease = PIN_S * ACT_WITHIN
    assert b.may_act(0, lease - 0.01) and b.lapsed(0, lease + 0.01)
    assert b.requested(0, 1.0)  # sent within the lease: extends it
    late = 1.0 + lease + 0.01
    assert b.may_act(0, late - 0.02) and b.lapsed(0, late)
    (first,) = take(b, 1, 0.1)
    assert first == "a#1"
    assert take(b, 10, late) == []  # past the lease: nothing runs
    # A request sent after the lapse may reach a server that dropped the pin: it renews nothing by itself.
    assert not b.requested(0, late)
    assert b.lapsed(0, late + 0.01) and take(b, 10, late + 0.01) == []
    # The server names another pin: no lease from it. It names this pin: the lease runs from that request,
    # the holding goes on (no new tenure, no barrier), what it held still held.
    assert not b.confirmed(0, "pin-b", late)
    assert b.confirmed(0, "pin-a", late)
    assert b.is_clear(0) and b.may_act(0, late + 0.01) and not b.confirmed(0, "pin-a", late)
    (second,) = b.take(10, late + 0.01)
    assert second.msg == "b#2"
    settle(b, 0, 1)  # the one carried out while lapsed is acked, not run again
    hold(b, 0, (3, "c"))
    b.void_lease(0)  # the connection was lost: lapsed until confirmed again
    assert b.lapsed(0, late + 0.02)
    assert b.lose(0) == ["c#3"]  # lost (another pin): queued messages handed back at once
    assert not b.returned(second)  # in a batch: the caller hands it back
    assert not b.holds(0) and not b.confirmed(0, "pin-a", late + 1)


def test_a_message_delivered_again_is_held_once_and_a_new_pin_is_a_new_tenure() -> None:
    b = book()
    hold(b, 0, (1, "a"))
    assert clear(b, 0)
    assert not b.arrived(0, "a#1 again", 1, "a", 9)  # redelivered after its ack wait: the one held stays
    assert take(b, 10, 0.1) == ["a#1"]
    settle(b, 0, 1)
    hold(b, 0, (2, "a"), pin="pin-b")
    assert not b.is_clear(0) and take(b, 10, 0.1) == []


def test_the_server_counting_fewer_than_held_clears_only_after_ack_wait_and_pin_timeout() -> None:
    b = book()
    hold(b, 0, (1, "a"), (2, "b"))
    # One of them was acked behind this holder's back (a stale holder): the count cannot tell what else is
    # pending elsewhere until whatever another holder had has come back or been acked.
    assert not b.barrier_answer(b.barrier_probe(0), 1, 10**9, 1.0)
    assert not b.barrier_answer(b.barrier_probe(0), 1, 10**9, 1.0 + b.short_grace_s - 0.1)
    assert b.barrier_answer(b.barrier_probe(0), 1, 10**9, 1.0 + b.short_grace_s)


def test_room_bounds_what_a_lane_asks_for() -> None:
    b = book(hold_max=3)
    hold(b, 1, (1, "a"), (2, "b"))
    assert b.room(1) == 1 and b.room(0) == 3
    assert b.held_lanes == [1]
