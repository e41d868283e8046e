"""`ReadThrough`: every read of the store, through the write-behind buffer.

A change is acknowledged before it is committed, so the store alone can be
behind: whoever reads a session reads the buffer first (rows and messages
still pending or in flight), then the store for the rest. Reads that fail
for a transient reason are retried (`Retry.read`). Nothing above this module
calls the store directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import trio

from ._errors import StoreUnavailable
from ._model import Message, Session
from ._retry import Retry
from ._store import ListQuery, Store
from ._writebehind import WriteBehind


@dataclass(frozen=True, slots=True)
class Loaded:
    """A session as read: its row and its newest messages (oldest first).

    `refused`: the highest version of the session the database refused since
    it last took one (0 if none). When it is not below `row.version`, the row
    came from the store and the runtime has handed out newer versions that
    were never stored: whoever owns the session must renumber the row above
    them (`transitions.reverted`) and record it.
    """

    row: Session
    messages: Sequence[Message]
    refused: int = 0


class ReadThrough:
    """Reads sessions as acknowledged: the write-behind buffer first, then the store."""

    __slots__ = ("_retry", "_store", "_writebehind")

    def __init__(self, store: Store, writebehind: WriteBehind, retry: Retry) -> None:
        self._store = store
        self._writebehind = writebehind
        self._retry = retry

    async def session(self, session_id: UUID, *, messages: int) -> Loaded | None:
        """The session with its newest `messages` messages; None if it does not exist (or was deleted).

        Raises:
            StoreUnavailable: the store could not be read in `read_attempts` tries.
        """
        row, deleted, buffered = self._writebehind.lookup(session_id)
        if row is None and not deleted:
            loaded = await self._retry.read(self._store.load, session_id, messages=messages)
            if loaded is None:
                return None
            row, stored = loaded
            return Loaded(row, stored, self._writebehind.refused_version(session_id))
        await trio.lowlevel.checkpoint()  # every read is a checkpoint, also one the buffer answers
        if row is None:  # deleted
            return None
        need = min(messages, row.message_count)
        if len(buffered) >= need:
            return Loaded(row, buffered[len(buffered) - need:] if need else ())
        # Part of the window is stored, part buffered: the stored ones come first.
        up_to_seq = buffered[0].seq - 1 if buffered else row.message_count
        older = await self._retry.read(self._store.load_messages, session_id,
                                       limit=need - len(buffered), up_to_seq=up_to_seq)
        return Loaded(row, [*older, *buffered])

    async def sessions(self, session_ids: Sequence[UUID]) -> tuple[dict[UUID, Session], list[UUID]]:
        """The rows (no messages) of those of `session_ids` that exist, in one store query.

        Returns the rows found, and the ids that could not be read because the
        store stayed unavailable for `read_attempts` tries (what the buffer
        holds is returned all the same). Check `WriteBehind.refused_version`
        of each, as `Loaded.refused` says.
        """
        rows: dict[UUID, Session] = {}
        to_load = []
        for session_id in session_ids:
            row, deleted, _ = self._writebehind.lookup(session_id)
            if row is not None:
                rows[session_id] = row
            elif not deleted:
                to_load.append(session_id)
        if not to_load:
            await trio.lowlevel.checkpoint()
            return rows, []
        try:
            stored = await self._retry.read(self._store.load_sessions, to_load)
        except StoreUnavailable:
            return rows, to_load  # noqa: ASYNC910  the failed read checkpointed
        rows.update(stored)
        return rows, []

    async def probe(self) -> None:
        """Return when the store answers (once, no retry); raise `StoreUnavailable` otherwise."""
        await self._store.health_check()

    async def free_deadlines(self) -> list[tuple[UUID, float]]:
        """`(id, expires_at timestamp)` of every stored active session no live runtime owns, by deadline."""
        return await self._retry.read(self._store.free_deadlines)

    async def list(self, query: ListQuery) -> list[Session]:
        """A page of stored sessions, after every acknowledged change it could show is committed.

        A page of one user's sessions waits only if a change of that user's
        (or a hard delete, whose user the buffer no longer knows) is not
        committed yet; a page of everybody's waits for any change.
        """
        if self._writebehind.holds_user(query.user_id):
            await self._writebehind.flush()
        return await self._retry.read(self._store.list, query)
