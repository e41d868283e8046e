"""The `Store` protocol and `MemoryStore`, the in-memory backend.

A store is the system of record. The runtime talks to it only from the
write-behind flusher (`write`) and when it activates a session (`load`),
expires sessions that are not resident (`load_sessions`), lists sessions
(`list`) or starts (`live_deadlines`).
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Protocol, runtime_checkable
from uuid import UUID

import trio

from ._model import Message, Session


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """What one flush writes, in one transaction.

    `sessions` are upserted only where their version is newer than the stored
    row. `touched` rows differ from the version last written (or read) only
    in `ACTIVITY_FIELDS` (`last_activity`, `expires_at`, `updated_at`,
    `version`, `message_count`), and come from activity, so their `updated_at` is
    their `last_activity`: a store updates just those columns of the stored
    row, again only where its version is older, and leaves a session it
    does not hold missing. `messages` are appended, ignoring a
    `(session_id, seq)` already stored; `deletes` remove a session's row and
    all its messages. A session id appears at most once in `sessions`,
    `touched` and `deletes` together.
    """

    sessions: tuple[Session, ...]
    messages: tuple[tuple[UUID, Message], ...]
    deletes: tuple[UUID, ...]
    touched: tuple[Session, ...] = ()

    def split(self) -> tuple[WriteBatch, WriteBatch]:
        """Two halves by session id (messages follow their session), to isolate a bad row."""
        ids = [*(s.id for s in self.sessions), *(s.id for s in self.touched), *self.deletes]
        first = set(ids[: len(ids) // 2])

        def half(in_first: bool) -> WriteBatch:
            return WriteBatch(
                tuple(s for s in self.sessions if (s.id in first) == in_first),
                tuple(m for m in self.messages if (m[0] in first) == in_first),
                tuple(d for d in self.deletes if (d in first) == in_first),
                tuple(s for s in self.touched if (s.id in first) == in_first),
            )

        return half(True), half(False)

    def session_ids(self) -> list[UUID]:
        """Every session the batch writes or deletes, in batch order."""
        return [*(s.id for s in self.sessions), *(s.id for s in self.touched), *self.deletes]

    def __len__(self) -> int:
        return len(self.sessions) + len(self.touched) + len(self.messages) + len(self.deletes)


#: What activity changes (`update_last_activity`, `append_message`): the
#: columns a `WriteBatch.touched` row carries.
ACTIVITY_FIELDS: Final = ("last_activity", "expires_at", "updated_at", "version", "message_count")


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A page request: newest first by `(created_at, id)`, after the keyset `after`."""

    user_id: str | None
    agent: str | None
    chat_id: str | None
    active: bool | None
    limit: int
    after: tuple[datetime, UUID] | None


@runtime_checkable
class Store(Protocol):
    """What the runtime needs of a backend. `MemoryStore` and `PostgresStore` implement it.

    Errors: a call that fails for a reason that may pass (connection lost, server
    shutting down) raises `StoreUnavailable`. `write` raises `WriteRejected` when
    the database refuses the data itself for good.
    """

    def connect(self) -> AbstractAsyncContextManager[None]:
        """Hold the store's connections open for the runtime's lifetime."""
        ...

    async def load(self, session_id: UUID, *, messages: int) -> tuple[Session, tuple[Message, ...]] | None:
        """The stored session and its newest `messages` messages, oldest first."""
        ...

    async def load_messages(self, session_id: UUID, *, limit: int, up_to_seq: int) -> tuple[Message, ...]:
        """The newest `limit` messages with `seq <= up_to_seq`, oldest first."""
        ...

    async def load_sessions(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        """The stored rows (without messages) of those of `session_ids` that exist."""
        ...

    async def live_deadlines(self) -> list[tuple[UUID, float]]:
        """`(id, expires_at.timestamp())` of every active session, by `expires_at`.

        The float is exactly `expires_at.timestamp()` (POSIX seconds), so a
        deadline read back at start equals the one computed from the datetime.
        A plain float per row, not a datetime, because a runtime starting over
        a million live sessions reads them all; and in order, so that the
        deadline queue's bulk sort gets presorted input. Ties come in any order.
        """
        ...

    async def write(self, batch: WriteBatch) -> None:
        """Apply one batch atomically (see `WriteBatch`).

        The runtime writes up to `flush_concurrency` batches at once; batches
        written at the same time never share a session.
        """
        ...

    async def list(self, query: ListQuery) -> list[Session]:
        """Up to `query.limit` sessions matching the filters, newest first."""
        ...

    async def health_check(self) -> None:
        """Return when the store answers; raise `StoreUnavailable` otherwise."""
        ...


class MemoryStore:
    """A complete store in memory, for embedding and for fast tests.

    It keeps its data across runtimes: open a second runtime on the same
    `MemoryStore` to see what the first one wrote. Each call is a Trio
    checkpoint, like a real backend's.
    """

    def __init__(self) -> None:
        self._sessions: dict[UUID, Session] = {}
        self._messages: dict[UUID, list[Message]] = {}

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        await trio.lowlevel.checkpoint()
        yield

    async def load(self, session_id: UUID, *, messages: int) -> tuple[Session, tuple[Message, ...]] | None:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(session_id)
        if session is None:
            return None
        stored = self._messages.get(session_id, [])
        return session, tuple(stored[-messages:]) if messages else ()

    async def load_messages(self, session_id: UUID, *, limit: int, up_to_seq: int) -> tuple[Message, ...]:
        await trio.lowlevel.checkpoint()
        stored = self._messages.get(session_id, [])
        end = bisect.bisect_right(stored, up_to_seq, key=lambda m: m.seq)
        return tuple(stored[max(0, end - limit):end])

    async def load_sessions(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        await trio.lowlevel.checkpoint()
        stored = self._sessions
        return {session_id: stored[session_id] for session_id in session_ids if session_id in stored}

    async def live_deadlines(self) -> list[tuple[UUID, float]]:
        await trio.lowlevel.checkpoint()
        live = [(s.expires_at, s.id) for s in self._sessions.values() if s.is_active]
        live.sort(key=lambda pair: pair[0])
        return [(session_id, expires_at.timestamp()) for expires_at, session_id in live]

    async def write(self, batch: WriteBatch) -> None:
        await trio.lowlevel.checkpoint()
        for session in batch.sessions:
            stored = self._sessions.get(session.id)
            if stored is None or stored.version < session.version:
                self._sessions[session.id] = session
        for session in batch.touched:
            stored = self._sessions.get(session.id)
            if stored is not None and stored.version < session.version:
                self._sessions[session.id] = replace(
                    stored, **{name: getattr(session, name) for name in ACTIVITY_FIELDS})
        for session_id, message in batch.messages:
            stored_messages = self._messages.setdefault(session_id, [])
            if not stored_messages or stored_messages[-1].seq < message.seq:
                stored_messages.append(message)
            else:  # a retried append: keep the first copy, keep seq order
                index = bisect.bisect_left(stored_messages, message.seq, key=lambda m: m.seq)
                if index == len(stored_messages) or stored_messages[index].seq != message.seq:
                    stored_messages.insert(index, message)
        for session_id in batch.deletes:
            self._sessions.pop(session_id, None)
            self._messages.pop(session_id, None)

    async def list(self, query: ListQuery) -> list[Session]:
        await trio.lowlevel.checkpoint()
        matches = [
            s for s in self._sessions.values()
            if (query.user_id is None or s.user_id == query.user_id)
            and (query.agent is None or s.agent == query.agent)
            and (query.chat_id is None or s.chat_id == query.chat_id)
            and (query.active is None or s.is_active == query.active)
            and (query.after is None or (s.created_at, s.id) < query.after)
        ]
        matches.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return matches[: query.limit]

    async def health_check(self) -> None:
        await trio.lowlevel.checkpoint()
