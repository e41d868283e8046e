"""trio_sessions.testing: the model agrees with the runtime; the checker catches lies."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
import trio
import trio.testing

from trio_sessions import (
    InvalidArgument,
    MemoryStore,
    RuntimeConfig,
    SessionError,
    SessionInactive,
    SessionNotFound,
    SessionRuntime,
    VersionConflict,
)
from trio_sessions.testing import (
    AppendMessage,
    Context,
    Create,
    End,
    Get,
    History,
    NotLinearizable,
    SessionModel,
    Touch,
    Update,
    assert_linearizable,
    check_linearizable,
    run_on_virtual_time,
)

CONFIG = RuntimeConfig(max_messages=3, session_timeout=60.0, flush_interval=1.0, max_resident=2)


async def _outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except SessionError as exc:
        return exc  # noqa: ASYNC910  the awaited call checkpointed before it raised


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, SessionError) or isinstance(b, SessionError):
        return type(a) is type(b)
    return bool(a == b)


def test_model_answers_like_the_runtime_step_by_step() -> None:
    async def scenario(rt: SessionRuntime) -> None:
        model = SessionModel(CONFIG)
        steps: list[tuple[str, Any, Any]] = []

        async def both(label: str, real: Any, spec: Any) -> Any:
            got = await _outcome(real)
            try:
                expected = spec()
            except SessionError as exc:
                expected = exc
            steps.append((label, got, expected))
            assert _same(got, expected), f"{label}: runtime {got!r}, model {expected!r}"
            return got

        now = trio.current_time
        a = await rt.create("ana", "financeiro", title="boleto", metadata={"n": [1, 2]})
        model.create("ana", "financeiro", session_id=a.id, now=now(), title="boleto",
                     metadata={"n": [1, 2]})
        b = await rt.create("bia", "max", timeout=5.0)
        model.create("bia", "max", session_id=b.id, now=now(), timeout=5.0)
        for i in range(5):
            await both("append", rt.append_message(a.id, "user", f"m{i}"),
                       lambda i=i: model.append_message(a.id, "user", f"m{i}", now=now()))
            await trio.sleep(1.0)
        await both("context", rt.context(a.id), lambda: model.context(a.id, now=now()))
        await both("context 2", rt.context(a.id, limit=2), lambda: model.context(a.id, now=now(), limit=2))
        await both("stale update", rt.update(a.id, expected_version=1, title="x"),
                   lambda: model.update(a.id, now=now(), expected_version=1, title="x"))
        await both("update", rt.update(a.id, expected_version=6, state="paid", title=None),
                   lambda: model.update(a.id, now=now(), expected_version=6, state="paid", title=None))
        await both("note", rt.add_note(a.id, "ok"), lambda: model.add_note(a.id, "ok", now=now()))
        await both("owner", rt.get(a.id, user_id="bia"), lambda: model.get(a.id, now=now(), user_id="bia"))
        await both("expired touch", rt.update_last_activity(b.id),
                   lambda: model.update_last_activity(b.id, now=now()))
        await both("expired get", rt.get(b.id), lambda: model.get(b.id, now=now()))
        await both("end", rt.end(a.id, reason="resolved"),
                   lambda: model.end(a.id, now=now(), reason="resolved"))
        await both("end again", rt.end(a.id), lambda: model.end(a.id, now=now()))
        await both("inactive append", rt.append_message(a.id, "user", "late"),
                   lambda: model.append_message(a.id, "user", "late", now=now()))
        await both("bad role", rt.append_message(a.id, "robot", "x"),
                   lambda: model.append_message(a.id, "robot", "x", now=now()))
        await both("delete", rt.delete(a.id), lambda: model.delete(a.id, now=now()))
        await both("deleted", rt.context(a.id), lambda: model.context(a.id, now=now()))
        kinds = {type(got).__name__ for _, got, _ in steps}
        assert {"Session", "tuple", "VersionConflict", "SessionNotFound", "SessionInactive",
                "InvalidArgument"} <= kinds

    run_on_virtual_time(scenario, config=CONFIG)


async def _recorded_history(rt: SessionRuntime) -> History:
    history = History()
    recorder = history.wrap(rt)
    session = await recorder.create("u", "geral")

    async def chat(i: int) -> None:
        await recorder.append_message(session.id, "user", f"m{i}")
        await recorder.update_last_activity(session.id)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(chat, i)
    await recorder.context(session.id)
    with pytest.raises(VersionConflict):
        await recorder.update(session.id, expected_version=1, title="late")
    return history


def test_a_real_concurrent_history_is_linearizable() -> None:
    history = run_on_virtual_time(_recorded_history, config=CONFIG)
    result = assert_linearizable(history, CONFIG)
    (state,) = result.final_states.values()
    assert state.session is not None and state.session.version == 11
    assert sorted(m.content for m in state.messages) == [f"m{i}" for i in range(5)]
    assert [m.seq for m in state.messages] == [1, 2, 3, 4, 5]


def test_a_doctored_answer_is_caught_with_a_readable_counterexample() -> None:
    history = run_on_virtual_time(_recorded_history, config=CONFIG)
    touch = next(op for op in history.operations if isinstance(op.call, Touch))
    touch.outcome = dataclasses.replace(touch.outcome, version=touch.outcome.version + 5)
    result = check_linearizable(history, CONFIG)
    assert not result.ok
    assert "no order of its" in result.counterexample
    assert "update_last_activity" in result.counterexample
    assert "Longest explained prefix" in result.counterexample
    with pytest.raises(NotLinearizable):
        assert_linearizable(history, CONFIG)


def test_a_lost_message_is_caught() -> None:
    history = run_on_virtual_time(_recorded_history, config=CONFIG)
    context = next(op for op in history.operations if isinstance(op.call, Context))
    context.outcome = context.outcome[1:]  # as if the oldest one had been dropped
    assert not check_linearizable(history, CONFIG).ok


def test_a_call_that_should_have_been_refused_is_caught() -> None:
    history = run_on_virtual_time(_recorded_history, config=CONFIG)
    conflict = next(op for op in history.operations if isinstance(op.call, Update))
    conflict.outcome = SessionInactive(uuid.uuid4(), "expired")
    assert not check_linearizable(history, CONFIG).ok


def test_cancelled_calls_may_or_may_not_have_happened() -> None:
    async def scenario(rt: SessionRuntime) -> History:
        history = History()
        recorder = history.wrap(rt)
        session = await recorder.create("u", "geral")
        with trio.CancelScope() as scope:
            scope.cancel()
            await recorder.update_last_activity(session.id)  # cancelled: no answer
        await recorder.get(session.id)
        return history

    history = run_on_virtual_time(scenario, config=CONFIG)
    assert not history.operations[1].answered
    assert check_linearizable(history, CONFIG).ok


def test_expiry_inside_a_call_window_is_allowed_either_way() -> None:
    async def scenario(rt: SessionRuntime) -> History:
        history = History()
        recorder = history.wrap(rt)
        session = await recorder.create("u", "geral", timeout=5.0)
        await trio.sleep(4.0)
        await recorder.get(session.id)
        await trio.sleep(2.0)
        expired = await recorder.get(session.id)
        assert expired.end_reason == "expired"
        return history

    history = run_on_virtual_time(scenario, config=CONFIG)
    get = history.operations[2]
    get.invoked_at -= 10.0  # a window that spans the deadline: both answers are fine
    assert check_linearizable(history, CONFIG).ok
    get.invoked_at += 10.0
    history.operations[1].outcome = history.operations[2].outcome  # expired a second early
    assert not check_linearizable(history, CONFIG).ok


def test_bad_input_must_be_refused_by_the_model_too() -> None:
    async def scenario(rt: SessionRuntime) -> History:
        history = History()
        recorder = history.wrap(rt)
        with pytest.raises(InvalidArgument):
            await recorder.create("", "geral")
        with pytest.raises(InvalidArgument):
            await recorder.get("nope")
        return history

    history = run_on_virtual_time(scenario, config=CONFIG)
    assert check_linearizable(history, CONFIG).ok
    history.operations[0].outcome = SessionNotFound(uuid.uuid4())
    assert not check_linearizable(history, CONFIG).ok


def test_thousands_of_operations_check_quickly() -> None:
    async def scenario(rt: SessionRuntime) -> History:
        history = History()
        recorder = history.wrap(rt)
        sessions = [await recorder.create(f"u{i}", "geral") for i in range(100)]

        async def chat(session: Any) -> None:
            for i in range(10):
                await recorder.append_message(session.id, "user", f"m{i}")
                await recorder.get(session.id)

        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(chat, session)
        return history

    history = run_on_virtual_time(scenario, config=CONFIG)
    assert len(history.operations) == 2100
    result = assert_linearizable(history, CONFIG)
    assert len(result.final_states) == 100


def test_model_and_calls_are_plain_values() -> None:
    call = Update(uuid.UUID(int=1), (("title", "x"),), expected_version=2)
    assert call == Update(uuid.UUID(int=1), (("title", "x"),), expected_version=2)
    assert {AppendMessage, Create, End, Get} <= {type(c) for c in (
        AppendMessage(uuid.UUID(int=1), "user", "x"), Create("u", "a"), End(uuid.UUID(int=1)),
        Get(uuid.UUID(int=1)))}
    _ = MemoryStore  # the default store of run_on_virtual_time
