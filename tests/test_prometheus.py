"""trio_sessions.prometheus: the runtime's metrics, scraped as Prometheus's text exposition."""

from __future__ import annotations

import math
import uuid

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from trio_sessions import MemoryStore, RuntimeConfig, SessionNotFound, StoreUnavailable, open_runtime
from trio_sessions._store import WriteBatch
from trio_sessions.prometheus import register


def scrape(registry: CollectorRegistry) -> dict[str, list[Sample]]:
    """Every sample of the text exposition, by sample name, parsed back."""
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


class FailingStore(MemoryStore):
    """Refuses the first `failures` writes as unavailable (the flusher retries them)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def write(self, batch: WriteBatch) -> None:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the test's outage")
        await super().write(batch)


async def test_a_scrape_carries_histograms_errors_by_origin_and_the_write_behind() -> None:
    registry = CollectorRegistry()
    config = RuntimeConfig(flush_interval=0.05, retry_initial_delay=0.01)
    async with open_runtime(config, store=FailingStore(failures=2)) as rt:
        register(rt, registry)
        session = await rt.create("u", "max")
        for _ in range(9):
            await rt.update_last_activity(session.id)
        await rt.append_message(session.id, "user", "olá")
        with pytest.raises(SessionNotFound):
            await rt.get(uuid.uuid4())
        with pytest.raises(ValueError):
            await rt.context(session.id, limit=0)
        pending = scrape(registry)
        assert value(pending, "trio_sessions_pending_writes") == 2  # the row and its message
        assert value(pending, "trio_sessions_oldest_pending_age_seconds") >= 0
        await rt.flush()
        await rt.cleanup_old_sessions()
        samples = scrape(registry)

    # A real histogram: cumulative buckets ending at +Inf, a sum and a count per operation.
    name = "trio_sessions_operation_duration_seconds"
    touch = [s for s in samples[name + "_bucket"] if s.labels["operation"] == "update_last_activity"]
    bounds = [float(s.labels["le"]) for s in touch]
    assert bounds == sorted(bounds) and bounds[-1] == math.inf and len(bounds) > 10
    counts = [s.value for s in touch]
    assert counts == sorted(counts) and counts[-1] == 9
    assert value(samples, name + "_count", operation="update_last_activity") == 9
    assert 0 < value(samples, name + "_sum", operation="update_last_activity") < 9 * 1.0
    # One name for one thing: the call is cleanup_old_sessions, in the metrics too.
    assert value(samples, name + "_count", operation="cleanup_old_sessions") == 1
    assert {s.labels["operation"] for s in samples[name + "_count"]} >= {"create", "get", "flush", "list"}

    # A session that is not there is the caller's answer; the store's failures are the system's.
    errors = "trio_sessions_operation_errors_total"
    assert value(samples, errors, operation="get", error="SessionNotFound") == 1
    assert value(samples, errors, operation="get", error="SessionNotFound", origin="caller") == 1
    assert value(samples, errors, operation="context", error="InvalidArgument", origin="caller") == 1
    assert not [s for s in samples[errors] if s.labels["origin"] != "caller"]

    assert value(samples, "trio_sessions_live_sessions") == 1
    assert value(samples, "trio_sessions_resident_actors") == 1
    assert value(samples, "trio_sessions_pending_writes") == 0
    assert value(samples, "trio_sessions_oldest_pending_age_seconds") == 0
    assert value(samples, "trio_sessions_flush_batches_total") >= 1
    assert value(samples, "trio_sessions_flushed_rows_total", kind="session") >= 1
    assert value(samples, "trio_sessions_flushed_rows_total", kind="message") == 1
    assert value(samples, "trio_sessions_store_errors_total") == 2
    assert value(samples, "trio_sessions_retries_total") == 2
    for counter in ("rejected_rows", "expired_sessions", "passivations", "events_dropped",
                    "backpressure_waits"):
        assert value(samples, f"trio_sessions_{counter}_total") == 0


async def test_the_bucket_counts_are_the_runtimes_histogram() -> None:
    registry = CollectorRegistry()
    async with open_runtime(store=MemoryStore()) as rt:
        register(rt, registry)
        session = await rt.create("u", "max")
        for _ in range(50):
            await rt.get(session.id)
        stats = rt.metrics().operations["get"]
        samples = scrape(registry)
    buckets = samples["trio_sessions_operation_duration_seconds_bucket"]
    scraped = [(float(s.labels["le"]), s.value) for s in buckets if s.labels["operation"] == "get"]
    assert scraped == [(bound, float(n)) for bound, n in stats.buckets]


async def test_one_registry_per_runtime_and_never_the_global_one() -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    registry = CollectorRegistry()
    async with open_runtime(store=MemoryStore()) as rt, open_runtime(store=MemoryStore()) as other:
        collector = register(rt, registry)
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            register(other, registry)
        registry.unregister(collector)
        register(other, registry)
    assert set(REGISTRY._names_to_collectors) == before

