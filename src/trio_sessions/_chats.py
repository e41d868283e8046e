"""`Chats`: at most one active session per chat, found or opened atomically; and turns.

A chat's session is keyed by `(user_id, agent, chat_id)` (`chat_key`): an
orchestrator routes one chat between several agents, and each agent keeps
its own conversation there (its own context, workflow state and notes), so
the key names the agent; and a session is one user's, so it names the user.

Whatever would give a session a chat is written through to the store
(`Store.place`), never behind, so that the store decides, before the call
returns, which session has the chat: in one runtime or across all that share
the store. `Store.place` answers with the session that already has the chat
if there is one. The store can be behind this runtime, though (an end or an
expiry acknowledged and not yet flushed) or behind another runtime (which
owns that session): so the runtime asks the session itself, through its
actor, which brings it here from its owner if need be, and flushes when the
session has let the chat go; then it tries again.

`session_for_chat` is served from memory when the chat's session is
resident (the index below maps a chat to the session it last had, a hint
checked against the session): no store call, no flush, no scan. A session
opened here is made resident at once. Opening is serialised per chat within a runtime
(`KeyedLocks`), so concurrent callers of one runtime wait for one opening
rather than race to the store.

A *turn* (`KeyedLocks` over session ids) is what keeps one exchange of a
chat together: the application holds it from the user's message to the
agent's answer. A runtime asked to hand a session over waits for the turn
held on it to end (`_ownership`), so turns exclude each other across
runtimes too.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar
from uuid import UUID

import trio

from . import _transitions as transitions
from ._commands import Read, Update
from ._errors import ChatSessionExists, SessionNotFound, StoreUnavailable
from ._model import Session
from ._store import ChatKey, Store, chat_key

if TYPE_CHECKING:
    from ._clock import Clock
    from ._config import RuntimeConfig
    from ._deadlines import DeadlineQueue
    from ._model import EventKind
    from ._retry import Retry
    from ._writebehind import WriteBehind

K = TypeVar("K", bound=Hashable)

#: Rounds of place-then-ask before a chat that keeps changing hands is given up on.
ATTEMPTS: Final = 5


class KeyedLocks(Generic[K]):
    """A fair (first come, first served) lock per key, made on first use, gone when nobody wants it."""

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[K, tuple[trio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: K) -> AsyncIterator[None]:
        """Hold `key`'s lock for the block; waits (cancellably) while another task holds it."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (trio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def held_here(self, key: K) -> bool:
        """Whether the current task holds `key`'s lock."""
        entry = self._locks.get(key)
        return entry is not None and entry[0].statistics().owner is trio.lowlevel.current_task()

    def __len__(self) -> int:
        return len(self._locks)


class ChatOwner(Protocol):
    """What `Chats` needs from `_ownership`: this instance, what it owns, and its lease."""

    @property
    def instance(self) -> UUID: ...
    @property
    def owned(self) -> dict[UUID, int]: ...
    def valid(self, now: float) -> bool: ...
    async def wait_valid(self) -> None: ...
    def created(self, session_id: UUID) -> None: ...
    def lost(self, session_id: UUID) -> None: ...


class ChatHost(Protocol):
    """What `Chats` needs from the supervisor."""

    config: RuntimeConfig
    clock: Clock
    deadlines: DeadlineQueue
    writebehind: WriteBehind
    retry: Retry

    @property
    def ownership(self) -> ChatOwner: ...

    def check_open(self) -> None: ...
    def snapshot(self, session_id: UUID) -> Session | None: ...
    def adopt(self, session: Session) -> None: ...
    def publish(self, kind: EventKind, session: Session) -> None: ...
    async def call(self, session_id: UUID, command: Any) -> Any: ...


class Chats:
    """This runtime's side of one active session per chat."""

    def __init__(self, store: Store, host: ChatHost, size: int) -> None:
        self._store = store
        self._host = host
        #: The session each chat had when this runtime last saw it, the most
        #: recently seen last, at most `size` chats. A hint, always checked
        #: against the session itself: it spares a write the store would
        #: refuse when the chat's session is not resident (passivated).
        self._index: OrderedDict[ChatKey, UUID] = OrderedDict()
        self._size = size
        self._opening: KeyedLocks[ChatKey] = KeyedLocks()

    def remember(self, key: ChatKey, session_id: UUID) -> None:
        index = self._index
        index[key] = session_id
        index.move_to_end(key)
        if len(index) > self._size:
            index.popitem(last=False)

    def _forget(self, key: ChatKey, session_id: UUID) -> None:
        if self._index.get(key) == session_id:
            del self._index[key]

    # ------------------------------------------------------------------ calls

    async def session_for(self, key: ChatKey, fields: Mapping[str, Any], seconds: float) -> Session:
        """The chat's active session, opened with `fields` if it has none."""
        host = self._host
        host.check_open()
        await trio.lowlevel.checkpoint()
        session = self._resident(key)
        if session is not None:
            return session
        async with self._opening.hold(key):
            for _ in range(ATTEMPTS):
                known = self._index.get(key)
                if known is not None:
                    session = await self._holding(known, key)
                    if session is not None:
                        return session
                placed = await self.place_new(self._new(fields, seconds))
                if isinstance(placed, Session):
                    return placed
                session = await self._holding(placed, key)
                if session is not None:
                    return session
        raise _contended(key)

    async def create(self, key: ChatKey, fields: Mapping[str, Any], seconds: float) -> Session:
        """`create` of a session with a chat: `ChatSessionExists` if the chat has a session."""
        host = self._host
        host.check_open()
        await trio.lowlevel.checkpoint()
        for _ in range(ATTEMPTS):
            placed = await self.place_new(self._new(fields, seconds))
            if isinstance(placed, Session):
                return placed
            if await self._holding(placed, key) is not None:
                raise ChatSessionExists(*key, placed)
        raise _contended(key)

    async def update(self, session_id: UUID, command: Update) -> Session:
        """`update` of a session's agent or chat: the actor writes it through (`SessionActor`)."""
        for _ in range(ATTEMPTS):
            try:
                result: Session = await self._host.call(session_id, command)
            except ChatSessionExists as exc:
                if await self._holding(exc.session_id, (exc.user_id, exc.agent, exc.chat_id)) is not None:
                    raise
                continue
            if (key := chat_key(result)) is not None:
                self.remember(key, session_id)
            return result
        raise StoreUnavailable(f"the chat session {session_id} moves to kept changing hands; retry the call")

    # ------------------------------------------------------------------ parts

    def _resident(self, key: ChatKey) -> Session | None:
        """The chat's session from memory: resident, active, not overdue, and this runtime's to answer for."""
        session_id = self._index.get(key)
        if session_id is None:
            return None
        session = self._host.snapshot(session_id)
        if session is None or chat_key(session) != key or not self._host.ownership.valid(trio.current_time()):
            return None
        return session

    async def _holding(self, session_id: UUID, key: ChatKey) -> Session | None:
        """The session if it has the chat `key`, asked through its actor (so as it stands, not as stored).

        When it no longer has the chat, what the store still says is this
        runtime's own unflushed change (an end, an expiry, a move): flush it,
        so that the chat is free in the store too.
        """
        host = self._host
        try:
            session: Session = await host.call(session_id, Read())
        except SessionNotFound:
            return None  # noqa: ASYNC910  deleted since; the failed call checkpointed
        if chat_key(session) == key:
            self.remember(key, session_id)
            return session
        self._forget(key, session_id)
        await host.writebehind.flush()
        return None

    def _new(self, fields: Mapping[str, Any], seconds: float) -> Session:
        clock = self._host.clock
        wall = clock.to_wall(clock.now())
        _, expires_at = clock.deadline_after(wall, seconds)
        return transitions.created(uuid.uuid4(), fields, seconds, wall, expires_at)

    async def place_new(self, session: Session) -> Session | UUID:
        """Write a new session through to the store: the session as stored, or the chat's holder.

        The session is this runtime's (epoch 1) and queued for expiry before
        the row is visible, so that a hand-off request finds it owned. If the
        write fails it is tried again until the store answers (as a flush
        is); cancelled meanwhile, its outcome is unknown and nobody knows the
        session's id: a hard delete of it is left to the write-behind, so
        that in the end it was not created.
        """
        host = self._host
        ownership = host.ownership
        await ownership.wait_valid()
        instance = ownership.instance
        ownership.created(session.id)
        host.deadlines.push(session.id, host.clock.to_trio(session.expires_at))
        store = self._store
        try:
            # Until the store answers, as a flush is: a failure would leave it unknown
            # whether the session exists.
            placed = await host.retry.write(store.health_check, store.place, session, instance, 1,
                                            created=True, event=host.config.event_feed)
        except BaseException:  # cancelled: unknown, so it is made not to exist
            host.deadlines.discard(session.id)
            host.writebehind.record_delete(session.id, session)  # stays owned until that is written
            raise
        if not isinstance(placed, Session):
            ownership.lost(session.id)
            host.deadlines.discard(session.id)
            return placed
        # Queued again, whether or not the date moved (after its chat's last end):
        # the expiry engine may have popped the deadline while the write was
        # retried, found no stored row and forgotten the session
        # (tests/test_chats.py::test_a_chat_session_placed_after_its_deadline_still_expires).
        host.deadlines.push(session.id, host.clock.to_trio(placed.expires_at))
        host.publish("created", placed)
        key = chat_key(placed)
        assert key is not None  # a session placed has a chat
        self.remember(key, placed.id)
        host.adopt(placed)  # resident: the chat's next message is answered from memory
        return placed

    async def place(self, row: Session) -> Session | UUID:
        """Write a change of an owned session's chat through to the store (see `Store.place`)."""
        ownership = self._host.ownership
        epoch = ownership.owned.get(row.id, 0)  # 0, never an epoch: not ours, fenced
        store = self._store
        # Until the store answers (as a flush): a failure would leave the change's outcome unknown.
        return await self._host.retry.write(store.health_check, store.place, row, ownership.instance, epoch,
                                            created=False, event=self._host.config.event_feed)


def _contended(key: ChatKey) -> StoreUnavailable:
    return StoreUnavailable(f"the chat {key[2]!r} (agent {key[1]!r}) kept changing hands "
                            f"in {ATTEMPTS} tries; retry the call")
