"""An independent, deliberately naive linearizability checker, to keep `check_linearizable` honest.

It shares only the sequential model (`apply`) with the kit's checker, the
specification both are judged against. Everything else is written anew and
as plainly as possible: every order of the history's calls that respects
real time (a call that returned before another was invoked comes first),
each call tried at every instant the history mentions (window ends,
timestamps of every answer, the session's deadline, the previous call's
instant), instants never decreasing along the order, and no memoisation.
Exponential: for histories of a handful of calls only.

`small_histories` records such histories from real runs on virtual time
(cancelled calls, durable waits on a slow store, expiry) and `corrupt`
changes one answer or window, so that both acceptances and rejections get
compared.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import trio
import trio.testing

from trio_sessions import (
    MemoryStore,
    Message,
    Overloaded,
    RuntimeClosed,
    RuntimeConfig,
    Session,
    SessionError,
    SessionInactive,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
    open_runtime,
)
from trio_sessions.testing import (
    AddNote,
    AppendMessage,
    Call,
    Context,
    Delete,
    End,
    FaultyStore,
    Get,
    History,
    ModelState,
    Touch,
    Update,
)
from trio_sessions.testing._reference import apply

SLACK: Final = 1e-6
ABSENT: Final = ModelState()


def _same(model: Any, recorded: Any) -> bool:
    if isinstance(model, SessionError) or isinstance(recorded, SessionError):
        if type(model) is not type(recorded):
            return False
        if isinstance(model, VersionConflict):
            return (model.expected, model.actual) == (recorded.expected, recorded.actual)
        if isinstance(model, SessionInactive):
            return model.end_reason == recorded.end_reason
        return True
    return bool(model == recorded)


def _stamps(value: Any) -> list[datetime]:
    if isinstance(value, Session):
        found = [value.created_at, value.updated_at, value.last_activity, value.expires_at,
                 *(note.created_at for note in value.notes)]
        if value.ended_at is not None:
            found.append(value.ended_at)
        return found
    if isinstance(value, tuple):
        return [m.created_at for m in value if isinstance(m, Message)]
    return []


def _deadline(state: ModelState, history: History) -> float | None:
    session = state.session
    if session is None or state.deleted or not session.is_active:
        return None
    return history.clock.to_trio(session.expires_at)


def brute_force_linearizable(history: History, config: RuntimeConfig) -> bool:
    """Whether some real-time order of every call, at non-decreasing instants, explains each answer."""
    operations = history.operations
    if not operations:
        return True
    clock = history.clock
    times: set[float] = set()
    for op in operations:
        times.add(op.invoked_at)
        if op.returned_at is not None:
            times.add(op.returned_at)
        times.update(clock.to_trio(stamp) for stamp in _stamps(op.outcome))

    def search(remaining: tuple[int, ...], states: dict[UUID | None, ModelState], previous: float) -> bool:
        if not remaining:
            return True
        for i in remaining:
            op = operations[i]
            if any(operations[j].returned is not None and operations[j].returned < op.invoked
                   for j in remaining if j != i):
                continue  # another remaining call returned before this one began
            rest = tuple(j for j in remaining if j != i)
            refused = op.answered and isinstance(op.outcome, (StoreUnavailable, Overloaded, RuntimeClosed))
            if (refused or not op.answered) and search(rest, states, previous):
                return True  # the call never took effect
            if refused:
                continue
            state = states.get(op.session_id, ABSENT) if op.session_id is not None else ABSENT
            high = math.inf if op.returned_at is None else op.returned_at
            candidates = set(times) | {previous}
            due = _deadline(state, history)
            if due is not None:
                candidates.add(due)
            for at in sorted(candidates):
                if not (op.invoked_at - SLACK <= at <= high + SLACK and at >= previous - SLACK):
                    continue
                try:
                    new_state, result = apply(state, op.call, at, config, clock,
                                              new_id=op.session_id or UUID(int=0))
                except SessionError as exc:
                    new_state, result = state, exc
                if op.answered and not _same(result, op.outcome):
                    continue
                after = dict(states)
                if op.session_id is not None:
                    after[op.session_id] = new_state
                if search(rest, after, max(previous, at)):
                    return True
        return False

    return search(tuple(range(len(operations))), {}, -math.inf)


# ------------------------------------------------------ small real histories


CONFIG: Final = RuntimeConfig(max_resident=2, max_messages=2, flush_interval=0.3, flush_batch=2,
                              passivate_after=1.0, retry_initial_delay=0.05, retry_max_delay=0.2)

#: The call kinds a step may make on the history's one session.
KINDS: Final = ("touch", "append", "get", "update", "context", "end", "note", "get_other",
                "update_stale", "delete")


@dataclass(frozen=True)
class Step:
    """One call of a small program: which kind, durable or not, cancelled after how long."""

    kind: int
    durable: bool = False
    #: Trio seconds after which the call is cancelled (None: never).
    cancel_after: float | None = None
    #: Trio seconds the task sleeps before the call.
    pause: float = 0.0


@dataclass(frozen=True)
class Program:
    """A session (with this timeout) and a few tasks making a few calls each, on a slow store."""

    timeout: float
    tasks: tuple[tuple[Step, ...], ...]
    seed: int = 0


def _call(step: Step, session_id: UUID, n: int) -> Call:
    kind = KINDS[step.kind % len(KINDS)]
    durable = step.durable
    match kind:
        case "touch":
            return Touch(session_id, durable)
        case "append":
            return AppendMessage(session_id, "user", f"m{n}", durable)
        case "get":
            return Get(session_id)
        case "get_other":
            return Get(session_id, "somebody else")
        case "update":
            return Update(session_id, (("state", f"s{n}"),), None, durable)
        case "update_stale":
            return Update(session_id, (("title", f"t{n}"),), 2, durable)
        case "context":
            return Context(session_id)
        case "end":
            return End(session_id, "resolved" if n % 2 else "ended", durable)
        case "note":
            return AddNote(session_id, f"n{n}", durable)
        case _:
            return Delete(session_id)


def record(program: Program) -> History:
    """Run the program on virtual time and return its history (create included)."""
    store = FaultyStore(MemoryStore(), seed=program.seed, latency=(0.0, 0.4))

    async def main() -> History:
        history = History()
        async with open_runtime(CONFIG, store=store) as rt:
            recorder = history.wrap(rt)
            session = await recorder.create("ana", "geral", timeout=program.timeout)
            counter = iter(range(1000))

            async def task(steps: tuple[Step, ...]) -> None:  # noqa: ASYNC910  steps is never empty
                for step in steps:
                    await trio.sleep(step.pause)
                    call = _call(step, session.id, next(counter))
                    cancel_after = math.inf if step.cancel_after is None else step.cancel_after
                    with trio.move_on_after(cancel_after):  # noqa: ASYNC912  every call checkpoints
                        try:
                            await recorder.call(call)
                        except SessionError:
                            pass

            async with trio.open_nursery() as nursery:
                for steps in program.tasks:
                    nursery.start_soon(task, steps)
        return history

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# ---------------------------------------------------------------- corruption

#: Ways `corrupt` changes one operation.
CORRUPTIONS: Final = ("swap", "version", "reason", "error", "drop_message", "later_invoked",
                      "shift_stamp", "inactive")


def corrupt(history: History, which: int, how: int) -> History | None:
    """A copy of the history with one answer or window changed; None if this one cannot be."""
    copy = History()
    copy._clock = history._clock  # the same wall-clock mapping
    copy.operations = [dataclasses.replace(op) for op in history.operations]
    answered = [op for op in copy.operations if op.answered]
    if not answered:
        return None
    op = answered[which % len(answered)]
    kind = CORRUPTIONS[how % len(CORRUPTIONS)]
    outcome = op.outcome
    if kind == "swap":
        others = [o for o in answered if o is not op and o.outcome != outcome]
        if not others:
            return None
        op.outcome = others[which % len(others)].outcome
    elif kind == "version" and isinstance(outcome, Session):
        op.outcome = dataclasses.replace(outcome, version=outcome.version + 1)
    elif kind == "reason" and isinstance(outcome, SessionInactive):
        other = "resolved" if outcome.end_reason != "resolved" else "expired"
        op.outcome = SessionInactive(outcome.session_id, other)
    elif kind == "reason" and isinstance(outcome, Session) and not outcome.is_active:
        other = "resolved" if outcome.end_reason != "resolved" else "expired"
        op.outcome = dataclasses.replace(outcome, end_reason=other)
    elif kind == "error" and op.session_id is not None:
        op.outcome = SessionNotFound(op.session_id) if not isinstance(outcome, SessionNotFound) \
            else SessionInactive(op.session_id, "expired")
    elif kind == "drop_message" and isinstance(outcome, tuple) and outcome:
        op.outcome = outcome[1:]
    elif kind == "later_invoked" and op.returned_at is not None and op.returned_at > op.invoked_at:
        op.invoked_at = op.returned_at  # its window shrinks to its end
    elif kind == "shift_stamp" and isinstance(outcome, Session):
        shifted = outcome.last_activity.replace(microsecond=(outcome.last_activity.microsecond + 1) % 10**6)
        op.outcome = dataclasses.replace(outcome, last_activity=shifted)
    elif kind == "inactive" and isinstance(outcome, Session) and outcome.is_active:
        op.outcome = SessionInactive(outcome.id, "expired")
    else:
        return None
    return copy


def describe(history: History) -> str:
    return "\n".join(op.describe() for op in history.operations)
