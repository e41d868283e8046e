"""The properties every run of the runtime must have, checked after a workload.

Shared by test_properties.py (virtual time, MemoryStore and FaultyStore) and
test_properties_postgres.py (real time, PostgreSQL).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import trio

from trio_sessions import (
    Message,
    Session,
    SessionEvent,
    SessionNotFound,
    SessionRuntime,
    Store,
    StoreUnavailable,
)
from trio_sessions.testing import (
    Context,
    Get,
    History,
    Linearization,
    ModelState,
    assert_linearizable,
    check_arrival_order,
)

ALL_MESSAGES = 1_000_000


Stored = dict[UUID, tuple[Session, tuple[Message, ...]] | None]


async def observe_store(history: History, store: Store, sessions: list[UUID], max_messages: int,
                        since: tuple[int, float]) -> Stored:
    """Read every session back from the store and add what was read to the history.

    The store shows each session as it was at some instant after `since`
    (everything acknowledged before it is flushed; later changes, such as
    expiries, may or may not be).
    """
    stored: Stored = {}
    for session_id in dict.fromkeys(sessions):
        loaded = await store.load(session_id, messages=ALL_MESSAGES)
        stored[session_id] = loaded
        if loaded is None:
            history.observe(Get(session_id), session_id, SessionNotFound(session_id), since=since)
        else:
            history.observe(Get(session_id), session_id, loaded[0], since=since)
            history.observe(Context(session_id), session_id, loaded[1][-max_messages:], since=since)
    return stored  # noqa: ASYNC910  every store load in the loop checkpoints


async def check_runtime(rt: SessionRuntime, history: History, store: Store, sessions: list[UUID],
                        events: list[SessionEvent],
                        initial: dict[UUID, ModelState] | None = None) -> Linearization:
    """Flush, read the store back, and check every property against the model."""
    since = history.mark()
    while True:  # a store that fails reads may refuse some expiries: insist
        try:
            await rt.cleanup_old_sessions()
            break
        except StoreUnavailable:  # also while the lease is being renewed or rejoined: let time pass
            await trio.sleep(0.1)
    await rt.flush()
    stored = await observe_store(history, store, sessions, rt.config.max_messages, since)

    result = assert_linearizable(history, rt.config, initial=initial)

    # After flush() the store holds exactly the model's state: rows and every message.
    for session_id, loaded in stored.items():
        state = result.final_states.get(session_id)
        if state is None or not state.exists:
            assert loaded is None, f"store has {session_id}, which the model says does not exist"
            continue
        assert loaded is not None, f"store lost {session_id}"
        assert loaded[0] == state.session
        assert loaded[1] == state.messages, "store messages differ from the model's"
        assert [m.seq for m in loaded[1]] == list(range(1, len(loaded[1]) + 1))

    check_versions_only_grow(history)
    check_arrival_order(history)
    check_message_seqs(history)
    check_expired_never_returns(history)
    check_events(events)
    return result


def check_versions_only_grow(history: History) -> None:
    """A call invoked after another returned never sees an older version of the session."""
    for session_id, operations in history.sessions().items():
        if session_id is None:
            continue
        answered = sorted((op for op in operations if isinstance(op.outcome, Session)),
                          key=lambda op: op.returned or 0)
        newest_before: list[tuple[int, int]] = []  # (returned, version), in return order
        for op in sorted(answered, key=lambda op: op.invoked):
            seen = max((v for r, v in newest_before if r < op.invoked), default=0)
            assert op.outcome.version >= seen, f"{op.describe()} went back from version {seen}"
            newest_before.append((op.returned or 0, op.outcome.version))


def check_message_seqs(history: History) -> None:
    """Every context() answer is a run of consecutive seqs, ending at a message_count seen."""
    for operation in history.operations:
        if isinstance(operation.call, Context) and isinstance(operation.outcome, tuple):
            seqs = [m.seq for m in operation.outcome]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, seqs


def check_expired_never_returns(history: History) -> None:
    """Once a call has seen a session expired, no later call sees it active."""
    for operations in history.sessions().values():
        expired_at: int | None = None
        for op in sorted(operations, key=lambda op: op.invoked):
            outcome = op.outcome
            if not isinstance(outcome, Session):
                continue
            if expired_at is not None and op.invoked > expired_at:
                assert outcome.end_reason == "expired", f"{op.describe()}: revived after expiry"
            if outcome.end_reason == "expired" and op.returned is not None:
                expired_at = op.returned if expired_at is None else min(expired_at, op.returned)


def check_events(events: list[SessionEvent], *, alone: bool = True) -> None:
    """Per session, events carry strictly growing versions; after 'expired' only 'deleted'.

    `alone`: the runtime was the only one on its store, so each session's
    first event is its 'created'; with others, a session may have come from
    one of them (`check_shared_events`).
    """
    last: dict[UUID, SessionEvent] = {}
    for event in events:
        previous = last.get(event.session.id)
        if previous is not None:
            if event.kind == "deleted":
                # (With others, the versions between may have been published by another runtime.)
                assert event.session.version == previous.session.version or (
                    not alone and event.session.version > previous.session.version), (previous, event)
            else:
                assert event.session.version > previous.session.version, (previous, event)
                assert previous.kind != "expired", f"{event.kind} after expired"
        else:
            assert event.kind == "created" or not alone, event
        last[event.session.id] = event


def check_shared_events(streams: list[list[SessionEvent]]) -> None:
    """The events of runtimes sharing a store: each stream in order, and together one per version.

    A session's changes are published by whichever runtime owned it at the
    time, so each stream alone has growing versions, and all streams
    together hold each version of a session at most once (a 'deleted'
    repeats the version it deleted), from a 'created' at version 1, with
    nothing but a 'deleted' after an 'expired'.
    """
    by_session: dict[UUID, list[SessionEvent]] = {}
    for events in streams:
        check_events(events, alone=False)
        for event in events:
            by_session.setdefault(event.session.id, []).append(event)
    for session_id, events in by_session.items():
        events.sort(key=lambda event: (event.session.version, event.kind == "deleted"))
        assert events[0].kind == "created" and events[0].session.version == 1, (session_id, events[0])
        check_events(events)


async def collect_events(rt: SessionRuntime, events: list[SessionEvent], *,
                         task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Append every event of the runtime to `events` (started once subscribed)."""
    async with rt.subscribe(buffer=1_000_000) as stream:
        task_status.started()
        async for event in stream:
            events.append(event)


def resident_watch(rt: SessionRuntime) -> Any:
    """An after_call hook asserting the runtime never runs more than max_resident actors."""

    async def check(call: Any, result: Any) -> None:  # noqa: ASYNC910  a hook that only asserts
        assert rt.metrics().resident <= rt.config.max_resident

    return check
