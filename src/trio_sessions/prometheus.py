"""A runtime's metrics for Prometheus (needs `pip install "trio-sessions[prometheus]"`).

Import this module only where you export metrics: `import trio_sessions`
never loads `prometheus_client`. Register a runtime on a registry of the
application's own (never the process-wide default, where a second runtime,
or a second test, would clash)::

    from prometheus_client import CollectorRegistry, generate_latest
    from trio_sessions.prometheus import register

    registry = CollectorRegistry()
    async with open_runtime(config) as rt:
        register(rt, registry)
        ...  # serve generate_latest(registry) on /metrics

Every scrape reads `SessionRuntime.metrics()` once, so one scrape is one
consistent moment; nothing is done per call beyond what the runtime already
counts. The names, all prefixed `trio_sessions_`:

- `operation_duration_seconds{operation}`, a histogram (buckets, `_sum`,
  `_count`: the calls of each operation, failed or not);
- `operation_errors_total{operation, error, origin}`: calls that raised, by
  exception class; `origin` is `caller` for answers to the caller's request
  (`InvalidArgument`, `SessionNotFound`, `SessionInactive`,
  `VersionConflict`, `RuntimeClosed`), `system` for the runtime's failures
  (`StoreUnavailable`, `Overloaded`, `WriteRejected`), `other` for anything
  else (a cancelled call is `Cancelled`);
- gauges `resident_actors`, `live_sessions`, `pending_writes`,
  `oldest_pending_age_seconds`;
- counters `flush_batches_total`, `flushed_rows_total{kind}` (`session`,
  `message`), `store_errors_total`, `retries_total`, `rejected_rows_total`,
  `expired_sessions_total`, `passivations_total`, `events_dropped_total`,
  `backpressure_waits_total`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ._metrics import CALLER_ERRORS, SYSTEM_ERRORS, MetricsSnapshot

if TYPE_CHECKING:
    from ._runtime import SessionRuntime

__all__ = ["RuntimeCollector", "register"]

PREFIX: Final = "trio_sessions_"
_CALLER: Final = frozenset(kind.__name__ for kind in CALLER_ERRORS)
_SYSTEM: Final = frozenset(kind.__name__ for kind in SYSTEM_ERRORS)


#: The one-value families: (family, name, help, the `MetricsSnapshot` field it reads).
_SCALARS: Final[tuple[tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, str], ...]] = (
    (GaugeMetricFamily, "resident_actors", "Actors running now, one per resident session.", "resident"),
    (GaugeMetricFamily, "live_sessions", "Active sessions this runtime knows, resident or not.",
     "live_sessions"),
    (GaugeMetricFamily, "pending_writes", "Writes acknowledged and not yet committed.", "pending_writes"),
    (GaugeMetricFamily, "oldest_pending_age_seconds",
     "Seconds since the oldest change not yet committed was acknowledged (0 when none).",
     "oldest_pending_age"),
    (CounterMetricFamily, "flush_batches", "Transactions committed by the flusher.", "flush_batches"),
    (CounterMetricFamily, "store_errors", "Store calls that failed (each is retried or reported).",
     "store_errors"),
    (CounterMetricFamily, "retries", "Backoffs before retrying a failed store call.", "retries"),
    (CounterMetricFamily, "rejected_rows", "Rows the database refused for good (dropped and logged).",
     "rejected_rows"),
    (CounterMetricFamily, "expired_sessions", "Sessions expired.", "expired"),
    (CounterMetricFamily, "passivations", "Actors stopped to make room or for idleness.", "passivations"),
    (CounterMetricFamily, "events_dropped", "Events a full subscriber buffer dropped.", "events_dropped"),
    (CounterMetricFamily, "backpressure_waits", "Times a writer waited for room in the write-behind buffer.",
     "backpressure_waits"),
    # Several runtimes on one store.
    (GaugeMetricFamily, "owned_sessions", "Sessions this runtime owns in the store.", "owned"),
    (CounterMetricFamily, "acquisitions", "Sessions this runtime took ownership of.", "acquisitions"),
    (CounterMetricFamily, "handoffs_requested", "Sessions this runtime asked another to hand over.",
     "handoffs_requested"),
    (CounterMetricFamily, "handoffs_received", "Sessions another runtime handed over to this one.",
     "handoffs_received"),
    (CounterMetricFamily, "handoffs_granted", "Sessions this runtime handed over to another.",
     "handoffs_granted"),
    (CounterMetricFamily, "fenced_sessions",
     "Sessions whose unflushed changes were dropped: another runtime owned them by then.", "fenced_sessions"),
    (CounterMetricFamily, "lease_lapses", "Times this runtime lost its lease and rejoined.", "lease_lapses"),
)


def register(runtime: SessionRuntime, registry: CollectorRegistry) -> RuntimeCollector:
    """Register `runtime`'s metrics on `registry`; returns the collector (for `registry.unregister`).

    Raises:
        ValueError: `registry` already holds these metric names (another runtime
            registered on it); give each runtime a registry of its own.
    """
    collector = RuntimeCollector(runtime)
    registry.register(collector)
    return collector


class RuntimeCollector(Collector):
    """A `prometheus_client` collector over one runtime's `metrics()`."""

    def __init__(self, runtime: SessionRuntime) -> None:
        self._runtime = runtime

    def describe(self) -> list[Metric]:
        """The metric families without samples, so a registry refuses a duplicate registration."""
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._runtime.metrics())

    def _families(self, snapshot: MetricsSnapshot | None) -> Iterator[Metric]:
        latency = HistogramMetricFamily(
            PREFIX + "operation_duration_seconds",
            "Latency of each public call, from its start to its answer (failed calls included).",
            labels=["operation"])
        errors = CounterMetricFamily(
            PREFIX + "operation_errors",
            "Calls that raised, by exception class; origin: caller (an answer to the request), "
            "system (the runtime failed it) or other.",
            labels=["operation", "error", "origin"])
        if snapshot is not None:
            for name, stats in snapshot.operations.items():
                latency.add_metric(
                    [name], [(_bound(bound), below) for bound, below in stats.buckets], stats.sum)
                for error, n in sorted(stats.errors.items()):
                    errors.add_metric([name, error, _origin(error)], n)
        yield latency
        yield errors
        for kind, name, documentation, field in _SCALARS:
            value = None if snapshot is None else getattr(snapshot, field)
            yield kind(PREFIX + name, documentation, value=value)
        rows = CounterMetricFamily(PREFIX + "flushed_rows", "Rows committed by the flusher, by kind.",
                                   labels=["kind"])
        if snapshot is not None:
            rows.add_metric(["session"], snapshot.flushed_sessions)
            rows.add_metric(["message"], snapshot.flushed_messages)
        yield rows


def _bound(seconds: float) -> str:
    """A bucket bound as Prometheus writes it: `+Inf`, or the shortest exact decimal."""
    return "+Inf" if seconds == float("inf") else repr(seconds)


def _origin(error: str) -> str:
    return "caller" if error in _CALLER else "system" if error in _SYSTEM else "other"
