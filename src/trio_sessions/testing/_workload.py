"""Random concurrent workloads: Hypothesis strategies for calls, and a driver.

`session_calls(known, config)` draws one call of the session API, on a
session from `known` (or a fresh create, or an id nobody created), with valid
arguments most of the time and hostile ones sometimes. `run_workload` lets
several tasks draw and make calls concurrently through a recording runtime;
with `st.random_module()` in the test's `@given`, Hypothesis also chooses
Trio's scheduling, so a failing interleaving replays and shrinks.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

import trio
from hypothesis import strategies as st

from .. import _model as limits
from .._config import RuntimeConfig
from .._errors import SessionError
from . import _strategies as values
from ._calls import AddNote, AppendMessage, Call, Context, Create, Delete, End, Get, Touch, Update
from ._history import History

if TYPE_CHECKING:
    from hypothesis.strategies import DataObject, SearchStrategy

    from .._runtime import SessionRuntime

STATES = ("active", "awaiting_payment", "paid", "resolved")
_NOBODY = uuid.UUID("00000000-0000-4000-8000-000000000000")  # a well-formed id of no session


def _maybe_hostile(valid: SearchStrategy[Any], hostile: SearchStrategy[Any],
                   hostility: int) -> SearchStrategy[Any]:
    """`valid`, or about one time in `hostility` something hostile (never when 0)."""
    if not hostility:
        return valid
    # Hypothesis favours the ends of an integer range (0 and 99 come up far more
    # often than 1 in 100), so the hostile residue is one the ends do not hit.
    return st.integers(0, 100 * hostility - 1).flatmap(
        lambda n: hostile if n % hostility == 1 else valid)


def session_calls(known: Sequence[UUID], config: RuntimeConfig, *, hostility: int = 10,
                  timeouts: SearchStrategy[float] | None = None,
                  durable: bool = True) -> SearchStrategy[Call]:
    """One call of the session API.

    The strategy reads `known` when it draws, so build it once and keep
    appending to the list; its shape does not depend on the list's length,
    which keeps Hypothesis's replay consistent whatever the interleaving.

    Args:
        known: ids of sessions created so far; calls mostly target these
            (an id nobody created while the list is empty).
        config: the runtime's configuration (limits of valid arguments).
        hostility: one argument in about this many is hostile (0: none).
        timeouts: session timeouts for creates; a few minutes when None.
        durable: whether calls may ask for `durable=True`.

    Shrinks towards the first call kinds listed (create, then reads) and
    towards valid, short arguments.
    """
    def text(max_chars: int) -> SearchStrategy[Any]:
        return _maybe_hostile(values.valid_text(max_chars), values.hostile_text(), hostility)

    timeouts = st.floats(60.0, 600.0) if timeouts is None else timeouts
    flags = st.booleans() if durable else st.just(False)
    creates = st.builds(
        Create,
        user_id=_maybe_hostile(values.user_ids(), values.hostile_text(), hostility),
        agent=_maybe_hostile(values.agents(), values.hostile_text(), hostility),
        chat_id=values.chat_ids(),
        title=st.none() | text(limits.MAX_TITLE_CHARS),
        state=st.sampled_from(STATES),
        metadata=st.none() | _maybe_hostile(values.metadata(valid_only=True), values.metadata(), hostility),
        timeout=_maybe_hostile(timeouts, values.timeouts(), hostility),
        durable=flags,
    )
    ids: SearchStrategy[Any] = st.integers(0, 2**16).map(
        lambda i: known[i % len(known)] if known else _NOBODY)
    if hostility:
        strange = st.sampled_from([uuid.UUID(int=12345), "not-a-uuid", ""]) | st.uuids(version=4)
        ids = _maybe_hostile(ids, strange, hostility)
    users = st.sampled_from(["u0", "u1"]) | values.user_ids()
    changes = st.lists(
        st.sampled_from(["title", "state", "agent", "chat_id", "metadata"]), max_size=3, unique=True,
    ).flatmap(lambda names: st.tuples(*[_change(name, hostility) for name in names]))
    appends = st.builds(
        AppendMessage, ids,
        _maybe_hostile(st.sampled_from(["user", "assistant"]), values.roles(), hostility),
        _maybe_hostile(values.message_contents(config.max_content_bytes), values.hostile_text(),
                       hostility), flags)
    touches = st.builds(Touch, ids, flags)
    updates = st.builds(Update, ids, changes, st.none() | st.integers(1, 12), flags)
    # The usual calls of a conversation stand more than once in this table, so
    # most calls are appends and touches, as in real traffic. An index into it
    # (not st.one_of, whose branch choice is far from even) picks one.
    table: list[SearchStrategy[Call]] = [
        creates, appends, touches, st.builds(Get, ids, st.none() | users), appends, updates,
        st.builds(Context, ids, st.none() | st.integers(1, config.max_messages)), appends,
        creates, touches, appends, st.builds(AddNote, ids, text(limits.MAX_NOTE_CHARS), flags),
        appends, updates, touches,
        st.builds(End, ids, st.sampled_from(["ended", "resolved", "abandoned"]), flags),
        st.builds(Delete, ids),
    ]
    return st.integers(0, 100 * len(table) - 1).flatmap(lambda n: table[n % len(table)])


def _change(name: str, hostility: int) -> SearchStrategy[tuple[str, Any]]:
    valid: SearchStrategy[Any]
    if name == "title":
        valid = st.none() | values.valid_text(limits.MAX_TITLE_CHARS)
    elif name == "state":
        valid = st.sampled_from(STATES)
    elif name == "agent":
        valid = values.agents()
    elif name == "chat_id":
        valid = values.chat_ids()
    else:
        valid = values.metadata(valid_only=True)
    hostile = values.metadata() if name == "metadata" else values.hostile_text()
    return st.tuples(st.just(name), _maybe_hostile(valid, hostile, hostility))


async def run_workload(runtime: SessionRuntime, data: DataObject, history: History, *,
                       tasks: int = 4, steps: int = 15, hostility: int = 10,
                       timeouts: SearchStrategy[float] | None = None,
                       pauses: SearchStrategy[float] | None = None,
                       durable: bool = True, sessions: Sequence[UUID] = (),
                       after_call: Callable[[Call, Any], Awaitable[None]] | None = None) -> list[UUID]:
    """Let `tasks` tasks each draw and make `steps` calls, concurrently, all recorded.

    Between calls a task may pause (`pauses`, Trio seconds; none by default),
    which on virtual time lets sessions expire mid-workload. Errors the
    runtime raises on purpose are part of the history, not failures.

    Args:
        sessions: ids of existing sessions the calls may target too.
        after_call: awaited with each call and its result (or the error it
            raised), for checks that must run right after a call returns.

    Returns:
        The ids of every session the calls targeted: `sessions` and those created.
    """
    known: list[UUID] = list(sessions)
    recorder = history.wrap(runtime)
    pauses = st.just(0.0) if pauses is None else pauses

    calls = session_calls(known, runtime.config, hostility=hostility, timeouts=timeouts,
                          durable=durable)

    async def worker() -> None:
        for _ in range(steps):
            call = data.draw(calls)
            try:
                result = await recorder.call(call)
            except SessionError as exc:
                result = exc
            else:
                if isinstance(call, Create):
                    known.append(result.id)
            if after_call is not None:
                await after_call(call, result)
            pause = data.draw(pauses)
            if pause:
                await trio.sleep(pause)
            else:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return known
