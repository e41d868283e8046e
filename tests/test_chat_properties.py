"""Properties of a chat's session: one runtime or two on one store, many tasks, on virtual time.

Hypothesis draws each task's program (find-or-open, turns, ends, creates and
moves onto a chat, passivations, flushes, pauses long enough for sessions
to expire) and, through `st.random_module()`, Trio's scheduling. Checked:

- one task alone gets exactly the answers of `SessionModel` (the model answer);
- every `session_for_chat` answer is active, has the chat, and had not
  expired when the call began;
- at no instant do two sessions hold one chat: from every version of every
  session (the events of each runtime, in its own clock), the spans during
  which a session held a chat never overlap, and each call's answer held
  it at some instant of the call;
- turns never interleave: a session's messages are (question, answer) pairs
  of one turn, but for a last question whose session ended under it;
- every acknowledged message is stored, and the store refused nothing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from trio_sessions import (
    ChatSessionExists,
    MemoryStore,
    RuntimeConfig,
    Session,
    SessionEvent,
    SessionInactive,
    SessionRuntime,
    open_runtime,
)
from trio_sessions.testing import SessionModel
from trio_sessions.testing._workload import passivate

CONFIG = RuntimeConfig(max_resident=2, max_messages=50, mailbox_size=2, flush_interval=0.5, flush_batch=3,
                       passivate_after=2.0, retry_initial_delay=0.05, retry_max_delay=0.5,
                       lease_duration=10.0, lease_renew_interval=2.0, handoff_poll_interval=0.5)
#: Two users, two agents, two chats: keys that share a user, an agent or a chat, and not all three.
KEYS = [("u1", "financeiro", "chat-1"), ("u1", "max", "chat-1"), ("u1", "financeiro", "chat-2"),
        ("u2", "financeiro", "chat-1")]
EPSILON = 2e-6  # Trio time to wall time (microseconds) and back


#: A pause until the deadline of the session the task last got for the step's chat: the call lands on it.
AT_DEADLINE = -1.0


@dataclass(frozen=True)
class Step:
    pause: float
    runtime: int
    kind: str  # open, turn, end, create, move, passivate, flush
    key: int
    other: int = 0
    timeout: float = 600.0


steps = st.builds(
    Step,
    pause=st.sampled_from([0.0, 0.0, 0.0, 0.3, 1.5, 4.0, AT_DEADLINE]),
    runtime=st.integers(0, 1),
    kind=st.sampled_from(["open", "turn", "open", "end", "turn", "create", "move", "passivate", "flush"]),
    key=st.integers(0, len(KEYS) - 1),
    other=st.integers(0, len(KEYS) - 1),
    timeout=st.sampled_from([600.0, 600.0, 3.0, 1.0]),
)


@dataclass
class Observed:
    """What the tasks saw: each find-or-open with its call's span, and the messages acknowledged."""

    opens: list[tuple[int, float, float, Session]] = field(default_factory=list)
    acknowledged: dict[UUID, list[str]] = field(default_factory=dict)
    events: list[tuple[int, SessionEvent]] = field(default_factory=list)


async def run_program(rts: list[SessionRuntime], plan: list[Step], task: int, seen: Observed,  # noqa: ASYNC910  an empty plan: the nursery checkpoints
                      model: SessionModel | None = None) -> None:
    latest: dict[int, Session] = {}
    for index, step in enumerate(plan):
        last = latest.get(step.key)
        due = math.inf if last is None else rts[0].deadline(last)
        if step.pause == AT_DEADLINE and due < trio.current_time() + 60:
            await trio.sleep_until(due)
        elif step.pause > 0:
            await trio.sleep(step.pause)
        else:
            await trio.lowlevel.checkpoint()
        rt = rts[step.runtime % len(rts)]
        key = KEYS[step.key]
        if step.kind == "flush":
            await rt.flush()
            continue
        if step.kind == "passivate":
            session_id = rt._sup.chats._index.get(key)
            if session_id is not None:
                passivate(rt, session_id)
            continue
        if step.kind == "create":
            now = trio.current_time()
            try:
                created: Session | ChatSessionExists = await rt.create(*key[:2], chat_id=key[2],
                                                                       timeout=step.timeout)
            except ChatSessionExists as exc:
                created = exc
            if model is not None:
                expected = _outcome(model.create, *key[:2], chat_id=key[2], timeout=step.timeout,
                                    session_id=getattr(created, "id", created_id(index, task)), now=now)
                _same(expected, created)
            continue
        started = trio.current_time()
        session = await rt.session_for_chat(*key, timeout=step.timeout)
        seen.opens.append((step.key, started, trio.current_time(), session))
        latest[step.key] = session
        if model is not None:
            assert model.session_for_chat(*key, timeout=step.timeout, session_id=session.id,
                                          now=trio.current_time()) == session
        try:
            if step.kind == "end":
                ended = await rt.end(session.id, reason="resolved")
                if model is not None:
                    assert model.end(session.id, reason="resolved", now=trio.current_time()) == ended
            elif step.kind == "move":
                await move(rt, session, KEYS[step.other], model)
            elif step.kind == "turn":
                tag = f"{task}.{index}"
                async with rt.turn(session.id):
                    for role, text in (("user", f"q {tag}"), ("assistant", f"a {tag}")):
                        appended = latest[step.key] = await rt.append_message(session.id, role, text)
                        seen.acknowledged.setdefault(session.id, []).append(text)
                        if model is not None:
                            assert model.append_message(session.id, role, text,
                                                        now=trio.current_time()) == appended
                        if role == "user":
                            await trio.sleep(0.1)  # the model thinks
        except SessionInactive:
            assert model is None  # one task alone cannot race its own session's expiry here


async def move(rt: SessionRuntime, session: Session, target: tuple[str, str, str],  # noqa: ASYNC910  update checkpoints, raising or not
               model: SessionModel | None) -> None:
    """`update` of the session's agent and chat to `target`'s (same user), checked against the model."""
    if target[0] != session.user_id:  # a session's user never changes
        await trio.lowlevel.checkpoint()
        return
    now = trio.current_time()
    try:
        moved: Session | ChatSessionExists = await rt.update(session.id, agent=target[1], chat_id=target[2])
    except ChatSessionExists as exc:
        moved = exc
    if model is not None:
        _same(_outcome(model.update, session.id, agent=target[1], chat_id=target[2], now=now), moved)


def _outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except ChatSessionExists as exc:
        return exc


def _same(expected: Any, actual: Any) -> None:
    if isinstance(expected, ChatSessionExists) or isinstance(actual, ChatSessionExists):
        assert type(expected) is type(actual), (expected, actual)
        assert expected.session_id == actual.session_id
    else:
        assert expected == actual


def created_id(index: int, task: int) -> UUID:
    return UUID(int=(task << 16 | index) + 1, version=4)


async def _collect(rt: SessionRuntime, index: int, seen: Observed, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with rt.subscribe(buffer=1_000_000) as events:
        task_status.started()
        async for event in events:
            seen.events.append((index, event))


Spans = dict[tuple[str, str, str], list[tuple[float, float, UUID]]]


def held_spans(rts: list[SessionRuntime], seen: Observed) -> Spans:
    """For each chat, the Trio-time spans during which each session held it, from every version seen."""
    versions: dict[UUID, dict[int, tuple[int, Session]]] = {}
    for index, event in seen.events:
        versions.setdefault(event.session.id, {})[event.session.version] = (index, event.session)
    spans: Spans = {}
    for session_id, by_version in versions.items():
        ordered = [by_version[v] for v in sorted(by_version)]
        for position, (_, session) in enumerate(ordered):
            clock = rts[0]._sup.clock  # one calendar per trio.run (see _clock)
            if not session.is_active or session.chat_id is None:
                continue
            key = (session.user_id, session.agent, session.chat_id)
            start = clock.to_trio(session.created_at if session.version == 1 else session.updated_at)
            end = clock.to_trio(session.expires_at)
            if position + 1 < len(ordered):
                later = ordered[position + 1][1]
                changed = later.ended_at if not later.is_active else later.updated_at
                assert changed is not None
                end = min(end, clock.to_trio(changed))
            spans.setdefault(key, []).append((start, end, session_id))
    return spans


def check_spans(rts: list[SessionRuntime], seen: Observed) -> None:
    spans = held_spans(rts, seen)
    for key, held in spans.items():
        # Versions of one session that keep the chat are one span, joined.
        merged: list[tuple[float, float, UUID]] = []
        for start, end, session_id in sorted(held):
            if merged and merged[-1][2] == session_id and start <= merged[-1][1] + EPSILON:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end), session_id)
            else:
                merged.append((start, end, session_id))
        for (_, end, first), (start, _, second) in itertools.pairwise(merged):
            assert start >= end - EPSILON, f"{first} and {second} both held {key} from {start} to {end}"
    for key_index, started, ended, session in seen.opens:
        key = KEYS[key_index]
        assert session.is_active and (session.user_id, session.agent, session.chat_id) == key
        assert rts[0].deadline(session) > started - EPSILON, "an expired session was revived"
        assert any(held_id == session.id and start <= ended + EPSILON and end >= started - EPSILON
                   for start, end, held_id in spans.get(key, [])), (
            f"{session.id} answered for {key} but did not hold it during the call")


async def check_store(store: MemoryStore, seen: Observed) -> None:  # noqa: ASYNC910  the loads checkpoint
    for session_id, sent in seen.acknowledged.items():
        stored = await store.load(session_id, messages=1000)
        assert stored is not None
        contents = [m.content for m in stored[1]]
        assert contents == sent or set(sent) <= set(contents), (session_id, sent, contents)
        # Turns kept together: (question, answer) of one tag, one after the other.
        for i in range(0, len(contents) - 1, 2):
            question, answer = contents[i], contents[i + 1]
            assert question.startswith("q ") and answer == "a " + question[2:], contents
        if len(contents) % 2:
            assert contents[-1].startswith("q ") and not stored[0].is_active, contents
    active: dict[tuple[str, str, str], UUID] = {}
    for session in list(store._sessions.values()):
        if session.is_active and session.chat_id is not None:
            key = (session.user_id, session.agent, session.chat_id)
            assert key not in active, f"two active sessions in the store for {key}"
            active[key] = session.id


def scenario(data: DataObject, runtimes: int, tasks: int, length: int, sequential: bool) -> None:
    plans = data.draw(st.lists(st.lists(steps, max_size=length), min_size=tasks, max_size=tasks))
    store = MemoryStore()
    seen = Observed()

    async def main() -> None:
        model = SessionModel(CONFIG) if sequential else None
        async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=store) as b:
            rts = [a, b][:runtimes]
            if model is not None:
                model.clock = a._sup.clock
            async with trio.open_nursery() as nursery:
                for index, rt in enumerate(rts):
                    await nursery.start(_collect, rt, index, seen)
                async with trio.open_nursery() as workers:
                    for task, plan in enumerate(plans):
                        workers.start_soon(run_program, rts, plan, task, seen, model)
                for rt in rts:
                    await rt.flush()
                await trio.lowlevel.checkpoint()
                check_spans(rts, seen)
                nursery.cancel_scope.cancel()
            for rt in (a, b):
                assert rt.metrics().rejected_rows == 0
        await check_store(store, seen)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


#: Each example takes milliseconds: at least 300 of them, even in the ci profile.
MORE: settings = settings(max_examples=max(300, settings().max_examples))


@MORE
@given(data=st.data())
def test_one_task_gets_the_model_answers(data: DataObject) -> None:
    scenario(data, runtimes=1, tasks=1, length=12, sequential=True)


@MORE
@given(data=st.data(), scheduling=st.random_module(), runtimes=st.integers(1, 2))
def test_many_tasks_never_see_two_sessions_for_one_chat(data: DataObject, scheduling: Any,
                                                        runtimes: int) -> None:
    scenario(data, runtimes=runtimes, tasks=4, length=8, sequential=False)

