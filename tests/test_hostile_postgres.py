"""Hostile arguments to every public call, through a runtime on a real PostgreSQL.

Each example opens a runtime on the test's database and makes a few drawn
calls whose arguments are hostile (`hostile_text`, the kit's invalid
numbers and metadata), impostors (subclasses whose methods lie about the
data they hold) or forged (cursors the runtime did not make, ids of no
session, snapshots with odd dates). Every call must succeed or raise a
`SessionError`; nothing else may leave it, asyncpg's and trio-asyncio's
types least of all. After a flush, every session a call acknowledged is
read back with a store of its own: the row and its messages must be what
the calls returned, holding the plain values that were checked (so a value
that passed validation and that PostgreSQL then refused shows as a
`rejected_rows` count, or as a stored row that differs).

The ci profile runs a dozen short examples (a few seconds); the deep
profile (`HYPOTHESIS_PROFILE=deep`) a hundred times more.
"""

from __future__ import annotations

import base64
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from trio_sessions import PostgresStore, RuntimeConfig, Session, SessionError, SessionRuntime, open_runtime
from trio_sessions import _model as model
from trio_sessions._postgres import apply_migrations_to, create_database, drop_database
from trio_sessions._postgres._bridge import execute_once
from trio_sessions._transitions import expired
from trio_sessions.testing import (
    agents,
    chat_ids,
    hostile_text,
    impostors,
    limits,
    message_contents,
    metadata,
    roles,
    timeouts,
    user_ids,
    valid_text,
)

#: A call never waits long (a bug that hangs shows as `Overloaded`, a SessionError, then as a
#: stored row that differs); flushes are frequent, so a short example still writes behind.
CONFIG = RuntimeConfig(pool_min=1, pool_max=4, flush_interval=0.02, call_timeout=20.0)
STEPS = 8
EXAMPLES = max(12, settings().max_examples // 2)


@pytest.fixture
def database(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test (sync: Hypothesis runs each example in its own trio.run)."""
    name = f"t_{uuid.uuid4().hex}"
    url = trio.run(create_database, postgres_server_url, name)
    trio.run(apply_migrations_to, url)
    try:
        yield url
    finally:
        trio.run(drop_database, postgres_server_url, name)


# ------------------------------------------------------------------- arguments
# Each strategy draws (plain, given): the value a call is given, and the plain value it holds
# (the same object unless `given` is an impostor).


def _either(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid half the time (so that calls go on to change sessions), else an impostor or hostile."""
    plain = valid.map(lambda value: (value, value))
    return st.one_of(plain, hostile.map(lambda value: (value, value)), plain, impostors(valid))


TEXT = {
    "user_id": _either(user_ids(), hostile_text(max_size=model.MAX_ID_CHARS + 1)),
    "agent": _either(agents(), hostile_text(max_size=model.MAX_NAME_CHARS + 1)),
    "chat_id": _either(st.sampled_from(("c1", "c2")) | chat_ids().map(lambda chat: chat or "c1"),
                       hostile_text(max_size=model.MAX_ID_CHARS + 1)),
    "title": _either(valid_text(model.MAX_TITLE_CHARS), hostile_text(max_size=model.MAX_TITLE_CHARS + 1)),
    "state": _either(valid_text(model.MAX_NAME_CHARS), hostile_text(max_size=model.MAX_NAME_CHARS + 1)),
    "note": _either(valid_text(model.MAX_NOTE_CHARS), hostile_text(max_size=model.MAX_NOTE_CHARS + 1)),
    "reason": _either(valid_text(model.MAX_NAME_CHARS), hostile_text(max_size=model.MAX_NAME_CHARS + 1)),
    "content": _either(message_contents(), hostile_text()),
    "role": _either(roles(valid_only=True), roles()),
    "metadata": _either(metadata(valid_only=True), metadata()),
    "timeout": _either(st.sampled_from((60.0, 3600.0)) | timeouts(valid_only=True), timeouts()),
    "limit": _either(limits(valid_only=True), limits()),
    "page_limit": _either(limits(high=1000, valid_only=True), limits(high=1000)),
    "flag": st.sampled_from((True, False, None, 1, 0, "true", 1.0)).map(lambda v: (v, v)),
}


def _forged_cursor(at: datetime, session_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{session_id}".encode()).decode("ascii")


FORGED_CURSORS = st.one_of(
    hostile_text(max_size=250),
    st.builds(_forged_cursor,
              st.datetimes(timezones=st.sampled_from((UTC, timezone(timedelta(hours=14)),
                                                      timezone(timedelta(hours=-14))))),
              st.uuids()),
    st.binary(max_size=80).map(lambda raw: base64.urlsafe_b64encode(raw).decode("ascii")),
    st.sampled_from((None, 1, b"x", 1.5)),
)


class Seen:
    """What the calls of one example acknowledged."""

    def __init__(self) -> None:
        # In the order the calls answered (draws depend on it, so never on the ids' random order).
        self.sessions: dict[uuid.UUID, Session] = {}  # the newest snapshot answered per session
        self.deleted: dict[uuid.UUID, None] = {}
        self.messages: dict[uuid.UUID, list[tuple[str, str]]] = {}
        self.cursors: list[str] = []

    def saw(self, session: Session) -> Session:
        assert type(session) is Session
        known = self.sessions.get(session.id)
        if session.id not in self.deleted and (known is None or session.version >= known.version):
            self.sessions[session.id] = session
            self.messages.setdefault(session.id, [])
        return session


def _draw(data: DataObject, name: str) -> tuple[Any, Any]:
    pair: tuple[Any, Any] = data.draw(TEXT[name], label=name)
    return pair


def _session_id(data: DataObject, seen: Seen) -> Any:
    """An id the calls made (as UUID, text, impostor text or UUID subclass), or one they did not."""
    known = [*seen.sessions, *seen.deleted]
    forged = st.one_of(st.uuids(), st.uuids().map(str), hostile_text(max_size=60),
                       st.sampled_from((None, 1, b"x", uuid.UUID(int=0))))
    if not known:
        return data.draw(forged, label="session_id")
    spelled = st.sampled_from(known).flatmap(lambda sid: st.sampled_from((
        sid, str(sid), str(sid).upper(), f"{{{sid}}}", sid.hex, _Lying(str(sid)), _LyingUUID(int=sid.int))))
    return data.draw(st.one_of(spelled, forged, spelled, spelled), label="session_id")


class _Lying(str):
    def __str__(self) -> str:
        return "\x00"

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


class _LyingUUID(uuid.UUID):
    def __str__(self) -> str:
        return "not-a-uuid"


def _owner(data: DataObject, seen: Seen) -> Any:
    """None, the user of a session the calls made (plain or impostor), or anyone."""
    users = sorted({s.user_id for s in seen.sessions.values()})
    known = st.sampled_from(users).flatmap(lambda user: st.sampled_from((user, _Lying(user)))) if users \
        else st.none()
    return data.draw(st.one_of(st.none(), known, _draw_only(TEXT["user_id"]), known), label="user_id")


def _draw_only(pairs: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return pairs.map(lambda pair: pair[1])


# ---------------------------------------------------------------------- calls


async def _create(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    user, agent = _draw(data, "user_id"), _draw(data, "agent")
    fields = {name: _draw(data, name) for name in ("title", "state", "metadata", "timeout")
              if data.draw(st.booleans(), label=f"with {name}")}
    chat = _draw(data, "chat_id") if data.draw(st.booleans(), label="with chat_id") else (None, None)
    made = seen.saw(await rt.create(user[1], agent[1], chat_id=chat[1],
                                    **{name: given for name, (_, given) in fields.items()},
                                    durable=data.draw(st.booleans(), label="durable")))
    assert (made.user_id, made.agent, made.chat_id) == (user[0], agent[0], chat[0])
    for name in ("title", "state"):
        if name in fields:
            assert getattr(made, name) == fields[name][0]


async def _session_for_chat(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    user, agent, chat = _draw(data, "user_id"), _draw(data, "agent"), _draw(data, "chat_id")
    title = _draw(data, "title") if data.draw(st.booleans(), label="with title") else (None, None)
    if data.draw(st.booleans(), label="as a turn"):
        async with rt.chat_turn(user[1], agent[1], chat[1], title=title[1]) as held:
            found = seen.saw(held)
    else:
        found = seen.saw(await rt.session_for_chat(user[1], agent[1], chat[1], title=title[1]))
    assert (found.user_id, found.agent, found.chat_id) == (user[0], agent[0], chat[0])


async def _get(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    session_id = _session_id(data, seen)
    seen.saw(await rt.get(session_id, user_id=_owner(data, seen)))


async def _turn(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    session_id = _session_id(data, seen)
    async with rt.turn(session_id, user_id=_owner(data, seen)) as held:
        seen.saw(held)


async def _touch(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    seen.saw(await rt.update_last_activity(_session_id(data, seen), durable=_draw(data, "flag")[1]))


async def _update(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    session_id = _session_id(data, seen)
    names = data.draw(st.sets(st.sampled_from(("title", "state", "agent", "chat_id", "metadata")),
                              min_size=1), label="fields")
    changes = {name: _draw(data, name) for name in sorted(names)}
    versions = [s.version for s in seen.sessions.values()]
    current = st.sampled_from(versions) if versions else st.none()
    version = data.draw(st.one_of(st.none(), current, st.integers(-1, 4), _draw_only(TEXT["limit"]),
                                  st.none()), label="expected_version")
    updated = seen.saw(await rt.update(session_id, expected_version=version, user_id=_owner(data, seen),
                                       **{name: given for name, (_, given) in changes.items()}))
    for name in ("title", "state", "agent", "chat_id"):
        if name in changes:
            assert getattr(updated, name) == changes[name][0]


async def _append(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    session_id = _session_id(data, seen)
    role, content = _draw(data, "role"), _draw(data, "content")
    session = seen.saw(await rt.append_message(session_id, role[1], content[1],
                                               durable=data.draw(st.booleans(), label="durable")))
    seen.messages[session.id].append((role[0], content[0]))
    assert session.message_count == len(seen.messages[session.id])


async def _context(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    session_id = _session_id(data, seen)
    messages = await rt.context(session_id, limit=_draw(data, "limit")[1], user_id=_owner(data, seen))
    assert all(type(m.content) is str and type(m.role) is str for m in messages)


async def _note(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    note = _draw(data, "note")
    session = seen.saw(await rt.add_note(_session_id(data, seen), note[1]))
    assert session.notes[-1].text == note[0]


async def _end(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    reason = _draw(data, "reason")
    ended = await rt.end(_session_id(data, seen), reason=reason[1])
    before = seen.sessions.get(ended.id)
    if before is not None and before.is_active and ended.version > before.version:  # not ended before
        assert ended.end_reason in (reason[0], "expired")
    seen.saw(ended)


async def _delete(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    session_id = _session_id(data, seen)
    await rt.delete(session_id)
    gone = model.check_session_id(session_id)
    seen.deleted[gone] = None
    seen.sessions.pop(gone, None)


async def _list(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    filters = {name: _draw(data, name)[1] for name in ("user_id", "agent", "chat_id")
               if data.draw(st.booleans(), label=f"by {name}")}
    after = data.draw(st.one_of(st.none(), st.sampled_from(seen.cursors) if seen.cursors else st.none(),
                                (st.sampled_from(seen.cursors) if seen.cursors else st.just("x")).map(_Lying),
                                FORGED_CURSORS), label="after")
    page = await rt.list(**filters, active=_draw(data, "flag")[1], limit=_draw(data, "page_limit")[1],
                         after=after)
    for session in page.items:
        seen.saw(session)
    if page.next_cursor is not None:
        seen.cursors.append(page.next_cursor)


async def _iterate(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    sessions = rt.iter_sessions(user_id=_draw(data, "user_id")[1], page_size=_draw(data, "page_limit")[1])
    count = 0
    async for session in sessions:
        seen.saw(session)
        count += 1
        if count == 3:
            break


async def _others(rt: SessionRuntime, data: DataObject, seen: Seen) -> None:
    """The calls without session arguments, and `deadline` of a snapshot (an odd one, sometimes)."""
    await rt.cleanup_old_sessions()
    await rt.health()
    rt.metrics()
    async with rt.subscribe(buffer=_draw(data, "limit")[1]):
        pass
    snapshot = data.draw(st.sampled_from(list(seen.sessions.values())) if seen.sessions else st.none(),
                         label="snapshot")
    if snapshot is not None:
        odd = data.draw(st.sampled_from((
            snapshot, dataclasses.replace(snapshot, expires_at=snapshot.expires_at.replace(tzinfo=None)),
            dataclasses.replace(snapshot, expires_at=datetime.max.replace(tzinfo=UTC)),
            dataclasses.replace(snapshot, expires_at="tomorrow"), None, "session")), label="deadline of")
        rt.deadline(odd)


CALLS: dict[str, Callable[[SessionRuntime, DataObject, Seen], Awaitable[None]]] = {
    "create": _create, "session_for_chat": _session_for_chat, "get": _get, "turn": _turn,
    "update_last_activity": _touch, "update": _update, "append_message": _append, "context": _context,
    "add_note": _note, "end": _end, "delete": _delete, "list": _list, "iter_sessions": _iterate,
    "others": _others,
}


# ------------------------------------------------------------------- property


def _as_stored(stored: Session, answered: Session) -> bool:
    """`stored` is `answered`, or its expiry (the expiry engine ran after the last answer)."""
    return stored == answered or (answered.is_active and stored == expired(answered))


async def _example(url: str, data: DataObject) -> None:
    # Each example on empty tables: a chat's session of an earlier example would be found here.
    await execute_once(url, "TRUNCATE sessions, session_messages, session_handoffs, instances")
    seen = Seen()
    async with open_runtime(CONFIG, store=PostgresStore(url, CONFIG, migrate=False)) as rt:
        # One plain session first, so that the hostile calls have one to work on.
        first = (data.draw(user_ids(), label="first user"), data.draw(agents(), label="first agent"))
        seen.saw(await rt.create(*first))
        for _ in range(data.draw(st.integers(1, STEPS), label="steps")):
            name = data.draw(st.sampled_from(sorted(CALLS)), label="call")
            try:
                await CALLS[name](rt, data, seen)
            except SessionError as exc:  # the only kind of error a public call may raise
                event(f"{name}: {type(exc).__name__}")
            else:
                event(f"{name}: answered")
        await rt.flush()
        assert rt.metrics().rejected_rows == 0
    store = PostgresStore(url, CONFIG, migrate=False)  # what PostgreSQL holds, nothing cached
    async with store.connect():
        for session_id in seen.deleted:
            assert await store.load(session_id, messages=0) is None
        for session_id, answered in seen.sessions.items():
            loaded = await store.load(session_id, messages=10**6)
            assert loaded is not None, f"{session_id} was acknowledged and is not stored"
            stored, messages = loaded
            assert _as_stored(stored, answered), (stored, answered)
            assert [(m.role, m.content) for m in messages] == seen.messages[session_id]


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_calls_through_postgresql_raise_session_errors_and_store_what_they_answer(
        database: str, data: DataObject) -> None:
    assert urlsplit(database).scheme.startswith("postgres")
    trio.run(_example, database, data)  # the real clock: asyncpg's timeouts need it
