"""`PostgresStore`: the `Store` protocol on PostgreSQL.

Which statement answers which call, and how its rows become snapshots. The
statements are in `_sql`, the encoding in `_rows`; running them from Trio
is the bridge's job (`_bridge`), imported only when a store connects, so
that `import trio_sessions` does not load asyncpg.
"""

from __future__ import annotations

import builtins
import os
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from uuid import UUID

import trio

from .._config import RuntimeConfig, secret_url
from .._errors import InvalidArgument, SessionMoved, StoreUnavailable, WriteRejected
from .._migrations import load_migrations
from .._model import FeedEvent, Message, Session, SessionEvent
from .._secrets import SecretUrl
from .._store import Acquired, Busy, ChatTaken, Joined, ListQuery, WriteBatch, dated_after
from . import _rows as rows
from . import _sql as sql
from . import _writes as writes

if TYPE_CHECKING:
    from ._bridge import Database, Script


class PostgresStore:
    """A `Store` on PostgreSQL: the system of record of trio-sessions.

    It behaves exactly like `MemoryStore` (the same contract tests run on
    both). Use it inside `async with store.connect():`, which opens the
    connection pool and applies the schema migrations; calls outside it raise
    `RuntimeError`. A store object can connect again after it has closed,
    but not twice at once.

    Every call is a Trio checkpoint. Cancelling a call cancels its query; a
    cancelled `write` rolls back (or, if the commit was already under way,
    may have committed: writes are idempotent, so retrying is safe).

    Args:
        url: an asyncpg connection URL, e.g. `postgresql://user@host/db` or
            `postgresql://postgres:@/postgres?host=/path/to/socket/dir`, or a
            `SecretUrl` (such as `RuntimeConfig.database_url`); kept as a
            `SecretUrl`, shown only redacted.
        config: the pool settings (`pool_min`, `pool_max`, `connect_timeout`,
            `command_timeout`, `max_inactive_connection_lifetime`); defaults
            when None.
        migrate: apply pending migrations on connecting (the default); when
            False, only check that every migration is recorded, so that a
            user with no right to create tables can use the store (apply
            them with `trio-sessions migrate`).
    """

    def __init__(self, url: str | SecretUrl, config: RuntimeConfig | None = None, *, migrate: bool = True
                 ) -> None:
        secret = secret_url(url)
        if isinstance(secret, str):
            raise InvalidArgument("url", secret)
        self._url = secret
        self._config = RuntimeConfig() if config is None else config
        self._migrate = bool(migrate)
        self._in_use = False
        self._db: Database | None = None
        # Wake-ups of each instance (see wait_for_notice), set from the LISTEN callback.
        self._notices: dict[UUID, trio.Event] = {}

    def __repr__(self) -> str:
        return f"<PostgresStore {self._url} {'connected' if self._db else 'closed'}>"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        """Open the pool and apply pending migrations (or check them); close the pool on exit.

        Entering blocks until the pool's first `pool_min` connections are open
        and the schema is current. Leaving closes the pool, shielded from
        cancellation, within a few seconds; after that the connections are
        dropped. An exception raised by the body comes out as it was raised
        (not wrapped in trio-asyncio's exception groups).

        Raises:
            ConfigurationError: the URL cannot be parsed, the password, database
                or role is wrong, a privilege is missing, or (with
                `migrate=False`) a migration is not applied. The message names
                host, port, database and user, never the password.
            StoreUnavailable: the server cannot be reached or does not answer
                within `connect_timeout` (on entry).
            RuntimeError: the store is already connected.
        """
        if self._in_use:
            raise RuntimeError("this PostgresStore is already connected; make one store per runtime")
        self._in_use = True
        try:
            from ._bridge import open_database  # loads asyncpg: only once PostgreSQL is used

            async with open_database(self._url, self._config, load_migrations(), migrate=self._migrate) as db:
                self._db = db
                try:
                    yield
                finally:
                    self._db = None
        finally:
            self._in_use = False

    async def load(self, session_id: UUID, *, messages: int) -> tuple[Session, tuple[Message, ...]] | None:
        """The stored session and its newest `messages` messages, oldest first.

        One statement, so one round trip and one snapshot: the messages match
        the row even while another writer commits.
        Returns None when no such session is stored.
        """
        row = await self._connected().fetchrow(sql.LOAD_SESSION, session_id, messages)
        if row is None:
            return None
        seqs = row[18]
        loaded = () if seqs is None else tuple(map(Message, seqs, row[19], row[20], row[21]))
        return rows.session_from_row(row), loaded

    async def load_sessions(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        """The stored rows (without messages) of those of `session_ids` that exist, in one statement."""
        if not session_ids:
            await trio.lowlevel.checkpoint()
            return {}
        found = await self._connected().fetch(sql.LOAD_SESSIONS, list(session_ids))
        return {row[0]: rows.session_from_row(row) for row in found}

    async def load_messages(self, session_id: UUID, *, limit: int, up_to_seq: int) -> tuple[Message, ...]:
        """The newest `limit` messages with `seq <= up_to_seq`, oldest first."""
        found = await self._connected().fetch(sql.NEWEST_MESSAGES_UP_TO, session_id, up_to_seq, limit)
        return rows.messages_from_rows(found)

    async def live_deadlines(self) -> list[tuple[UUID, float]]:
        """`(id, expires_at.timestamp())` of every active session, by `expires_at`."""
        found = await self._connected().fetch(sql.LIVE_DEADLINES)
        return [tuple(row) for row in found]  # (uuid, float8): see the SQL

    async def write(self, batch: WriteBatch) -> tuple[UUID, ...]:
        """Apply one batch in one transaction (see `WriteBatch`); return the sessions fenced.

        Five kinds of statement run, each over many rows: the session rows
        (upserts of new sessions, updates of the others), the activity update
        of touched rows, the message appends, and the deletes of messages and
        rows. A batch with an owner carries the fence in its row statements
        (`UPSERT_OWNED`, `UPDATE_OWNED`, `TOUCH_OWNED`): each writes a row
        only where it still names the owner and the session's epoch, under
        the row's lock, and returns the rows it wrote. The few it did not
        write (retries, fenced rows), the sessions of messages that came
        without their row, and the deletes are then locked and read
        (`LOCK_FOR_WRITE`): those whose owner or epoch differ are fenced, and
        their messages and deletes left out. Rows are sent in id order, so
        two stores writing overlapping batches lock them in the same order.

        A batch whose feed events include lifecycle ones (which must come
        before the rows' own events) locks and reads all its rows first, then
        writes the rest without the fence in the statements.

        Raises:
            WriteRejected: PostgreSQL refused the data (SQLSTATE class 22 or
                23, e.g. a NUL character); nothing of the batch was written.
                `ChatTaken` when it is the unique index of active chats.
            StoreUnavailable: a transient failure; the batch may be retried.
        """
        try:
            return await self._write(batch)
        except WriteRejected as exc:
            from ._bridge import violated_constraint

            if violated_constraint(exc) == sql.CHAT_INDEX:
                raise ChatTaken(str(exc)) from exc.__cause__
            raise

    async def _write(self, batch: WriteBatch) -> tuple[UUID, ...]:
        db = self._connected()
        if not len(batch):
            await trio.lowlevel.checkpoint()
            return ()
        fenced: list[UUID] = []
        if batch.owner is None:
            await db.transaction(writes.unfenced(batch))
        elif any(event.kind != "updated" for event in batch.events):
            await db.transaction(writes.locked(batch, fenced))
        else:
            await db.transaction(writes.fenced(batch, fenced))
        return tuple(fenced)

    async def place(self, row: Session, instance: UUID, epoch: int, *, created: bool,
                    event: bool = False) -> Session | UUID:
        """Write one row now, fenced as `write` does; the chat's holder instead if it has one.

        The unique index `sessions_chat_active_idx` decides: of two places
        racing for one chat in two processes, the second waits for the
        first's commit and finds the chat held. A new session is inserted
        with `ON CONFLICT DO NOTHING` (a chat found held is an answer, not an
        error), then dated after the latest end of its chat if one came after
        its date (the insert waited for that end's commit); a stored one is
        written as a batch of one, whose violation of the index is the
        answer. The holder is read right after; if it ended in between
        (nothing holds the chat any more), the write is tried again, a few
        times.

        Raises:
            SessionMoved: fenced (another owner, or another epoch).
            StoreUnavailable: a transient failure, or a chat that kept changing hands.
        """
        db = self._connected()
        events = (SessionEvent("created" if created else "updated", row),) if event else ()
        batch = WriteBatch((row,), (), (), owner=instance, epochs={row.id: epoch}, events=events)
        for _ in range(3):
            if created:
                if await self._insert_new(row, instance, epoch, events):
                    return await self._dated(row, instance)
            else:
                try:
                    fenced = await self.write(batch)
                except ChatTaken:
                    pass
                else:
                    if fenced:
                        raise SessionMoved(f"session {row.id} is not this runtime's to write (another one "
                                           "took it)")
                    return row
            holder = await db.fetchrow(sql.CHAT_HOLDER, row.user_id, row.agent, row.chat_id, row.id)
            if holder is not None:
                return holder[0]  # type: ignore[no-any-return]
            if created and (stored := await db.fetchrow(sql.SESSION_STORED, row.id)) is not None:
                return rows.session_from_row(stored)  # a retry: the first try had committed it
            # It ended between the two statements: nobody holds the chat now.
        raise StoreUnavailable(f"the chat of session {row.id} kept changing hands; retry the call")

    async def _dated(self, row: Session, instance: UUID) -> Session:
        """The new row, moved past the latest end of its chat if that came after its date."""
        db = self._connected()
        latest = await db.fetchrow(sql.LATEST_CHAT_END, row.user_id, row.agent, row.chat_id, row.id,
                                   row.created_at)
        if latest is None or latest[0] is None:
            return row
        row = dated_after(row, latest[0])
        await db.fetch(sql.REDATE_NEW_SESSION, row.id, instance, row.created_at, row.expires_at)
        return row

    async def _insert_new(self, row: Session, instance: UUID, epoch: int,
                          events: Sequence[SessionEvent]) -> bool:
        """Insert a new session unless its chat is held (with its feed event, if any); whether it was."""
        inserted: list[rows.Row] = []

        def script() -> Script:
            found = yield sql.INSERT_NEW_SESSION, [*rows.session_columns([row]), instance, [epoch]]
            inserted.extend(found)
            if found and events:
                yield sql.INSERT_EVENTS, rows.event_columns(events)

        await self._connected().transaction(script())
        return bool(inserted)

    async def list(self, query: ListQuery) -> list[Session]:
        """Up to `query.limit` sessions matching the filters, newest first.

        Order is `(created_at, id)` descending; `query.after` is the
        `(created_at, id)` of the last session of the previous page.
        """
        present = (query.user_id is not None, query.agent is not None, query.chat_id is not None,
                   query.active is not None, query.after is not None)
        args: list[object] = [value for value in (query.user_id, query.agent, query.chat_id, query.active)
                              if value is not None]
        if query.after is not None:
            args.extend(query.after)
        args.append(query.limit)
        found = await self._connected().fetch(sql.LIST_SQL[present], *args)
        return [rows.session_from_row(row) for row in found]

    # ------------------------------------------------------------ the feed

    async def read_events(self, after: tuple[int, int] | None, limit: int) -> builtins.list[FeedEvent]:
        """The committed events after `after`, by position (`READ_EVENTS`: below the snapshot's xmin)."""
        xid, event_id = (0, 0) if after is None else after
        found = await self._connected().fetch(sql.READ_EVENTS, str(xid), event_id, limit)
        return [rows.event_from_row(row) for row in found]

    async def prune_events(self, older_than: float, limit: int) -> int:
        """Delete the old ones among the `limit` first events (`PRUNE_EVENTS`); how many."""
        row = await self._connected().fetchrow(sql.PRUNE_EVENTS, older_than, limit)
        assert row is not None  # an aggregate always answers one row
        return int(row[0])

    # ----------------------------------------------------------- ownership

    async def register(self, instance: UUID, lease: float) -> Joined:
        """Record the instance and its lease (on the dedicated connection), and listen for its wake-ups."""
        control = self._connected().control
        await control.fetchval(sql.FORGET_INSTANCES)
        host = socket.gethostname()[:255]
        shared = await control.fetchval(sql.REGISTER_INSTANCE, instance, lease, host, os.getpid())
        await control.listen(_channel(instance), lambda: self._wake(instance))
        return Joined(shared=bool(shared), at=await control.fetchval(sql.STORE_NOW))

    async def renew(self, instance: UUID, lease: float, *, shared: bool = False) -> int | None:
        peers: int | None = await self._connected().control.fetchval(sql.RENEW_LEASE, instance, lease, shared)
        return peers

    async def unaware(self, instance: UUID, since: float) -> int:
        count: int = await self._connected().control.fetchval(sql.UNAWARE, instance, since)
        return count

    async def leave(self, instance: UUID) -> None:
        control = self._connected().control
        await control.fetchval(sql.LEAVE, instance)
        await control.unlisten(_channel(instance))

    async def acquire(self, session_id: UUID, instance: UUID, *, messages: int) -> Acquired | Busy | None:
        db = self._connected()
        row = await db.fetchrow(sql.ACQUIRE, session_id, instance, messages)
        if row is not None:
            seqs = row[18]
            loaded = () if seqs is None else tuple(map(Message, seqs, row[19], row[20], row[21]))
            return Acquired(row[22], rows.session_from_row(row), loaded)
        owner = await db.fetchrow(sql.OWNER_OF, session_id)
        if owner is None:
            return None
        if owner[0] is None or owner[0] == instance:  # freed, or granted, since: try again
            return await self.acquire(session_id, instance, messages=messages)
        return Busy(owner[0])

    async def claim(self, session_ids: Sequence[UUID], instance: UUID) -> dict[UUID, tuple[Session, int]]:
        if not session_ids:
            await trio.lowlevel.checkpoint()
            return {}
        found = await self._connected().fetch(sql.CLAIM, list(session_ids), instance)
        return {row[0]: (rows.session_from_row(row), row[18]) for row in found}

    async def free_deadlines(self, before: float | None = None) -> builtins.list[tuple[UUID, float]]:
        found = await self._connected().fetch(sql.FREE_DEADLINES, before)
        return [tuple(row) for row in found]

    async def request_handoff(self, session_id: UUID, owner: UUID, requester: UUID) -> None:
        await self._connected().fetch(sql.REQUEST_HANDOFF, session_id, owner, requester, _channel(owner))

    async def handoff_requests(self, instance: UUID) -> builtins.list[tuple[UUID, UUID]]:
        found = await self._connected().fetch(sql.HANDOFF_REQUESTS, instance)
        return [(row[0], row[1]) for row in found]

    async def grant(self, session_id: UUID, instance: UUID, epoch: int, to: UUID) -> bool:
        found = await self._connected().fetch(sql.GRANT, session_id, instance, epoch, to, _channel(to))
        return bool(found)

    async def drop_handoff(self, session_id: UUID, instance: UUID) -> None:
        await self._connected().fetch(sql.DROP_HANDOFF, session_id, instance)

    async def wait_for_notice(self, instance: UUID) -> None:
        event = self._notices.get(instance)
        if event is None:
            event = self._notices[instance] = trio.Event()
        await event.wait()

    def _wake(self, instance: UUID) -> None:
        event = self._notices.pop(instance, None)
        if event is not None:
            event.set()

    async def health_check(self) -> None:
        """Return when PostgreSQL answers `SELECT 1`.

        Raises:
            StoreUnavailable: any failure, transient or not.
        """
        await self._connected().health_check()

    def _connected(self) -> Database:
        if self._db is None:
            raise RuntimeError(
                "PostgresStore is not connected: use it inside `async with store.connect():`"
                " (did you forget open_runtime()?)")
        return self._db


def _channel(instance: UUID) -> str:
    """The NOTIFY channel that wakes one instance (made here from its UUID, never from input)."""
    return f"trio_sessions_{instance.hex}"
