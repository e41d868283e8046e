"""`WriteBehind`: the coalescing buffer between actors and the store.

Actors record each change synchronously (`record`, `record_delete`); the
flusher task writes the buffer to the store in batches. Per session the
buffer keeps only the newest row, and every message appended since the last
flush, in order. A batch takes the sessions that have been dirty longest, at
most `flush_batch` of them, and is written in one transaction; it is flushed
when it is full, when `flush_interval` has passed since its oldest change, or
when somebody waits for durability. Up to `flush_concurrency` batches are
written at once, so that one is encoded while another is in the database. A
batch that shares a session with a batch still being written waits for that
one before it writes, so a session's writes reach the store one after the
other, in order, and writes under way at the same time never share a session.
A session whose buffered changes are all activity (touches, appended
messages) is written as a `touched` row: only the activity columns, a third
of the encoding and of the statement's work.

Every change gets a ticket (a counter). An entry carries the ticket of its
first change since the previous flush, and entries sit in the buffer in ticket
order, so "everything up to ticket T is settled" is simply "the oldest entry
still buffered or in flight has a ticket above T". That is what `flush` waits for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Protocol
from uuid import UUID

import trio
from loguru import logger

from ._config import RuntimeConfig
from ._errors import SessionMoved, WriteRejected
from ._metrics import Counters
from ._model import FeedKind, Message, Session, SessionEvent
from ._retry import Retry
from ._store import Store, WriteBatch

#: Told when the database refuses a session's row for good: (session id, the refused row).
RefusalHandler = Callable[[UUID, Session | None], None]
#: Told when a session's writes were fenced: another instance owns it now.
FenceHandler = Callable[[UUID], None]


class Owner(Protocol):
    """Whose writes these are: the instance id, and the epoch of each session it owns (`_ownership`)."""

    @property
    def instance(self) -> UUID: ...
    @property
    def owned(self) -> Mapping[UUID, int]: ...


class DurableWaiter:
    """Lets one caller wait until its change is committed (or refused)."""

    __slots__ = ("_done", "_error")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._error: BaseException | None = None

    def settle(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()

    async def wait(self) -> None:
        """Return once committed.

        Raises:
            SessionMoved: another runtime took the session first (see `_ownership`).
            WriteRejected: the database refused the change.
        """
        await self._done.wait()
        if isinstance(self._error, SessionMoved):
            raise SessionMoved(str(self._error))
        if self._error is not None:
            raise WriteRejected(str(self._error)) from self._error


class _Entry:
    """One session's buffered changes: its newest row, or a deletion, and new messages."""

    __slots__ = ("changed", "created", "deleted", "events", "full", "messages", "refused", "row",
                 "session_id", "settled", "since", "ticket", "waiters")

    def __init__(self, session_id: UUID, ticket: int, since: float) -> None:
        self.reset(session_id, ticket, since)

    def reset(self, session_id: UUID, ticket: int, since: float) -> None:
        """Make this a fresh entry (entries are reused: see `WriteBehind._spare`)."""
        self.session_id = session_id
        self.row: Session | None = None
        # Lists only once there is something to hold: most entries never need
        # them, and each list would be one more object for the cyclic GC.
        self.messages: list[Message] | None = None
        self.deleted = False
        self.created = False  # the session was created since the last flush: its row may be inserted
        # False while every change since the last flush was activity: the
        # store then updates only the activity columns (WriteBatch.touched).
        self.full = False
        # The feed's lifecycle events since the last flush (created, ended,
        # expired, deleted), each with its snapshot; and whether a change
        # came after the last of them (an "updated" event, with the newest row).
        self.events: list[SessionEvent] | None = None
        self.changed = False
        self.ticket = ticket
        self.since = since
        self.waiters: list[DurableWaiter] | None = None
        self.settled = False  # written or refused; its waiters have been told
        self.refused = False  # the database refused it: what it holds was never stored

    def size(self) -> int:
        return 1 + len(self.messages) if self.messages else 1


class _Batch:
    """Entries taken from the buffer to be written together."""

    __slots__ = ("entries", "written")

    def __init__(self, entries: dict[UUID, _Entry]) -> None:
        self.entries = entries
        self.written = trio.Event()  # set once the write is over, done or not


class WriteBehind:
    """The buffer and its flusher.

    Actors record into it from whichever task applies their commands (their
    own, or a caller's on the fast path); it is never awaited while a
    session's state is half changed, since `record` does not checkpoint.
    """

    def __init__(self, store: Store, config: RuntimeConfig, counters: Counters, retry: Retry,
                 owner: Owner) -> None:
        self._store = store
        self._owner = owner
        self._config = config
        self._counters = counters
        self._retry = retry
        self._feed = config.event_feed
        #: Called for each row the database refuses (the supervisor reconciles the session).
        self.on_refused: RefusalHandler | None = None
        #: Called for each session whose writes were fenced (the supervisor stops its actor).
        self.on_fenced: FenceHandler | None = None
        self._pending: dict[UUID, _Entry] = {}
        # Flushed entries, kept for reuse. An entry lives as long as its flush
        # takes, long enough for Python's cyclic GC to move it to the oldest
        # generation; new ones at 10,000 rows a second trigger full
        # collections of the whole heap (benchmarks/s5). Reused ones do not.
        self._spare: list[_Entry] = []
        # Sessions whose row the store refused, with the highest version refused:
        # their next write must be whole, since the stored row may lack more
        # than activity, and a session reloaded from the store must be numbered
        # above that version (see `refused_version`).
        self._refused: dict[UUID, int] = {}
        # The batches being written (or waiting to), oldest first.
        self._inflight: list[_Batch] = []
        self._size = 0  # buffered writes, pending and in flight: rows, deletes and messages
        self._ticket = 0
        self._alert_size = max(1, int(config.max_pending * config.alert_pending_fraction))
        self._alerted = False
        self._dirty = trio.Event()  # set when the buffer becomes non-empty
        self._urgent = trio.Event()  # set when a batch should go now
        self._space = trio.lowlevel.ParkingLot()  # writers waiting for room
        # flush() callers, and the flusher when it may not start a batch: a
        # batch written wakes them.
        self._settled = trio.lowlevel.ParkingLot()

    # ------------------------------------------------------------ the actors' side

    @property
    def size(self) -> int:
        """Writes acknowledged and not yet committed."""
        return self._size

    def has_room(self) -> bool:
        return self._size < self._config.max_pending

    async def wait_for_room(self) -> None:  # noqa: ASYNC910  not a checkpoint when there is room, by design
        """Block while the buffer is full (backpressure). Not a checkpoint when there is room."""
        if self._size < self._config.max_pending:
            return  # noqa: ASYNC910  not a checkpoint when there is room, by design
        self._counters.backpressure_waits += 1
        while self._size >= self._config.max_pending:
            self._urgent.set()
            await self._space.park()

    def record(self, row: Session, message: Message | None = None, *, activity: bool = False,
               created: bool = False, kind: FeedKind = "updated") -> None:
        """Buffer a session's new row, and the message it appended if any.

        `activity`: the row differs from the session's previous row only in
        `ACTIVITY_FIELDS`, so if every change buffered since the last flush
        is such, the flush writes just those columns. `created`: the row is
        a new session's first, which the store may insert. `kind`: the
        change's event in the durable feed ("created" when `created`);
        a lifecycle event is kept with its row, "updated" ones fold into the
        flush's newest row (see `_batch_of`).
        """
        entry = self._pending.get(row.id)
        if entry is None:
            entry = self._new_entry(row.id)
            entry.full = not activity or (bool(self._refused) and row.id in self._refused)
            entry.created = created
        elif not activity:
            entry.full = True
        entry.row = row
        if created:
            kind = "created"
        if kind == "updated":
            entry.changed = True
        elif self._feed:
            self._lifecycle(entry, SessionEvent(kind, row))
        if message is not None:
            if entry.messages is None:
                entry.messages = [message]
            else:
                entry.messages.append(message)
            self._size += 1
        self._ticket += 1

    def record_delete(self, session_id: UUID, last: Session | None = None) -> None:
        """Buffer a hard delete: drops the session's buffered row and messages (not its feed events).

        `last`: the session as it was deleted, for the feed's "deleted" event.
        """
        entry = self._pending.get(session_id)
        if entry is None:
            entry = self._new_entry(session_id)
        self._size -= entry.size() - 1
        entry.row = None
        entry.messages = None
        entry.deleted = True
        if self._feed and last is not None:
            self._lifecycle(entry, SessionEvent("deleted", last))
        self._ticket += 1

    @staticmethod
    def _lifecycle(entry: _Entry, event: SessionEvent) -> None:
        """Keep a lifecycle event; the changes since the previous one fold into it (its row has them)."""
        entry.changed = False
        if entry.events is None:
            entry.events = [event]
        else:
            entry.events.append(event)

    def drop(self, session_id: UUID, error: BaseException) -> None:
        """Forget the session's pending changes (fenced: never to be written); tell their waiters."""
        entry = self._pending.pop(session_id, None)
        if entry is None:
            return
        self._size -= entry.size()
        entry.settled = True
        for waiter in entry.waiters or ():
            waiter.settle(error)
        self._space.unpark_all()
        self._settled.unpark_all()

    def durable_waiter(self, session_id: UUID) -> DurableWaiter | None:
        """A waiter for the session's latest recorded change, or None if it is committed.

        Asks the flusher to write now.
        """
        entry = self._pending.get(session_id) or self._in_flight(session_id)
        if entry is None or entry.settled:
            return None
        waiter = DurableWaiter()
        if entry.waiters is None:
            entry.waiters = [waiter]
        else:
            entry.waiters.append(waiter)
        self._urgent.set()
        return waiter

    def lookup(self, session_id: UUID) -> tuple[Session | None, bool, list[Message]]:
        """What the buffer knows of a session: (newest row, deleted?, buffered messages).

        The in-flight batch counts too, so a change is never read stale while
        it is being written.
        """
        entries = [entry for entry in (*(batch.entries.get(session_id) for batch in self._inflight),
                                       self._pending.get(session_id)) if entry is not None]
        if entries and entries[-1].deleted and not entries[-1].refused:  # nothing follows a deletion
            return None, True, []
        messages: list[Message] = []
        row = None
        for entry in entries:  # oldest first
            if entry.refused:  # never stored: the store (or a later entry) has the truth
                continue
            row = entry.row
            if entry.messages:
                messages.extend(entry.messages)
        return row, False, messages

    def holds_user(self, user_id: str | None) -> bool:
        """Whether a change not yet committed may be one of `user_id`'s sessions' (anybody's when None).

        A session's user never changes, so a pending row names it; a pending
        hard delete does not, and counts for every user. Scans the buffer:
        cheaper than the flush it spares.
        """
        buffers = (*(batch.entries for batch in self._inflight), self._pending)
        if user_id is None:
            return any(buffers)
        for buffer in buffers:
            for entry in buffer.values():
                row = entry.row
                if row is None or row.user_id == user_id:
                    return True
        return False

    def refused_version(self, session_id: UUID) -> int:
        """The highest version of the session the database refused since it last took one (or 0)."""
        return self._refused.get(session_id, 0) if self._refused else 0

    def _in_flight(self, session_id: UUID) -> _Entry | None:
        """The session's newest entry in flight, if any."""
        for batch in reversed(self._inflight):
            entry = batch.entries.get(session_id)
            if entry is not None:
                return entry
        return None

    def _new_entry(self, session_id: UUID) -> _Entry:
        if self._spare:
            entry = self._spare.pop()
            entry.reset(session_id, self._ticket + 1, trio.current_time())
        else:
            entry = _Entry(session_id, self._ticket + 1, trio.current_time())
        self._pending[session_id] = entry
        self._size += 1
        if len(self._pending) == 1:
            self._dirty.set()
        elif len(self._pending) >= self._config.flush_batch:
            self._urgent.set()
        if not self._alerted and self._size >= self._alert_size:
            self._alerted = True
            logger.warning("write-behind holds {} writes, {:.0%} of max_pending; is the store keeping up?",
                           self._size, self._size / self._config.max_pending)
        return entry

    # --------------------------------------------------------------- flush waits

    async def flush(self) -> None:
        """Wait until every change recorded before this call is committed or refused."""
        target = self._ticket
        while self._oldest_ticket() <= target:
            self._urgent.set()
            await self._settled.park()
        await trio.lowlevel.checkpoint()

    def oldest_age(self) -> float:
        """Seconds since the oldest change not yet committed was recorded (0 when there is none)."""
        for buffer in (*(batch.entries for batch in self._inflight), self._pending):
            for entry in buffer.values():  # the first is the oldest
                return trio.current_time() - entry.since
        return 0.0

    def _oldest_ticket(self) -> float:
        for buffer in (*(batch.entries for batch in self._inflight), self._pending):
            for entry in buffer.values():  # the first is the oldest
                return entry.ticket
        return float("inf")

    # ------------------------------------------------------------------ flusher

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher: runs until cancelled, starting batches in their own tasks."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                while len(self._inflight) >= self._config.flush_concurrency:
                    await self._settled.park()
                while not self._pending:
                    self._dirty = trio.Event()
                    await self._dirty.wait()
                oldest = next(iter(self._pending.values()))
                with trio.move_on_at(oldest.since + self._config.flush_interval):
                    await self._urgent.wait()
                self._urgent = trio.Event()
                batch = _Batch(self._take())
                # Sets built from dicts reuse the keys' stored hashes (UUID's own
                # __hash__ is Python code): cheap next to the write.
                ids = set(batch.entries)
                earlier = [other for other in self._inflight if not ids.isdisjoint(set(other.entries))]
                self._inflight.append(batch)
                nursery.start_soon(self._flush_batch, batch, earlier)

    def _take(self) -> dict[UUID, _Entry]:
        """Move the oldest `flush_batch` entries out of the buffer."""
        pending = self._pending
        if len(pending) <= self._config.flush_batch:
            # Everything goes: hand the dict over rather than move each entry.
            self._pending = {}
            return pending
        taken = list(islice(pending, self._config.flush_batch))
        return {session_id: pending.pop(session_id) for session_id in taken}

    async def _flush_batch(self, batch: _Batch, earlier: list[_Batch]) -> None:
        """Write one batch, after the earlier ones it shares sessions with."""
        inflight = batch.entries
        try:
            for other in earlier:
                await other.written.wait()
            # Built only now: a row an earlier batch had refused makes the
            # same session's row here a full one (see _reject).
            write_batch = _batch_of(inflight.values(), self._owner, feed=self._feed)
            await self._write_isolating(write_batch, inflight, whole=True)
        finally:
            # Cancellation (a shutdown that ran out of time) leaves the rows
            # unwritten; they are already counted as lost by the caller.
            spare = self._spare
            keep = 2 * self._config.flush_batch
            for entry in inflight.values():
                self._size -= entry.size()
                if len(spare) < keep:  # reset when reused; let go of what it holds now
                    entry.row = None
                    entry.messages = None
                    entry.waiters = None
                    entry.events = None
                    spare.append(entry)
            self._inflight.remove(batch)
            batch.written.set()
            if self._size < self._alert_size:
                self._alerted = False
            self._space.unpark_all()
            self._settled.unpark_all()

    async def _write_isolating(self, batch: WriteBatch, inflight: dict[UUID, _Entry], *,
                               whole: bool = False) -> None:
        """Write a batch; if the database refuses it, split it until the bad rows are found.

        `inflight`: the entries being written, of which `batch` is all
        (`whole`) or part.
        """
        try:
            fenced = await self._retry.write(self._store.health_check, self._store.write, batch)
        except WriteRejected as exc:
            ids = batch.session_ids()
            if len(ids) == 1:
                self._reject(inflight[ids[0]], batch, exc)
                return  # noqa: ASYNC910  the refused write above checkpointed
            first, second = batch.split()
            await self._write_isolating(first, inflight)
            await self._write_isolating(second, inflight)
            return
        if fenced:
            self._fence(fenced, inflight)
            refused = set(fenced)
            batch = batch.only(lambda session_id: session_id not in refused)
            whole = False
        self._counters.flush_batches += 1
        self._counters.flushed_sessions += len(batch.sessions) + len(batch.touched) + len(batch.deletes)
        self._counters.flushed_messages += len(batch.messages)
        if self._refused:
            for session_id in batch.session_ids():
                self._refused.pop(session_id, None)
        # In buffer or batch order (not a set's hash order): the order waiters
        # wake in is part of the interleaving, and a test must be able to replay it.
        entries = inflight.values() if whole else [inflight[i] for i in batch.session_ids()]
        for entry in entries:
            entry.settled = True
            for waiter in entry.waiters or ():
                waiter.settle(None)

    def _fence(self, fenced: Iterable[UUID], inflight: dict[UUID, _Entry]) -> None:
        """Another instance owns these sessions now: their changes here were not (and will not be) written."""
        for session_id in fenced:
            entry = inflight[session_id]
            self._counters.fenced_sessions += 1
            logger.error("session {} was taken over by another instance before {} of its writes were "
                         "committed; they were dropped", session_id, entry.size())
            error = SessionMoved(f"session {session_id} moved to another runtime before this change "
                                 "was committed; it was not stored: retry the call")
            entry.settled = True
            for waiter in entry.waiters or ():
                waiter.settle(error)
            self.drop(session_id, error)
            if self.on_fenced is not None:
                self.on_fenced(session_id)

    def _reject(self, entry: _Entry, batch: WriteBatch, exc: WriteRejected) -> None:
        session_id = entry.session_id
        self._counters.rejected_rows += len(batch)
        logger.error("the database refused session {} ({} rows), dropped: {}", session_id, len(batch), exc)
        if entry.row is not None:
            self._refused[session_id] = max(self._refused.get(session_id, 0), entry.row.version)
        else:
            self._refused.setdefault(session_id, 0)
        for later in (*(batch.entries.get(session_id) for batch in self._inflight),
                      self._pending.get(session_id)):
            if later is not None:
                later.full = True
        entry.refused = True
        entry.settled = True
        for waiter in entry.waiters or ():
            waiter.settle(exc)
        if self.on_refused is not None:
            self.on_refused(session_id, entry.row)


def _batch_of(entries: Iterable[_Entry], owner: Owner, *, feed: bool) -> WriteBatch:
    """The batch that writes `entries`; with `feed`, and their events.

    A session's events are its lifecycle events (none is ever merged away),
    then one "updated" with the newest row if anything changed after the
    last of them: one "updated" event per flushed range of versions.
    """
    sessions: list[Session] = []
    events: list[SessionEvent] = []
    touched: list[Session] = []
    messages: list[tuple[UUID, Message]] = []
    deletes: list[UUID] = []
    created: list[UUID] = []
    owned = owner.owned
    epochs = {}
    for entry in entries:
        # 0 (never an epoch) for a session no longer owned: the store fences it.
        epochs[entry.session_id] = owned.get(entry.session_id, 0)
        if entry.created:
            created.append(entry.session_id)
        if entry.deleted:
            deletes.append(entry.session_id)
        else:
            assert entry.row is not None
            (sessions if entry.full else touched).append(entry.row)
            if entry.messages:
                messages.extend((entry.session_id, m) for m in entry.messages)
        if feed:
            if entry.events:
                events.extend(entry.events)
            if entry.changed and entry.row is not None:
                events.append(SessionEvent("updated", entry.row))
    return WriteBatch(tuple(sessions), tuple(messages), tuple(deletes), tuple(touched),
                      owner.instance, epochs, frozenset(created), tuple(events))
