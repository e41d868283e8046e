"""Counters and latency histograms, and the frozen `MetricsSnapshot`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

OPERATIONS: Final = (
    "create", "get", "update_last_activity", "update", "append_message", "add_note",
    "end", "delete", "list", "context", "cleanup", "flush",
)

# Log-linear buckets (as in HdrHistogram): each power of two of microseconds
# is split into 16 equal buckets, so a bucket is at most 1/16 of its value wide.
_STEPS_PER_OCTAVE: Final = 16
_OCTAVES: Final = 40  # up to 2**40 us, about 12 days
_BUCKETS: Final = _OCTAVES * _STEPS_PER_OCTAVE
_frexp: Final = math.frexp


class LatencyHistogram:
    """Counts latencies in log-spaced buckets; quantiles are accurate to a bucket's width."""

    __slots__ = ("_buckets", "count", "errors", "max")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.max = 0.0
        self._buckets = [0] * _BUCKETS

    def record(self, seconds: float, *, failed: bool = False) -> None:
        self.count += 1
        if failed:
            self.errors += 1
        if seconds > self.max:
            self.max = seconds
        # frexp is a float's own exponent and mantissa (in [0.5, 1)): no logarithm needed.
        mantissa, exponent = _frexp(seconds * 1e6)
        index = exponent * _STEPS_PER_OCTAVE + int((mantissa - 0.5) * 2 * _STEPS_PER_OCTAVE)
        if index < 0:
            index = 0
        elif index >= _BUCKETS:
            index = _BUCKETS - 1
        self._buckets[index] += 1

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding quantile `q` (never above `max`)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self._buckets):
            seen += n
            if seen >= rank:
                octave, step = divmod(index, _STEPS_PER_OCTAVE)
                edge = math.ldexp(0.5 + (step + 1) / (2 * _STEPS_PER_OCTAVE), octave) / 1e6
                return min(edge, self.max)
        return self.max  # pragma: no cover - ranks never exceed the count


@dataclass(frozen=True, slots=True)
class OperationStats:
    """Calls of one public operation since the runtime started."""

    #: Calls completed, successful or not.
    count: int
    #: Calls that raised.
    errors: int
    #: Latency quantiles and maximum, in seconds.
    p50: float
    p95: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A consistent read of the runtime's counters, from `SessionRuntime.metrics()`."""

    #: Per public operation: count, errors and latency.
    operations: Mapping[str, OperationStats]
    #: Actors running now (each owns one session).
    resident: int
    #: Active sessions this runtime knows, resident or not.
    live_sessions: int
    #: Writes acknowledged and not yet committed (sessions, messages and deletes).
    pending_writes: int
    #: Transactions committed by the flusher, and what they carried.
    flush_batches: int
    flushed_sessions: int
    flushed_messages: int
    #: Failed store calls, retries of them, and rows the database refused for good.
    store_errors: int
    retries: int
    rejected_rows: int
    #: Sessions expired, actors stopped to make room or for idleness, events dropped.
    expired: int
    passivations: int
    events_dropped: int
    #: Times a writer waited because the write-behind buffer was full.
    backpressure_waits: int


@dataclass(slots=True)
class Counters:
    """The runtime's mutable counters; only the runtime's own tasks write them."""

    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {name: LatencyHistogram() for name in OPERATIONS})
    flush_batches: int = 0
    flushed_sessions: int = 0
    flushed_messages: int = 0
    store_errors: int = 0
    retries: int = 0
    rejected_rows: int = 0
    expired: int = 0
    passivations: int = 0
    events_dropped: int = 0
    backpressure_waits: int = 0

    def operations(self) -> Mapping[str, OperationStats]:
        return MappingProxyType({
            name: OperationStats(h.count, h.errors, h.quantile(0.50), h.quantile(0.95),
                                 h.quantile(0.99), h.max)
            for name, h in self.latency.items()
        })
