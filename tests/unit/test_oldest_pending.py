"""The age of a function's oldest unhandled message: which consumer to read, when, and the age it gives."""

from ebbtide.oldest_pending import REFRESH_S, OldestPending


def test_no_lag_no_age_and_nothing_to_read() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=0)
    assert oldest.lane_to_read(now=0.0) is None
    assert oldest.age(now=1_000.0) == 0.0


def test_a_consumer_with_a_lag_is_read_at_once_from_the_message_after_its_floor() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=3)
    assert oldest.lane_to_read(now=0.0) == (0, 11)
    assert oldest.age(now=1_000.0) == 0.0  # not read yet: unknown, not invented
    oldest.read(0, floor=10, stored_at=900.0, now=0.0)
    assert oldest.lane_to_read(now=0.1) is None
    assert oldest.age(now=1_000.0) == 100.0


def test_a_stuck_floor_is_never_read_again_and_the_age_keeps_growing() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=1)
    oldest.read(0, floor=10, stored_at=900.0, now=0.0)
    for tick in range(1, 100):
        oldest.update(0, floor=10, lag=1)
        assert oldest.lane_to_read(now=tick * 10.0) is None
    assert oldest.age(now=4_500.0) == 3_600.0


def test_a_moving_floor_is_read_again_at_most_once_per_refresh() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=50)
    oldest.read(0, floor=10, stored_at=900.0, now=0.0)
    oldest.update(0, floor=30, lag=40)
    assert oldest.lane_to_read(now=REFRESH_S / 2) is None  # too soon: the older reading stands (an overstatement)
    assert oldest.age(now=1_000.0) == 100.0
    assert oldest.lane_to_read(now=REFRESH_S) == (0, 31)
    oldest.read(0, floor=30, stored_at=950.0, now=REFRESH_S)
    assert oldest.age(now=1_000.0) == 50.0


def test_drained_clears_the_age_and_a_late_read_does_not_bring_it_back() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=2)
    assert oldest.lane_to_read(now=0.0) == (0, 11)
    oldest.update(0, floor=12, lag=0)  # handled while the read was on its way
    oldest.read(0, floor=10, stored_at=900.0, now=0.0)
    assert oldest.age(now=1_000.0) == 0.0
    assert oldest.lane_to_read(now=5.0) is None


def test_a_message_gone_from_the_stream_is_not_read_again_at_the_same_floor() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=1)
    oldest.read(0, floor=10, stored_at=None, now=0.0)  # e.g. removed by max_age before the floor moved
    assert oldest.lane_to_read(now=100.0) is None
    assert oldest.age(now=1_000.0) == 0.0


def test_an_ordered_function_is_as_old_as_its_oldest_partition_and_reads_the_stalest_first() -> None:
    oldest = OldestPending(3)
    for lane, floor in enumerate((5, 7, 9)):
        oldest.update(lane, floor=floor, lag=1)
    oldest.read(0, floor=5, stored_at=990.0, now=0.0)
    oldest.read(1, floor=7, stored_at=950.0, now=0.0)
    assert oldest.lane_to_read(now=0.0) == (2, 10)  # never read: first
    oldest.read(2, floor=9, stored_at=980.0, now=0.0)
    assert oldest.age(now=1_000.0) == 50.0  # partition 1's message
    oldest.update(0, floor=6, lag=1)
    oldest.update(1, floor=8, lag=1)
    assert oldest.lane_to_read(now=REFRESH_S) == (1, 9)  # the one whose reading decides the age
    oldest.read(1, floor=8, stored_at=999.0, now=REFRESH_S)
    assert oldest.lane_to_read(now=REFRESH_S) == (0, 7)
    oldest.read(0, floor=6, stored_at=995.0, now=REFRESH_S)
    assert oldest.age(now=1_000.0) == 20.0  # now partition 2's


def test_the_age_is_never_negative() -> None:
    """The server's clock stamps the message, the host's reads the age: a host behind the server reads 0."""
    oldest = OldestPending(1)
    oldest.update(0, floor=0, lag=1)
    oldest.read(0, floor=0, stored_at=1_005.0, now=0.0)
    assert oldest.age(now=1_000.0) == 0.0


def test_a_message_arriving_after_the_floor_was_read_empty_is_read() -> None:
    """Nothing unhandled at floor 10; then a message arrives after it (the floor stays at 10): it is read."""
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=0)
    oldest.update(0, floor=10, lag=1)
    assert oldest.lane_to_read(now=0.0) == (0, 11)


def test_a_failed_read_is_tried_again_after_the_refresh_interval() -> None:
    oldest = OldestPending(1)
    oldest.update(0, floor=10, lag=1)
    assert oldest.lane_to_read(now=0.0) == (0, 11)
    oldest.read_failed(0, now=0.0)
    assert oldest.lane_to_read(now=REFRESH_S / 2) is None
    assert oldest.lane_to_read(now=REFRESH_S) == (0, 11)
