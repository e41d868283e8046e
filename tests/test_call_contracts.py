"""Two promises of the public calls, checked directly on every path a call can take.

- `durable=True` returns only once the change is committed: by create, and
  by each mutating call whether the session's actor is idle (the caller
  applies the command itself), not resident (the command waits in the
  mailbox while the actor loads) or busy.
- `get(id, user_id=other)` raises `SessionNotFound` whether or not the
  session is resident: ownership is checked on every path.

The property suite finds both too, but only after minutes; these fail in
milliseconds. Virtual time, MemoryStore, and a flush interval far longer
than the test, so nothing is committed unless a durable call waits for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from trio_sessions import (
    MemoryStore,
    RuntimeConfig,
    Session,
    SessionNotFound,
    SessionRuntime,
    Store,
    open_runtime,
)
from trio_sessions.testing import FaultyStore, run_on_virtual_time

CONFIG = RuntimeConfig(flush_interval=1000.0, max_resident=1, session_timeout=3600.0)

MUTATIONS: dict[str, Callable[[SessionRuntime, Any], Awaitable[Session]]] = {
    "touch": lambda rt, sid: rt.update_last_activity(sid, durable=True),
    "update": lambda rt, sid: rt.update(sid, state="paid", durable=True),
    "append": lambda rt, sid: rt.append_message(sid, "user", "oi", durable=True),
    "note": lambda rt, sid: rt.add_note(sid, "ligar amanhã", durable=True),
    "end": lambda rt, sid: rt.end(sid, reason="resolved", durable=True),
}


async def _stored_version(store: Store, session: Session) -> int | None:
    loaded = await store.load(session.id, messages=0)
    return None if loaded is None else loaded[0].version


def test_durable_create_returns_after_the_commit() -> None:
    store = MemoryStore()

    async def scenario(rt: SessionRuntime) -> None:
        created = await rt.create("ana", "geral", durable=True)
        assert await _stored_version(store, created) == 1
        plain = await rt.create("ana", "geral")
        assert await _stored_version(store, plain) is None  # the flush interval is far off

    run_on_virtual_time(scenario, config=CONFIG, store=store)


async def _make_idle(rt: SessionRuntime, session: Session, nursery: trio.Nursery) -> None:
    await rt.update_last_activity(session.id)  # loads an actor; it is idle once this returns


async def _make_not_resident(rt: SessionRuntime, session: Session, nursery: trio.Nursery) -> None:
    await rt.update_last_activity(session.id)
    other = await rt.create("bia", "max")
    await rt.update_last_activity(other.id)  # max_resident=1: the first actor stops


async def _make_busy(rt: SessionRuntime, session: Session, nursery: trio.Nursery) -> None:
    # Not resident, then a plain call that waits in the mailbox while the
    # actor loads (the store answers after 0.5 s): the durable call queues behind it.
    await _make_not_resident(rt, session, nursery)
    await rt.flush()  # so the actor loads from the (slow) store, not from the buffer
    nursery.start_soon(rt.add_note, session.id, "first")
    await trio.testing.wait_all_tasks_blocked()


PATHS: dict[str, Callable[[SessionRuntime, Session, trio.Nursery], Awaitable[None]]] = {
    "idle actor": _make_idle, "not resident": _make_not_resident, "busy actor": _make_busy,
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kind", list(MUTATIONS))
def test_durable_calls_return_after_the_commit(kind: str, path: str) -> None:
    store = FaultyStore(MemoryStore(), seed=0, latency=(0.5, 0.5))  # every store call takes 0.5 s

    async def scenario(rt: SessionRuntime) -> None:
        session = await rt.create("ana", "geral")
        async with trio.open_nursery() as nursery:
            await PATHS[path](rt, session, nursery)
            result = await MUTATIONS[kind](rt, session.id)
            version = await _stored_version(store.inner, result)
            assert version is not None and version >= result.version, (kind, path, version, result)
            if kind == "append":
                loaded = await store.inner.load(session.id, messages=10)
                assert loaded is not None and [m.content for m in loaded[1]][-1] == "oi"

    run_on_virtual_time(scenario, config=CONFIG, store=store)


def test_without_durable_nothing_is_committed_before_the_interval() -> None:
    # The tests above prove something only because a plain call is not committed yet.
    store = MemoryStore()

    async def scenario(rt: SessionRuntime) -> None:
        session = await rt.create("ana", "geral")
        touched = await rt.update_last_activity(session.id)
        assert await _stored_version(store, touched) is None
        await trio.sleep(CONFIG.flush_interval + 1.0)
        assert await _stored_version(store, touched) == touched.version

    run_on_virtual_time(scenario, config=CONFIG, store=store)


# ------------------------------------------------------------------ ownership


async def _owner_check(rt: SessionRuntime, session: Session, where: str) -> None:
    with pytest.raises(SessionNotFound):
        await rt.get(session.id, user_id="bia")
    with pytest.raises(SessionNotFound):
        await rt.get(str(session.id), user_id="ANA")  # case matters: another user
    assert (await rt.get(session.id, user_id="ana")).id == session.id, where


def test_get_checks_the_owner_whether_or_not_the_session_is_resident() -> None:
    async def scenario(rt: SessionRuntime) -> None:
        session = await rt.create("ana", "geral")
        await _owner_check(rt, session, "just created: no actor yet")
        await rt.flush()
        await _owner_check(rt, session, "flushed, no actor")
        await rt.update_last_activity(session.id)
        await _owner_check(rt, session, "resident")
        other = await rt.create("caio", "max")
        await rt.update_last_activity(other.id)
        await _owner_check(rt, session, "passivated")
        ended = await rt.end(session.id)
        await _owner_check(rt, ended, "ended")

    run_on_virtual_time(scenario, config=CONFIG)


def test_get_checks_the_owner_of_a_session_only_in_the_store() -> None:
    store = MemoryStore()

    async def main() -> None:
        async with open_runtime(CONFIG, store=store) as rt:
            session = await rt.create("ana", "geral")
        async with open_runtime(CONFIG, store=store) as rt:  # a restart: only the store has it
            await _owner_check(rt, session, "after a restart")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
