"""`SessionActor`: the single owner of a resident session.

The actor applies one command at a time, in arrival order, synchronously (no
checkpoint between reading and writing its state), records the change with
the write-behind and answers with the new immutable `Session` snapshot. What
the new snapshot is, `_transitions` decides; the actor decides when, and
keeps the deadline queue and its window of messages in step.

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
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from uuid import UUID

import trio

from . import _transitions as transitions
from ._commands import (
    AddNote,
    AppendMessage,
    Command,
    Context,
    Delete,
    End,
    Expire,
    Read,
    Reply,
    Touch,
    Update,
)
from ._errors import (
    ChatSessionExists,
    Overloaded,
    SessionError,
    SessionInactive,
    SessionNotFound,
    StoreUnavailable,
)
from ._model import EventKind, FeedKind, Message, Session
from ._store import chat_key

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._chats import Chats
    from ._clock import Clock
    from ._config import RuntimeConfig
    from ._deadlines import DeadlineQueue
    from ._metrics import Counters
    from ._readthrough import Loaded, ReadThrough
    from ._writebehind import DurableWaiter, WriteBehind

T = TypeVar("T")


class ActorHost(Protocol):
    """What an actor needs from the supervisor that runs it."""

    clock: Clock
    config: RuntimeConfig
    counters: Counters
    deadlines: DeadlineQueue
    writebehind: WriteBehind
    reads: ReadThrough
    chats: Chats

    @property
    def ownership(self) -> Owner: ...

    def publish(self, kind: EventKind, session: Session) -> None: ...
    def retire(self, actor: SessionActor) -> None: ...
    def start_task(self, actor: SessionActor) -> None: ...
    def task_done(self, actor: SessionActor) -> None: ...


class Owner(Protocol):
    """What an actor needs from `_ownership`: to read its session as its owner, and the lease.

    `valid_until`: the Trio time the lease holds until; `owned`: the
    sessions owned, each with its epoch (read directly on every call).
    """

    @property
    def valid_until(self) -> float: ...
    @property
    def owned(self) -> Mapping[UUID, int]: ...
    async def load(self, session_id: UUID, *, messages: int) -> Loaded | None: ...


class Predecessor(Protocol):
    """What held a session before a new actor: a retired actor still busy, or an expiry's hold."""

    stopped: trio.Event | None


class Hold:
    """Stands in for an actor while a session has none and must not get one yet.

    The expiry engine holds a session it expires without an actor; a hand-off
    holds one from the moment its actor has stopped until it is granted.
    """

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped: trio.Event | None = trio.Event()

    def release(self) -> None:
        assert self.stopped is not None
        self.stopped.set()


class SessionActor:
    """One resident session: its state, its mailbox, and a task while it has work.

    Only the supervisor creates these. `busy` is true while the actor's task
    runs (started by `post` when the mailbox gets its first command). A
    retired actor takes no more commands; if it is busy, `stopped` fires once
    its task has applied what was queued.
    """

    __slots__ = (
        "_deleted",
        "_host",
        "_mailbox",
        "_predecessor",
        "_room",
        "busy",
        "deadline",
        "id",
        "last_used",
        "messages",
        "pending",
        "retired",
        "session",
        "stopped",
        "writing",
    )

    def __init__(self, session_id: UUID, host: ActorHost, predecessor: Predecessor | None,
                 now: float) -> None:
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
        #: A change is being written through (`write_through`): its snapshot is
        #: not published yet, so reads must queue behind it, not read `session`.
        self.writing = False
        self._mailbox: deque[tuple[Command[Any], Reply[Any]]] | None = None  # None while empty, idle
        self._room: trio.lowlevel.ParkingLot | None = None  # posters waiting for mailbox room
        self._host = host
        self._predecessor = predecessor
        self._deleted = False

    def idle(self) -> bool:
        """Loaded, not retired, and nothing posted to it is still unanswered.

        Then a caller may apply its command itself (`apply`), in its own task:
        the order of arrival is kept (nothing is ahead of it) and the session
        still has one writer at a time, since `apply` never checkpoints.
        """
        return self.pending == 0 and self.session is not None and not self.retired

    def apply(self, command: Command[T], now: float) -> tuple[T, DurableWaiter | None]:
        """Apply one command at Trio time `now`, synchronously: (value, durable waiter or None).

        Raises:
            SessionError: the command was refused; nothing changed. A command
                whose `owner` is not the session's user is refused as
                `SessionNotFound`, exactly as a missing session, before
                anything (an overdue expiry included) is applied.
        """
        self._admit(command, now)
        value = command.dispatch(self, now)
        waiter = self._host.writebehind.durable_waiter(self.id) if command.durable else None
        return value, waiter

    def _admit(self, command: Command[Any], now: float) -> None:
        """Refuse a command this actor may not apply now (see `apply`)."""
        if self._deleted:
            raise SessionNotFound(self.id)
        ownership = self._host.ownership
        # valid() and owns() inlined: this runs on every call.
        if now >= ownership.valid_until:
            raise StoreUnavailable("this runtime's lease in the store lapsed (it was paused, or cut off "
                                   "from the store, for longer than lease_duration): retry the call")
        if self.id not in ownership.owned:
            # Loaded under an identity the runtime has since given up (it
            # rejoined meanwhile): a retry activates the session afresh.
            self._host.retire(self)
            raise StoreUnavailable(f"session {self.id} changed owner while it was being activated: "
                                   "retry the call")
        owner = command.owner
        if owner is not None:
            session = self.session
            assert session is not None  # applied only once loaded
            if session.user_id != owner:
                raise SessionNotFound(self.id)

    async def write_through(self, command: Update) -> tuple[Session, DurableWaiter | None]:
        """Apply an update that may give the session another chat, the store deciding.

        An update that leaves the chat as it was is applied as any command.
        Otherwise the session's earlier changes are flushed first, then the
        new row is written (`Store.place`) unless another active session has
        the chat: `ChatSessionExists`, nothing changed. Runs in the actor's
        task, so the session's later commands wait; it is already durable.
        """
        host = self._host
        flushed = False
        while True:
            now = host.clock.now()
            self._admit(command, now)
            session = self._live(now)
            new = transitions.updated(session, command, host.clock.to_wall(now))
            key = chat_key(new)
            if key is None or key == chat_key(session):
                return self.apply(command, now)  # noqa: ASYNC910  as any command (_serve is the task)
            if flushed:
                break
            # What came before reaches the store first. (Fenced meanwhile, the
            # session is no longer owned here, and the place below says so.)
            await host.writebehind.flush()
            flushed = True
        # From the instant `new` is dated, it is the session: a read must wait for it.
        self.writing = True
        try:
            placed = await host.chats.place(new)
        except SessionError as exc:
            # Stored or not, nobody can tell: the commands queued behind are
            # refused, and the next actor reads the session as it is stored.
            self._refuse_all(StoreUnavailable(f"session {self.id}: {exc}; retry the call"))
            raise
        finally:
            self.writing = False
        if not isinstance(placed, Session):
            raise ChatSessionExists(*key, placed)
        self.session = new
        host.publish("updated", new)
        return new, None

    async def post(self, command: Command[Any], reply: Reply[Any]) -> bool:
        """Queue a command, waiting while the mailbox is full; False if the actor has retired.

        `pending` counts the command from the moment it starts waiting until
        it is answered, so no caller takes the fast path past it. Not a
        checkpoint when there is room.
        """
        if self.retired:
            return False  # noqa: ASYNC910  retired: the caller's path checkpoints
        self.pending += 1
        try:
            while self._mailbox is not None and len(self._mailbox) >= self._host.config.mailbox_size:
                if self._room is None:
                    self._room = trio.lowlevel.ParkingLot()
                await self._room.park()
                if self.retired:
                    self.pending -= 1
                    return False
        except BaseException:  # cancelled while waiting for room: never queued
            self.pending -= 1
            raise
        self._enqueue(command, reply)
        return True  # noqa: ASYNC910  no checkpoint when there is room, by design

    def post_nowait(self, command: Command[Any], reply: Reply[Any]) -> bool:
        """Queue a command past the mailbox's bound; False if the actor has retired.

        For the runtime's own commands (expiry, reconciliation), of which a
        session has at most a few queued: the task sending them serves every
        session and must never wait for room in one session's mailbox.
        """
        if self.retired:
            return False
        self.pending += 1
        self._enqueue(command, reply)
        return True

    def _enqueue(self, command: Command[Any], reply: Reply[Any]) -> None:
        if self._mailbox is None:
            self._mailbox = deque()
        self._mailbox.append((command, reply))
        if not self.busy:
            self.busy = True
            self._host.start_task(self)

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
                    return  # noqa: ASYNC910  the task's end: nothing waits on it to checkpoint
            await self._serve()
        finally:
            self.busy = False
            self._host.task_done(self)

    async def _serve(self) -> None:  # noqa: ASYNC910  waits only for room in a full buffer
        host = self._host
        writebehind = host.writebehind
        mailbox = self._mailbox
        assert mailbox is not None  # the task starts with a command queued
        while mailbox:
            command, reply = mailbox.popleft()
            if self._room is not None:
                self._room.unpark()
            try:
                if reply.abandoned:
                    continue
                if command.mutating and not writebehind.has_room():
                    await writebehind.wait_for_room()
                    if reply.abandoned:
                        continue
                try:
                    if command.through:
                        assert isinstance(command, Update)
                        value, reply.waiter = await self.write_through(command)
                    else:
                        value, reply.waiter = self.apply(command, host.clock.now())
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
        host = self._host
        host.retire(self)
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
                until = host.clock.now() + host.config.retry_max_delay
                host.deadlines.defer(self.id, command.deadline, until)
            error: SessionError = (
                Overloaded(str(exc)) if isinstance(exc, Overloaded) else StoreUnavailable(str(exc)))
            error.__cause__ = exc.__cause__ or exc  # what the store raised, for every caller
            reply.settle(None, error)
        self._mailbox = None

    async def _load(self) -> None:
        """Read the session as its owner (acquiring it, or asking its owner to hand it over)."""
        if self._predecessor is not None:
            assert self._predecessor.stopped is not None
            await self._predecessor.stopped.wait()
            self._predecessor = None
        host = self._host
        max_messages = host.config.max_messages
        loaded = await host.ownership.load(self.id, messages=max_messages)
        if loaded is None:
            host.deadlines.discard(self.id)
            raise SessionNotFound(self.id)
        row = loaded.row
        if loaded.messages:
            self.messages = deque(loaded.messages, maxlen=max_messages)
        if loaded.refused >= row.version:
            # The database refused this session's newest rows: what is stored is
            # the truth again, under a new version (recorded whole).
            row = transitions.reverted(row, loaded.refused)
            host.writebehind.record(row)
            host.publish("updated", row)
        self.session = row
        if row.is_active:
            # The deadline is exactly what the stored expires_at reads back as
            # (see Clock.deadline_after); queue it if the queue lacks it or
            # holds another (a retry after a failed load, a refused touch).
            self.deadline = host.clock.to_trio(row.expires_at)
            if host.deadlines.deadline(self.id) != self.deadline:
                host.deadlines.touch(self.id, self.deadline)
        else:
            host.deadlines.discard(self.id)

    # ------------------------------------------------------------ handlers

    def _commit(self, new: Session, kind: FeedKind, message: Message | None = None, *,
                activity: bool = False) -> Session:
        self.session = new
        self._host.writebehind.record(new, message, activity=activity, kind=kind)
        self._host.publish(kind, new)
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
        clock = self._host.clock
        wall = clock.to_wall(now) if message is None else message.created_at
        deadline, expires_at = clock.deadline_after(wall, session.timeout)
        if message is None:
            new = transitions.touched(session, wall, expires_at)
        else:
            new = transitions.appended(session, message, expires_at)
        self.deadline = deadline
        self._host.deadlines.touch(self.id, deadline)
        return self._commit(new, "updated", message, activity=True)

    def touch(self, command: Touch, now: float) -> Session:
        return self._activity(self._live(now), now)

    def update(self, command: Update, now: float) -> Session:
        session = self._live(now)
        new = transitions.updated(session, command, self._host.clock.to_wall(now))
        return session if new is session else self._commit(new, "updated")

    def append_message(self, command: AppendMessage, now: float) -> Session:
        session = self._live(now)
        message = transitions.message_of(session, command, self._host.clock.to_wall(now))
        if self.messages is None:
            self.messages = deque(maxlen=self._host.config.max_messages)
        self.messages.append(message)
        return self._activity(session, now, message)

    def add_note(self, command: AddNote, now: float) -> Session:
        session = self._live(now)
        return self._commit(transitions.noted(session, command, self._host.clock.to_wall(now)), "updated")

    def end(self, command: End, now: float) -> Session:
        session = self.session
        assert session is not None
        if session.is_active and self.deadline <= now:
            return self._expire()
        if not session.is_active:
            return session
        self.deadline = math.inf
        self._host.deadlines.discard(self.id)
        return self._commit(transitions.ended(session, command, self._host.clock.to_wall(now)), "ended")

    def delete(self, command: Delete, now: float) -> None:
        session = self.session
        assert session is not None
        host = self._host
        host.writebehind.record_delete(self.id, session)
        host.deadlines.discard(self.id)
        self.deadline = math.inf
        self._deleted = True
        host.publish("deleted", session)
        host.retire(self)

    def expire(self, command: Expire, now: float) -> bool:
        session = self.session
        assert session is not None
        if not session.is_active:
            return False
        if self.deadline > now:
            # Touched after the expiry engine popped it: make sure it is queued again.
            self._host.deadlines.touch(self.id, self.deadline)
            return False
        self._expire()
        return True

    def _expire(self) -> Session:
        session = self.session
        assert session is not None
        new = transitions.expired(session)
        self.deadline = math.inf
        host = self._host
        host.deadlines.discard(self.id)
        host.counters.expired += 1
        self._commit(new, "expired")
        host.retire(self)
        return new

    def read(self, command: Read, now: float) -> Session:
        session = self.session
        assert session is not None
        if session.is_active and self.deadline <= now:
            return self._expire()
        return session

    def context(self, command: Context, now: float) -> tuple[Message, ...]:
        messages = tuple(self.messages) if self.messages else ()
        return messages[-command.limit:]
