"""The histogram's windowed quantile: what the status reports show as p50/p99 handle time."""

from __future__ import annotations

import pytest

from ebbtide.telemetry.histogram import Histogram


def test_quantile_since_counts_only_the_window_and_interpolates_in_its_bucket() -> None:
    histogram = Histogram((10e-6, 20e-6, 40e-6))
    for _ in range(100):
        histogram.observe(35e-6)  # before the window: must not count
    earlier = list(histogram.counts)
    for seconds in [5e-6] * 50 + [15e-6] * 50:
        histogram.observe(seconds)
    assert histogram.quantile_since(earlier, 0.5) == pytest.approx(10e-6)  # the 50th of 100 ends the first bucket
    assert histogram.quantile_since(earlier, 0.75) == pytest.approx(15e-6)  # halfway into (10, 20] µs
    assert histogram.quantile_since(earlier, 0.99) == pytest.approx(19.8e-6)


def test_quantile_since_is_zero_for_an_empty_window_and_the_max_beyond_the_last_bound() -> None:
    histogram = Histogram((1e-3,))
    assert histogram.quantile_since(list(histogram.counts), 0.5) == 0.0
    earlier = list(histogram.counts)
    histogram.observe(0.25)
    assert histogram.quantile_since(earlier, 0.99) == 0.25
