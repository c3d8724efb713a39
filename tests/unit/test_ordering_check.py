"""The ordering tests' judge (tests/ordering_check.py) on crafted write sequences: each defect it is there to
find, found and counted; a clean sequence judged clean."""

from __future__ import annotations

from tests.ordering_check import SequenceCheck, judge

EXPECTED = {"a": 3, "b": 3}


def clean(writes: list[tuple[str, int]], expected: dict[str, int] = EXPECTED, history: int | None = None) -> SequenceCheck:
    return judge(writes, expected, history)


def test_interleaved_keys_each_in_sequence_are_clean() -> None:
    check = clean([("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 3), ("b", 3)])
    assert check == SequenceCheck(keys=2, writes=6, violations=0, lost=0, applied_twice=0, strays=0)
    assert check.clean


def test_a_write_older_than_one_already_written_is_out_of_order() -> None:
    check = clean([("a", 1), ("a", 3), ("a", 2), ("b", 2), ("b", 1), ("b", 3)])
    assert (check.violations, check.lost, check.applied_twice) == (2, 0, 0)
    assert not check.clean


def test_an_event_never_written_is_lost() -> None:
    check = clean([("a", 1), ("a", 3), ("b", 1), ("b", 2)])
    assert (check.violations, check.lost, check.applied_twice) == (0, 2, 0)  # a:2 and b:3
    assert not check.clean


def test_an_event_written_twice_is_applied_twice_not_out_of_order() -> None:
    check = clean([("a", 1), ("a", 2), ("a", 2), ("a", 3), ("b", 1), ("b", 1), ("b", 2), ("b", 3)])
    assert (check.violations, check.lost, check.applied_twice) == (0, 0, 2)
    # written again after a later event: counted once, as twice (not also as out of order)
    late = clean([("a", 1), ("a", 2), ("a", 3), ("a", 1), ("b", 1), ("b", 2), ("b", 3)])
    assert (late.violations, late.applied_twice) == (0, 1)
    assert not check.clean and not late.clean


def test_a_key_nobody_sent_is_a_stray() -> None:
    check = clean([("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3), ("c", 1)])
    assert (check.strays, check.writes) == (1, 7)
    assert not check.clean


def test_a_hot_key_beyond_the_buckets_history_is_judged_on_the_writes_kept() -> None:
    """12 events of `hot`, a bucket keeping 5 writes per key: the stream holds 8..12 only."""
    expected = {"hot": 12, "a": 3}
    kept = [("a", 1), *(("hot", seq) for seq in range(8, 13)), ("a", 2), ("a", 3)]
    check = clean(kept, expected, history=5)
    assert check.clean and check.unjudged == 7  # 1..7 are gone with the history, not lost
    # Without the history the judge would call them lost: that is why it must be told.
    assert clean(kept, expected).lost == 7
    # Within what the history keeps, every defect still counts.
    out_of_order = [("hot", 8), ("hot", 10), ("hot", 9), ("hot", 11), ("hot", 12), ("a", 1), ("a", 2), ("a", 3)]
    assert clean(out_of_order, expected, history=5).violations == 1
    missing = [("hot", 7), ("hot", 8), ("hot", 9), ("hot", 10), ("hot", 12), ("a", 1), ("a", 2), ("a", 3)]
    assert clean(missing, expected, history=5).lost == 1  # 11; 7 is kept because 11 never came
    doubled = [("hot", 9), ("hot", 10), ("hot", 11), ("hot", 12), ("hot", 12), ("a", 1), ("a", 2), ("a", 3)]
    assert clean(doubled, expected, history=5).applied_twice == 1
