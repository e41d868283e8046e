"""The `Store` protocol, and what a store call carries (`MemoryStore` is in `_memory`).

A store is the system of record, and the coordination engine of the
runtimes that share it. The runtime talks to it from the write-behind
flusher (`write`), when it activates a session (`acquire`, `load`), expires
sessions that are not resident (`load_sessions`, `claim`), lists sessions
(`list`) or starts (`free_deadlines`), gives a session a chat (`place`); and, for ownership, from its lease
and hand-off tasks (`register`, `renew`, `leave`, `request_handoff`,
`handoff_requests`, `grant`, `wait_for_notice`). `_ownership` describes the
protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final, Protocol, runtime_checkable
from uuid import UUID

from ._errors import WriteRejected
from ._model import FeedEvent, Message, Session, SessionEvent

#: What one active session per chat is keyed by: `(user_id, agent, chat_id)`.
ChatKey = tuple[str, str, str]


def dated_after(row: Session, ended_at: datetime) -> Session:
    """A new session's row with its times moved a microsecond past `ended_at` (see `Store.place`)."""
    shift = ended_at - row.created_at + timedelta(microseconds=1)
    return replace(row, created_at=row.created_at + shift, updated_at=row.updated_at + shift,
                   last_activity=row.last_activity + shift, expires_at=row.expires_at + shift)


def chat_key(session: Session) -> ChatKey | None:
    """The chat an active session holds; None for an inactive one, or one bound to no chat."""
    if session.chat_id is None or not session.is_active:
        return None
    return session.user_id, session.agent, session.chat_id


class ChatTaken(WriteRejected):
    """A write would give a chat a second active session (`Store.place`, `Store.write`).

    `holder`: the session that has the chat, when the store knows it.
    """

    def __init__(self, message: str, holder: UUID | None = None) -> None:
        super().__init__(message)
        self.holder = holder


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

    Fencing: with `owner` set, the batch is written by that instance, and
    each session in it only where the stored row still names `owner` and
    the epoch `epochs` gives for it (checked under the row's lock). A row
    that is not stored is written only if it is in `created` (a touched row
    or an update of a missing session was deleted by another owner). The
    sessions that fail the check are written not at all, messages included;
    `write` returns their ids. With `owner` None (tools, contract tests)
    nothing is fenced.

    `events`: the durable feed's events of the batch's changes (empty when
    the feed is off), in the same transaction, for the sessions written (a
    fenced session's events are left out with it). Lifecycle events
    (created, ended, expired, deleted) carry their own snapshot, a
    session's in version order, and are skipped where the feed holds
    `(session, version, kind)` already. An "updated" event, at most one per
    session and after its lifecycle ones, stands for the session's row in
    `sessions` or `touched`: it is written with that row as stored, and only
    if the version guard let the row through. Either way a retry whose
    first try committed adds no second copy.
    """

    sessions: tuple[Session, ...]
    messages: tuple[tuple[UUID, Message], ...]
    deletes: tuple[UUID, ...]
    touched: tuple[Session, ...] = ()
    owner: UUID | None = None
    epochs: Mapping[UUID, int] = field(default_factory=dict)
    created: frozenset[UUID] = frozenset()
    events: tuple[SessionEvent, ...] = ()

    def split(self) -> tuple[WriteBatch, WriteBatch]:
        """Two halves by session id (messages follow their session), to isolate a bad row."""
        ids = [*(s.id for s in self.sessions), *(s.id for s in self.touched), *self.deletes]
        first = set(ids[: len(ids) // 2])

        def half(in_first: bool) -> WriteBatch:
            return self.only(lambda session_id: (session_id in first) == in_first)

        return half(True), half(False)

    def only(self, keep: Callable[[UUID], bool]) -> WriteBatch:
        """The part of the batch for the sessions `keep` accepts (messages follow their session)."""
        return WriteBatch(
            tuple(s for s in self.sessions if keep(s.id)),
            tuple(m for m in self.messages if keep(m[0])),
            tuple(d for d in self.deletes if keep(d)),
            tuple(s for s in self.touched if keep(s.id)),
            self.owner, self.epochs, self.created,
            tuple(e for e in self.events if keep(e.session.id)),
        )

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


def fenced_sessions(batch: WriteBatch, stored: Mapping[UUID, tuple[UUID | None, int]],
                    among: Iterable[UUID] | None = None) -> list[UUID]:
    """The sessions of `batch` (which has an owner) that fail the fence, in id order.

    `stored`: `(owner, epoch)` of each of the batch's sessions that is stored.
    `among`: the sessions to check (by default every one the batch writes,
    deletes or appends messages to). The rule is `WriteBatch`'s: a stored
    row must name the batch's owner and the session's epoch; a row not
    stored may be written only if the batch creates it (a delete of it is a
    no-op).
    """
    if among is None:
        among = (*batch.session_ids(), *(session_id for session_id, _ in batch.messages))
    expected_owner, epochs = batch.owner, batch.epochs
    fenced = []
    for session_id in sorted(set(among), key=_uuid_int):
        found = stored.get(session_id)
        if found is None:
            if session_id not in batch.created and session_id not in batch.deletes:
                fenced.append(session_id)
        elif found != (expected_owner, epochs.get(session_id, 0)):
            fenced.append(session_id)
    return fenced


def _uuid_int(session_id: UUID) -> int:
    return session_id.int  # sorts as UUID does, but compared in C


@dataclass(frozen=True, slots=True)
class Acquired:
    """`Store.acquire` took the session (or found it already this instance's) under `epoch`."""

    epoch: int
    row: Session
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Joined:
    """`Store.register`'s answer: whether other instances were live, and the store's time after it."""

    #: Other instances were live: the new one commits each create before returning it.
    shared: bool
    #: The store's time (POSIX seconds) once the registration was committed (`Store.unaware`).
    at: float


@dataclass(frozen=True, slots=True)
class Busy:
    """`Store.acquire` found the session owned by `owner`, a live instance."""

    owner: UUID


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

    async def write(self, batch: WriteBatch) -> tuple[UUID, ...]:
        """Apply one batch atomically (see `WriteBatch`); return the ids of the sessions fenced.

        The runtime writes up to `flush_concurrency` batches at once; batches
        written at the same time never share a session. A batch that would
        leave two active sessions on one chat (`chat_key`) raises `ChatTaken`.
        """
        ...

    async def place(self, row: Session, instance: UUID, epoch: int, *, created: bool,
                    event: bool = False) -> Session | UUID:
        """Write `row` whole, now, unless another active session holds its chat; then return that one's id.

        The write-through of everything that gives a session a chat
        (`create` with a chat, `session_for_chat`, `update` of an active
        session's agent or chat): at most one active session per `chat_key`,
        decided here, before the call that asked is answered. Fenced as a
        `WriteBatch` of `instance` is, with `epoch` for the session; a row
        not stored is inserted only when `created` (under `instance` and
        `epoch`). Writing a row already stored at its version changes nothing
        (a retry after a lost answer).

        A new session is dated after every session of its chat that ended:
        if one ended after `row.created_at` (its end was committed while this
        write waited for it), the row's times move forward past that end.
        Returns the row as stored.

        `event`: also record the change in the durable feed, in the same
        transaction ("created" when `created`, else "updated"), as
        `WriteBatch.events` are.

        Raises:
            SessionMoved: the stored row names another owner or epoch.
        """
        ...

    # The durable event feed (see `_feed`).

    async def read_events(self, after: tuple[int, int] | None, limit: int) -> list[FeedEvent]:
        """Up to `limit` events of the feed after the position `after` (None: from the start), in order.

        A position is `(xid, id)`: the writing transaction and the event's
        number in the store. The order is by position; it is the commit
        order of each session's events, and the answer never holds an event
        whose transaction may still be running, nor does any event commit
        later at a position before one returned: a reader that goes on from
        the last position it was given misses nothing (see `_feed`).
        Each event's `cursor` encodes its position (`_cursor.encode_feed_cursor`).
        """
        ...

    async def prune_events(self, older_than: float, limit: int) -> int:
        """Of the feed's `limit` first events by position, delete those at least `older_than`
        seconds old in the store's time; return how many were deleted."""
        ...

    # Ownership (see `_ownership`). Leases and liveness are judged in the
    # store's own time, never by comparing two runtimes' clocks.

    async def register(self, instance: UUID, lease: float) -> Joined:
        """Record a new live instance whose lease runs `lease` seconds from now.

        It is *shared* from the start (it commits each create before
        returning it) if other instances are live.
        """
        ...

    async def renew(self, instance: UUID, lease: float, *, shared: bool = False) -> int | None:
        """Extend a live instance's lease to `lease` seconds from now, recording whether it is shared.

        Returns how many other instances are live (in the same snapshot), or
        None if this one's lease lapsed or it left (final).
        """
        ...

    async def unaware(self, instance: UUID, since: float) -> int:
        """How many other live instances may hold a create unflushed that one started at `since` would miss.

        Those not shared, or shared since a renewal before the store time
        `since` (`Joined.at`); not those shared since their own start, which
        never held one. A renewal that finds no other live instance records
        its instance alone in the same step.
        """
        ...

    async def leave(self, instance: UUID) -> None:
        """Mark the instance gone: every session it owns is free at once."""
        ...

    async def acquire(self, session_id: UUID, instance: UUID, *, messages: int) -> Acquired | Busy | None:
        """Take the session if no live instance owns it (epoch + 1), or find it `instance`'s.

        Returns the row and its newest `messages` messages under the epoch, or
        `Busy` with the live owner, or None if no such session is stored.
        """
        ...

    async def claim(self, session_ids: Sequence[UUID], instance: UUID) -> dict[UUID, tuple[Session, int]]:
        """Acquire those of `session_ids` that are stored and free (or `instance`'s).

        Returns the row and the new epoch of each acquired session.
        """
        ...

    async def free_deadlines(self, before: float | None = None) -> list[tuple[UUID, float]]:
        """Like `live_deadlines`, for active sessions no live instance owns; only those due
        before the POSIX time `before` when it is given."""
        ...

    async def request_handoff(self, session_id: UUID, owner: UUID, requester: UUID) -> None:
        """Ask `owner` to hand the session to `requester` (the newest request wins), and wake it."""
        ...

    async def handoff_requests(self, instance: UUID) -> list[tuple[UUID, UUID]]:
        """`(session id, requester)` of every request addressed to `instance`."""
        ...

    async def grant(self, session_id: UUID, instance: UUID, epoch: int, to: UUID) -> bool:
        """Move the session from `instance` (at `epoch`) to `to` under epoch + 1, drop its
        request, and wake `to`; False if `instance` no longer owned it at `epoch`."""
        ...

    async def drop_handoff(self, session_id: UUID, instance: UUID) -> None:
        """Forget a request addressed to `instance` that it cannot serve (it does not own the session)."""
        ...

    async def wait_for_notice(self, instance: UUID) -> None:
        """Return when `instance` is woken by a request or a grant.

        Wake-ups may be lost (or come for nothing): callers poll as well,
        waiting under a timeout.
        """
        ...

    async def list(self, query: ListQuery) -> list[Session]:
        """Up to `query.limit` sessions matching the filters, newest first."""
        ...

    async def health_check(self) -> None:
        """Return when the store answers; raise `StoreUnavailable` otherwise."""
        ...
