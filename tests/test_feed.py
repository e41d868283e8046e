"""The durable event feed: what reaches it, its cursor, its pruning, several runtimes, faults.

The store's side (both stores) is in test_store_contract.py; here, the
runtime's: which changes become which events through the write-behind's
coalescing, the cursor's rule on PostgreSQL with two transactions in
flight, two runtimes on one database, and faults.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import pytest
import trio
import trio.testing
import trio_asyncio  # type: ignore[import-untyped]  # trio-asyncio ships no types
from trio.testing import MockClock

from trio_sessions import (
    FeedEvent,
    InvalidArgument,
    MemoryStore,
    PostgresStore,
    RuntimeConfig,
    SessionInactive,
    SessionRuntime,
    StoreUnavailable,
    open_runtime,
)
from trio_sessions._cursor import decode_feed_cursor, encode_cursor
from trio_sessions._model import SessionEvent
from trio_sessions._postgres import _rows as rows
from trio_sessions._postgres import _sql as sql
from trio_sessions._store import WriteBatch
from trio_sessions.testing import FaultyStore

from .test_store_contract import make_session

T = TypeVar("T")

FEED = RuntimeConfig(event_feed=True, flush_interval=0.2, retry_max_delay=1.0)


async def insisting(call: Callable[[], Awaitable[T]]) -> T:
    """`call()` until the store answers (a FaultyStore's reads may fail `read_attempts` times)."""
    while True:
        try:
            return await call()
        except StoreUnavailable:
            await trio.lowlevel.checkpoint()


async def everything(rt: SessionRuntime) -> list[FeedEvent]:
    """The whole feed, page after page of 3 (so that pages are cut)."""
    events: list[FeedEvent] = []
    after = None
    while (page := await insisting(lambda: rt.read_events(after=after, limit=3))).events:  # noqa: B023  called at once
        events += page.events
        after = page.next_cursor
    assert page.next_cursor == after  # an empty page gives back its cursor
    return events


def shown(events: Sequence[FeedEvent]) -> list[tuple[str, UUID, int]]:
    return [(e.kind, e.session_id, e.version) for e in events]


# ------------------------------------------------ what becomes an event


async def test_lifecycle_events_are_never_folded_away(autojump_clock: MockClock) -> None:
    """Created, then changed and ended before any flush: both events, each with its snapshot."""
    async with open_runtime(FEED, store=MemoryStore()) as rt:
        brief = await rt.create("u", "geral", chat_id=None)
        await rt.update_last_activity(brief.id)
        await rt.update(brief.id, title="t")
        ended = await rt.end(brief.id, reason="done")
        deleted = await rt.create("u", "max")
        await rt.delete(deleted.id)
        await rt.flush()
        events = await everything(rt)
    assert shown(events) == [("created", brief.id, 1), ("ended", brief.id, ended.version),
                             ("created", deleted.id, 1), ("deleted", deleted.id, 1)]
    assert (events[1].is_active, events[1].end_reason, events[1].agent) == (False, "done", "geral")
    assert events[0].is_active and events[0].end_reason is None


async def test_updates_are_one_event_per_flushed_range_of_versions(autojump_clock: MockClock) -> None:
    async with open_runtime(FEED, store=MemoryStore()) as rt:
        session = await rt.create("u", "geral", durable=True)
        for _ in range(5):  # five changes, one flush: one event, at the newest version
            await rt.update_last_activity(session.id)
        await rt.flush()
        await rt.append_message(session.id, "user", "oi")
        noted = await rt.add_note(session.id, "n", durable=True)
        assert shown(await everything(rt)) == [("created", session.id, 1), ("updated", session.id, 6),
                                               ("updated", session.id, noted.version)]


async def test_expiries_reach_the_feed_from_the_engine_and_at_start(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with open_runtime(FEED, store=store) as rt:
        while_running = await rt.create("u", "geral", timeout=10.0)
        resident = await rt.create("u", "geral", timeout=10.0)
        await rt.update_last_activity(resident.id)  # resident: its actor expires it
        while_stopped = await rt.create("u", "geral", timeout=100.0)
        await trio.sleep(11.0)  # the expiry engine expires the first two
        with pytest.raises(SessionInactive):
            await rt.update_last_activity(while_running.id)
    await trio.sleep(100.0)  # nothing runs when the second falls due
    async with open_runtime(FEED, store=store) as rt:
        await trio.testing.wait_all_tasks_blocked()  # expired at start, written behind
        await rt.flush()
        events = await everything(rt)
    assert sorted((e.kind, e.session_id, e.end_reason) for e in events if not e.is_active) == sorted([
        ("expired", while_running.id, "expired"), ("expired", resident.id, "expired"),
        ("expired", while_stopped.id, "expired")])


async def test_with_the_feed_off_nothing_is_written(autojump_clock: MockClock) -> None:
    async with open_runtime(RuntimeConfig(), store=MemoryStore()) as rt:
        session = await rt.create("u", "geral", chat_id="c")
        await rt.end(session.id, durable=True)
        assert await everything(rt) == []


async def test_a_chat_session_written_through_has_its_events(autojump_clock: MockClock) -> None:
    async with open_runtime(FEED, store=MemoryStore()) as rt:
        session = await rt.session_for_chat("u", "geral", "5511@c.us")
        moved = await rt.update(session.id, chat_id="5512@c.us")
        await rt.flush()
        assert shown(await everything(rt)) == [("created", session.id, 1),
                                               ("updated", session.id, moved.version)]


# ------------------------------------------------------------ the API


async def test_read_events_checks_its_arguments(autojump_clock: MockClock) -> None:
    async with open_runtime(FEED, store=MemoryStore()) as rt:
        first = await rt.create("u", "geral")
        await rt.flush()
        [event] = (await rt.read_events()).events
        assert decode_feed_cursor(event.cursor) is not None
        forged: list[Any] = ["", "zzz", event.cursor + "=", event.cursor.lower(), "ZTEuMQ", "ZTAxLjE=",
                             encode_cursor(first), 42, b"ZTEuMQ=="]  # list()'s cursor is not the feed's
        for cursor in forged:
            with pytest.raises(InvalidArgument) as raised:
                await rt.read_events(after=cursor)
            assert raised.value.field == "after"
        for limit in (0, 10_001, True, 1.5):
            with pytest.raises(InvalidArgument) as raised:
                await rt.read_events(limit=limit)
            assert raised.value.field == "limit"
        with pytest.raises(InvalidArgument):
            rt.follow_events(after="zzz")  # checked before the first step
        assert (await rt.read_events(after=event.cursor)).events == ()
        assert event.session_id == first.id


async def test_follow_events_waits_for_new_ones(autojump_clock: MockClock) -> None:
    config = RuntimeConfig(event_feed=True, flush_interval=0.2, event_poll_interval=1.0)
    async with open_runtime(config, store=MemoryStore()) as rt:
        followed = rt.follow_events()
        seen: list[tuple[float, FeedEvent]] = []

        async def follow() -> None:
            async for event in followed:
                seen.append((trio.current_time(), event))
                if len(seen) == 2:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.sleep(5.0)  # nothing yet: the follower polls
            session = await rt.create("u", "geral")  # at 5.0, flushed at 5.2, read at the 6.0 poll
            await rt.end(session.id)
        assert [(at, e.kind) for at, e in seen] == [(6.0, "created"), (6.0, "ended")]
        assert followed.cursor == seen[-1][1].cursor


async def test_old_events_are_pruned_after_the_retention(autojump_clock: MockClock) -> None:
    config = RuntimeConfig(event_feed=True, event_retention=240.0)  # pruned every 10 s
    async with open_runtime(config, store=MemoryStore()) as rt:
        old = await rt.create("u", "geral", durable=True)
        await trio.sleep(200.0)
        young = await rt.create("u", "geral", durable=True)
        await trio.sleep(35.0)  # at 235: the prune at 230 found nothing 240 s old
        assert [e.session_id for e in await everything(rt)] == [old.id, young.id]
        await trio.sleep(10.0)  # the prune at 240 did
        assert [e.session_id for e in await everything(rt)] == [young.id]


# ------------------------------------------------ the cursor on PostgreSQL


async def test_a_cursor_never_passes_an_event_that_commits_later(postgres_url: str) -> None:
    """Two transactions in flight: the one with the lower id commits last; the reader waits for it.

    Transaction A inserts its event (the store's own statement) and stays
    open; B, a whole flush, commits a later event (a higher id) meanwhile.
    A reader must return neither (A's is uncommitted, B's is above A's xid),
    and after A commits, going on from where it was, it reads both, A's first.
    """
    early, late = make_session(), make_session()
    store = PostgresStore(postgres_url)
    async with store.connect(), trio_asyncio.open_loop() as loop:
        def aio(fn: Any) -> Any:
            return trio_asyncio.aio_as_trio(fn, loop=loop)

        connection = await aio(asyncpg.connect)(postgres_url)
        try:
            await aio(connection.execute)("BEGIN")
            await aio(connection.execute)(sql.INSERT_EVENTS,
                                          *rows.event_columns([SessionEvent("created", early)]))
            await store.write(WriteBatch((late,), (), (), events=(SessionEvent("created", late),)))
            assert await store.read_events(None, 100) == []  # A is still running
            await aio(connection.execute)("COMMIT")
        finally:
            await aio(connection.close)()
        events = await store.read_events(None, 100)
    assert [e.session_id for e in events] == [early.id, late.id]
    positions = [decode_feed_cursor(e.cursor) for e in events]
    assert positions[0] is not None and positions[1] is not None
    assert positions[0][1] < positions[1][1]  # the trap was set: A's id is the lower one


# ------------------------------------------------ several runtimes, faults


def check_feed(events: Sequence[FeedEvent], ended: dict[UUID, str], created: set[UUID]) -> None:
    """Every session created is in the feed, its versions never go down, its end is there once."""
    by_session: dict[UUID, list[FeedEvent]] = defaultdict(list)
    for event in events:
        by_session[event.session_id].append(event)
    assert set(by_session) == created
    for session_id, own in by_session.items():
        versions = [e.version for e in own]
        assert versions == sorted(versions), own
        assert own[0].kind == "created", own
        ends = [e for e in own if e.kind in ("ended", "expired")]
        if session_id in ended:
            assert [(e.kind, e.end_reason) for e in ends] == [
                ("expired" if ended[session_id] == "expired" else "ended", ended[session_id])], own
        else:
            assert ends == [], own
    keys = [(e.session_id, e.version, e.kind) for e in events]
    assert len(keys) == len(set(keys))  # no second copy of an event


async def test_two_runtimes_on_one_database_share_one_feed(postgres_url: str) -> None:
    """Sessions handed back and forth between two runtimes: each one's events in order, read from either."""
    config = RuntimeConfig(database_url=postgres_url, event_feed=True, flush_interval=0.05)
    rng = random.Random(7)
    ended: dict[UUID, str] = {}
    async with open_runtime(config) as a, open_runtime(config) as b:
        runtimes = (a, b)
        ids = [(await runtimes[i % 2].create("u", "geral")).id for i in range(8)]
        short = await a.create("u", "geral", timeout=0.5)
        for step in range(60):
            rt = runtimes[rng.randrange(2)]
            session_id = ids[rng.randrange(len(ids))]
            if session_id in ended:
                continue
            if step % 9 == 8:
                ended[session_id] = (await rt.end(session_id, reason="done")).end_reason or ""
            elif step % 2:
                await rt.update(session_id, title=f"step {step}")
            else:
                await rt.append_message(session_id, "user", f"step {step}")
        ended[short.id] = "expired"
        with trio.fail_after(30):  # the expiry engine of a, at 0.5 s; wait for its event, not for a time
            async for event in b.follow_events():
                if event.session_id == short.id and event.kind == "expired":
                    break
        await a.flush()
        await b.flush()
        # A barrier: once an event committed after every flush is readable, so is every
        # event before it (their transactions ended before its own began).
        marker = await a.create("u", "marker", durable=True)
        with trio.fail_after(30):
            async for event in b.follow_events():
                if event.session_id == marker.id:
                    break
        from_a, from_b = await everything(a), await everything(b)
    assert a.metrics().handoffs_granted + b.metrics().handoffs_granted > 0
    assert shown(from_a) == shown(from_b)
    check_feed(from_a, ended, {*ids, short.id, marker.id})


@pytest.mark.parametrize("seed", range(6))
async def test_no_acknowledged_end_is_missing_with_faults(autojump_clock: MockClock, seed: int) -> None:
    """Writes fail, and some commit but answer failure (then are retried): every end and expiry
    acknowledged is in the feed once the runtime has flushed, and no event has a second copy."""
    rng = random.Random(seed)
    store = FaultyStore(MemoryStore(), seed=seed, failure_rate=0.2, unknown_commit_rate=0.3,
                        latency=(0.0, 0.05))
    ended: dict[UUID, str] = {}
    created: set[UUID] = set()
    async with open_runtime(FEED, store=store) as rt:
        ids: list[UUID] = []
        for _ in range(60):
            action = rng.random()
            live = [i for i in ids if i not in ended]
            if action < 0.3 or not live:
                session = await rt.create("u", "geral", timeout=rng.choice([5.0, 1000.0]))
                ids.append(session.id)
                created.add(session.id)
            elif action < 0.5:
                ended[(target := rng.choice(live))] = "pending"
                session = await rt.end(target, reason="done")
                ended[target] = session.end_reason or ""
            elif action < 0.8:
                try:
                    await rt.update_last_activity(rng.choice(live))
                except SessionInactive:
                    pass
            else:
                await trio.sleep(rng.uniform(0.0, 3.0))
        await trio.sleep(10.0)  # the short ones expire
        for session_id in ids:
            session = await insisting(lambda: rt.get(session_id))  # noqa: B023  called at once
            if not session.is_active:
                ended[session_id] = session.end_reason or ""
        await rt.flush()
        events = await everything(rt)
    assert store.statistics().unknown_commits > 0  # retried writes whose first try had committed
    check_feed(events, ended, created)
