"""Random concurrent workloads: Hypothesis strategies for calls, and a driver.

`session_calls(known, config)` draws one call of the session API, on a
session from `known` (or a fresh create, or an id nobody created), with valid
arguments most of the time and hostile ones sometimes. `run_workload` lets
several tasks make calls concurrently through a recording runtime; with
`st.random_module()` in the test's `@given`, Hypothesis also chooses Trio's
scheduling, so a failing interleaving replays and shrinks.

`run_workload` draws every task's whole program before anything runs (one
draw: a bounded list of steps per task), naming sessions by their index in
the list of sessions known when the step runs. So the program does not
depend on the interleaving, and a shrink (dropping a step, lowering an
index) changes one thing, not every draw after it. A few creates at one
instant come first (`setup_creates`), so calls have sessions to work on from
the start. Besides calls, a step may flush, passivate a session's actor, walk
`list()` page by page, append a burst, read a partly flushed session back,
start several calls on one session at once, race a resident session's
deadline, and wait for a session's deadline so that the next call lands
exactly on it: the states where bugs at the deadline, in re-activation, in
the context window, in the keyset cursor and in arrival order live.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import trio
from hypothesis import strategies as st

from .. import _model as limits
from .._config import RuntimeConfig
from .._errors import SessionError, StoreUnavailable
from .._model import Session
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
    return _call_templates(config, hostility=hostility, timeouts=timeouts, durable=durable).map(
        lambda call: resolve(call, known))


@dataclass(frozen=True, slots=True)
class Slot:
    """Stands in a drawn call for the session `known[index % len(known)]`, resolved when it runs."""

    index: int


_slots: Final = st.integers(0, 2**16).map(Slot)
#: `Slot(NOBODY_SLOT)` names no session: a call on an id nobody created.
NOBODY_SLOT: Final = -1
# A call's target: a known session, about one time in 16 an id nobody created
# (a residue the ends of the range do not hit; it shrinks to `Slot(0)`).
_call_slots: Final = st.integers(0, 2**16).map(lambda n: Slot(NOBODY_SLOT if n % 16 == 15 else n))


def resolve(call: Call, known: Sequence[UUID]) -> Call:
    """The call with its `Slot` replaced by a session id.

    `Slot(NOBODY_SLOT)`, and any slot while `known` is empty, name an id nobody created.
    """
    target = call.session_id
    if not isinstance(target, Slot) or isinstance(call, Create):
        return call
    return dataclasses.replace(call, session_id=_slot_id(target, known) or _NOBODY)


def _slot_id(slot: Slot, known: Sequence[UUID]) -> UUID | None:
    if slot.index == NOBODY_SLOT or not known:
        return None
    return known[slot.index % len(known)]


def context_limits(config: RuntimeConfig) -> SearchStrategy[int | None]:
    """`context()` limits: mostly 1 or 2 (where an off-by-one shows), sometimes the default or the most."""
    return st.sampled_from((1, 2, 1, 2, 1, 2, None, config.max_messages))


def _call_templates(config: RuntimeConfig, *, hostility: int, timeouts: SearchStrategy[float] | None,
                    durable: bool) -> SearchStrategy[Call]:
    """`session_calls`, with a `Slot` where the session id goes."""
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
    ids: SearchStrategy[Any] = _call_slots
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
        st.builds(Context, ids, context_limits(config)), appends,
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


# ------------------------------------------------------------------ programs


@dataclass(frozen=True, slots=True)
class Flush:
    """`rt.flush()`: everything acknowledged so far reaches the store."""


@dataclass(frozen=True, slots=True)
class Passivate:
    """Stop the session's actor now, as `max_resident` or `passivate_after` would."""

    target: Slot


@dataclass(frozen=True, slots=True)
class ListWalk:
    """Every page of `rt.list(active=..., limit=...)`, for all users or the owner of `owner`."""

    owner: Slot | None
    active: bool | None
    limit: int


@dataclass(frozen=True, slots=True)
class AppendBurst:
    """`count` appends to the session, one after another, then `rt.context(limit=limit)`.

    Enough messages that a context window is smaller than the session's
    history, so an answer one message too long or too short shows.
    """

    target: Slot
    count: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class Reactivate:
    """A partly flushed session read back from the store and the buffer together.

    `stored` appends, `rt.flush()`, `buffered` appends (acknowledged, not
    committed), the actor passivated, then `rt.context(limit=limit)` and
    `rt.get()`: the new actor loads the older messages from the store and the
    newer ones from the write-behind, and must put them in order.
    """

    target: Slot
    stored: int
    buffered: int
    limit: int | None


#: What a `Crowd`'s calls may be: "move" gives the session another chat (written through,
#: so it is queued for the actor, never applied by its caller).
CROWD_CALLS: Final = ("append", "move", "touch", "note")


@dataclass(frozen=True, slots=True)
class Crowd:
    """Calls on one session started at once, each in a task of its own (webhooks of one chat at once).

    They reach the runtime within one scheduling round: some find the actor
    idle and take the caller fast path, others are queued (a chat move is
    always queued), so a caller that overtakes a queued command shows
    (`check_arrival_order`).
    """

    target: Slot
    calls: tuple[str, ...]


#: The calls a `DeadlineRace` may make at the deadline ("get" thrice: reads are where
#: an overdue snapshot can be served without queueing).
RACE_CALLS: Final = ("get", "touch", "get", "append", "get", "end", "context")


@dataclass(frozen=True, slots=True)
class DeadlineRace:
    """A call landing on a resident session's deadline, while the expiry engine wakes for it.

    Waits until `lead` seconds before the session's deadline and reads its
    context there (which activates its actor without moving the deadline, so
    the session is resident when the deadline comes). With `busy`, a
    millisecond before the deadline another task adds a note and gives the
    session another chat (written through: the actor flushes first), so
    the actor is still busy when the deadline passes, on a store that takes
    time. At `late` seconds after the deadline (0: exactly on it) the step
    makes the call `call` names (one of `RACE_CALLS`). The model expires the
    session at its deadline: an answer showing it active there (an overdue
    snapshot served, `<` for `<=`) is refused by the checker.
    """

    target: Slot
    lead: float
    late: float
    call: str
    busy: bool = False


#: A step's timing: wait until the deadline of the session the action names
#: (of `known[0]` for actions that name none), so the action lands on it exactly.
AT_DEADLINE: Final = -1.0

Action = Call | Flush | Passivate | ListWalk | AppendBurst | Reactivate | DeadlineRace | Crowd


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a task's program: wait (`pause` seconds, or `AT_DEADLINE`), then act.

    `route`: which of the runtimes sharing a store acts (`run_workload`'s `others`).
    """

    pause: float
    action: Action
    route: int = 0


def workload_steps(config: RuntimeConfig, *, hostility: int = 10,
                   timeouts: SearchStrategy[float] | None = None,
                   pauses: SearchStrategy[float] | None = None, durable: bool = True,
                   actions: bool = True, deadlines: bool = True, routes: int = 1) -> SearchStrategy[Step]:
    """One step of a task's program, with `Slot`s for sessions (see `run_workload`).

    Most steps are calls (`session_calls`); with `actions`, some flush,
    passivate, walk `list()`, append a burst (`AppendBurst`), read a partly
    flushed session back (`Reactivate`), start calls on a session at once
    (`Crowd`) or race a deadline (`DeadlineRace`, only with `deadlines`);
    with `deadlines`, some wait for a session's deadline first; with
    `routes` above 1, each names one of that many runtimes. Shrinks
    towards a create made at once, by the first runtime.
    """
    calls = _call_templates(config, hostility=hostility, timeouts=timeouts, durable=durable)
    windows = context_limits(config)
    others: list[SearchStrategy[Action]] = [
        st.just(Flush()), st.builds(Passivate, _slots),
        st.builds(ListWalk, st.none() | _slots, st.sampled_from([None, True, False]),
                  st.integers(1, 3)),
        st.builds(AppendBurst, _slots, st.integers(2, config.max_messages + 1), windows),
        st.builds(Reactivate, _slots, st.integers(1, 3), st.integers(1, 2), windows),
        st.builds(Crowd, _slots, st.lists(st.sampled_from(CROWD_CALLS), min_size=2, max_size=5).map(tuple)),
    ] if actions else []
    if actions and deadlines:
        races = st.builds(DeadlineRace, _slots, st.sampled_from([0.1, 1.0]),
                          st.sampled_from([0.0, 0.0, 0.001]), st.sampled_from(RACE_CALLS), st.booleans())
        others += [races, races]
    # An index into a table (not st.one_of), as in session_calls: calls are half the steps.
    table: list[SearchStrategy[Action]] = [calls] * (len(others) if others else 1) + others
    action = st.integers(0, 10 * len(table) - 1).flatmap(lambda n: table[n % len(table)])
    waits = st.just(0.0) if pauses is None else pauses
    if deadlines:
        waits = st.integers(0, 39).flatmap(lambda n: st.just(AT_DEADLINE) if n % 8 == 7 else waits)
    return st.builds(Step, waits, action, st.integers(0, routes - 1) if routes > 1 else st.just(0))


def programs(tasks: int, steps: int, config: RuntimeConfig,
             **options: Any) -> SearchStrategy[list[list[Step]]]:
    """`tasks` programs of up to `steps` steps each (`workload_steps` takes `options`)."""
    step = workload_steps(config, **options)
    return st.lists(st.lists(step, max_size=steps), min_size=tasks, max_size=tasks)


def setup_creates(count: int, timeouts: SearchStrategy[float] | None = None) -> SearchStrategy[list[Create]]:
    """1 to `count` plain creates (users "u0" and "u1"), made at one instant before a workload's tasks start.

    So the calls have sessions to work on from their first step, and
    `list()` walks meet sessions with tied `created_at`. Shrinks to one
    create of "u0" with the first timeout.
    """
    timeouts = st.floats(60.0, 600.0) if timeouts is None else timeouts
    create = st.builds(Create, user_id=st.sampled_from(("u0", "u1")), agent=st.sampled_from(("geral", "max")),
                       timeout=timeouts)
    return st.lists(create, min_size=1, max_size=count)


# Built once per set of arguments: Hypothesis works out a new strategy's
# properties (emptiness, caching) by walking it whole, which cost a fifth of
# each example's time when every example built its own.
@functools.lru_cache(maxsize=32)
def _programs_strategy(tasks: int, steps: int, config: RuntimeConfig, hostility: int,
                       timeouts: SearchStrategy[float] | None, pauses: SearchStrategy[float] | None,
                       durable: bool, actions: bool, deadlines: bool,
                       routes: int) -> SearchStrategy[list[list[Step]]]:
    return programs(tasks, steps, config, hostility=hostility, timeouts=timeouts, pauses=pauses,
                    durable=durable, actions=actions, deadlines=deadlines, routes=routes)


@functools.lru_cache(maxsize=32)
def _setup_strategy(count: int, timeouts: SearchStrategy[float] | None) -> SearchStrategy[list[Create]]:
    return setup_creates(count, timeouts)


def own_chat(call: Call, token: str) -> Call:
    """The call with its chat id made the step's own (`token` appended), so that no two sessions share a chat.

    A chat has one active session per user and agent, which couples
    sessions; the per-session checker keeps them apart, so the workload's
    sessions never share a chat (the chat properties test that coupling).
    Only plain valid strings change: hostile values stay as drawn.
    """
    if isinstance(call, Create) and type(call.chat_id) is str and call.chat_id:
        chat = call.chat_id[:limits.MAX_ID_CHARS - len(token)] + token
        return dataclasses.replace(call, chat_id=chat)
    if isinstance(call, Update):
        changes = tuple((name, value[:limits.MAX_ID_CHARS - len(token)] + token)
                        if name == "chat_id" and type(value) is str and value else (name, value)
                        for name, value in call.changes)
        return dataclasses.replace(call, changes=changes)
    return call


def _target(action: Action, known: Sequence[UUID]) -> UUID | None:
    slot = getattr(action, "target", None) or getattr(action, "session_id", None)
    if isinstance(slot, Slot):
        return _slot_id(slot, known)
    if isinstance(slot, UUID):
        return slot
    return known[0] if known else None


def passivate(runtime: SessionRuntime, session_id: UUID) -> None:
    """Stop the session's actor if it has one (a busy one first applies what is queued)."""
    supervisor = runtime._sup
    actor = supervisor.resident(session_id)
    if actor is not None:
        supervisor.counters.passivations += 1
        supervisor.retire(actor)


async def walk_list(runtime: SessionRuntime, history: History, walk: ListWalk, owner: str | None, *,
                    complete: bool = True) -> None:
    """Read every page of `list()` and check the walk: the keyset cursor loses and repeats nothing.

    Pages come newest first by (created_at, id), strictly, with no session
    twice and each matching the filters; with `active=None`, every session
    whose create returned before the walk began is listed, unless a delete
    of it was invoked before the walk ended (only when `complete`: with
    several runtimes, one lists what the others have flushed).
    """
    await trio.lowlevel.checkpoint()  # a walk is a checkpoint even when a faulty store refuses it
    # Only creates that had returned when the walk began must be listed: one
    # that returns during the walk may sort before the pages already read.
    created_before = [op.outcome for op in history.operations
                      if isinstance(op.call, Create) and op.answered and isinstance(op.outcome, Session)]
    seen: list[Session] = []
    listed_so_far: set[UUID] = set()
    after: str | None = None
    while True:
        try:
            page = await runtime.list(user_id=owner, active=walk.active, limit=walk.limit, after=after)
        except StoreUnavailable:
            return  # a faulty store may refuse the read: nothing to check
        assert len(page.items) <= walk.limit
        again = [s.id for s in page.items if s.id in listed_so_far]
        assert not again, f"list() walk went back to {again[0]}: it would never end"
        listed_so_far.update(s.id for s in page.items)
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        assert len(page.items) == walk.limit, "a page that is not the last one must be full"
        assert page.next_cursor != after, f"list() cursor did not move on from {after!r}"
        after = page.next_cursor
    keys = [(s.created_at, s.id) for s in seen]
    assert keys == sorted(set(keys), reverse=True), f"list() walk out of order or repeated: {keys}"
    for session in seen:
        assert owner is None or session.user_id == owner, session
        assert walk.active is None or session.is_active == walk.active, session
    if walk.active is not None or not complete:
        return
    deleted = {op.session_id for op in history.operations if isinstance(op.call, Delete)}
    listed = {s.id for s in seen}
    for created in created_before:
        if created.id not in deleted and (owner is None or created.user_id == owner):
            assert created.id in listed, f"list() walk lost {created.id}"


#: The calls `ArrivalRecorder` numbers: each reaches its session's actor without a store call first.
_ORDERED: Final = (AppendMessage, Touch, AddNote, Update, End)


class ArrivalRecorder(trio.abc.Instrument):
    """Numbers calls on one runtime in the order they reach it, into `Operation.arrived`.

    A call reaches the runtime when its command is queued for the session's
    actor, or when the caller applies it itself on an idle actor (the
    caller fast path, which decides one checkpoint after the call starts).
    Which of the two a call may take is known when it starts: with a
    loaded, idle actor (and a command that is not written through), the
    call decides at the beginning of its task's next step, which this Trio
    instrument numbers as it begins; otherwise the command is queued at
    once. A call that would wait for room in a full mailbox (waiting
    posters are queued in the scheduler's order) or for the lease gets no
    number. Appends, touches, notes, updates and ends are numbered: the
    versions they answer show the order they were applied in
    (`check_arrival_order`).
    """

    def __init__(self, runtime: SessionRuntime, history: History) -> None:
        self._sup = runtime._sup
        self._history = history
        self._waiting: dict[trio.lowlevel.Task, tuple[int, UUID]] = {}
        # Numbers taken for operations `History.record` had not added yet: index -> number.
        self._taken: dict[int, int] = {}

    def starting(self, call: Call) -> None:
        """Call just before `call` is recorded and made, in the same step."""
        session_id = call.session_id
        if not isinstance(call, _ORDERED) or type(session_id) is not UUID:
            return
        index = len(self._history.operations)  # the operation `History.record` is about to add
        # An update of the agent or the chat is written through: never the fast path.
        through = isinstance(call, Update) and any(name in ("agent", "chat_id") for name, _ in call.changes)
        actor = self._sup.resident(session_id)
        if actor is not None and actor.idle() and not through:
            self._waiting[trio.lowlevel.current_task()] = (index, session_id)
        else:
            self._number(index, session_id)

    def _number(self, index: int, session_id: UUID) -> None:
        sup = self._sup
        if not sup.ownership.valid(trio.current_time()):
            return
        actor = sup.resident(session_id)
        mailbox = None if actor is None else actor._mailbox
        if mailbox is not None and len(mailbox) >= sup.config.mailbox_size:
            return
        # The history's own sequence: numbers keep growing across workloads on one history.
        self._taken[index] = self._history.mark()[0]

    def settle(self) -> None:
        """Write the numbers taken into the operations recorded since."""
        operations = self._history.operations
        for index in [index for index in self._taken if index < len(operations)]:
            operations[index].arrived = self._taken.pop(index)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._taken:
            self.settle()
        waiting = self._waiting.pop(task, None) if self._waiting else None
        if waiting is not None:
            self._number(*waiting)


async def run_workload(runtime: SessionRuntime, data: DataObject, history: History, *,
                       tasks: int = 4, steps: int = 15, hostility: int = 10,
                       timeouts: SearchStrategy[float] | None = None,
                       pauses: SearchStrategy[float] | None = None,
                       durable: bool = True, sessions: Sequence[UUID] = (),
                       actions: bool = True, max_deadline_wait: float = 60.0,
                       after_call: Callable[[Call, Any], Awaitable[None]] | None = None,
                       others: Sequence[SessionRuntime] = (), setup: int = 4) -> list[UUID]:
    """Let `tasks` tasks each run a drawn program of up to `steps` steps, concurrently, all recorded.

    First 1 to `setup` plain creates are made at one instant (`setup_creates`),
    so that calls have sessions to work on from the start. The programs are
    drawn next, in one draw (`programs`). Before each step a task may pause
    (`pauses`, Trio seconds; none by default), which on virtual time lets
    sessions expire mid-workload, or wait until the deadline of the session
    the step names (if it is at most `max_deadline_wait` away). Errors the
    runtime raises on purpose are part of the history, not failures.

    With one runtime, every append, touch and note is numbered in the order
    it reached the runtime (`Operation.arrived`, see `ArrivalRecorder`):
    `check_arrival_order(history)` then checks they applied in that order.

    Args:
        sessions: ids of existing sessions the calls may target too.
        actions: whether steps may also flush, passivate an actor, walk
            `list()` (each walk is checked, see `walk_list`), append bursts,
            read partly flushed sessions back and race deadlines.
        after_call: awaited with each call and its result (or the error it
            raised), for checks that must run right after a call returns.
        others: more runtimes on the same store; each step is made by the
            one it names (`Step.route`), so calls on a session move between
            runtimes (hand-offs) as a load balancer would send them.
        setup: at most this many creates before the tasks start (0: none).

    Returns:
        The ids of every session the calls targeted: `sessions` and those created.
    """
    known: list[UUID] = list(sessions)
    runtimes = [runtime, *others]
    recorders = [history.wrap(each) for each in runtimes]
    creates = data.draw(_setup_strategy(setup, timeouts)) if setup > 0 else []
    plans = data.draw(_programs_strategy(tasks, steps, runtime.config, hostility, timeouts, pauses, durable,
                                         actions, max_deadline_wait > 0, len(runtimes)))
    latest: dict[UUID, Session] = {}  # the newest snapshot any call answered, per session
    arrivals = ArrivalRecorder(runtime, history) if not others else None

    def due(target: UUID | None) -> float | None:
        """The deadline of the newest snapshot of `target`, if it is active and near enough to wait for."""
        session = latest.get(target) if target is not None else None
        if session is None or not session.is_active:
            return None
        deadline = runtime.deadline(session)
        return deadline if deadline - trio.current_time() <= max_deadline_wait else None

    async def wait(step: Step) -> None:
        if step.pause == AT_DEADLINE and not isinstance(step.action, DeadlineRace):  # a race waits itself
            deadline = due(_target(step.action, known))
            if deadline is not None:
                await trio.sleep_until(deadline)
                return
        elif step.pause > 0:
            await trio.sleep(step.pause)
            return
        await trio.lowlevel.checkpoint()

    async def make(call: Call, route: int) -> Any:
        recorder = recorders[route % len(runtimes)]
        if arrivals is not None:
            arrivals.starting(call)
        try:
            result = await recorder.call(call)
        except SessionError as exc:
            result = exc
        else:
            if isinstance(call, Create):
                known.append(result.id)
            if isinstance(call, Delete):
                latest.pop(call.session_id, None)  # no deadline to wait for
            if isinstance(result, Session):
                previous = latest.get(result.id)
                if previous is None or previous.version < result.version:
                    latest[result.id] = result
        if after_call is not None:
            await after_call(call, result)
        return result  # noqa: ASYNC910  only a call refused for its arguments answers without one

    def ahead(target: UUID) -> tuple[UUID, float] | None:
        """`target` and its deadline if that is still ahead, else the known session due next (if any)."""
        candidates = [target, *(each for each in known if each != target)]
        upcoming = [(deadline, each) for each in candidates
                    if (deadline := due(each)) is not None and deadline > trio.current_time()]
        if not upcoming:
            return None
        if upcoming[0][1] == target:
            return target, upcoming[0][0]
        deadline, nearest = min(upcoming, key=lambda pair: pair[0])
        return nearest, deadline

    async def race(action: DeadlineRace, target: UUID, token: str, route: int) -> None:
        found = ahead(target)
        if found is not None:
            target, deadline = found
            await trio.sleep_until(max(trio.current_time(), deadline - action.lead))
            await make(Context(target, 1), route)
        calls: dict[str, Call] = {"get": Get(target), "touch": Touch(target),
                                  "append": AppendMessage(target, "user", token), "end": End(target),
                                  "context": Context(target, 1)}
        if found is None:
            await make(calls[action.call], route)
            return  # noqa: ASYNC910  as make(): only a refused argument answers at once
        async with trio.open_nursery() as nursery:
            if action.busy:
                await trio.sleep_until(max(trio.current_time(), deadline - 0.001))
                nursery.start_soon(keep_busy, target, token, route)
            await trio.sleep_until(deadline + action.late)
            await make(calls[action.call], route)

    async def keep_busy(target: UUID, token: str, route: int) -> None:
        await make(AddNote(target, "before the deadline"), route)  # a change for the flush to write
        await make(own_chat(Update(target, (("chat_id", "5511900000000@c.us"),)), token), route)

    async def burst(action: AppendBurst | Reactivate, target: UUID, token: str, route: int) -> None:
        runtime = runtimes[route % len(runtimes)]
        first = action.count if isinstance(action, AppendBurst) else action.stored
        for n in range(first):
            await make(AppendMessage(target, "user", f"{token}.{n}"), route)
        if isinstance(action, Reactivate):
            await runtime.flush()
            for n in range(action.buffered):
                await make(AppendMessage(target, "assistant", f"{token}.b{n}"), route)
            passivate(runtime, target)
        await make(Context(target, action.limit), route)
        if isinstance(action, Reactivate):
            await make(Get(target), route)

    async def crowd(action: Crowd, target: UUID, token: str, route: int) -> None:
        calls: dict[str, Call] = {
            "append": AppendMessage(target, "user", token), "touch": Touch(target),
            "note": AddNote(target, token),
            "move": own_chat(Update(target, (("chat_id", "5511900000000@c.us"),)), token)}
        async with trio.open_nursery() as nursery:
            for n, name in enumerate(action.calls):
                call = calls[name]
                nursery.start_soon(make, own_chat(call, f".{n}") if name == "move" else call, route)

    async def act(action: Action, token: str, route: int) -> None:  # noqa: ASYNC910  every step's wait() checkpoints
        runtime = runtimes[route % len(runtimes)]
        target = _target(action, known)
        if isinstance(action, Flush):
            await runtime.flush()
        elif isinstance(action, Passivate):
            if target is not None:
                passivate(runtime, target)
        elif isinstance(action, ListWalk):
            owner = None
            listed = None if action.owner is None else _slot_id(action.owner, known)
            if listed is not None:
                session = latest.get(listed)
                owner = None if session is None else session.user_id
            await walk_list(runtime, history, action, owner, complete=len(runtimes) == 1)
        elif isinstance(action, AppendBurst | Reactivate):
            if target is not None:
                await burst(action, target, token, route)
        elif isinstance(action, DeadlineRace):
            if target is not None:
                await race(action, target, token, route)
        elif isinstance(action, Crowd):
            if target is not None:
                await crowd(action, target, token, route)
        else:
            await make(own_chat(resolve(action, known), token), route)

    # Tokens (which make each step's chats its own) unique in the history, also
    # when a second workload continues it (after a restart, on the same store).
    run = len(history.operations)

    async def worker(task: int, plan: list[Step]) -> None:  # noqa: ASYNC910  an empty plan: the nursery checkpoints
        for index, step in enumerate(plan):
            await wait(step)
            await act(step.action, f"#{run}.{task}.{index}", step.route)

    for create in creates:  # one after another, at one instant: created_at tied
        await make(create, 0)
    if arrivals is not None:
        trio.lowlevel.add_instrument(arrivals)
    try:
        async with trio.open_nursery() as nursery:
            for task, plan in enumerate(plans):
                nursery.start_soon(worker, task, plan)
    finally:
        if arrivals is not None:
            trio.lowlevel.remove_instrument(arrivals)
            arrivals.settle()
    return known
