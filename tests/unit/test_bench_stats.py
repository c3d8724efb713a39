"""The benchmarks' arithmetic: percentiles, repeats, latency per order, windows, trends, rate options."""

from __future__ import annotations

import math

import pytest

from ebbtide.workload.bench.stats import latencies_ms, parse_rate, percentile, spread, trend, windows


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_spread_of_repeats() -> None:
    s = spread([3.0, 1.0, 2.0])
    assert (s.min, s.median, s.max, s.values) == (1.0, 2.0, 3.0, (3.0, 1.0, 2.0))


def test_latency_per_order_is_write_minus_publish() -> None:
    published = {"1": 100.0, "2": 100.5}
    assert sorted(latencies_ms(published, {"1": 100.25, "2": 101.0})) == [250.0, 500.0]


def test_a_write_for_an_order_not_published_in_the_run_is_an_error() -> None:
    with pytest.raises(ValueError, match="not published"):
        latencies_ms({"1": 1.0}, {"1": 1.1, "9": 1.2})


def test_windows_group_orders_by_publish_time() -> None:
    start = 1000.0
    published = {str(i): start + i * 0.5 for i in range(8)}  # 0, 0.5, ... 3.5 s
    written = {k: t + (0.001 if float(k) < 4 else 0.010) for k, t in published.items() if k != "7"}
    result = windows(published, written, start, width_s=2.0, duration_s=4.0)
    assert [w.start_s for w in result] == [0.0, 2.0]
    assert [(w.published, w.stored) for w in result] == [(4, 4), (4, 3)]
    assert result[0].p99_ms == pytest.approx(1.0)
    assert result[1].p50_ms == pytest.approx(10.0)


def test_an_empty_window_has_no_percentiles() -> None:
    result = windows({"1": 0.1}, {}, 0.0, width_s=1.0, duration_s=2.0)
    assert result[0].published == 1 and result[0].stored == 0 and math.isnan(result[0].p50_ms)
    assert result[1].published == 0


def test_trend_flat_rising_and_one_late_spike() -> None:
    times = [0, 5, 10, 15, 20, 25]
    flat = trend(times, [10, 11, 9, 10, 11, 10], tolerance=5)
    assert not flat.grows and flat.first == 10 and flat.last == 10
    rising = trend(times, [0, 100, 200, 300, 400, 500], tolerance=50)
    assert rising.grows and rising.slope_per_min == pytest.approx(20 * 60)
    falling_then_spike = trend(times, [500, 400, 300, 200, 100, 560], tolerance=50)
    assert not falling_then_spike.grows  # above the first value, but the run as a whole went down
    assert not trend([0, 1], [math.nan, math.nan], tolerance=1).grows


@pytest.mark.parametrize(("text", "expected"), [("50%", (50.0, True)), ("4000", (4000.0, False)), (" 90.5% ", (90.5, True))])
def test_parse_rate(text: str, expected: tuple[float, bool]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-5", "0%", "nan", "inf"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)
