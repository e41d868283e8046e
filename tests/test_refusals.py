"""Rows the database refuses: versions only grow, and the runtime agrees with the store.

A refused row is dropped (it can never be written); the session then reads
as stored again, under a version above every one handed out, across
passivation and restarts, and the refusal is visible: `WriteRejected` to a
durable caller, a "rejected" event, the `rejected_rows` counter.
"""

from __future__ import annotations

import dataclasses
from uuid import UUID

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import MockClock

from trio_sessions import (
    MemoryStore,
    RuntimeConfig,
    Session,
    SessionEvent,
    SessionNotFound,
    WriteRejected,
    open_runtime,
)
from trio_sessions._store import WriteBatch

REFUSED_TITLE = "refuse me"


class RefusingStore(MemoryStore):
    """A MemoryStore with a CHECK constraint of the application's: no row titled `REFUSED_TITLE`."""

    async def write(self, batch: WriteBatch) -> None:
        if any(s.title == REFUSED_TITLE for s in (*batch.sessions, *batch.touched)):
            await trio.lowlevel.checkpoint()
            raise WriteRejected("new row violates check constraint \"no_refused_title\"")
        await super().write(batch)


def config(**changes: object) -> RuntimeConfig:
    return RuntimeConfig(session_timeout=600.0, flush_interval=1.0, **changes)  # type: ignore[arg-type]


async def stored(store: MemoryStore, session_id: UUID) -> Session | None:
    loaded = await store.load(session_id, messages=0)
    return None if loaded is None else loaded[0]


async def test_after_a_refusal_versions_keep_growing_across_passivation_and_restart(
        autojump_clock: MockClock) -> None:
    store = RefusingStore()
    events: list[SessionEvent] = []
    async with open_runtime(config(max_resident=1), store=store) as rt:
        async with rt.subscribe() as subscription:
            first = await rt.create("u1", "geral", title="fine", durable=True)
            refused = await rt.update(first.id, title=REFUSED_TITLE)
            noted = await rt.add_note(first.id, "on top of the refused title")
            await rt.flush()
            assert rt.metrics().rejected_rows == 1
            # Passivate it: another session takes the only resident slot.
            other = await rt.create("u2", "geral")
            await rt.update_last_activity(other.id)
            again = await rt.get(first.id)
            # What is stored, under a version above every one handed out.
            assert again == dataclasses.replace(first, version=noted.version + 1)
            later = await rt.add_note(first.id, "after")
            assert later.version == again.version + 1 and later.title == "fine"
            await rt.flush()
            while True:
                event = subscription._receive.receive_nowait()
                events.append(event)
                if event.kind == "rejected":
                    break
    assert events[-1].session == noted  # the newest refused row (it carried the refused title)
    assert refused.version < noted.version
    assert await stored(store, first.id) == later
    async with open_runtime(config(), store=store) as rt:  # a restart continues from the stored version
        assert (await rt.add_note(first.id, "restarted")).version == later.version + 1


async def test_a_durable_caller_learns_of_the_refusal_and_the_next_call_agrees_with_the_store(
        autojump_clock: MockClock) -> None:
    store = RefusingStore()
    async with open_runtime(config(), store=store) as rt:
        first = await rt.create("u1", "geral", title="fine", durable=True)
        try:
            await rt.update(first.id, title=REFUSED_TITLE, durable=True)
        except WriteRejected:
            pass
        else:
            raise AssertionError("a refused durable update must raise WriteRejected")
        now = await rt.get(first.id)
        assert now.title == "fine" and now.version == 3
        assert now == dataclasses.replace(first, version=3)


async def test_a_refused_create_leaves_no_session(autojump_clock: MockClock) -> None:
    store = RefusingStore()
    async with open_runtime(config(), store=store) as rt:
        session = await rt.create("u1", "geral", title=REFUSED_TITLE)
        await rt.flush()
        try:
            await rt.get(session.id)
        except SessionNotFound:
            pass
        else:
            raise AssertionError("a session never stored must not be found")
        assert rt.metrics().live_sessions == 0


@given(steps=st.lists(st.sampled_from(["touch", "note", "refuse", "fine", "flush", "passivate"]),
                      max_size=25),
       scheduling=st.random_module())
def test_versions_handed_out_only_grow_and_name_one_snapshot(steps: list[str], scheduling: object) -> None:
    """Property: whatever is refused, each version number names one snapshot, and versions grow."""
    store = RefusingStore()

    async def main() -> None:
        seen: dict[int, Session] = {}
        async with open_runtime(config(max_resident=1), store=store) as rt:

            def saw(session: Session) -> None:
                assert session.version >= max(seen, default=0), "a version went backwards"
                assert seen.setdefault(session.version, session) == session, "one version, two snapshots"

            session = await rt.create("u1", "geral", title="fine", durable=True)
            saw(session)
            spare = await rt.create("u2", "geral")
            for step in steps:
                if step == "touch":
                    saw(await rt.update_last_activity(session.id))
                elif step == "note":
                    saw(await rt.add_note(session.id, "n"))
                elif step in ("refuse", "fine"):
                    saw(await rt.update(session.id, title=REFUSED_TITLE if step == "refuse" else "fine"))
                elif step == "flush":
                    await rt.flush()
                else:
                    await rt.update_last_activity(spare.id)  # takes the one resident slot
                saw(await rt.get(session.id))
            await rt.flush()
            final = await rt.get(session.id)
            saw(final)
            await rt.flush()
            assert await stored(store, session.id) == final  # the runtime agrees with the store

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
