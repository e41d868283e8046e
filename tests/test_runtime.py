"""The whole public API, against both stores (real PostgreSQL and MemoryStore)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import trio
import trio.testing

from trio_sessions import (
    InvalidArgument,
    MemoryStore,
    RuntimeClosed,
    RuntimeConfig,
    Session,
    SessionInactive,
    SessionNotFound,
    Store,
    VersionConflict,
    open_runtime,
)

StoreFactory = Callable[[], Store]

# Long flush intervals: these tests decide when things are flushed.
CONFIG = RuntimeConfig(flush_interval=60.0, session_timeout=600.0)


class GatedStore(MemoryStore):
    """A real MemoryStore whose writes wait for the test to open its gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def write(self, batch):  # type: ignore[no-untyped-def]
        await self.gate.wait()
        await super().write(batch)


async def test_create_and_get(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("user-1", "financeiro", chat_id="5511999990000@c.us",
                                  title="Boleto", metadata={"tier": "gold", "tags": ["a", 1.5, None]})
        assert isinstance(session.id, uuid.UUID) and session.id.version == 4
        assert (session.user_id, session.agent, session.chat_id, session.title) == (
            "user-1", "financeiro", "5511999990000@c.us", "Boleto")
        assert (session.state, session.version, session.message_count) == ("active", 1, 0)
        assert session.is_active and session.ended_at is None and session.end_reason is None
        assert session.created_at == session.updated_at == session.last_activity
        assert session.expires_at - session.last_activity == timedelta(seconds=600)
        assert session.created_at.utcoffset() == timedelta(0)
        assert session.metadata == {"tier": "gold", "tags": ["a", 1.5, None]}
        assert json.loads(json.dumps(session.metadata)) == session.metadata
        with pytest.raises(TypeError):
            session.metadata["tier"] = "x"  # type: ignore[index]
        with pytest.raises(TypeError):
            session.metadata["tags"].append(2)
        assert await rt.get(session.id) == session
        assert await rt.get(str(session.id)) == session


async def test_ownership_does_not_leak_existence(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("alice", "max")
        assert await rt.get(session.id, user_id="alice") == session
        with pytest.raises(SessionNotFound) as owned:
            await rt.get(session.id, user_id="mallory")
        with pytest.raises(SessionNotFound) as missing:
            await rt.get(uuid.uuid4(), user_id="mallory")
        assert str(owned.value).replace(str(session.id), "X") == str(missing.value).replace(
            str(missing.value.session_id), "X")


async def test_every_call_on_a_session_checks_its_owner_before_changing_it(
        store_factory: StoreFactory) -> None:
    store = store_factory()
    async with open_runtime(CONFIG, store=store) as rt:
        session = await rt.create("alice", "max", title="t")
        ended = await rt.end((await rt.create("alice", "max")).id, user_id="alice")
        await rt.flush()
        calls = {
            "update": lambda sid: rt.update(sid, title="x", user_id="mallory"),
            "append_message": lambda sid: rt.append_message(sid, "user", "x", user_id="mallory"),
            "add_note": lambda sid: rt.add_note(sid, "x", user_id="mallory"),
            "end": lambda sid: rt.end(sid, user_id="mallory"),
            "context": lambda sid: rt.context(sid, user_id="mallory"),
        }
        async with rt.subscribe() as events:
            for name, call in calls.items():
                # Another user's session, live or ended, reads as missing, word for word.
                for sid in (session.id, ended.id):
                    with pytest.raises(SessionNotFound) as owned:
                        await call(sid)
                    missing_id = uuid.uuid4()
                    with pytest.raises(SessionNotFound) as missing:
                        await call(missing_id)
                    assert str(owned.value).replace(str(sid), "X") == str(missing.value).replace(
                        str(missing_id), "X"), name
            assert rt.metrics().pending_writes == 0
            assert await rt.get(session.id) == session
            assert await rt.get(ended.id) == ended
            # The owner passes the same check, and its change is the first event of all.
            assert (await rt.update(session.id, title="x", user_id="alice")).title == "x"
            first = await events.receive()
            assert (first.kind, first.session.version, first.session.title) == (
                "updated", session.version + 1, "x")
        assert (await rt.append_message(session.id, "user", "oi", user_id="alice")).message_count == 1
        assert len((await rt.add_note(session.id, "n", user_id="alice")).notes) == 1
        assert [m.content for m in await rt.context(session.id, user_id="alice")] == ["oi"]
        assert not (await rt.end(session.id, user_id="alice")).is_active
    async with open_runtime(CONFIG, store=store) as rt:
        # Not resident: the check is made once the session is loaded, still before any change.
        with pytest.raises(SessionNotFound):
            await rt.context(session.id, user_id="mallory")
        with pytest.raises(SessionNotFound):
            await rt.add_note(session.id, "x", user_id="mallory")
        assert len((await rt.get(session.id)).notes) == 1


async def test_iter_sessions_follows_every_page(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        made = [await rt.create("ana" if n % 3 else "bob", "geral", title=str(n)) for n in range(25)]
        await rt.end(made[5].id)
        every = (await rt.list(active=None, limit=1000)).items
        pages_before = rt.metrics().operations["list"].count
        assert [s async for s in rt.iter_sessions(active=None, page_size=4)] == list(every)
        assert rt.metrics().operations["list"].count - pages_before == 7  # 25 rows, 4 a page
        assert [s async for s in rt.iter_sessions(page_size=1000)] == [s for s in every if s.is_active]
        ana = [s async for s in rt.iter_sessions(user_id="ana", page_size=3)]
        assert ana == [s for s in every if s.user_id == "ana" and s.is_active]
        assert len(ana) == 15
        assert [s async for s in rt.iter_sessions(user_id="nobody")] == []
        with pytest.raises(InvalidArgument) as refused:
            rt.iter_sessions(page_size=0)  # checked at once, before any page is read
        assert refused.value.field == "page_size"
        with pytest.raises(InvalidArgument):
            rt.iter_sessions(agent="")


async def test_update_and_version_conflicts(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "geral", title="first")
        updated = await rt.update(session.id, expected_version=1, title=None, state="awaiting_payment",
                                  metadata={"step": 2})
        assert (updated.title, updated.state, updated.version) == (None, "awaiting_payment", 2)
        assert updated.metadata == {"step": 2}
        assert updated.last_activity == session.last_activity  # not activity
        with pytest.raises(VersionConflict) as conflict:
            await rt.update(session.id, expected_version=1, state="resolved")
        assert (conflict.value.expected, conflict.value.actual) == (1, 2)
        assert await rt.get(session.id) == updated  # the conflict changed nothing
        assert await rt.update(session.id, expected_version=2) == updated  # nothing to change
        moved = await rt.update(session.id, agent="max", chat_id="chat-9")
        assert (moved.agent, moved.chat_id, moved.version) == ("max", "chat-9", 3)


async def test_messages_and_context(store_factory: StoreFactory) -> None:
    config = CONFIG.__class__(flush_interval=60.0, max_messages=5)
    async with open_runtime(config, store=store_factory()) as rt:
        session = await rt.create("u", "geral")
        for i in range(1, 8):
            session = await rt.append_message(session.id, "user" if i % 2 else "assistant", f"m{i}")
        assert (session.message_count, session.version) == (7, 8)
        context = await rt.context(session.id)
        assert [(m.seq, m.content) for m in context] == [(i, f"m{i}") for i in range(3, 8)]
        assert [m.role for m in context] == ["user", "assistant", "user", "assistant", "user"]
        assert [m.seq for m in await rt.context(session.id, limit=2)] == [6, 7]
        assert context[-1].created_at == session.last_activity


async def test_notes(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "financeiro")
        await rt.add_note(session.id, "asked for a refund")
        noted = await rt.add_note(session.id, "escalated")
        assert [n.text for n in noted.notes] == ["asked for a refund", "escalated"]
        assert noted.version == 3 and noted.last_activity == session.last_activity


async def test_end_is_a_soft_delete(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "max")
        ended = await rt.end(session.id, reason="resolved")
        assert (ended.is_active, ended.end_reason, ended.version) == (False, "resolved", 2)
        assert ended.ended_at is not None
        assert await rt.end(session.id, reason="again") == ended
        for call in (rt.update_last_activity(session.id), rt.append_message(session.id, "user", "x"),
                     rt.add_note(session.id, "n"), rt.update(session.id, title="t")):
            with pytest.raises(SessionInactive):
                await call
        assert await rt.get(session.id) == ended
        await rt.flush()
        page = await rt.list(user_id="u", active=False)
        assert page.items == (ended,)
        assert rt.metrics().live_sessions == 0


async def test_delete_removes_row_and_messages(store_factory: StoreFactory) -> None:
    store = store_factory()
    async with open_runtime(CONFIG, store=store) as rt:
        session = await rt.create("u", "max")
        await rt.append_message(session.id, "user", "secret")
        await rt.flush()
        await rt.delete(session.id)  # returns once committed
        assert await store.load(session.id, messages=10) is None
        assert await store.load_messages(session.id, limit=10, up_to_seq=10) == ()
        with pytest.raises(SessionNotFound):
            await rt.get(session.id)
        with pytest.raises(SessionNotFound):
            await rt.delete(session.id)
        unflushed = await rt.create("u", "max")
        await rt.delete(unflushed.id)  # deleted before it was ever written
        with pytest.raises(SessionNotFound):
            await rt.context(unflushed.id)
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        assert (await rt.list(user_id="u", active=None)).items == ()


async def test_list_filters_and_pages(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        made = []
        for i in range(7):
            made.append(await rt.create("ana" if i % 2 else "bia", ("max", "geral")[i % 2],
                                        chat_id="c1" if i < 3 else None))
            if i == 0:  # bia's chat c1 with max is free again for made[2]
                await rt.end(made[0].id)
        newest_first = sorted(made, key=lambda s: (s.created_at, s.id), reverse=True)
        seen = []
        cursor = None
        while True:
            page = await rt.list(active=None, limit=3, after=cursor)
            seen.extend(s.id for s in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [s.id for s in newest_first]
        assert {s.id for s in (await rt.list(user_id="ana")).items} == {s.id for s in made[1::2]}
        assert {s.id for s in (await rt.list(chat_id="c1")).items} == {made[1].id, made[2].id}
        assert {s.id for s in (await rt.list(chat_id="c1", active=False)).items} == {made[0].id}
        assert {s.id for s in (await rt.list(agent="geral", user_id="ana")).items} == {
            s.id for s in made[1::2]}
        assert (await rt.list(user_id="nobody")).items == ()


async def test_events(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        async with rt.subscribe() as events, rt.subscribe(buffer=1) as slow:
            session = await rt.create("u", "max")
            touched = await rt.update_last_activity(session.id)
            ended = await rt.end(session.id)
            await rt.delete(session.id)
            received = [await events.receive() for _ in range(4)]
            assert [(e.kind, e.session) for e in received] == [
                ("created", session), ("updated", touched), ("ended", ended), ("deleted", ended)]
            assert (await slow.receive()).session == session
            assert slow.dropped == 3
            assert rt.metrics().events_dropped == 3


async def test_subscription_ends_when_the_runtime_closes() -> None:
    kinds: list[str] = []

    async def listen(rt, *, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
        async with rt.subscribe() as events:
            task_status.started()
            async for event in events:
                kinds.append(event.kind)

    async with trio.open_nursery() as nursery:
        async with open_runtime(CONFIG, store=MemoryStore()) as rt:
            await nursery.start(listen, rt)
            await rt.end((await rt.create("u", "max")).id)
    assert kinds == ["created", "ended"]


async def test_lifecycle_survives_a_restart(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "financeiro", title="t", metadata={"k": [1, {"x": "é"}]})
        await rt.append_message(session.id, "user", "olá")
        await rt.append_message(session.id, "assistant", "oi")
        await rt.add_note(session.id, "n1")
        last = await rt.update(session.id, state="awaiting_payment")
        ended = await rt.end((await rt.create("u", "max")).id)
        deadline = rt._sup.deadlines.deadline(session.id)
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        assert await rt.get(session.id) == last
        assert await rt.get(ended.id) == ended
        assert [(m.seq, m.role, m.content) for m in await rt.context(session.id)] == [
            (1, "user", "olá"), (2, "assistant", "oi")]
        assert rt._sup.deadlines.deadline(session.id) == pytest.approx(deadline, abs=1e-5)
        assert ended.id not in rt._sup.deadlines
        again = await rt.append_message(session.id, "user", "voltei")
        assert (again.version, again.message_count) == (last.version + 1, 3)


async def test_concurrent_calls_on_one_session_apply_one_at_a_time(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "geral")
        results: list[Session] = []

        async def talk(i: int) -> None:
            results.append(await rt.append_message(session.id, "user", f"m{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(talk, i)
        assert sorted(s.version for s in results) == list(range(2, 42))
        final = await rt.get(session.id)
        assert (final.message_count, final.version) == (40, 41)
        context = await rt.context(session.id)
        assert [m.seq for m in context] == list(range(1, 41))
        assert {m.content for m in context} == {f"m{i}" for i in range(40)}


async def test_calls_apply_in_arrival_order(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "geral")
        order = list(range(10))
        sequencer = trio.testing.Sequencer()
        versions: dict[int, int] = {}

        async def rename(i: int) -> None:
            async with sequencer(i):
                pass  # this task's call is the i-th to arrive
            versions[i] = (await rt.update(session.id, title=f"t{i}")).version

        async with trio.open_nursery() as nursery:
            for i in reversed(order):
                nursery.start_soon(rename, i)
        assert [versions[i] for i in order] == [i + 2 for i in order]
        assert (await rt.get(session.id)).title == "t9"


async def test_passivation_and_reactivation(store_factory: StoreFactory) -> None:
    config = RuntimeConfig(flush_interval=60.0, max_resident=3)
    async with open_runtime(config, store=store_factory()) as rt:
        sessions = [await rt.create(f"u{i}", "max") for i in range(10)]
        latest = {}
        for round_ in range(3):
            for session in sessions:
                latest[session.id] = await rt.append_message(session.id, "user", f"r{round_}")
                assert rt.metrics().resident <= 3
            if round_ == 1:
                await rt.flush()  # some state from the store, some from the buffer
        for session in sessions:
            assert await rt.get(session.id) == latest[session.id]
            assert [m.content for m in await rt.context(session.id)] == ["r0", "r1", "r2"]
        assert rt.metrics().passivations >= 27


async def test_exit_flushes_thousands_of_changes(store_factory: StoreFactory) -> None:
    store = store_factory()
    config = RuntimeConfig(flush_interval=3600.0, flush_batch=100_000, max_resident=100)
    async with open_runtime(config, store=store) as rt:
        sessions = [await rt.create(f"u{i % 50}", "geral") for i in range(2000)]
        final = {}
        for session in sessions[:1000]:
            final[session.id] = await rt.append_message(session.id, "user", "hi")
        for session in sessions[1000:]:
            final[session.id] = await rt.update_last_activity(session.id)
        assert rt.metrics().flush_batches == 0
        assert rt.metrics().pending_writes == 3000
    async with open_runtime(config, store=store_factory()) as rt:
        for session in sessions[::97]:
            assert await rt.get(session.id) == final[session.id]
        assert len((await rt.list(user_id="u7", limit=1000)).items) == 40


async def test_durable_returns_after_commit(store_factory: StoreFactory) -> None:
    store = store_factory()
    async with open_runtime(RuntimeConfig(flush_interval=3600.0), store=store) as rt:
        lazy = await rt.create("u", "max")
        assert await store.load(lazy.id, messages=0) is None  # written behind, not yet
        durable = await rt.create("u", "max", durable=True)
        assert (await store.load(durable.id, messages=0))[0] == durable  # type: ignore[index]
        touched = await rt.append_message(durable.id, "user", "x", durable=True)
        stored, messages = await store.load(durable.id, messages=5)  # type: ignore[misc]
        assert stored == touched and [m.content for m in messages] == ["x"]
        assert (await store.load(lazy.id, messages=0))[0] == lazy  # type: ignore[index]  # went along


async def test_flush_commits_everything_acknowledged(store_factory: StoreFactory) -> None:
    store = store_factory()
    async with open_runtime(RuntimeConfig(flush_interval=3600.0, flush_batch=7), store=store) as rt:
        sessions = [await rt.create("u", "max") for _ in range(30)]
        await rt.flush()
        for session in sessions:
            assert (await store.load(session.id, messages=0))[0] == session  # type: ignore[index]
        assert rt.metrics().flush_batches >= 5  # batches of at most 7
        assert rt.metrics().pending_writes == 0


async def test_metrics_count_operations(store_factory: StoreFactory) -> None:
    async with open_runtime(CONFIG, store=store_factory()) as rt:
        session = await rt.create("u", "max")
        for _ in range(5):
            await rt.update_last_activity(session.id)
        with pytest.raises(SessionNotFound):
            await rt.get(uuid.uuid4())
        stats = rt.metrics().operations
        assert stats["update_last_activity"].count == 5
        # A session that is not there is the caller's answer, not a failure of the runtime.
        assert (stats["get"].caller_errors, stats["get"].system_errors) == (1, 0)
        assert dict(stats["get"].errors) == {"SessionNotFound": 1}
        assert 0 < stats["update_last_activity"].p50 <= stats["update_last_activity"].p99
        assert stats["update_last_activity"].p99 <= stats["update_last_activity"].max
        assert stats["delete"].count == 0


async def test_body_exception_comes_out_as_raised() -> None:
    with pytest.raises(KeyError) as info:
        async with open_runtime(CONFIG, store=MemoryStore()) as rt:
            await rt.create("u", "max")
            raise KeyError("mine")
    assert info.value.args == ("mine",)


async def test_calls_after_exit_raise_runtime_closed() -> None:
    store = MemoryStore()
    async with open_runtime(CONFIG, store=store) as rt:
        session = await rt.create("u", "max")
    with pytest.raises(RuntimeClosed, match="open_runtime"):
        await rt.update_last_activity(session.id)
    assert (await store.load(session.id, messages=0))[0] == session  # type: ignore[index]


async def test_cancelled_caller_leaves_no_half_applied_command() -> None:
    store = GatedStore()
    config = RuntimeConfig(flush_interval=0.01, max_pending=2)
    async with open_runtime(config, store=store) as rt:
        a = await rt.create("u", "max")
        b = await rt.create("u", "max")  # the buffer is now full, its flush is stuck
        with trio.move_on_after(0.05) as scope:
            await rt.update(a.id, title="never")  # waits for room, then is cancelled
        assert scope.cancelled_caught
        store.gate.set()
        assert (await rt.get(a.id)).title is None
        assert (await rt.get(a.id)).version == 1
        assert (await rt.update(b.id, title="later")).version == 2
        assert rt.metrics().backpressure_waits >= 1


async def test_idle_resident_actors_run_no_task() -> None:
    def actor_tasks() -> int:
        count = 0
        pending = [trio.lowlevel.current_root_task()]
        while pending:
            task = pending.pop()
            count += task.name.startswith("trio_sessions.actor")
            pending.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
        return count

    async with open_runtime(CONFIG, store=MemoryStore()) as rt:
        sessions = [await rt.create(f"u{i}", "max") for i in range(20)]
        for session in sessions:
            await rt.append_message(session.id, "user", "hi")  # activates: a task loads it
        await trio.testing.wait_all_tasks_blocked()
        assert rt.metrics().resident == 20
        assert actor_tasks() == 0  # loaded and idle: plain objects
        assert [m.content for m in await rt.context(sessions[0].id)] == ["hi"]


async def test_callers_wait_for_mailbox_room_and_apply_in_arrival_order() -> None:
    store = GatedStore()
    config = RuntimeConfig(flush_interval=0.01, max_pending=2, mailbox_size=1)
    async with open_runtime(config, store=store) as rt:
        a = await rt.create("u", "max")
        await rt.get(a.id)  # resident
        await rt.create("u", "max")  # the buffer is now full, its flush is stuck
        versions: dict[int, int] = {}

        async def update(i: int) -> None:
            versions[i] = (await rt.update(a.id, title=f"t{i}")).version

        async with trio.open_nursery() as nursery:
            for i in range(5):  # one waits for buffer room, one in the mailbox, three for mailbox room
                nursery.start_soon(update, i)
                await trio.testing.wait_all_tasks_blocked()
            assert versions == {}
            store.gate.set()
        assert versions == {i: 2 + i for i in range(5)}
        assert (await rt.get(a.id)).title == "t4"


async def test_a_session_goes_to_json_and_back_unchanged() -> None:
    import json

    async with open_runtime(CONFIG, store=MemoryStore()) as rt:
        session = await rt.create("u", "max", chat_id="c1", title="t", metadata={"a": [1, {"b": None}]})
        session = await rt.add_note(session.id, "nota")
        session = await rt.end(session.id, reason="resolved")
    data = json.loads(json.dumps(session.to_dict()))
    assert data["created_at"] == session.created_at.isoformat() and data["notes"][0]["text"] == "nota"
    back = Session.from_dict(data)
    assert back == session and back.ended_at is not None and back.metadata == {"a": [1, {"b": None}]}
    with pytest.raises(TypeError):
        back.metadata["x"] = 1  # type: ignore[index]  # read-only again
    with pytest.raises(InvalidArgument):
        Session.from_dict({**data, "created_at": "2024-01-01T00:00:00"})  # no offset
    with pytest.raises(InvalidArgument):
        Session.from_dict({k: v for k, v in data.items() if k != "version"})
