"""LatencyHistogram: quantiles within a bucket's width of the truth."""

from __future__ import annotations

import random

import pytest

from trio_sessions._metrics import LatencyHistogram


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_are_within_a_sixteenth(seed: int) -> None:
    rng = random.Random(seed)
    values = sorted(rng.lognormvariate(-8, 2) for _ in range(5000))  # ~0.3 ms, wide spread
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    for q in (0.5, 0.95, 0.99):
        truth = values[int(q * len(values)) - 1]
        assert truth <= histogram.quantile(q) <= truth * (1 + 1 / 16) + 1e-12
    assert histogram.max == values[-1]
    assert histogram.quantile(1.0) == values[-1]


def test_extremes_and_errors() -> None:
    histogram = LatencyHistogram()
    assert histogram.quantile(0.5) == 0.0
    for value in (0.0, 1e-9, 3.0, 1e9):
        histogram.record(value, failed=value > 1)
    assert (histogram.count, histogram.errors, histogram.max) == (4, 2, 1e9)
    assert histogram.quantile(0.25) <= 1e-6
