"""`DeadlineQueue`: the deadline-ordered view of every live session the runtime knows.

One structure covers every live session the runtime knows, resident or not:
a sorted list keyed by `(deadline, tie, id)` plus dicts from id to key and to
deadline. Activity does not re-key the list. `touch` only records the new,
later deadline; when the old key comes due, `pop_due` sees the newer deadline
and re-inserts the session once. So a session touched a thousand times in
one timeout period costs one re-key, not a thousand.

Sessions are held by `UUID.int`, never by `UUID` object: a key is then a
tuple of a float and two ints, and every value a float, so a queued session
costs the garbage collector nothing (CPython untracks containers of atoms).
With a million live sessions that is millions fewer objects for each full
collection to walk (benchmarks/s4, s5).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from uuid import UUID

import trio
from sortedcontainers import SortedList

# (deadline, tie, id.int). The tie is a counter, so equal deadlines keep insertion
# order and ids are never compared (test_expiry.py::test_ties_keep_insertion_order).
_Key = tuple[float, int, int]


class DeadlineQueue:
    """Deadlines (Trio times) of live sessions, earliest first, with lazy re-keying."""

    __slots__ = ("_deadlines", "_deferred", "_keys", "_order", "_sleeper", "_tie")

    def __init__(self) -> None:
        self._order: SortedList[_Key] = SortedList()
        self._keys: dict[int, _Key] = {}  # where each session sits in the sorted list
        self._deadlines: dict[int, float] = {}  # its real deadline, never earlier than its key's
        # Due sessions whose expiry failed and wait for a retry (a dict: ordered).
        self._deferred: dict[int, None] = {}
        self._tie = itertools.count()
        self._sleeper: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, session_id: object) -> bool:
        return isinstance(session_id, UUID) and session_id.int in self._keys

    def deadline(self, session_id: UUID) -> float | None:
        """The session's current deadline, or None if it is not queued."""
        return self._deadlines.get(session_id.int)

    def earliest(self) -> float | None:
        """The earliest key in the queue (a lazily re-keyed entry may be due later)."""
        return self._order[0][0] if self._order else None

    def push(self, session_id: UUID, deadline: float) -> None:
        """Queue a session at `deadline`, replacing any earlier entry for it."""
        self._insert(session_id.int, deadline, deadline)
        self._wake_for(deadline)

    def defer(self, session_id: UUID, deadline: float, until: float) -> None:
        """Queue a session that is due (`deadline`) but whose expiry must wait until `until`.

        For an expiry that failed (the store could not be read): the expiry
        task retries it at `until`; `pop_deferred` hands it out sooner.
        """
        ident = session_id.int
        self._insert(ident, until, deadline)
        self._deferred[ident] = None
        self._wake_for(until)

    def pop_deferred(self) -> list[tuple[UUID, float]]:
        """Remove and return every deferred session, with its deadline."""
        popped = []
        for ident in list(self._deferred):
            popped.append((UUID(int=ident), self._deadlines[ident]))
            self._discard(ident)
        return popped

    def extend(self, deadlines: Iterable[tuple[UUID, float]]) -> None:
        """Queue many sessions at once (a bulk sort: how a runtime starts on a full store)."""
        keys = []
        tie = self._tie
        known = self._keys
        for session_id, deadline in deadlines:
            ident = session_id.int
            if ident in known:
                self.push(session_id, deadline)
                continue
            key = (deadline, next(tie), ident)
            keys.append(key)
            known[ident] = key
            self._deadlines[ident] = deadline
        self._order.update(keys)
        if keys:
            self._wake_for(min(keys)[0])

    def touch(self, session_id: UUID, deadline: float) -> None:
        """Move a session's deadline; later ones are re-keyed lazily, earlier ones at once."""
        ident = session_id.int
        key = self._keys.get(ident)
        if key is None or deadline < key[0]:
            self.push(session_id, deadline)
        else:
            self._deadlines[ident] = deadline

    def discard(self, session_id: UUID) -> None:
        """Forget a session (ended, expired or deleted); unknown ids are ignored."""
        self._discard(session_id.int)

    def pop_due(self, now: float) -> list[tuple[UUID, float]]:
        """Remove and return `(id, deadline)` of the sessions due at `now`.

        An entry whose session was touched since it was keyed goes back into
        the list at its newer deadline instead.
        """
        due: list[tuple[UUID, float]] = []
        order = self._order
        keys = self._keys
        deadlines = self._deadlines
        while order and order[0][0] <= now:
            ident = order.pop(0)[2]
            deadline = deadlines[ident]
            if deadline > now:
                key = keys[ident] = (deadline, next(self._tie), ident)
                order.add(key)
            else:
                del keys[ident], deadlines[ident]
                self._deferred.pop(ident, None)
                due.append((UUID(int=ident), deadline))
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

    def _insert(self, ident: int, at: float, deadline: float) -> None:
        self._discard(ident)
        key = self._keys[ident] = (at, next(self._tie), ident)
        self._deadlines[ident] = deadline
        self._order.add(key)

    def _discard(self, ident: int) -> None:
        key = self._keys.pop(ident, None)
        if key is not None:
            del self._deadlines[ident]
            self._order.remove(key)
            self._deferred.pop(ident, None)

    def _wake_for(self, deadline: float) -> None:
        sleeper = self._sleeper
        if sleeper is not None and deadline < sleeper.deadline:
            sleeper.deadline = deadline
