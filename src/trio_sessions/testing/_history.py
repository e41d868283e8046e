"""Histories of concurrent calls, and a linearizability checker against the model.

`History` records each call's invocation and its return (or error) with two
clocks: a logical sequence number, which orders events exactly as they
happened (Trio runs one task at a time), and Trio time, which the model needs
for expiry and timestamps. `History.wrap(rt)` gives an object with the
runtime's per-session methods that records every call made through it.

`check_linearizable` decides whether some order of the calls, each taking
effect at one instant between its invocation and its return, explains every
result by the sequential model. Sessions are independent, so the history is
split by session id and each part is searched on its own, depth first, with
the Wing-Gong / Lowe memoisation of (calls already placed, model state): a
state reached twice with the same calls placed is not explored twice.

A call's instant is not free: a result with a timestamp (`last_activity`,
`updated_at`, `ended_at`) says when it took effect, and that must lie inside
the call's window. Results that carry no time (reads, errors) depend on time
only through the session's deadline, so trying the window's ends and the
deadline covers every answer the model can give. A cancelled call (no
answer) may have taken effect at any instant after its invocation; what it
did shows only in later answers, so every instant the session's answers show
is tried too. Along an order, instants never decrease: a call placed after
another takes effect no earlier than it (the search carries the last
instant, and the memo key includes it).

Errors are compared by type and what they say: `VersionConflict`'s versions,
`SessionInactive`'s `end_reason` ("expired" is not "resolved").

`tests/test_checker.py` keeps this search in agreement with a naive
exhaustive one over many small recorded histories, corrupted and not.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import trio

from .._clock import Clock
from .._config import RuntimeConfig
from .._errors import InvalidArgument, Overloaded, RuntimeClosed, SessionError, StoreUnavailable
from .._model import Message, Session, check_session_id
from ._calls import AddNote, AppendMessage, Call, Context, Create, Delete, End, Get, Touch, Update, describe
from ._reference import ABSENT, ModelState, apply, deadline, same_outcome

if TYPE_CHECKING:
    from .._runtime import SessionRuntime

#: Timestamps hold microseconds; a time read back from one may be this far off.
TIME_SLACK: Final = 1e-6

#: Errors after which a call certainly did not take effect.
NOT_APPLIED: Final = (StoreUnavailable, Overloaded, RuntimeClosed)


@dataclass(slots=True)
class Operation:
    """One recorded call: when it was invoked and returned, and what it returned."""

    call: Call
    #: The session it concerns (for `create`, the new session's id; None if it failed).
    session_id: UUID | None
    invoked: int
    invoked_at: float
    returned: int | None = None
    returned_at: float | None = None
    #: The value returned, or the `SessionError` raised; unset while pending.
    outcome: Any = None
    #: False while pending, and for a call cancelled before it answered.
    answered: bool = False
    #: Its place in the order calls reached the runtime, when known (`run_workload` numbers
    #: appends, touches, notes, updates and ends); `check_arrival_order` checks they applied
    #: in that order.
    arrived: int | None = None

    def window(self) -> tuple[float, float]:
        return self.invoked_at, math.inf if self.returned_at is None else self.returned_at

    def describe(self) -> str:
        end = "…" if self.returned_at is None else f"{self.returned_at:.6f}"
        answer = _describe_outcome(self.outcome) if self.answered else "(no answer)"
        return f"[{self.invoked_at:.6f} .. {end}] {describe(self.call)} -> {answer}"


class History:
    """A log of calls made concurrently on one runtime (or several, one after another)."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self._sequence = itertools.count()
        self._clock: Clock | None = None

    @property
    def clock(self) -> Clock:
        """The wall-clock mapping of the `trio.run` the calls were made in."""
        if self._clock is None:
            raise RuntimeError("the history is empty: no call was recorded")
        return self._clock

    def wrap(self, runtime: SessionRuntime) -> RecordingRuntime:
        """An object with the runtime's per-session methods, recording every call."""
        return RecordingRuntime(runtime, self)

    async def record(self, runtime: SessionRuntime, call: Call) -> Any:
        """Make `call` on `runtime`, logging its invocation and its answer.

        Returns what the call returned and raises what it raised.
        """
        if self._clock is None:
            self._clock = Clock()
        session_id = None
        if not isinstance(call, Create):
            try:
                session_id = check_session_id(call.session_id)
            except InvalidArgument:
                pass
        operation = Operation(call, session_id, next(self._sequence), trio.current_time())
        self.operations.append(operation)
        try:
            result = await call.run(runtime)
        except SessionError as exc:
            self._answer(operation, exc)
            raise
        self._answer(operation, result)
        if isinstance(call, Create):
            operation.session_id = result.id
        return result

    def mark(self) -> tuple[int, float]:
        """A point in the history (logical and Trio time), to pass to `observe` as `since`."""
        if self._clock is None:
            self._clock = Clock()
        return next(self._sequence), trio.current_time()

    def observe(self, call: Call, session_id: UUID, outcome: Any, *,
                since: tuple[int, float] | None = None) -> None:
        """Add what a read of the store (or anything outside the runtime) saw.

        It becomes a call in the history, taking effect between `since` (a
        `mark()`; now by default) and now, so the checker must find an order of
        the real calls that also explains this answer. For example,
        `observe(Get(id), id, stored_session, since=mark)` with a mark taken
        before `flush()` proves the store holds a state the calls produced.
        """
        invoked, invoked_at = self.mark() if since is None else since
        operation = Operation(call, session_id, invoked, invoked_at)
        self.operations.append(operation)
        self._answer(operation, outcome)

    def _answer(self, operation: Operation, outcome: Any) -> None:
        operation.returned = next(self._sequence)
        operation.returned_at = trio.current_time()
        operation.outcome = outcome
        operation.answered = True

    def sessions(self) -> dict[UUID | None, list[Operation]]:
        """The operations grouped by session id (None: calls with an invalid id, failed creates)."""
        groups: dict[UUID | None, list[Operation]] = {}
        for operation in self.operations:
            groups.setdefault(operation.session_id, []).append(operation)
        return groups


def check_arrival_order(history: History) -> None:
    """Check that calls on one session applied in the order they reached the runtime.

    Linearizability allows any order of overlapping calls, so it cannot see a
    call overtaking commands already queued for the session's actor. This
    can: take the answered calls of one session that carry an arrival
    number (`Operation.arrived`, set by `run_workload`), in that order.
    Each applied call answers the session's version after it, and appends,
    touches and notes always raise it (an update or end may change nothing),
    so a later arrival answering a lower version, or the same version when
    it raises it, applied first.

    Raises:
        AssertionError: naming the call that applied ahead of an earlier arrival.
    """
    for session_id, operations in history.sessions().items():
        numbered = sorted((op for op in operations
                           if op.arrived is not None and op.answered and isinstance(op.outcome, Session)),
                          key=lambda op: op.arrived or 0)
        for first, second in itertools.pairwise(numbered):
            earlier, later = first.outcome.version, second.outcome.version
            raises = isinstance(second.call, AppendMessage | Touch | AddNote)
            if earlier > later or (earlier == later and raises):
                raise AssertionError(
                    f"session {session_id}: a call applied ahead of one that reached the runtime before it:\n"
                    f"  arrived #{first.arrived}: {first.describe()}\n"
                    f"  arrived #{second.arrived}: {second.describe()}")


class RecordingRuntime:
    """The per-session methods of a `SessionRuntime`, each call recorded in a `History`."""

    def __init__(self, runtime: SessionRuntime, history: History) -> None:
        self.runtime = runtime
        self.history = history

    async def call(self, call: Call) -> Any:
        return await self.history.record(self.runtime, call)

    async def create(self, user_id: Any, agent: Any, **kwargs: Any) -> Any:
        return await self.call(Create(user_id, agent, **kwargs))

    async def get(self, session_id: Any, *, user_id: Any = None) -> Any:
        return await self.call(Get(session_id, user_id))

    async def update_last_activity(self, session_id: Any, *, durable: Any = False) -> Any:
        return await self.call(Touch(session_id, durable))

    async def update(self, session_id: Any, *, expected_version: Any = None, durable: Any = False,
                     **changes: Any) -> Any:
        return await self.call(Update(session_id, tuple(changes.items()), expected_version, durable))

    async def append_message(self, session_id: Any, role: Any, content: Any, *,
                             durable: Any = False) -> Any:
        return await self.call(AppendMessage(session_id, role, content, durable))

    async def context(self, session_id: Any, *, limit: Any = None) -> Any:
        return await self.call(Context(session_id, limit))

    async def add_note(self, session_id: Any, text: Any, *, durable: Any = False) -> Any:
        return await self.call(AddNote(session_id, text, durable))

    async def end(self, session_id: Any, *, reason: Any = "ended", durable: Any = False) -> Any:
        return await self.call(End(session_id, reason, durable))

    async def delete(self, session_id: Any) -> Any:
        return await self.call(Delete(session_id))


# ------------------------------------------------------------------ checker


@dataclass(frozen=True, slots=True)
class Linearization:
    """The outcome of `check_linearizable`."""

    #: True when every session's calls are explained by the model.
    ok: bool
    #: Per session, the model state after the calls (in the order found).
    final_states: Mapping[UUID, ModelState]
    #: A readable counterexample when not ok, else "".
    counterexample: str = ""
    #: Model states explored, for the curious.
    explored: int = 0


class NotLinearizable(AssertionError):
    """Raised by `assert_linearizable`; the message is the counterexample."""


def assert_linearizable(history: History, config: RuntimeConfig, *,
                        initial: Mapping[UUID, ModelState] | None = None) -> Linearization:
    """`check_linearizable`, raising `NotLinearizable` with the counterexample if it fails."""
    result = check_linearizable(history, config, initial=initial)
    if not result.ok:
        raise NotLinearizable(result.counterexample)
    return result


def check_linearizable(history: History, config: RuntimeConfig, *,
                       initial: Mapping[UUID, ModelState] | None = None) -> Linearization:
    """Decide whether the history is linearizable against the reference model.

    Args:
        history: the recorded calls.
        config: the runtime's configuration (limits the model applies).
        initial: model states of sessions that existed before the history
            (for a history recorded after a restart); others start absent.
    """
    initial = {} if initial is None else initial
    final: dict[UUID, ModelState] = dict(initial)
    explored = 0
    if not history.operations:
        return Linearization(True, final)
    clock = history.clock
    for session_id, operations in history.sessions().items():
        if session_id is None:
            problem = _check_without_session(operations, config, clock)
            if problem:
                return Linearization(False, final, problem, explored)
            continue
        search = _SessionSearch(operations, initial.get(session_id, ABSENT), config, clock)
        state = search.run()
        explored += search.explored
        if state is None:
            return Linearization(False, final, search.counterexample(session_id), explored)
        final[session_id] = state
    return Linearization(True, final, "", explored)


def _check_without_session(operations: Iterable[Operation], config: RuntimeConfig,
                           clock: Clock) -> str:
    """Calls with no session: each must be refused, as the model refuses it."""
    for operation in operations:
        if not operation.answered or isinstance(operation.outcome, NOT_APPLIED):
            continue
        try:
            apply(ABSENT, operation.call, operation.invoked_at, config, clock, new_id=_NO_ID)
        except SessionError as exc:
            if same_outcome(exc, operation.outcome):
                continue
            expected = _describe_outcome(exc)
        else:
            expected = "a success"
        return (f"a call that names no session got the wrong answer:\n  {operation.describe()}\n"
                f"  the model answers {expected}")
    return ""


_NO_ID: Final = UUID(int=0)


class _SessionSearch:
    """Depth-first search for a linearization of one session's calls.

    A node of the search is (calls placed, model state, time): the time is
    the instant of the last call placed, and the next one may not take
    effect before it, so an order never runs time backwards.
    """

    def __init__(self, operations: list[Operation], initial: ModelState, config: RuntimeConfig,
                 clock: Clock) -> None:
        self.operations = sorted(operations, key=lambda o: o.invoked)
        self.initial = initial
        self.config = config
        self.clock = clock
        self.explored = 0
        self.deepest: tuple[int, ModelState, float, list[int]] = (0, initial, -math.inf, [])
        # Every instant the session's answers show: a cancelled call may have
        # taken effect at any of them (the one a later answer reveals).
        shown: set[float] = set()
        for operation in self.operations:
            shown.update(_instants_shown(operation.outcome, clock))
        self.shown = sorted(shown)

    def run(self) -> ModelState | None:
        n = len(self.operations)
        everything = (1 << n) - 1
        seen: set[tuple[int, ModelState, float]] = set()
        start = -math.inf
        # Each frame: (placed mask, state, time, order of placed ops, candidate iterator)
        stack: list[tuple[int, ModelState, float, list[int], Iterator[tuple[int, ModelState, float]]]] = [
            (0, self.initial, start, [], self._moves(0, self.initial, start))]
        while stack:
            placed, state, _, order, moves = stack[-1]
            if placed == everything:
                return state
            step = next(moves, None)
            if step is None:
                stack.pop()
                continue
            index, new_state, new_now = step
            key = (placed | (1 << index), new_state, new_now)
            if key in seen:
                continue
            seen.add(key)
            self.explored += 1
            new_order = [*order, index]
            if len(new_order) > self.deepest[0]:
                self.deepest = (len(new_order), new_state, new_now, new_order)
            stack.append((key[0], new_state, new_now, new_order, self._moves(key[0], new_state, new_now)))
        return None

    def _moves(self, placed: int, state: ModelState, now: float,
               ) -> Iterator[tuple[int, ModelState, float]]:
        """Calls that may take effect next, with each (state, time) they may lead to."""
        for index in self._candidates(placed):
            for new_state, at in self.successors(state, self.operations[index], now):
                yield index, new_state, at

    def _candidates(self, placed: int) -> list[int]:
        """Calls not yet placed that no other unplaced call returned before (in invocation order)."""
        pending = [i for i in range(len(self.operations)) if not placed >> i & 1]
        returns = [self.operations[i].returned for i in pending]
        first_return = min((r for r in returns if r is not None), default=math.inf)
        return [i for i in pending if self.operations[i].invoked < first_return]

    def _apply(self, state: ModelState, operation: Operation, now: float) -> tuple[ModelState, Any]:
        """The model's state and answer (a value or the error) for `operation` at `now`."""
        try:
            return apply(state, operation.call, now, self.config, self.clock, new_id=operation.session_id)
        except SessionError as exc:
            return state, exc

    def successors(self, state: ModelState, operation: Operation,
                   now: float) -> list[tuple[ModelState, float]]:
        """The (state, time) pairs after `operation`, placed no earlier than `now`, that agree
        with its recorded answer."""
        if operation.answered and isinstance(operation.outcome, NOT_APPLIED):
            return [(state, now)]  # certainly not applied: takes no time either
        found: list[tuple[ModelState, float]] = []
        if not operation.answered:
            found.append((state, now))  # cancelled: maybe it never took effect
        for at in self.instants(state, operation, now):
            new_state, result = self._apply(state, operation, at)
            step = (new_state, max(now, at))
            if (not operation.answered or same_outcome(result, operation.outcome)) \
                    and step not in found:
                found.append(step)
        return found

    def instants(self, state: ModelState, operation: Operation, now: float = -math.inf) -> list[float]:
        """The instants worth trying for `operation`, none before `now` (the previous call's).

        The model's answer depends on time only through the snapshot's own
        timestamps and the session's deadline: the earliest instant of the
        window, the deadline and the timestamps of the answer cover every
        answer it can give. A cancelled call's change shows (if at all) in
        later answers, so every instant the session's answers show is tried.
        """
        invoked, high = operation.window()
        low = max(invoked, now)
        candidates = []
        if low <= high + TIME_SLACK:  # the previous instant, read from a timestamp, may be a hair late
            low = min(low, high)
            candidates.append(low)
            due = deadline(state, self.clock)
            if due is not None and low < due <= high:
                candidates.append(due)
            if high != math.inf:
                candidates.append(high)
        stamps = _instants_shown(operation.outcome, self.clock) if operation.answered else self.shown
        for at in stamps:
            # A timestamp holds microseconds: it may read back a hair off the instant.
            if invoked - TIME_SLACK <= at <= high + TIME_SLACK and at >= now - TIME_SLACK:
                candidates.append(at)
        return sorted(set(candidates))

    def counterexample(self, session_id: UUID) -> str:
        depth, state, now, order = self.deepest
        lines = [f"session {session_id}: no order of its {len(self.operations)} calls explains "
                 "every answer (Trio times in brackets).", "Calls, by invocation:"]
        lines += [f"  #{i} {op.describe()}" for i, op in enumerate(self.operations)]
        placed = ", ".join(f"#{i}" for i in order) or "none"
        lines.append(f"Longest explained prefix ({depth} calls): {placed}")
        at = "" if now == -math.inf else f" (at {now:.6f})"
        lines.append(f"Model state there{at}: {_describe_state(state)}")
        for index in self._candidates(sum(1 << i for i in order)):
            operation = self.operations[index]
            answers = [f"at {t:.6f}: {_describe_outcome(self._apply(state, operation, t)[1])}"
                       for t in self.instants(state, operation, now)] or [
                           "nothing: its window closed before that time"]
            lines.append(f"Next could be #{index}, but it answered "
                         f"{_describe_outcome(operation.outcome)}; the model would answer "
                         + "; ".join(answers))
        return "\n".join(lines)


def _instants_shown(outcome: Any, clock: Clock) -> list[float]:
    """The Trio times of the timestamps an answer carries (a snapshot's, or messages')."""
    if isinstance(outcome, Session):
        stamps = [outcome.created_at, outcome.updated_at, outcome.last_activity, outcome.ended_at,
                  *(note.created_at for note in outcome.notes)]
    elif isinstance(outcome, tuple):
        stamps = [message.created_at for message in outcome if isinstance(message, Message)]
    else:
        return []
    return [clock.to_trio(stamp) for stamp in stamps if stamp is not None]


def _describe_state(state: ModelState) -> str:
    if state.deleted:
        return "deleted"
    if state.session is None:
        return "absent"
    return f"{_describe_outcome(state.session)}, {len(state.messages)} messages"


def _describe_outcome(outcome: Any) -> str:
    if isinstance(outcome, SessionError):
        return f"{type(outcome).__name__}({outcome})"
    if isinstance(outcome, Session):
        status = "active" if outcome.is_active else f"inactive/{outcome.end_reason}"
        return (f"Session(v{outcome.version}, {status}, messages={outcome.message_count}, "
                f"state={outcome.state!r}, title={outcome.title!r}, notes={len(outcome.notes)})")
    if isinstance(outcome, tuple):
        return f"{len(outcome)} messages (seqs {[m.seq for m in outcome]})"
    return repr(outcome)

