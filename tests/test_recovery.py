"""Recovery from a store outage, and `health()`, on virtual time (MemoryStore, MockClock)."""

from __future__ import annotations

import trio
import trio.testing
from trio.testing import MockClock

from trio_sessions import MemoryStore, RuntimeConfig, StoreUnavailable, open_runtime
from trio_sessions._retry import PROBE_INTERVAL
from trio_sessions._store import WriteBatch


class OutageStore(MemoryStore):
    """A MemoryStore that is down while `down` is set: every call raises StoreUnavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls_while_down = 0
        self.committed_at: list[float] = []

    def _check(self) -> None:
        if self.down:
            self.calls_while_down += 1
            raise StoreUnavailable("connection refused (the test's outage)")

    async def write(self, batch: WriteBatch) -> None:
        await trio.lowlevel.checkpoint()
        self._check()
        await super().write(batch)
        self.committed_at.append(trio.current_time())

    async def health_check(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check()


def config() -> RuntimeConfig:
    return RuntimeConfig(flush_interval=0.2, retry_initial_delay=0.05, retry_max_delay=5.0)


async def test_the_first_commit_comes_soon_after_the_store_is_back(autojump_clock: MockClock) -> None:
    store = OutageStore()
    async with open_runtime(config(), store=store) as rt:
        store.down = True
        session = await rt.create("u1", "geral")
        await trio.sleep(10.0)  # the flusher's backoff has grown to its 5 s maximum
        assert store.committed_at == []
        back = trio.current_time()
        store.down = False
        await rt.flush()
        # Within one probe interval of the store's return (plus the write itself),
        # not after the rest of a backoff of up to retry_max_delay.
        assert store.committed_at[0] - back <= PROBE_INTERVAL
        # Light on a store that is down: about one probe per interval, not a storm.
        assert store.calls_while_down <= 10.0 / PROBE_INTERVAL + 10
        assert (await store.load(session.id, messages=0)) is not None


class BackDuringAWriteStore(OutageStore):
    """An outage whose last failure is a write: the server is back before the next probe.

    As on a real server, whose last refusal is often "the database system is
    starting up", and which is up by the time the flusher probes it again.
    """

    def __init__(self) -> None:
        super().__init__()
        self.back_after_next_write = False
        self.back_at: float | None = None

    async def write(self, batch: WriteBatch) -> None:
        if self.down and self.back_after_next_write:
            await trio.lowlevel.checkpoint()
            self.down = False
            self.back_at = trio.current_time()
            raise StoreUnavailable("the database system is starting up (the test's outage)")
        await super().write(batch)


async def test_a_store_back_before_the_next_probe_is_written_to_at_once(autojump_clock: MockClock) -> None:
    store = BackDuringAWriteStore()
    async with open_runtime(config(), store=store) as rt:
        store.down = True
        await rt.create("u1", "geral")
        await trio.sleep(10.0)  # the backoff has grown to its 5 s maximum, every probe failing
        store.back_after_next_write = True
        await rt.flush()
        assert store.back_at is not None
        # The store was seen down before: the first probe that finds it back ends the wait.
        assert store.committed_at[0] - store.back_at <= 2 * PROBE_INTERVAL


async def test_health_reports_an_outage_and_the_recovery(autojump_clock: MockClock) -> None:
    store = OutageStore()
    async with open_runtime(config(), store=store) as rt:
        healthy = await rt.health()
        assert healthy.store_reachable and healthy.pending_writes == 0
        assert healthy.oldest_pending_age == 0.0 and healthy.last_error is None
        assert healthy.max_pending == rt.config.max_pending
        store.down = True
        await rt.create("u1", "geral")
        await trio.sleep(3.0)
        sick = await rt.health()
        assert not sick.store_reachable
        assert sick.pending_writes == 1 and sick.oldest_pending_age == 3.0
        assert sick.consecutive_flush_failures >= 3
        assert sick.last_error is not None and "connection refused" in sick.last_error
        store.down = False
        await rt.flush()
        recovered = await rt.health()
        assert recovered.store_reachable and recovered.consecutive_flush_failures == 0
        assert recovered.pending_writes == 0 and recovered.oldest_pending_age == 0.0
