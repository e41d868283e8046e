"""DeadlineQueue, and expiry in a runtime on virtual time (MemoryStore, MockClock)."""

from __future__ import annotations

import gc
import uuid
from datetime import timedelta

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_sessions import MemoryStore, RuntimeConfig, SessionInactive, open_runtime
from trio_sessions._deadlines import DeadlineQueue

MINUTE = 60.0


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


# ------------------------------------------------------------- DeadlineQueue


def test_pop_due_returns_due_sessions_in_deadline_order() -> None:
    queue = DeadlineQueue()
    a, b, c = ids(3)
    queue.push(a, 30.0)
    queue.push(b, 10.0)
    queue.push(c, 20.0)
    assert queue.earliest() == 10.0
    assert queue.pop_due(19.0) == [(b, 10.0)]
    assert queue.pop_due(30.0) == [(c, 20.0), (a, 30.0)]
    assert len(queue) == 0 and queue.earliest() is None


def test_ties_keep_insertion_order() -> None:
    queue = DeadlineQueue()
    sessions = ids(50)
    for session_id in sessions:
        queue.push(session_id, 5.0)
    assert [i for i, _ in queue.pop_due(5.0)] == sessions


def test_touch_later_is_lazy_and_rekeys_once_when_popped() -> None:
    queue = DeadlineQueue()
    a, b = ids(2)
    queue.push(a, 10.0)
    queue.push(b, 15.0)
    for later in (11.0, 12.0, 40.0):
        queue.touch(a, later)
    assert queue.earliest() == 10.0  # not re-keyed yet
    assert queue.deadline(a) == 40.0
    assert queue.pop_due(20.0) == [(b, 15.0)]
    assert queue.earliest() == 40.0  # re-keyed once, at its newest deadline
    assert queue.pop_due(39.9) == []
    assert queue.pop_due(40.0) == [(a, 40.0)]


def test_touch_earlier_rekeys_at_once() -> None:
    queue = DeadlineQueue()
    a = uuid.uuid4()
    queue.push(a, 50.0)
    queue.touch(a, 5.0)
    assert queue.earliest() == 5.0
    assert queue.pop_due(5.0) == [(a, 5.0)]


def test_a_deferred_session_waits_but_keeps_its_deadline() -> None:
    queue = DeadlineQueue()
    a, b = ids(2)
    queue.push(b, 50.0)
    queue.defer(a, 10.0, until=30.0)  # due at 10, but retry only at 30
    assert queue.deadline(a) == 10.0
    assert queue.pop_due(29.0) == []
    assert queue.pop_deferred() == [(a, 10.0)]  # cleanup takes it at once
    assert a not in queue
    queue.defer(a, 10.0, until=30.0)
    assert queue.pop_due(30.0) == [(a, 10.0)]
    assert queue.pop_deferred() == []
    queue.defer(a, 10.0, until=30.0)
    queue.push(a, 60.0)  # loaded and found touched: an ordinary entry again
    assert queue.pop_deferred() == []


def test_queued_sessions_cost_the_garbage_collector_nothing() -> None:
    queue = DeadlineQueue()
    gc.collect()
    before = len(gc.get_objects())
    queue.extend((session_id, float(i)) for i, session_id in enumerate(ids(2000)))
    for i, session_id in enumerate(ids(1000)):
        queue.push(session_id, 0.5 + i)
        queue.touch(session_id, 5000.0 + i)
    gc.collect()
    assert len(queue) == 3000
    assert len(gc.get_objects()) - before < 100  # the sorted list's own lists, not 3 per session


def test_discard_and_extend() -> None:
    queue = DeadlineQueue()
    a, b, c = ids(3)
    queue.extend([(a, 3.0), (b, 1.0), (c, 2.0)])
    queue.discard(b)
    queue.discard(uuid.uuid4())  # unknown ids are ignored
    assert b not in queue and a in queue
    queue.extend([(a, 0.5)])  # a known id moves
    assert queue.pop_due(10.0) == [(a, 0.5), (c, 2.0)]


async def test_wait_due_wakes_early_for_an_earlier_deadline(autojump_clock: MockClock) -> None:
    queue = DeadlineQueue()
    a, b = ids(2)
    queue.push(a, trio.current_time() + 100.0)
    woke: list[tuple[float, list[tuple[uuid.UUID, float]]]] = []

    async def waiter() -> None:
        due = await queue.wait_due()
        woke.append((trio.current_time(), due))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        queue.push(b, start + 7.0)
    assert woke == [(start + 7.0, [(b, start + 7.0)])]


# ------------------------------------------------------ expiry in a runtime


def config(**changes: object) -> RuntimeConfig:
    return RuntimeConfig(session_timeout=MINUTE, flush_interval=1.0, **changes)  # type: ignore[arg-type]


async def test_session_expires_exactly_at_its_deadline(autojump_clock: MockClock) -> None:
    async with open_runtime(config(), store=MemoryStore()) as rt:
        async with rt.subscribe() as events:
            start = trio.current_time()
            session = await rt.create("u1", "geral")
            assert (await events.receive()).kind == "created"
            event = await events.receive()
            assert event.kind == "expired"
            assert trio.current_time() == rt.deadline(session)
            assert trio.current_time() == pytest.approx(start + MINUTE, abs=1e-6)
            assert event.session.id == session.id
            assert event.session.is_active is False
            assert event.session.end_reason == "expired"
            assert event.session.ended_at == session.expires_at
            assert event.session.version == session.version + 1
        assert rt.metrics().live_sessions == 0


async def test_activity_slides_the_deadline(autojump_clock: MockClock) -> None:
    async with open_runtime(config(), store=MemoryStore()) as rt:
        start = trio.current_time()
        session = await rt.create("u1", "max")
        await trio.sleep(40.0)
        touched = await rt.update_last_activity(session.id)
        assert touched.expires_at == touched.last_activity + timedelta(seconds=MINUTE)
        await trio.sleep(30.0)  # t=70: past the first deadline, before the second
        assert (await rt.get(session.id)).is_active
        await trio.sleep(25.0)
        await rt.append_message(session.id, "user", "still here")  # t=95: moves to 155
        async with rt.subscribe() as events:
            event = await events.receive()
        assert event.kind == "expired"
        assert trio.current_time() == pytest.approx(start + 95.0 + MINUTE, abs=1e-6)


async def test_non_activity_changes_do_not_slide(autojump_clock: MockClock) -> None:
    async with open_runtime(config(), store=MemoryStore()) as rt:
        start = trio.current_time()
        session = await rt.create("u1", "max")
        await trio.sleep(30.0)
        await rt.update(session.id, title="renamed")
        await rt.add_note(session.id, "a note")
        async with rt.subscribe() as events:
            event = await events.receive()
        assert event.kind == "expired"
        assert trio.current_time() == rt.deadline(session)
        assert trio.current_time() == pytest.approx(start + MINUTE, abs=1e-6)


async def test_expired_session_is_never_revived(autojump_clock: MockClock) -> None:
    async with open_runtime(config(), store=MemoryStore()) as rt:
        session = await rt.create("u1", "max", timeout=5.0)
        await trio.sleep_until(rt.deadline(session))  # to the microsecond
        with pytest.raises(SessionInactive):
            await rt.update_last_activity(session.id)
        with pytest.raises(SessionInactive):
            await rt.append_message(session.id, "user", "hello?")
        expired = await rt.get(session.id)
        assert (expired.is_active, expired.end_reason) == (False, "expired")
        assert await rt.end(session.id) == expired  # ending an inactive session changes nothing
        assert len(await rt.context(session.id)) == 0


async def test_overdue_call_expires_before_the_expiry_task_runs(autojump_clock: MockClock) -> None:
    # Even if the expiry task has not run yet, a session is never used past its deadline.
    async with open_runtime(config(), store=MemoryStore()) as rt:
        session = await rt.create("u1", "max", timeout=5.0)
        rt._sup.stop_background()  # no expiry task from here on
        await trio.sleep_until(rt.deadline(session))
        with pytest.raises(SessionInactive):
            await rt.update_last_activity(session.id)
        assert (await rt.get(session.id)).end_reason == "expired"


async def test_cleanup_old_sessions_counts_what_it_expired(autojump_clock: MockClock) -> None:
    async with open_runtime(config(max_resident=3), store=MemoryStore()) as rt:
        rt._sup.stop_background()  # cleanup alone decides
        due = [await rt.create(f"u{i}", "geral", timeout=10.0) for i in range(6)]
        for session in due[:2]:
            await rt.update_last_activity(session.id)  # resident ones too
        fresh = await rt.create("u9", "geral", timeout=100.0)
        await trio.sleep_until(rt.deadline(due[-1]))
        assert await rt.cleanup_old_sessions() == 6
        assert await rt.cleanup_old_sessions() == 0
        for session in due:
            assert (await rt.get(session.id)).end_reason == "expired"
        assert (await rt.get(fresh.id)).is_active
        assert rt.metrics().live_sessions == 1


async def test_restart_expires_what_fell_due_while_nothing_ran(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with open_runtime(config(), store=store) as rt:
        short = await rt.create("u1", "geral", timeout=10.0)
        long = await rt.create("u2", "geral", timeout=1000.0)
    await trio.sleep(20.0)  # no runtime: nothing expires
    assert (await store.load(short.id, messages=0))[0].is_active  # type: ignore[index]
    async with open_runtime(config(), store=store) as rt:
        async with rt.subscribe() as events:
            event = await events.receive()
        assert (event.kind, event.session.id) == ("expired", short.id)
        assert event.session.ended_at == short.expires_at
        assert (await rt.get(long.id)).is_active
        start = trio.current_time()
        async with rt.subscribe() as events:
            event = await events.receive()
        assert (event.kind, event.session.id) == ("expired", long.id)
        # The deadline survives the restart exactly.
        assert trio.current_time() == rt.deadline(long)
        assert trio.current_time() - start == pytest.approx(1000.0 - 20.0, abs=1e-5)


async def test_expiry_of_a_passivated_session(autojump_clock: MockClock) -> None:
    async with open_runtime(config(passivate_after=5.0), store=MemoryStore()) as rt:
        session = await rt.create("u1", "geral")
        await rt.update_last_activity(session.id)
        await trio.sleep(30.0)
        assert rt.metrics().resident == 0  # idle: passivated after 5 s
        await trio.sleep(40.0)
        expired = await rt.get(session.id)
        assert expired.end_reason == "expired"
        assert expired.ended_at == expired.expires_at
        assert rt.metrics().passivations >= 1


async def test_expiry_survives_a_store_outage(autojump_clock: MockClock) -> None:
    from trio_sessions import StoreUnavailable
    from trio_sessions.testing import FaultyStore

    store = FaultyStore(MemoryStore(), outages=[(50.0, 70.0)])
    config = RuntimeConfig(session_timeout=MINUTE, retry_max_delay=2.0)
    async with open_runtime(config, store=store) as rt:
        session = await rt.create("u", "geral")  # deadline at t=60
        await rt.flush()
        await rt.create("u", "max", timeout=1000.0)
        # The store is down from t=50 to t=70.
        # The expiry task tried at t=60 and could not read the session; it retries
        # every retry_max_delay, and cleanup tries at once.
        await trio.sleep_until(rt.deadline(session) + 1.0)
        with pytest.raises(StoreUnavailable):  # due, but it cannot be read to expire it
            await rt.cleanup_old_sessions()
        # Out of reach for longer than the lease: the runtime lost its claim on its
        # sessions; back at t=70, it rejoins and takes the free ones up again.
        assert rt.metrics().lease_lapses == 1
        await trio.sleep_until(70.0)  # the store is back
        async with rt.subscribe() as events:
            event = await events.receive()
        assert (event.kind, event.session.id) == ("expired", session.id)
        assert event.session.ended_at == session.expires_at
        await rt.flush()
    stored = await store.inner.load(session.id, messages=0)
    assert stored is not None and stored[0].end_reason == "expired"


async def test_sessions_without_actors_expire_in_one_read(autojump_clock: MockClock) -> None:
    class CountingStore(MemoryStore):
        """A real MemoryStore that counts its reads."""

        loads = batches = 0

        async def load(self, session_id, *, messages):  # type: ignore[no-untyped-def]
            self.loads += 1
            return await super().load(session_id, messages=messages)

        async def load_sessions(self, session_ids):  # type: ignore[no-untyped-def]
            self.batches += 1
            return await super().load_sessions(session_ids)

    store = CountingStore()
    async with open_runtime(config(max_resident=5), store=store) as rt:
        sessions = [await rt.create(f"u{i}", "geral", timeout=10.0) for i in range(50)]
        await rt.flush()  # out of the buffer: expiring them needs the store
        resident = sessions[:5]
        for session in resident:
            await rt.get(session.id)  # the five residents
        store.loads = 0
        passivations = rt.metrics().passivations
        await trio.sleep_until(rt.deadline(sessions[-1]) + 1.0)
        assert rt.metrics().expired == 50
        assert store.loads == 0 and store.batches == 1  # 45 sessions, one query
        assert rt.metrics().passivations == passivations  # no live actor was evicted for it
        for session in sessions:
            assert (await rt.get(session.id)).ended_at == session.expires_at


async def test_sessions_falling_due_during_a_read_wait_for_one_next_read(autojump_clock: MockClock) -> None:
    class SlowStore(MemoryStore):
        """A real MemoryStore whose batch read takes a second (of virtual time)."""

        def __init__(self) -> None:
            super().__init__()
            self.batches: list[int] = []

        async def load_sessions(self, session_ids):  # type: ignore[no-untyped-def]
            self.batches.append(len(session_ids))
            await trio.sleep(1.0)
            return await super().load_sessions(session_ids)

    store = SlowStore()
    async with open_runtime(config(max_resident=1), store=store) as rt:
        # 40 sessions without actors, falling due 0.1 s apart: 4 s in all.
        sessions = [await rt.create(f"u{i}", "geral", timeout=10.0 + i / 10) for i in range(40)]
        await rt.flush()
        await trio.sleep_until(rt.deadline(sessions[-1]) + 2.0)
        assert rt.metrics().expired == 40
        # One read at a time: what fell due during a read goes in the next one,
        # so about one read per second of deadlines, not one per session.
        assert sum(store.batches) == 40
        assert len(store.batches) <= 6, store.batches
        for session in sessions:
            assert (await rt.get(session.id)).ended_at == session.expires_at


async def test_expiry_never_waits_on_one_busy_session(autojump_clock: MockClock) -> None:
    """A due session whose mailbox is full (its load is slow) must not hold up the others."""

    class SlowLoads(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.slow: set[uuid.UUID] = set()

        async def acquire(self, session_id: uuid.UUID, instance: uuid.UUID, *,  # type: ignore[no-untyped-def]
                          messages: int):
            if session_id in self.slow:  # the first load by a new runtime acquires the session
                await trio.sleep(100.0)
            return await super().acquire(session_id, instance, messages=messages)

    store = SlowLoads()
    async with open_runtime(config(), store=store) as rt:
        busy = await rt.create("u1", "geral", timeout=10.0)
        other = await rt.create("u2", "geral", timeout=20.0)
    store.slow.add(busy.id)
    async with open_runtime(config(shutdown_timeout=200.0), store=store) as rt:  # `busy` must load
        assert rt.config.mailbox_size == 64
        expired_at = {}

        async def watch() -> None:
            async with rt.subscribe() as events:
                async for event in events:
                    if event.kind == "expired":
                        expired_at[event.session.id] = trio.current_time()

        async def touch() -> None:
            with pytest.raises(SessionInactive):  # applied after the load, past its deadline
                await rt.update_last_activity(busy.id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for _ in range(66):  # one loading, 64 queued, one waiting for room
                nursery.start_soon(touch)
            await trio.sleep_until(rt.deadline(other) + 1.0)
            assert expired_at.get(other.id) == rt.deadline(other)
            nursery.cancel_scope.cancel()
