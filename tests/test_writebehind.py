"""The write-behind: coalescing, batching, retries, backpressure and a poison row."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_sessions import (
    MemoryStore,
    Overloaded,
    RuntimeConfig,
    SessionNotFound,
    Store,
    StoreUnavailable,
    WriteRejected,
    open_runtime,
)
from trio_sessions._store import WriteBatch

StoreFactory = Callable[[], Store]


class RecordingStore(MemoryStore):
    """A real MemoryStore that also keeps every batch it was asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[WriteBatch] = []
        self.written = trio.Event()

    async def write(self, batch: WriteBatch) -> None:
        self.batches.append(batch)
        await super().write(batch)
        self.written.set()


class OutageStore(MemoryStore):
    """A real MemoryStore whose writes fail as if the server were down, `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def write(self, batch: WriteBatch) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise StoreUnavailable("connection refused (outage)")
        await super().write(batch)


async def test_rows_coalesce_and_messages_keep_their_order(autojump_clock: MockClock) -> None:
    store = RecordingStore()
    async with open_runtime(RuntimeConfig(flush_interval=1.0), store=store) as rt:
        session = await rt.create("u", "geral")
        for i in range(20):
            await rt.update_last_activity(session.id)
            last = await rt.append_message(session.id, "user", f"m{i}")
        await trio.sleep(1.0)  # one flush interval
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.batches) == 1
        (batch,) = store.batches
        assert batch.sessions == (last,)  # 41 changes, one row: the newest
        assert [m.content for _, m in batch.messages] == [f"m{i}" for i in range(20)]
        assert rt.metrics().flushed_sessions == 1 and rt.metrics().flushed_messages == 20


async def test_activity_alone_is_written_as_touched_rows(autojump_clock: MockClock) -> None:
    store = RecordingStore()
    async with open_runtime(RuntimeConfig(flush_interval=1.0), store=store) as rt:
        a, b, c = [await rt.create("u", "geral") for _ in range(3)]
        await rt.flush()
        await rt.update_last_activity(a.id)
        a_last = await rt.append_message(a.id, "user", "hi")
        await rt.update_last_activity(b.id)
        b_last = await rt.update(b.id, title="renamed")  # not activity: the whole row
        c_last = await rt.update_last_activity(c.id)
        await rt.flush()
        batch = store.batches[-1]
        assert set(batch.touched) == {a_last, c_last}
        assert batch.sessions == (b_last,)
        assert [(sid, m.content) for sid, m in batch.messages] == [(a.id, "hi")]
        for session in (a_last, b_last, c_last):  # the store holds each row whole
            assert await store.load_sessions([session.id]) == {session.id: session}


async def test_a_change_reaches_the_store_within_flush_interval(autojump_clock: MockClock) -> None:
    store = RecordingStore()
    async with open_runtime(RuntimeConfig(flush_interval=0.5), store=store) as rt:
        session = await rt.create("u", "geral")
        acknowledged = trio.current_time()
        await store.written.wait()
        assert trio.current_time() - acknowledged == pytest.approx(0.5)
        assert (await store.load(session.id, messages=0))[0] == session  # type: ignore[index]


async def test_a_full_batch_flushes_without_waiting(autojump_clock: MockClock) -> None:
    store = RecordingStore()
    async with open_runtime(RuntimeConfig(flush_interval=3600.0, flush_batch=10), store=store) as rt:
        start = trio.current_time()
        for _ in range(25):
            await rt.create("u", "geral")
        await trio.testing.wait_all_tasks_blocked()
        assert [len(b.sessions) for b in store.batches] == [10, 10]
        assert trio.current_time() == start  # no timer was needed


class HeldStore(MemoryStore):
    """A real MemoryStore whose writes wait until the test releases them (while `holding`)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = True
        self.held: list[tuple[WriteBatch, trio.Event]] = []
        self.writing: set[object] = set()  # sessions of the writes under way

    async def hold(self, batch: WriteBatch) -> None:  # noqa: ASYNC910  the test store's write checkpoints after it
        ids = set(batch.session_ids())
        assert not ids & self.writing, "two writes under way share a session"
        self.writing |= ids
        release = trio.Event()
        self.held.append((batch, release))
        try:
            if self.holding:
                await release.wait()
        finally:
            self.writing -= ids

    async def write(self, batch: WriteBatch) -> None:
        await self.hold(batch)
        await super().write(batch)

    def ids(self, index: int) -> set[object]:
        return set(self.held[index][0].session_ids())


async def test_batches_are_written_concurrently_but_never_share_a_session(
        autojump_clock: MockClock) -> None:
    store = HeldStore()
    config = RuntimeConfig(flush_interval=3600.0, flush_batch=5, flush_concurrency=2)
    async with open_runtime(config, store=store) as rt:
        first = [await rt.create("u", "geral") for _ in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        assert store.ids(0) == {s.id for s in first}
        # A second batch of the same sessions waits for the first to be written...
        touched = [await rt.update_last_activity(s.id) for s in first]
        second = [await rt.create("u", "geral") for _ in range(5)]  # ...and holds the other lane
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.held) == 1
        # Reads see the newest row of a session that is in two batches at once.
        assert rt._sup.writebehind.lookup(first[0].id) == (touched[0], False, [])
        flushed = trio.Event()

        async def flush() -> None:
            await rt.flush()
            flushed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flush)
            store.held[0][1].set()
            await trio.testing.wait_all_tasks_blocked()
            # The newer rows of the first sessions, and the other sessions, at once.
            assert len(store.held) == 3
            assert (store.ids(1), store.ids(2)) == ({s.id for s in first}, {s.id for s in second})
            store.held[2][1].set()
            await trio.testing.wait_all_tasks_blocked()
            assert not flushed.is_set()  # the touched rows are still being written
            store.held[1][1].set()
        assert rt.metrics().flush_batches == 3
    for session in [*touched, *second]:
        assert (await store.load(session.id, messages=0))[0] == session  # type: ignore[index]


async def test_a_refused_row_makes_the_next_batch_write_the_session_whole(
        autojump_clock: MockClock) -> None:
    class RefusingStore(HeldStore):
        """Refuses a full row titled 'poison', as a CHECK constraint would."""

        async def write(self, batch: WriteBatch) -> None:
            await self.hold(batch)
            if any(s.title == "poison" for s in batch.sessions):
                raise WriteRejected("check constraint no_poison")
            await MemoryStore.write(self, batch)

    store = RefusingStore()
    async with open_runtime(RuntimeConfig(flush_interval=3600.0), store=store) as rt:
        store.holding = False
        stored = await rt.create("u", "geral", title="fine", durable=True)
        store.holding = True
        await rt.update(stored.id, title="poison")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rt.flush)  # the poisoned row, held
            await trio.testing.wait_all_tasks_blocked()
            await rt.update_last_activity(stored.id)  # activity only since
            nursery.start_soon(rt.flush)  # a second batch: waits for the first
            await trio.testing.wait_all_tasks_blocked()
            assert len(store.held) == 2
            store.held[1][1].set()  # refused
            await trio.testing.wait_all_tasks_blocked()
            # The session's next row goes whole, and is refused again: as a
            # touched row it would move the stored version past the refused change.
            (batch, release) = store.held[2]
            assert [s.id for s in batch.sessions] == [stored.id] and batch.touched == ()
            store.holding = False
            release.set()
        assert rt.metrics().rejected_rows == 2
        # The runtime answers with what is stored again, numbered above the refused versions.
        assert await rt.get(stored.id) == dataclasses.replace(stored, version=4)
    assert (await store.load(stored.id, messages=0))[0] == dataclasses.replace(  # type: ignore[index]
        stored, version=4)


async def test_one_batch_at_a_time_when_flush_concurrency_is_1(autojump_clock: MockClock) -> None:
    store = HeldStore()
    config = RuntimeConfig(flush_interval=3600.0, flush_batch=5, flush_concurrency=1)
    async with open_runtime(config, store=store) as rt:
        for _ in range(10):
            await rt.create("u", "geral")
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.held) == 1
        store.held[0][1].set()
        await trio.testing.wait_all_tasks_blocked()
        assert len(store.held) == 2
        store.held[1][1].set()


async def test_transient_failures_are_retried_and_nothing_is_lost(autojump_clock: MockClock) -> None:
    store = OutageStore(failures=6)
    config = RuntimeConfig(flush_interval=0.1, retry_initial_delay=0.1, retry_max_delay=1.0)
    async with open_runtime(config, store=store) as rt:
        sessions = [await rt.create("u", "max") for _ in range(5)]
        latest = [await rt.append_message(s.id, "user", "hi") for s in sessions]
        durable = await rt.update_last_activity(sessions[0].id, durable=True)
        assert store.attempts == 7
        metrics = rt.metrics()
        assert (metrics.retries, metrics.store_errors) == (6, 6)
    for session in [durable, *latest[1:]]:
        assert (await store.load(session.id, messages=5))[0] == session  # type: ignore[index]


async def test_backoff_grows_exponentially_with_jitter(autojump_clock: MockClock) -> None:
    store = OutageStore(failures=5)
    config = RuntimeConfig(flush_interval=0.1, retry_initial_delay=1.0, retry_max_delay=4.0)
    async with open_runtime(config, store=store) as rt:
        await rt.create("u", "max")
        start = trio.current_time()
        await rt.flush()
        waited = trio.current_time() - start
    # delays of 1, 2, 4, 4, 4 seconds, each jittered down to at most half
    assert (1 + 2 + 4 + 4 + 4) / 2 <= waited <= 1 + 2 + 4 + 4 + 4 + 0.1


async def test_full_buffer_makes_writers_wait_and_drops_nothing() -> None:
    gate = trio.Event()

    class GatedStore(MemoryStore):
        async def write(self, batch: WriteBatch) -> None:
            await gate.wait()
            await super().write(batch)

    store = GatedStore()
    config = RuntimeConfig(flush_interval=0.01, max_pending=10, flush_batch=5)
    async with open_runtime(config, store=store) as rt:
        created = []

        async def writer(i: int) -> None:
            session = await rt.create(f"u{i}", "max")
            created.append(await rt.append_message(session.id, "user", "x"))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(writer, i)
            await trio.testing.wait_all_tasks_blocked()
            assert len(created) < 30  # writers are waiting
            assert rt.metrics().pending_writes <= 10 + 1
            assert rt.metrics().backpressure_waits > 0
            gate.set()
        assert len(created) == 30
    for session in created:
        assert (await store.load(session.id, messages=1))[0] == session  # type: ignore[index]


async def test_exit_with_the_store_down_reports_what_was_not_flushed(
        autojump_clock: MockClock) -> None:
    store = OutageStore(failures=10**9)
    config = RuntimeConfig(flush_interval=0.1, shutdown_timeout=5.0)
    with pytest.raises(StoreUnavailable, match="3 acknowledged writes"):
        async with open_runtime(config, store=store) as rt:
            for _ in range(3):
                await rt.create("u", "max")


async def _execute(url: str, sql: str) -> None:
    """Run one statement of test set-up on a real PostgreSQL (asyncpg under trio-asyncio)."""
    import asyncpg
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        connection = await trio_asyncio.aio_as_trio(asyncpg.connect, loop=loop)(url)
        try:
            await trio_asyncio.aio_as_trio(connection.execute, loop=loop)(sql)
        finally:
            await trio_asyncio.aio_as_trio(connection.close, loop=loop)()


async def test_a_row_the_database_refuses_is_isolated(postgres_url: str) -> None:
    from trio_sessions import PostgresStore
    from trio_sessions._postgres import apply_migrations_to

    await apply_migrations_to(postgres_url)
    # A rule of the database the runtime cannot know: it refuses one title for good.
    await _execute(postgres_url, "ALTER TABLE sessions ADD CONSTRAINT no_poison"
                                 " CHECK (title IS DISTINCT FROM 'poison')")
    store = PostgresStore(postgres_url)
    config = RuntimeConfig(flush_interval=3600.0)
    async with open_runtime(config, store=store) as rt:
        good = [await rt.create("u", "max", title=f"ok {i}") for i in range(9)]
        bad = await rt.create("u", "max", title="poison")
        good.append(await rt.append_message(good[0].id, "user", "still written"))
        await rt.flush()  # one batch of ten sessions, one of them refused
        assert rt.metrics().rejected_rows == 1
        with pytest.raises(WriteRejected):
            await rt.create("u", "geral", title="poison", durable=True)
        later = await rt.create("u", "geral", title="fine", durable=True)  # still flowing
        assert rt.metrics().rejected_rows == 2
        # After a refusal the session reads as stored again, numbered above the
        # refused version, and activity goes on from there (written whole: the
        # stored row lacks the renumbering, not only activity).
        turned = await rt.create("u", "geral", title="fine", durable=True)
        with pytest.raises(WriteRejected):
            await rt.update(turned.id, title="poison", durable=True)
        touched = await rt.update_last_activity(turned.id, durable=True)
        assert (touched.title, touched.version) == ("fine", 4)
        assert rt.metrics().rejected_rows == 3
        with pytest.raises(SessionNotFound):  # refused for good: it exists nowhere
            await rt.get(bad.id)
    async with open_runtime(config, store=PostgresStore(postgres_url)) as rt:
        stored = {s.id: s for s in (await rt.list(user_id="u", limit=100)).items}
    assert bad.id not in stored
    assert [stored[s.id] for s in good[1:9]] == good[1:9]
    assert stored[good[0].id] == good[-1] and stored[later.id] == later
    assert stored[turned.id] == touched  # the stored row, renumbered and touched


async def test_call_timeout_turns_a_stuck_call_into_overloaded(autojump_clock: MockClock) -> None:
    gate = trio.Event()

    class GatedStore(MemoryStore):
        async def write(self, batch: WriteBatch) -> None:
            await gate.wait()
            await super().write(batch)

    config = RuntimeConfig(flush_interval=0.01, max_pending=2, call_timeout=1.5)
    async with open_runtime(config, store=GatedStore()) as rt:
        a = await rt.create("u", "max")
        await rt.create("u", "max")  # full, and the flush is stuck
        start = trio.current_time()
        with pytest.raises(Overloaded, match="call_timeout"):
            await rt.update(a.id, title="never")
        with pytest.raises(Overloaded, match="call_timeout"):
            await rt.create("u", "max")
        assert trio.current_time() - start == pytest.approx(3.0)
        gate.set()
        assert await rt.get(a.id) == a  # the abandoned update was not applied
