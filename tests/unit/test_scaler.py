import pytest

from ebbtide.scaler import ScalePolicy, Scaler

POLICY = ScalePolicy(min=0, max=8, target_backlog=100, cooldown_s=5.0)


def run(scaler: Scaler, steps: list[tuple[float, int, int]]) -> list[int]:
    return [scaler.desired(lag=lag, in_flight=in_flight, current=0, now=t) for t, lag, in_flight in steps]


def test_burst_reaches_max_in_one_tick() -> None:
    assert run(Scaler(POLICY), [(0.0, 0, 0), (0.1, 10_000, 0)]) == [0, 8]


def test_scale_is_proportional_to_backlog() -> None:
    assert run(Scaler(POLICY), [(0.0, 1, 0)]) == [1]
    assert run(Scaler(POLICY), [(0.0, 100, 0)]) == [1]
    assert run(Scaler(POLICY), [(0.0, 101, 0)]) == [2]
    assert run(Scaler(POLICY), [(0.0, 350, 0)]) == [4]


def test_scale_down_waits_for_the_cooldown_then_drains_to_zero() -> None:
    scaler = Scaler(POLICY)
    assert scaler.desired(lag=10_000, in_flight=0, current=0, now=0.0) == 8
    # Backlog gone at t=1: hold 8 until the high want leaves the 5 s window.
    assert scaler.desired(lag=0, in_flight=0, current=8, now=1.0) == 8
    assert scaler.desired(lag=0, in_flight=0, current=8, now=4.9) == 8
    assert scaler.desired(lag=0, in_flight=0, current=8, now=5.1) == 0


def test_steps_down_through_intermediate_wants() -> None:
    scaler = Scaler(POLICY)
    assert run(scaler, [(0, 800, 0), (2, 300, 0), (4, 0, 0)]) == [8, 8, 8]
    assert run(scaler, [(5.5, 0, 0)]) == [3]  # the t=2 want of 3 is still in the window
    assert run(scaler, [(7.5, 0, 0)]) == [0]


def test_never_below_in_flight() -> None:
    scaler = Scaler(POLICY)
    assert run(scaler, [(0, 0, 5), (100, 0, 1), (200, 0, 1)]) == [1, 1, 1]
    assert run(scaler, [(203, 0, 0)]) == [1]  # still within the cooldown of the last in-flight tick
    assert run(scaler, [(206, 0, 0)]) == [0]


def test_min_and_max_bound_the_result() -> None:
    scaler = Scaler(ScalePolicy(min=2, max=3, target_backlog=10, cooldown_s=0))
    assert run(scaler, [(0, 0, 0), (1, 1_000_000, 0), (2, 0, 0)]) == [2, 3, 2]


def test_no_flapping_on_a_noisy_trickle() -> None:
    scaler = Scaler(POLICY)
    lags = [0, 150, 0, 90, 210, 0, 0, 120, 30, 0] * 5
    results = [scaler.desired(lag=lag, in_flight=0, current=0, now=i * 0.5) for i, lag in enumerate(lags)]
    # Once at 3 (lag 210 at t=2.0), the pool stays there while such spikes keep coming within the cooldown.
    first_three = results.index(3)
    assert all(r == 3 for r in results[first_three:])
    changes = sum(1 for a, b in zip(results, results[1:]) if a != b)
    assert changes <= 3


def test_wake_from_zero() -> None:
    scaler = Scaler(POLICY)
    assert scaler.desired(lag=0, in_flight=0, current=0, now=0) == 0
    assert scaler.wake(now=1.0) == 1
    assert scaler.desired(lag=0, in_flight=0, current=1, now=1.1) == 1  # the wake counts for a cooldown


@pytest.mark.parametrize("bad", [dict(min=3, max=2), dict(max=0), dict(target_backlog=0), dict(cooldown_s=-1)])
def test_invalid_policies_are_refused(bad: dict) -> None:
    values = dict(min=0, max=4, target_backlog=10, cooldown_s=1.0) | bad
    with pytest.raises(ValueError):
        ScalePolicy(**values)


def test_next_change_is_when_the_cooldown_lets_the_count_drop() -> None:
    """A quiet controller sleeps until then (controller.py), not a tick at a time."""
    scaler = Scaler(POLICY)
    assert scaler.desired(lag=0, in_flight=0, current=0, now=0) == 0
    assert scaler.next_change_at() is None  # nothing to drop
    scaler.desired(lag=1000, in_flight=0, current=0, now=1.0)
    assert scaler.desired(lag=0, in_flight=0, current=2, now=2.0) > 0
    change_at = scaler.next_change_at()
    assert change_at == 1.0 + POLICY.cooldown_s
    assert scaler.desired(lag=0, in_flight=0, current=2, now=change_at + 0.001) == 0
    assert scaler.next_change_at() is None
