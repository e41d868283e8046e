"""LatencyHistogram: quantiles within a bucket's width, exact cumulative buckets, errors by kind."""

from __future__ import annotations

import math
import random
import uuid

import pytest

from trio_sessions import (
    InvalidArgument,
    Overloaded,
    SessionInactive,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
    WriteRejected,
)
from trio_sessions._metrics import EXPORT_BOUNDS, LatencyHistogram


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
    for value in (0.0, 1e-9):
        histogram.record(value)
    histogram.record_error(3.0, SessionNotFound(uuid.uuid4()))
    histogram.record_error(1e9, StoreUnavailable("down"))
    stats = histogram.stats()
    assert (stats.count, stats.caller_errors, stats.system_errors, stats.max) == (4, 1, 1, 1e9)
    assert dict(stats.errors) == {"SessionNotFound": 1, "StoreUnavailable": 1}
    assert histogram.quantile(0.25) <= 1e-6


def test_errors_are_split_into_the_callers_and_the_systems() -> None:
    histogram = LatencyHistogram()
    for error in (InvalidArgument("limit", "bad"), SessionNotFound(uuid.uuid4()),
                  SessionInactive(uuid.uuid4(), "ended"), VersionConflict(1, 2)):
        histogram.record_error(0.001, error)
    for error in (StoreUnavailable("down"), Overloaded("full"), WriteRejected("refused")):
        histogram.record_error(0.001, error)
    histogram.record_error(0.001, KeyError("a bug"))  # neither: only in `errors`
    stats = histogram.stats()
    assert (stats.caller_errors, stats.system_errors) == (4, 3)
    assert sum(stats.errors.values()) == 8 and stats.errors["KeyError"] == 1


@pytest.mark.parametrize("seed", range(3))
def test_cumulative_buckets_count_exactly_what_lies_below_each_bound(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(-7, 2.5) for _ in range(5000)]
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    buckets = histogram.cumulative()
    assert [bound for bound, _ in buckets] == [*EXPORT_BOUNDS, math.inf]
    for bound, below in buckets[:-1]:
        assert below == sum(1 for v in values if v < bound), bound
    assert buckets[-1] == (math.inf, 5000)
    assert histogram.stats().sum == pytest.approx(sum(values))
