"""`DeadlineQueue`: the supervisor's deadline-ordered view of every live session.

One structure covers every live session the runtime knows, resident or not:
a sorted list keyed by `(deadline, tie, id)` plus a dict from id to its entry.
Activity does not re-key the list. `touch` only records the new, later
deadline in the entry; when the old key comes due, `pop_due` sees the newer
deadline and re-inserts the session once. So a session touched a thousand
times in one timeout period costs one re-key, not a thousand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from uuid import UUID

import trio
from sortedcontainers import SortedList

# (deadline, tie, id). The tie is a counter, so equal deadlines keep insertion
# order and ids are never compared (test_expiry.py::test_ties_keep_insertion_order).
_Key = tuple[float, int, UUID]


class _Entry:
    __slots__ = ("deadline", "key")

    def __init__(self, key: _Key, deadline: float) -> None:
        self.key = key  # where the session sits in the sorted list
        self.deadline = deadline  # its real deadline, never earlier than key[0]


class DeadlineQueue:
    """Deadlines (Trio times) of live sessions, earliest first, with lazy re-keying."""

    __slots__ = ("_deferred", "_entries", "_order", "_sleeper", "_tie")

    def __init__(self) -> None:
        self._order: SortedList[_Key] = SortedList()
        self._entries: dict[UUID, _Entry] = {}
        # Due sessions whose expiry failed and waits for a retry (a dict: ordered).
        self._deferred: dict[UUID, None] = {}
        self._tie = itertools.count()
        self._sleeper: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._entries

    def deadline(self, session_id: UUID) -> float | None:
        """The session's current deadline, or None if it is not queued."""
        entry = self._entries.get(session_id)
        return None if entry is None else entry.deadline

    def earliest(self) -> float | None:
        """The earliest key in the queue (a lazily re-keyed entry may be due later)."""
        return self._order[0][0] if self._order else None

    def push(self, session_id: UUID, deadline: float) -> None:
        """Queue a session at `deadline`, replacing any earlier entry for it."""
        self.discard(session_id)
        key = (deadline, next(self._tie), session_id)
        self._order.add(key)
        self._entries[session_id] = _Entry(key, deadline)
        self._wake_for(deadline)

    def defer(self, session_id: UUID, deadline: float, until: float) -> None:
        """Queue a session that is due (`deadline`) but whose expiry must wait until `until`.

        For an expiry that failed (the store could not be read): the expiry
        task retries it at `until`; `pop_deferred` hands it out sooner.
        """
        self.discard(session_id)
        key = (until, next(self._tie), session_id)
        self._order.add(key)
        self._entries[session_id] = _Entry(key, deadline)
        self._deferred[session_id] = None
        self._wake_for(until)

    def pop_deferred(self) -> list[tuple[UUID, float]]:
        """Remove and return every deferred session, with its deadline."""
        popped = []
        for session_id in list(self._deferred):
            popped.append((session_id, self._entries[session_id].deadline))
            self.discard(session_id)
        return popped

    def extend(self, deadlines: Iterable[tuple[UUID, float]]) -> None:
        """Queue many sessions at once (a bulk sort: how a runtime starts on a full store)."""
        keys = []
        for session_id, deadline in deadlines:
            if session_id in self._entries:
                self.push(session_id, deadline)
                continue
            key = (deadline, next(self._tie), session_id)
            keys.append(key)
            self._entries[session_id] = _Entry(key, deadline)
        self._order.update(keys)
        if keys:
            self._wake_for(min(keys)[0])

    def touch(self, session_id: UUID, deadline: float) -> None:
        """Move a session's deadline; later ones are re-keyed lazily, earlier ones at once."""
        entry = self._entries.get(session_id)
        if entry is None or deadline < entry.key[0]:
            self.push(session_id, deadline)
        else:
            entry.deadline = deadline

    def discard(self, session_id: UUID) -> None:
        """Forget a session (ended, expired or deleted); unknown ids are ignored."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._order.remove(entry.key)
            self._deferred.pop(session_id, None)

    def pop_due(self, now: float) -> list[tuple[UUID, float]]:
        """Remove and return `(id, deadline)` of the sessions due at `now`.

        An entry whose session was touched since it was keyed goes back into
        the list at its newer deadline instead.
        """
        due: list[tuple[UUID, float]] = []
        order = self._order
        while order and order[0][0] <= now:
            key = order.pop(0)
            session_id = key[2]
            entry = self._entries[session_id]
            if entry.deadline > now:
                entry.key = (entry.deadline, next(self._tie), session_id)
                order.add(entry.key)
            else:
                del self._entries[session_id]
                self._deferred.pop(session_id, None)
                due.append((session_id, entry.deadline))
        return due

    async def wait_due(self) -> list[tuple[UUID, float]]:
        """Sleep until at least one session is due, then pop and return the due ones.

        A `push` or `touch` that brings the earliest deadline forward wakes the
        sleeper early. Cancellation leaves the queue unchanged.
        """
        while True:
            earliest = self.earliest()
            with trio.CancelScope(deadline=math.inf if earliest is None else earliest) as scope:
                self._sleeper = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._sleeper = None
            due = self.pop_due(trio.current_time())
            if due:
                return due

    def _wake_for(self, deadline: float) -> None:
        sleeper = self._sleeper
        if sleeper is not None and deadline < sleeper.deadline:
            sleeper.deadline = deadline
