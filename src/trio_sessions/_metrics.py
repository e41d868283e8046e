"""Counters and latency histograms, and the frozen `MetricsSnapshot`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from types import MappingProxyType
from typing import Final

from ._errors import (
    ChatSessionExists,
    InvalidArgument,
    Overloaded,
    RuntimeClosed,
    SessionInactive,
    SessionMoved,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
    WriteRejected,
)

OPERATIONS: Final = (
    "create", "get", "update_last_activity", "update", "append_message", "add_note",
    "end", "delete", "list", "context", "cleanup_old_sessions", "flush", "session_for_chat",
)

#: Errors that answer the caller's own request: a bad argument, a session that is not
#: there (or not the caller's), inactive, or changed meanwhile, a chat that has a session,
#: a runtime already closed.
#: The application expects these; they say nothing about the runtime's health.
CALLER_ERRORS: Final = (InvalidArgument, SessionNotFound, SessionInactive, VersionConflict, ChatSessionExists,
                         RuntimeClosed)
#: Errors that are the system's: the store unreachable, the runtime overloaded, a row refused.
# SessionMoved is a StoreUnavailable; it is listed so that an exporter matching
# error names (trio_sessions.prometheus) files it as the system's too.
SYSTEM_ERRORS: Final = (StoreUnavailable, SessionMoved, Overloaded, WriteRejected)

# Log-linear buckets (as in HdrHistogram): each power of two of microseconds
# is split into 16 equal buckets, so a bucket is at most 1/16 of its value wide.
_STEPS_PER_OCTAVE: Final = 16
_OCTAVES: Final = 40  # up to 2**40 us, about 12 days
_BUCKETS: Final = _OCTAVES * _STEPS_PER_OCTAVE
_frexp: Final = math.frexp


def _lower_edge(index: int) -> float:
    """The lowest latency, in seconds, that bucket `index` counts."""
    octave, step = divmod(index, _STEPS_PER_OCTAVE)
    return math.ldexp(0.5 + step / (2 * _STEPS_PER_OCTAVE), octave) / 1e6


#: The upper bounds of the cumulative buckets a histogram exports (`LatencyHistogram.cumulative`):
#: 25 us doubling up to 26.2 s. Each is a lower edge of the log-linear buckets
#: (25 us * 2**n is 2**(n+4) us * 25/16), so each count is exact, not interpolated.
EXPORT_BOUNDS: Final = tuple(25e-6 * 2**n for n in range(21))
_EXPORT_INDEXES: Final = tuple(
    (n + 5) * _STEPS_PER_OCTAVE + 9 for n in range(len(EXPORT_BOUNDS)))
assert all(math.isclose(_lower_edge(i), b) for i, b in zip(_EXPORT_INDEXES, EXPORT_BOUNDS, strict=True))


class LatencyHistogram:
    """Counts latencies in log-spaced buckets; quantiles are accurate to a bucket's width.

    Recording is O(1) (one bucket, a sum, a maximum); whatever is derived
    (quantiles, cumulative buckets, errors by kind) is computed when read.
    """

    __slots__ = ("_buckets", "count", "errors", "max", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        #: Calls that raised, by exception class (created on the first error).
        self.errors: dict[type[BaseException], int] = {}
        self._buckets = [0] * _BUCKETS

    def record(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
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

    def record_error(self, seconds: float, error: BaseException) -> None:
        """Record a call that raised `error` (counted by its class)."""
        self.record(seconds)
        kind = type(error)
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding quantile `q` (never above `max`)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self._buckets):
            seen += n
            if seen >= rank:
                return min(_lower_edge(index + 1), self.max)
        return self.max  # pragma: no cover - ranks never exceed the count

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """(bound, calls faster than bound) for each of `EXPORT_BOUNDS`, then (inf, count)."""
        below = list(accumulate(self._buckets))
        return (*((bound, below[index - 1]) for bound, index in zip(EXPORT_BOUNDS, _EXPORT_INDEXES,
                                                                    strict=True)),
                (math.inf, self.count))

    def stats(self) -> OperationStats:
        errors = self.errors
        by_name: dict[str, int] = {}
        caller = system = 0
        for kind, n in errors.items():
            by_name[kind.__name__] = by_name.get(kind.__name__, 0) + n
            if issubclass(kind, CALLER_ERRORS):
                caller += n
            elif issubclass(kind, SYSTEM_ERRORS):
                system += n
        return OperationStats(
            count=self.count, caller_errors=caller, system_errors=system,
            errors=MappingProxyType(by_name), sum=self.sum, buckets=self.cumulative(),
            p50=self.quantile(0.50), p95=self.quantile(0.95), p99=self.quantile(0.99), max=self.max)


@dataclass(frozen=True, slots=True)
class OperationStats:
    """Calls of one public operation since the runtime started."""

    #: Calls completed, successful or not.
    count: int
    #: Calls that raised for the caller's own request: `InvalidArgument`, `SessionNotFound`,
    #: `SessionInactive`, `VersionConflict`, `RuntimeClosed` (answers, not failures of the runtime).
    caller_errors: int
    #: Calls the runtime failed: `StoreUnavailable` (`SessionMoved` too), `Overloaded`, `WriteRejected`.
    system_errors: int
    #: Every call that raised, by exception class name (cancellations count as `Cancelled`).
    errors: Mapping[str, int]
    #: Total seconds spent in the calls.
    sum: float
    #: Cumulative latency buckets: (upper bound in seconds, calls faster than it), the last
    #: bound infinite (its count is `count`).
    buckets: tuple[tuple[float, int], ...]
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
    #: Seconds since the oldest change not yet committed was acknowledged (0 when none is).
    oldest_pending_age: float
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
    #: Ownership (several runtimes on one store): sessions this runtime owns;
    #: sessions it took from the store; hand-offs it asked for, received and
    #: granted; sessions whose writes were fenced (another runtime had taken
    #: them); leases lost.
    owned: int = 0
    acquisitions: int = 0
    handoffs_requested: int = 0
    handoffs_received: int = 0
    handoffs_granted: int = 0
    fenced_sessions: int = 0
    lease_lapses: int = 0


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
    acquisitions: int = 0
    handoffs_requested: int = 0
    handoffs_received: int = 0
    handoffs_granted: int = 0
    fenced_sessions: int = 0
    lease_lapses: int = 0

    def operations(self) -> Mapping[str, OperationStats]:
        return MappingProxyType({name: h.stats() for name, h in self.latency.items()})
