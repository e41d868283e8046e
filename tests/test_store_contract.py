"""The `Store` contract, run against every backend (`MemoryStore`, `PostgresStore`).

`MemoryStore` is the reference behaviour; a backend passes when these tests
pass on it unchanged. The store is connected in a fixture, so every call here
comes from another Trio task than the one that connected it (as in the
runtime, where callers' tasks reach the store).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio

from trio_sessions._cursor import decode_feed_cursor
from trio_sessions._model import (
    FeedEvent,
    JsonArray,
    JsonObject,
    Message,
    Note,
    Session,
    SessionEvent,
    check_metadata,
)
from trio_sessions._store import ACTIVITY_FIELDS, ListQuery, Store, WriteBatch

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_session(*, created_at: datetime = T0, timeout: float = 1800.0, metadata: Any = None,
                 **fields: Any) -> Session:
    """A valid session; keyword arguments override any field."""
    values: dict[str, Any] = dict(
        id=uuid4(), user_id="u1", agent="geral", chat_id=None, title=None, state="active",
        metadata=check_metadata(metadata), notes=(), is_active=True, message_count=0,
        created_at=created_at, updated_at=created_at, last_activity=created_at,
        expires_at=created_at + timedelta(seconds=timeout), ended_at=None, end_reason=None,
        version=1, timeout=timeout,
    )
    values.update(fields)
    return Session(**values)


def make_message(seq: int, content: str | None = None, role: str = "user") -> Message:
    return Message(seq, role, content or f"message {seq}", T0 + timedelta(seconds=seq))


async def write(store: Store, sessions: Iterable[Session] = (),
                messages: Iterable[tuple[UUID, Message]] = (), deletes: Iterable[UUID] = ()) -> None:
    await store.write(WriteBatch(tuple(sessions), tuple(messages), tuple(deletes)))


async def load(store: Store, session_id: UUID, messages: int = 0) -> Session | None:
    found = await store.load(session_id, messages=messages)
    return None if found is None else found[0]


def query(*, user_id: str | None = None, agent: str | None = None, chat_id: str | None = None,
          active: bool | None = None, limit: int = 100,
          after: tuple[datetime, UUID] | None = None) -> ListQuery:
    return ListQuery(user_id, agent, chat_id, active, limit, after)


def newest_first(sessions: Iterable[Session]) -> list[Session]:
    return sorted(sessions, key=lambda s: (s.created_at, s.id), reverse=True)


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> AsyncIterator[Store]:
    store = store_factory()
    async with store.connect():
        yield store


# ------------------------------------------------------------------ rows


async def test_round_trip_of_every_field(store: Store) -> None:
    full = make_session(
        user_id="5511999990000", agent="financeiro", chat_id="5511999990000@c.us",
        title="Fatura de março ✓", state="awaiting_payment",
        metadata={"nome": "João", "tags": ["ação", "💰", ""], "n": 3, "x": -2.5, "ok": True,
                  "nada": None, "deep": {"a": [1, [2, {"b": "ç"}]], "empty": {}},
                  # Numbers jsonb would otherwise turn into ints or round.
                  "big": 1.5e300, "f16": 1e16, "i18": 10**18, "tiny": 5e-324, "neg": -2.5e-10,
                  "e+ in a string": "1e+16", 'quote " and \\ escape': "\"1e+16\""},
        notes=(Note("cliente pediu 2ª via", T0 + timedelta(minutes=1)),
               Note("pago ✓", T0 + timedelta(minutes=2, microseconds=7))),
        is_active=False, message_count=3, updated_at=T0 + timedelta(minutes=3),
        last_activity=T0 + timedelta(minutes=2), ended_at=T0 + timedelta(minutes=3),
        end_reason="ended", version=7, timeout=90.5,
    )
    minimal = make_session()
    await write(store, [full, minimal])

    for session in (full, minimal):
        loaded = await load(store, session.id)
        assert loaded == session
        assert loaded is not None
        for name in ("created_at", "updated_at", "last_activity", "expires_at", "ended_at"):
            value = getattr(loaded, name)
            assert value is None or value.utcoffset() == timedelta(0), name
        assert all(note.created_at.utcoffset() == timedelta(0) for note in loaded.notes)
        assert isinstance(loaded.metadata, JsonObject)
        with pytest.raises(TypeError):
            loaded.metadata["new"] = 1
    loaded_full = await load(store, full.id)
    assert loaded_full is not None
    assert isinstance(loaded_full.metadata["tags"], JsonArray)
    assert isinstance(loaded_full.metadata["deep"]["a"][1][1], JsonObject)
    assert loaded_full.notes == full.notes and isinstance(loaded_full.notes, tuple)
    assert isinstance(loaded_full.timeout, float) and isinstance(loaded_full.version, int)
    for key in ("big", "f16", "tiny", "neg"):
        assert type(loaded_full.metadata[key]) is float, key
    assert type(loaded_full.metadata["i18"]) is int


async def test_unknown_session_loads_as_none(store: Store) -> None:
    assert await store.load(uuid4(), messages=10) is None
    assert await store.load_messages(uuid4(), limit=10, up_to_seq=10) == ()


async def test_version_guard_keeps_the_newest_row(store: Store) -> None:
    v2 = make_session(version=2, title="two")
    await write(store, [v2])

    await write(store, [dataclasses.replace(v2, version=1, title="older")])
    assert await load(store, v2.id) == v2
    await write(store, [dataclasses.replace(v2, title="same version")])
    assert await load(store, v2.id) == v2

    v3 = dataclasses.replace(v2, version=3, title="three", is_active=False, ended_at=T0,
                             end_reason="expired", chat_id="c9")
    await write(store, [v3])
    assert await load(store, v2.id) == v3


async def test_touched_rows_update_only_the_activity_columns(store: Store) -> None:
    stored = make_session(version=2, title="kept", state="waiting")
    missing = make_session()
    await write(store, [stored])
    later = T0 + timedelta(minutes=5)
    # Fields outside ACTIVITY_FIELDS differ in the touched row: a store must not write them.
    touched = dataclasses.replace(stored, version=3, last_activity=later, updated_at=later,
                                  expires_at=later + timedelta(minutes=30), message_count=4,
                                  title="not written", state="not written")
    older = dataclasses.replace(touched, version=2, last_activity=T0 + timedelta(hours=1))
    # The longest timeout, to the microsecond, comes back exact.
    far = make_session()
    far_touched = dataclasses.replace(far, version=2, last_activity=later, updated_at=later,
                                      expires_at=later + timedelta(days=366, microseconds=-1))
    await write(store, [far])
    await store.write(WriteBatch((), (), (), (touched, missing, far_touched)))
    await store.write(WriteBatch((), (), (), (older,)))  # the version guard holds here too
    expected = dataclasses.replace(stored, **{f: getattr(touched, f) for f in ACTIVITY_FIELDS})
    assert await load(store, stored.id) == expected
    assert await load(store, far.id) == far_touched
    assert await load(store, missing.id) is None  # a touch never creates a row


async def test_empty_batch_is_a_no_op(store: Store) -> None:
    await write(store)
    assert await store.list(query()) == []


async def test_data_survives_a_new_store_object(store_factory: Callable[[], Store]) -> None:
    session = make_session(message_count=1)
    first = store_factory()
    async with first.connect():
        await write(first, [session], [(session.id, make_message(1))])
    second = store_factory()
    async with second.connect():
        assert await second.load(session.id, messages=5) == (session, (make_message(1),))


# ------------------------------------------------------------------ messages


async def test_message_appends_are_idempotent_and_ordered(store: Store) -> None:
    session = make_session()
    sid = session.id
    await write(store, [session], [(sid, make_message(seq)) for seq in (1, 2, 3)])
    # A retried flush repeats 2 and 3 (with other content: the first copy stays).
    await write(store, messages=[(sid, make_message(seq, "retry")) for seq in (2, 3, 4)])
    # Appends out of order, and a duplicate within one batch.
    await write(store, messages=[(sid, make_message(6)), (sid, make_message(5, role="assistant")),
                                 (sid, make_message(7)), (sid, make_message(7, "second copy"))])

    _, messages = await store.load(sid, messages=100) or (None, ())
    assert messages == (make_message(1), make_message(2), make_message(3), make_message(4, "retry"),
                        make_message(5, role="assistant"), make_message(6), make_message(7))
    assert all(m.created_at.utcoffset() == timedelta(0) for m in messages)


async def test_messages_without_a_stored_row_are_kept(store: Store) -> None:
    sid = uuid4()
    await write(store, messages=[(sid, make_message(1))])
    assert await store.load_messages(sid, limit=5, up_to_seq=5) == (make_message(1),)
    assert await store.load(sid, messages=5) is None


async def test_load_returns_the_newest_messages_oldest_first(store: Store) -> None:
    session = make_session(message_count=10)
    await write(store, [session], [(session.id, make_message(seq)) for seq in range(1, 11)])
    empty = make_session()
    await write(store, [empty])

    assert await store.load(session.id, messages=3) == (session, tuple(map(make_message, (8, 9, 10))))
    assert await store.load(session.id, messages=50) == (session, tuple(map(make_message, range(1, 11))))
    assert await store.load(session.id, messages=0) == (session, ())
    assert await store.load(empty.id, messages=50) == (empty, ())


@pytest.mark.parametrize(("limit", "up_to_seq", "expected"), [
    (3, 5, (3, 4, 5)),
    (10, 2, (1, 2)),
    (2, 100, (9, 10)),
    (1, 1, (1,)),
    (5, 0, ()),
    (0, 10, ()),
])
async def test_load_messages_windows(store: Store, limit: int, up_to_seq: int,
                                     expected: tuple[int, ...]) -> None:
    sid = uuid4()
    await write(store, messages=[(sid, make_message(seq)) for seq in range(1, 11)])
    loaded = await store.load_messages(sid, limit=limit, up_to_seq=up_to_seq)
    assert loaded == tuple(map(make_message, expected))


# ------------------------------------------------------------------ deletes, deadlines


async def test_delete_removes_the_row_and_its_messages(store: Store) -> None:
    doomed, kept = make_session(), make_session()
    await write(store, [doomed, kept],
                [(s.id, make_message(seq)) for s in (doomed, kept) for seq in (1, 2)])

    await write(store, deletes=[doomed.id, uuid4()])  # deleting an unknown id is fine
    assert await store.load(doomed.id, messages=5) is None
    assert await store.load_messages(doomed.id, limit=5, up_to_seq=5) == ()
    assert await store.load(kept.id, messages=5) == (kept, (make_message(1), make_message(2)))
    assert await store.list(query()) == [kept]

    # Messages flushed in the same batch as the delete go too (deletes apply last).
    await write(store, messages=[(kept.id, make_message(3))], deletes=[kept.id])
    assert await store.load_messages(kept.id, limit=5, up_to_seq=5) == ()


async def test_live_deadlines_lists_only_active_sessions(store: Store) -> None:
    a = make_session(timeout=60.0)
    b = make_session(created_at=T0 + timedelta(hours=1))
    ended = make_session(is_active=False, ended_at=T0, end_reason="ended")
    await write(store, [b, ended, a])
    assert await store.live_deadlines() == [(a.id, a.expires_at.timestamp()),
                                            (b.id, b.expires_at.timestamp())]

    await write(store, [dataclasses.replace(b, version=2, is_active=False, end_reason="expired")],
                deletes=[a.id])
    assert await store.live_deadlines() == []


async def test_live_deadlines_come_in_deadline_order(store: Store) -> None:
    sessions = [make_session(timeout=float(1 + (i * 37) % 50)) for i in range(50)]
    await write(store, sessions)
    live = await store.live_deadlines()
    assert [deadline for _, deadline in live] == sorted(s.expires_at.timestamp() for s in sessions)
    assert sorted(session_id for session_id, _ in live) == sorted(s.id for s in sessions)


# Instants whose POSIX timestamps no float holds exactly: the store's float must
# be the correctly rounded one, as `datetime.timestamp()` computes it.
AWKWARD_INSTANTS = [
    T0,
    datetime(2025, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2025, 3, 1, 12, 0, 0, 999_999, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, 100_001, tzinfo=UTC),
    datetime(2038, 1, 19, 3, 14, 7, 999_997, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(1901, 12, 13, 20, 45, 52, 300_003, tzinfo=UTC),
    # Not datetime.max itself: asyncpg sends datetime.max (and .min) as PostgreSQL's infinity.
    datetime(9999, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC),
    datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    *(datetime(2025, 6, 15, 8, 30, tzinfo=UTC) + timedelta(microseconds=m)
      for m in (3, 7, 10, 33, 77, 100_003, 333_333, 666_667, 700_001, 900_009)),
]


async def test_live_deadlines_are_exact_timestamps(store: Store) -> None:
    sessions = [make_session(expires_at=instant) for instant in AWKWARD_INSTANTS]
    await write(store, sessions)
    live = dict(await store.live_deadlines())
    for session in sessions:
        deadline = live[session.id]
        assert type(deadline) is float
        assert deadline == session.expires_at.timestamp(), session.expires_at


async def test_load_sessions_returns_the_stored_rows(store: Store) -> None:
    active = make_session(message_count=2)
    ended = make_session(is_active=False, ended_at=T0, end_reason="expired", version=4,
                         metadata={"k": [1, "v"]})
    deleted = make_session()
    await write(store, [active, ended, deleted], [(active.id, make_message(1)), (active.id, make_message(2))])
    await write(store, deletes=[deleted.id])

    unknown = uuid4()
    loaded = await store.load_sessions([active.id, unknown, ended.id, deleted.id, active.id])
    assert loaded == {active.id: active, ended.id: ended}
    assert isinstance(loaded[ended.id].metadata, JsonObject)
    assert await store.load_sessions([]) == {}
    assert await store.load_sessions((unknown,)) == {}

    newer = dataclasses.replace(active, version=2, title="newer")
    await write(store, [newer])
    assert await store.load_sessions([active.id]) == {active.id: newer}


async def test_concurrent_calls_from_many_tasks(store: Store) -> None:
    sessions = [make_session(created_at=T0 + timedelta(seconds=i)) for i in range(30)]

    async def write_then_read(session: Session) -> None:
        await write(store, [session], [(session.id, make_message(1))])
        assert await store.load(session.id, messages=1) == (session, (make_message(1),))

    async with trio.open_nursery() as nursery:
        for session in sessions:
            nursery.start_soon(write_then_read, session)
    assert await store.list(query()) == newest_first(sessions)


# ------------------------------------------------------------------ list


def _list_dataset() -> list[Session]:
    """24 sessions over every user x agent x chat x active, with created_at ties."""
    combos = itertools.product(("u1", "u2"), ("geral", "max"), (None, "c1", "c2"), (True, False))
    return [
        make_session(user_id=user, agent=agent, chat_id=chat, is_active=active,
                     created_at=T0 + timedelta(minutes=i // 3))  # three sessions per instant
        for i, (user, agent, chat, active) in enumerate(combos)
    ]


def _expected(sessions: Sequence[Session], q: ListQuery) -> list[Session]:
    return newest_first(
        s for s in sessions
        if q.user_id in (None, s.user_id) and q.agent in (None, s.agent)
        and q.chat_id in (None, s.chat_id) and q.active in (None, s.is_active)
        and (q.after is None or (s.created_at, s.id) < q.after)
    )[: q.limit]


async def test_list_with_every_filter_combination(store: Store) -> None:
    sessions = _list_dataset()
    await write(store, sessions)
    middle = newest_first(sessions)[10]
    cursor = (middle.created_at, middle.id)

    checked = 0
    for user_id, agent, chat_id, active, after in itertools.product(
            (None, "u1"), (None, "max"), (None, "c1"), (None, True, False), (None, cursor)):
        q = query(user_id=user_id, agent=agent, chat_id=chat_id, active=active, after=after)
        expected = _expected(sessions, q)
        assert await store.list(q) == expected, q
        checked += bool(expected)
    assert checked > 30  # the dataset makes most combinations non-empty
    assert await store.list(query(user_id="nobody")) == []
    assert await store.list(query(chat_id="c1", user_id="u2", agent="geral", active=False)) == [
        s for s in newest_first(sessions)
        if (s.chat_id, s.user_id, s.agent, s.is_active) == ("c1", "u2", "geral", False)]


async def test_keyset_pagination_is_stable_across_ties(store: Store) -> None:
    # Eleven sessions, eight of them created at the same instant: only the id
    # orders those, and a page boundary falls inside the tie.
    sessions = [make_session(created_at=T0 + timedelta(minutes=1 if i < 8 else i)) for i in range(11)]
    await write(store, sessions)

    pages: list[list[Session]] = []
    after = None
    while True:
        page = await store.list(query(limit=3, after=after))
        if not page:
            break
        pages.append(page)
        after = (page[-1].created_at, page[-1].id)
    assert [len(page) for page in pages] == [3, 3, 3, 2]
    assert [s for page in pages for s in page] == newest_first(sessions)


async def test_list_respects_the_limit(store: Store) -> None:
    sessions = [make_session(created_at=T0 + timedelta(seconds=i)) for i in range(5)]
    await write(store, sessions)
    assert await store.list(query(limit=1)) == newest_first(sessions)[:1]
    assert await store.list(query(limit=4)) == newest_first(sessions)[:4]
    assert await store.list(query(limit=50)) == newest_first(sessions)


async def test_health_check(store: Store) -> None:
    await store.health_check()


# ------------------------------------------------------------ the event feed


def shown(events: Sequence[FeedEvent]) -> list[tuple[str, UUID, int]]:
    return [(e.kind, e.session_id, e.version) for e in events]


def recorded(*changes: tuple[Any, Session]) -> tuple[SessionEvent, ...]:
    """A batch's feed events, from `(kind, snapshot)` pairs."""
    return tuple(SessionEvent(kind, session) for kind, session in changes)


async def test_feed_events_are_read_in_order_after_a_cursor(store: Store) -> None:
    a, b = make_session(chat_id="c1"), make_session(user_id="u2", agent="max")
    a2 = dataclasses.replace(a, version=2, state="waiting")
    a3 = dataclasses.replace(a2, version=3, is_active=False, ended_at=T0, end_reason="done")
    await store.write(WriteBatch((a, b), (), (), events=recorded(("created", a), ("created", b))))
    await store.write(WriteBatch((a2,), (), (), events=recorded(("updated", a2))))
    await store.write(WriteBatch((a3,), (), (), events=recorded(("ended", a3))))
    await store.write(WriteBatch((), (), (b.id,), events=(SessionEvent("deleted", b),)))
    events = await store.read_events(None, 100)
    assert shown(events) == [("created", a.id, 1), ("created", b.id, 1), ("updated", a.id, 2),
                             ("ended", a.id, 3), ("deleted", b.id, 1)]
    ended = events[3]
    assert (ended.user_id, ended.agent, ended.chat_id, ended.state, ended.is_active, ended.end_reason) == (
        "u1", "geral", "c1", "waiting", False, "done")
    other = events[1]
    assert (other.user_id, other.agent, other.chat_id, other.end_reason) == ("u2", "max", None, None)
    assert all(e.at.tzinfo is not None for e in events)
    # A cursor goes on right after its event, however the pages are cut.
    for size in (1, 2, 4):
        read: list[FeedEvent] = []
        after = None
        while page := await store.read_events(after, size):
            assert len(page) <= size
            read += page
            after = decode_feed_cursor(page[-1].cursor)
        assert read == events
    assert await store.read_events(decode_feed_cursor(events[-1].cursor), 100) == []


async def test_feed_events_of_a_fenced_session_are_left_out(store: Store) -> None:
    a, b = uuid4(), uuid4()
    await store.register(a, 60.0)
    await store.register(b, 60.0)
    mine, moved = make_session(), make_session()
    created = frozenset({mine.id, moved.id})
    await store.write(WriteBatch((mine, moved), (), (), owner=a, epochs={mine.id: 1, moved.id: 1},
                                 created=created, events=recorded(("created", mine), ("created", moved))))
    assert await store.grant(moved.id, a, 1, b)  # moved to b: a's writes of it are fenced from now on
    mine2, moved2 = (dataclasses.replace(s, version=2, is_active=False, ended_at=T0, end_reason="done")
                     for s in (mine, moved))
    fenced = await store.write(WriteBatch((mine2, moved2), (), (), owner=a, epochs={mine.id: 1, moved.id: 1},
                                          events=recorded(("ended", mine2), ("ended", moved2))))
    assert fenced == (moved.id,)
    assert shown(await store.read_events(None, 100)) == [("created", mine.id, 1), ("created", moved.id, 1),
                                                        ("ended", mine.id, 2)]


async def test_a_retried_write_adds_no_second_copy_of_its_events(store: Store) -> None:
    session = make_session()
    ended = dataclasses.replace(session, version=2, is_active=False, ended_at=T0, end_reason="expired")
    touched = dataclasses.replace(make_session(), version=3)
    await store.write(WriteBatch((touched,), (), ()))
    touched = dataclasses.replace(touched, version=4, last_activity=T0 + timedelta(seconds=1))
    updated = dataclasses.replace(make_session(), version=2, title="t")
    batch = WriteBatch((ended, updated), (), (), (touched,), events=recorded(
        ("created", session), ("expired", ended), ("updated", updated), ("updated", touched)))
    for _ in range(2):  # the first try committed, but the answer was lost
        await store.write(batch)
    assert sorted(shown(await store.read_events(None, 100))) == sorted([
        ("created", session.id, 1), ("expired", session.id, 2), ("updated", updated.id, 2),
        ("updated", touched.id, 4)])


async def test_an_updated_event_is_written_only_with_its_row(store: Store) -> None:
    """The version guard decides: a stale row (or one not stored, touched) has no "updated" event."""
    newer = dataclasses.replace(make_session(), version=5)
    await store.write(WriteBatch((newer,), (), ()))
    stale = dataclasses.replace(newer, version=4, title="stale")
    missing = make_session(version=2)
    await store.write(WriteBatch((stale,), (), (), (missing,), events=recorded(("updated", stale),
                                                                               ("updated", missing))))
    assert await store.read_events(None, 100) == []


async def test_place_writes_its_event_with_the_row(store: Store) -> None:
    instance = uuid4()
    await store.register(instance, 60.0)
    first = make_session(chat_id="chat")
    assert await store.place(first, instance, 1, created=True, event=True) == first
    second = make_session(chat_id="chat")
    assert await store.place(second, instance, 1, created=True, event=True) == first.id  # the chat is held
    moved = dataclasses.replace(first, version=2, chat_id="other")
    assert await store.place(moved, instance, 1, created=False, event=True) == moved
    assert await store.place(moved, instance, 1, created=False, event=True) == moved  # a retry
    unrecorded = make_session(chat_id="third")
    assert await store.place(unrecorded, instance, 1, created=True) == unrecorded
    assert shown(await store.read_events(None, 100)) == [("created", first.id, 1), ("updated", first.id, 2)]


async def test_prune_deletes_the_oldest_events_in_bounded_steps(store: Store) -> None:
    sessions = [make_session() for _ in range(5)]
    for session in sessions:
        await store.write(WriteBatch((session,), (), (), events=(SessionEvent("created", session),)))
    assert await store.prune_events(3600.0, 100) == 0  # none is an hour old
    assert await store.prune_events(0.0, 2) == 2
    assert [e.session_id for e in await store.read_events(None, 100)] == [s.id for s in sessions[2:]]
    assert await store.prune_events(0.0, 100) == 3
    assert await store.read_events(None, 100) == []


# ------------------------------------------------------------------ the fence

async def owned_by_a(store: Store, count: int) -> tuple[UUID, UUID, list[Session]]:
    """Instances a and b, and `count` new sessions of a's (epoch 1), each with one message."""
    a, b = uuid4(), uuid4()
    await store.register(a, 60.0)
    await store.register(b, 60.0)
    sessions = [make_session() for _ in range(count)]
    await store.write(WriteBatch(tuple(sessions), tuple((s.id, make_message(1)) for s in sessions), (),
                                 owner=a, epochs={s.id: 1 for s in sessions},
                                 created=frozenset(s.id for s in sessions)))
    return a, b, sessions


def touch(session: Session) -> Session:
    """The session after one more message: a change of activity alone (`WriteBatch.touched`)."""
    later = T0 + timedelta(seconds=5)
    return dataclasses.replace(session, version=session.version + 1, message_count=2, last_activity=later,
                               updated_at=later, expires_at=later + timedelta(seconds=session.timeout))


async def stored_messages(store: Store, session_id: UUID) -> list[int]:
    found = await store.load(session_id, messages=10)
    return [] if found is None else [m.seq for m in found[1]]


@pytest.mark.parametrize("events", ["none", "some", "all"])
async def test_the_fence_writes_only_the_rows_the_batch_still_owns(store: Store, events: str) -> None:
    a, b, (full, moved_full, touched, moved_touched) = await owned_by_a(store, 4)
    for moved in (moved_full, moved_touched):
        assert await store.grant(moved.id, a, 1, b)  # b's now: a's writes of it are fenced
    full_rows = [dataclasses.replace(s, version=2, title="changed") for s in (full, moved_full)]
    activity = [touch(s) for s in (touched, moved_touched)]
    rows = [*full_rows, *activity]
    updated = {"none": (), "some": rows[1:3], "all": rows}[events]
    batch = WriteBatch(tuple(full_rows), tuple((s.id, make_message(2)) for s in rows), (), tuple(activity),
                       owner=a, epochs={s.id: 1 for s in rows},
                       events=recorded(*(("updated", s) for s in updated)))
    assert await store.write(batch) == tuple(sorted((moved_full.id, moved_touched.id)))
    for written, before in zip(rows, (full, moved_full, touched, moved_touched), strict=True):
        fenced = written.id in (moved_full.id, moved_touched.id)
        assert await load(store, written.id) == (before if fenced else written)
        assert await stored_messages(store, written.id) == ([1] if fenced else [1, 2])
    expected = [("updated", s.id, 2) for s in updated if s.id in (full.id, touched.id)]
    assert sorted(shown(await store.read_events(None, 100))) == sorted(expected)


async def test_a_batch_under_an_older_epoch_is_fenced(store: Store) -> None:
    a, b, (session,) = await owned_by_a(store, 1)
    assert await store.grant(session.id, a, 1, b)
    assert await store.grant(session.id, b, 2, a)  # a's again, but under epoch 3
    stale = dataclasses.replace(session, version=2, title="stale")
    for batch in (WriteBatch((stale,), (), (), owner=a, epochs={session.id: 1}),
                  WriteBatch((), (), (), (touch(session),), owner=a, epochs={session.id: 1})):
        assert await store.write(batch) == (session.id,)
    assert await load(store, session.id) == session
    assert await store.write(WriteBatch((stale,), (), (), owner=a, epochs={session.id: 3})) == ()
    assert await load(store, session.id) == stale


async def test_a_missing_row_is_written_only_by_its_create(store: Store) -> None:
    a, _, _ = await owned_by_a(store, 0)
    gone, new = make_session(version=2), make_session()
    for batch in (WriteBatch((gone,), ((gone.id, make_message(1)),), (), owner=a, epochs={gone.id: 1}),
                  WriteBatch((), ((gone.id, make_message(1)),), (), (touch(gone),), owner=a,
                             epochs={gone.id: 1})):
        assert await store.write(batch) == (gone.id,)  # deleted by another owner: it stays deleted
    assert await store.load(gone.id, messages=10) is None
    created = WriteBatch((new,), ((new.id, make_message(1)),), (), owner=a, epochs={new.id: 1},
                         created=frozenset({new.id}))
    assert await store.write(created) == ()
    assert await store.write(created) == ()  # a retry whose first try committed
    assert await load(store, new.id) == new
    assert await stored_messages(store, new.id) == [1]


async def test_a_retried_batch_of_the_owner_is_not_fenced(store: Store) -> None:
    a, _, (full, touched) = await owned_by_a(store, 2)
    changed = dataclasses.replace(full, version=2, title="changed")
    activity = touch(touched)
    messages = ((full.id, make_message(2)), (touched.id, make_message(2)))
    batch = WriteBatch((changed,), messages, (), (activity,), owner=a, epochs={full.id: 1, touched.id: 1})
    for _ in range(2):  # the first try committed, but the answer was lost
        assert await store.write(batch) == ()
    assert [await load(store, s.id) for s in (full, touched)] == [changed, activity]
    assert [await stored_messages(store, s.id) for s in (full, touched)] == [[1, 2], [1, 2]]


async def test_a_fenced_delete_deletes_nothing(store: Store) -> None:
    a, b, (mine, moved) = await owned_by_a(store, 2)
    assert await store.grant(moved.id, a, 1, b)
    never = uuid4()
    batch = WriteBatch((), (), (mine.id, moved.id, never), owner=a, epochs={mine.id: 1, moved.id: 1})
    assert await store.write(batch) == (moved.id,)  # a delete of a session not stored is a no-op
    assert await store.load(mine.id, messages=10) is None
    assert await load(store, moved.id) == moved
    assert await stored_messages(store, moved.id) == [1]


async def test_messages_without_their_row_are_fenced_with_their_session(store: Store) -> None:
    a, b, (mine, moved) = await owned_by_a(store, 2)
    assert await store.grant(moved.id, a, 1, b)
    batch = WriteBatch((), ((mine.id, make_message(2)), (moved.id, make_message(2))), (), owner=a,
                       epochs={mine.id: 1, moved.id: 1})
    assert await store.write(batch) == (moved.id,)
    assert [await stored_messages(store, s.id) for s in (mine, moved)] == [[1, 2], [1]]


async def test_a_create_whose_row_moved_since_is_fenced(store: Store) -> None:
    """A new session's row written first (place(), or a try whose answer was lost), then taken."""
    a, b, (session,) = await owned_by_a(store, 1)
    assert await store.grant(session.id, a, 1, b)
    later = dataclasses.replace(session, version=2, title="late")
    batch = WriteBatch((later,), ((session.id, make_message(2)),), (), owner=a, epochs={session.id: 1},
                       created=frozenset({session.id}))
    assert await store.write(batch) == (session.id,)
    assert await load(store, session.id) == session
    assert await stored_messages(store, session.id) == [1]
