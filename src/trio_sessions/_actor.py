"""`SessionActor`: the single owner of a resident session, and its commands.

Every public call on a session becomes one of the small frozen commands
below. The actor applies one command at a time, in arrival order,
synchronously (no checkpoint between reading and writing its state), records
the change with the write-behind and answers with the new immutable `Session`
snapshot.

An actor runs a Trio task only while it has work, as an actor system's
dispatcher runs an actor only while it has messages. An idle actor (loaded,
nothing queued) is a plain object, and a caller applies its command to it
directly (`apply`) in its own task. Commands that must wait (for the load,
for room in the write-behind buffer, or behind other commands) go to the
actor's bounded mailbox, and the actor's task applies them until the mailbox
is empty, then ends. A caller cancelled before its command is applied
abandons it, and the actor skips it: a command is applied whole or not at all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

import trio

from ._errors import SessionError, SessionInactive, SessionNotFound, StoreUnavailable, VersionConflict
from ._model import Message, Note, Session

if TYPE_CHECKING:
    from ._clock import Clock
    from ._config import RuntimeConfig
    from ._expiry import DeadlineQueue
    from ._metrics import Counters
    from ._store import Store
    from ._writebehind import DurableWaiter, WriteBehind

T = TypeVar("T")


# ------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Touch:
    """Sent by `update_last_activity`."""

    durable: bool


@dataclass(frozen=True, slots=True)
class Update:
    """Sent by `update`: `changes` holds only the fields the caller passed."""

    expected_version: int | None
    changes: dict[str, Any]
    durable: bool


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """Sent by `append_message`."""

    role: str
    content: str
    durable: bool


@dataclass(frozen=True, slots=True)
class AddNote:
    """Sent by `add_note`."""

    text: str
    durable: bool


@dataclass(frozen=True, slots=True)
class End:
    """Sent by `end`: a soft delete with a reason."""

    reason: str
    durable: bool


@dataclass(frozen=True, slots=True)
class Delete:
    """Sent by `delete`: a hard delete, always waited for until committed."""

    durable: bool = True


@dataclass(frozen=True, slots=True)
class Expire:
    """Sent by the expiry task and `cleanup_old_sessions` when `deadline` is due."""

    deadline: float
    durable: bool = False


@dataclass(frozen=True, slots=True)
class Read:
    """Sent by `get` when the session is not resident (or may be overdue)."""


@dataclass(frozen=True, slots=True)
class Context:
    """Sent by `context`."""

    limit: int


Command = Touch | Update | AppendMessage | AddNote | End | Delete | Expire | Read | Context
MUTATING: frozenset[type] = frozenset({Touch, Update, AppendMessage, AddNote, End, Delete, Expire})


# ---------------------------------------------------------------------- reply


class Reply:
    """One command's answer, handed from the actor to the waiting caller.

    The caller parks its own task (`wait_task_rescheduled`), which is the
    cheapest hand-off Trio has; if it is cancelled before the answer comes, the
    abort marks the command abandoned so the actor skips it.
    """

    __slots__ = ("_task", "abandoned", "done", "error", "value", "waiter")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.abandoned = False
        self.waiter: DurableWaiter | None = None
        self._task: trio.lowlevel.Task | None = None

    def settle(self, value: Any, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.done = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> Any:
        """The value, or raise the error. Cancelled before the answer: abandons the command."""
        if self.done:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            self._task = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._task = None
                self.abandoned = True
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if self.error is not None:
            raise self.error
        return self.value


# ----------------------------------------------------------------- the actor


class Supervisor(Protocol):
    """What an actor needs from the runtime that supervises it."""

    clock: Clock
    config: RuntimeConfig
    counters: Counters
    deadlines: DeadlineQueue
    writebehind: WriteBehind
    store: Store

    def publish(self, kind: str, session: Session) -> None: ...
    def retire(self, actor: SessionActor) -> None: ...
    def start_task(self, actor: SessionActor) -> None: ...
    def task_done(self, actor: SessionActor) -> None: ...
    async def read_store(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...


class Predecessor(Protocol):
    """What held a session before a new actor: a retired actor still busy, or the expiry task's hold."""

    stopped: trio.Event | None


class SessionActor:
    """One resident session: its state, its mailbox, and a task while it has work.

    Only the runtime creates these. `busy` is true while the actor's task runs
    (started by `post` when the mailbox gets its first command). A retired
    actor takes no more commands; if it is busy, `stopped` fires once its
    task has applied what was queued.
    """

    __slots__ = (
        "_deleted",
        "_mailbox",
        "_predecessor",
        "_room",
        "_sup",
        "busy",
        "deadline",
        "id",
        "last_used",
        "messages",
        "pending",
        "retired",
        "session",
        "stopped",
    )

    def __init__(self, session_id: UUID, supervisor: Supervisor,
                 predecessor: Predecessor | None, now: float) -> None:
        self.id = session_id
        #: The newest snapshot; None until loaded. Published for reads that need not queue.
        self.session: Session | None = None
        #: Trio time at which the session expires (inf once inactive).
        self.deadline = math.inf
        #: The newest `max_messages` messages; None while there are none (most
        #: resident sessions hold no messages: no deque, no object for the GC).
        self.messages: deque[Message] | None = None
        self.last_used = now
        #: Commands posted (or waiting to be) and not yet answered.
        self.pending = 0
        self.busy = False
        self.retired = False
        #: Set when a busy actor retires; fires when its task has ended.
        self.stopped: trio.Event | None = None
        self._mailbox: deque[tuple[Command, Reply]] | None = None  # None while empty and idle
        self._room: trio.lowlevel.ParkingLot | None = None  # posters waiting for mailbox room
        self._sup = supervisor
        self._predecessor = predecessor
        self._deleted = False

    def idle(self) -> bool:
        """Loaded, not retired, and nothing posted to it is still unanswered.

        Then a caller may apply its command itself (`apply`), in its own task:
        the order of arrival is kept (nothing is ahead of it) and the session
        still has one writer at a time, since `apply` never checkpoints.
        """
        return self.pending == 0 and self.session is not None and not self.retired

    def apply(self, command: Command, now: float) -> tuple[Any, DurableWaiter | None]:
        """Apply one command at Trio time `now`, synchronously: (value, durable waiter or None).

        Raises:
            SessionError: the command was refused; nothing changed.
        """
        if self._deleted:
            raise SessionNotFound(self.id)
        value = _HANDLERS[type(command)](self, command, now)
        waiter = self._sup.writebehind.durable_waiter(self.id) if getattr(command, "durable", False) else None
        return value, waiter

    async def post(self, command: Command, reply: Reply) -> bool:
        """Queue a command, waiting while the mailbox is full; False if the actor has retired.

        `pending` counts the command from the moment it starts waiting until
        it is answered, so no caller takes the fast path past it. Not a
        checkpoint when there is room.
        """
        if self.retired:
            return False
        self.pending += 1
        try:
            while self._mailbox is not None and len(self._mailbox) >= self._sup.config.mailbox_size:
                if self._room is None:
                    self._room = trio.lowlevel.ParkingLot()
                await self._room.park()
                if self.retired:
                    self.pending -= 1
                    return False
        except BaseException:  # cancelled while waiting for room: never queued
            self.pending -= 1
            raise
        if self._mailbox is None:
            self._mailbox = deque()
        self._mailbox.append((command, reply))
        if not self.busy:
            self.busy = True
            self._sup.start_task(self)
        return True

    def wake_posters(self) -> None:
        """Let callers waiting for mailbox room look again (after a retire)."""
        if self._room is not None:
            self._room.unpark_all()

    async def run(self) -> None:
        """The actor's task: load the session if need be, then empty the mailbox."""
        try:
            if self.session is None:
                try:
                    await self._load()
                except SessionError as exc:
                    self._refuse_all(exc)
                    return
            await self._serve()
        finally:
            self.busy = False
            self._sup.task_done(self)

    async def _serve(self) -> None:
        writebehind = self._sup.writebehind
        mailbox = self._mailbox
        assert mailbox is not None  # the task starts with a command queued
        while mailbox:
            command, reply = mailbox.popleft()
            if self._room is not None:
                self._room.unpark()
            try:
                if reply.abandoned:
                    continue
                if type(command) in MUTATING and not writebehind.has_room():
                    await writebehind.wait_for_room()
                    if reply.abandoned:
                        continue
                try:
                    value, reply.waiter = self.apply(command, self._sup.clock.now())
                except SessionError as exc:
                    reply.settle(None, exc)
                else:
                    reply.settle(value)
            finally:
                self.pending -= 1
            del command, reply  # hold nothing between commands
        self._mailbox = None

    def _refuse_all(self, exc: SessionError) -> None:
        """The session could not be loaded: retire, and answer every queued command with `exc`."""
        sup = self._sup
        sup.retire(self)
        mailbox = self._mailbox or deque()
        while mailbox:
            command, reply = mailbox.popleft()
            self.pending -= 1
            if isinstance(exc, SessionNotFound):
                reply.settle(None, SessionNotFound(self.id))
                continue
            if isinstance(command, Expire):
                # The store could not be read, so the session may still be live
                # and due: retry later rather than forget it (and not at once,
                # which would hammer a store that is down).
                until = sup.clock.now() + sup.config.retry_max_delay
                sup.deadlines.defer(self.id, command.deadline, until)
            reply.settle(None, StoreUnavailable(str(exc)))
        self._mailbox = None

    async def _load(self) -> None:
        """State comes from the write-behind buffer first, then from the store."""
        if self._predecessor is not None:
            assert self._predecessor.stopped is not None
            await self._predecessor.stopped.wait()
            self._predecessor = None
        sup = self._sup
        max_messages = sup.config.max_messages
        row, deleted, buffered = sup.writebehind.lookup(self.id)
        messages: Sequence[Message]
        if deleted:
            raise SessionNotFound(self.id)
        if row is None:
            loaded = await sup.read_store(sup.store.load, self.id, messages=max_messages)
            if loaded is None:
                raise SessionNotFound(self.id)
            row, messages = loaded
        else:
            need = min(max_messages, row.message_count)
            messages = buffered
            if len(buffered) < need:
                up_to_seq = buffered[0].seq - 1 if buffered else row.message_count
                older = await sup.read_store(sup.store.load_messages, self.id,
                                             limit=need - len(buffered), up_to_seq=up_to_seq)
                messages = [*older, *buffered]
        if messages:
            self.messages = deque(messages, maxlen=max_messages)
        self.session = row
        if row.is_active:
            # The deadline is exactly what the stored expires_at reads back as
            # (see Clock.deadline_after); queue it if the queue lacks it or
            # holds it later (a retry after a failed load).
            self.deadline = sup.clock.to_trio(row.expires_at)
            if sup.deadlines.deadline(self.id) != self.deadline:
                sup.deadlines.touch(self.id, self.deadline)

    # ------------------------------------------------------------ handlers

    def _commit(self, new: Session, kind: str, message: Message | None = None, *,
                activity: bool = False) -> Session:
        self.session = new
        self._sup.writebehind.record(new, message, activity=activity)
        self._sup.publish(kind, new)
        return new

    def _live(self, now: float) -> Session:
        """The session, which must be active; an overdue one expires here first."""
        session = self.session
        assert session is not None
        if session.is_active and self.deadline <= now:
            session = self._expire()
        if not session.is_active:
            raise SessionInactive(session.id, session.end_reason)
        return session

    def _activity(self, session: Session, now: float, message: Message | None = None) -> Session:
        """Sliding expiration: activity moves `expires_at` to `last_activity + timeout`."""
        clock = self._sup.clock
        wall = clock.to_wall(now)
        deadline, expires_at = clock.deadline_after(wall, session.timeout)
        if message is None:
            new = _touched(session, wall, expires_at, wall, session.version + 1)
        else:
            new = _appended(session, wall, expires_at, wall, session.version + 1, message.seq)
        self.deadline = deadline
        self._sup.deadlines.touch(self.id, deadline)
        return self._commit(new, "updated", message, activity=True)

    def _touch(self, command: Touch, now: float) -> Session:
        return self._activity(self._live(now), now)

    def _update(self, command: Update, now: float) -> Session:
        clock = self._sup.clock
        session = self._live(now)
        expected = command.expected_version
        if expected is not None and expected != session.version:
            raise VersionConflict(expected, session.version)
        if not command.changes:
            return session
        new = replace(session, updated_at=clock.to_wall(now), version=session.version + 1,
                      **command.changes)
        return self._commit(new, "updated")

    def _append_message(self, command: AppendMessage, now: float) -> Session:
        clock = self._sup.clock
        session = self._live(now)
        seq = session.message_count + 1
        message = Message(seq, command.role, command.content, clock.to_wall(now))
        if self.messages is None:
            self.messages = deque(maxlen=self._sup.config.max_messages)
        self.messages.append(message)
        return self._activity(session, now, message)

    def _add_note(self, command: AddNote, now: float) -> Session:
        clock = self._sup.clock
        session = self._live(now)
        wall = clock.to_wall(now)
        new = replace(session, notes=(*session.notes, Note(command.text, wall)), updated_at=wall,
                      version=session.version + 1)
        return self._commit(new, "updated")

    def _end(self, command: End, now: float) -> Session:
        session = self.session
        assert session is not None
        if session.is_active and self.deadline <= now:
            return self._expire()
        if not session.is_active:
            return session
        wall = self._sup.clock.to_wall(now)
        new = replace(session, is_active=False, ended_at=wall, end_reason=command.reason,
                      updated_at=wall, version=session.version + 1)
        self.deadline = math.inf
        self._sup.deadlines.discard(self.id)
        return self._commit(new, "ended")

    def _delete(self, command: Delete, now: float) -> None:
        session = self.session
        assert session is not None
        sup = self._sup
        sup.writebehind.record_delete(self.id)
        sup.deadlines.discard(self.id)
        self.deadline = math.inf
        self._deleted = True
        sup.publish("deleted", session)
        sup.retire(self)

    def _expire_due(self, command: Expire, now: float) -> bool:
        """True when this command expired the session."""
        session = self.session
        assert session is not None
        if not session.is_active:
            return False
        if self.deadline > now:
            # Touched after the expiry task popped it: make sure it is queued again.
            self._sup.deadlines.touch(self.id, self.deadline)
            return False
        self._expire()
        return True

    def _expire(self) -> Session:
        """Soft delete at the deadline itself, however late the expiry task runs."""
        session = self.session
        assert session is not None
        new = expired_snapshot(session)
        self.deadline = math.inf
        sup = self._sup
        sup.deadlines.discard(self.id)
        sup.counters.expired += 1
        self._commit(new, "expired")
        sup.retire(self)
        return new

    def _read(self, command: Read, now: float) -> Session:
        session = self.session
        assert session is not None
        if session.is_active and self.deadline <= now:
            return self._expire()
        return session

    def _context(self, command: Context, now: float) -> tuple[Message, ...]:
        messages = tuple(self.messages) if self.messages else ()
        return messages[-command.limit:]


def expired_snapshot(session: Session) -> Session:
    """The snapshot after expiry: a soft delete dated at the deadline itself."""
    at = session.expires_at
    return _expired(session, False, at, "expired", at, session.version + 1)


def _compile_copier(*changing: str) -> Callable[..., Session]:
    """`dataclasses.replace` for one fixed set of fields, as straight-line code.

    The activity paths make a new snapshot per call; `replace` spends ~4 us
    looking fields up, this ~1 us (benchmarks/s1). The function is generated
    once, at import, from `Session`'s own fields, as dataclasses does itself.
    It fills each slot through the slot's own descriptor, which skips the
    attribute lookup `object.__setattr__` would make (and the frozen check).
    """
    names = [f.name for f in fields(Session)]
    assert set(changing) <= set(names), changing
    lines = [f"def copy(session, {', '.join(changing)}):", "    new = new_object(Session)"]
    lines += [f"    set_{name}(new, {name if name in changing else 'session.' + name})" for name in names]
    lines.append("    return new")
    namespace: dict[str, Any] = {"new_object": object.__new__, "Session": Session}
    namespace.update({f"set_{name}": vars(Session)[name].__set__ for name in names})
    exec("\n".join(lines), namespace)
    copier: Callable[..., Session] = namespace["copy"]
    return copier


_touched = _compile_copier("last_activity", "expires_at", "updated_at", "version")
_appended = _compile_copier("last_activity", "expires_at", "updated_at", "version", "message_count")
_expired = _compile_copier("is_active", "ended_at", "end_reason", "updated_at", "version")

_HANDLERS: dict[type, Callable[[SessionActor, Any, float], Any]] = {
    Touch: SessionActor._touch,
    Update: SessionActor._update,
    AppendMessage: SessionActor._append_message,
    AddNote: SessionActor._add_note,
    End: SessionActor._end,
    Delete: SessionActor._delete,
    Expire: SessionActor._expire_due,
    Read: SessionActor._read,
    Context: SessionActor._context,
}
