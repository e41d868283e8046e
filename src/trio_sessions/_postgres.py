"""`PostgresStore`: the `Store` protocol on PostgreSQL, through asyncpg under trio-asyncio.

This is the only module that imports asyncio, asyncpg or trio_asyncio, and
the only one that knows SQL. The bridge works like this:

- `connect()` opens a trio-asyncio loop and keeps it on the store. Every call
  crosses into asyncio once, as `aio_as_trio(fn, loop=loop)(*args)`, where
  `fn` is one of the `_aio_*` coroutine functions below: they are the only
  code that runs on the asyncio side. The loop is passed explicitly because
  trio-asyncio otherwise finds it through a context variable that a Trio task
  started outside `open_loop()` lacks.
- asyncio objects (the pool, its connections) never outlive their loop: the
  pool is made inside `connect()` and closed before the loop is.
- Every value reaches SQL as a bind parameter. The SQL texts are constants
  (the `list` variants are built once, at import, from constant fragments);
  only `create_database` and `drop_database` put an identifier in SQL text,
  validated and quoted, because a database name cannot be a parameter.

Errors: a transient failure (connection lost or refused, server shutting down,
too many connections, serialization failure, deadlock, a timeout) raises
`StoreUnavailable` with the original chained; a data error raised by `write`
(SQLSTATE class 22 or 23) raises `WriteRejected`; anything else propagates
unchanged, because it is a bug.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeAlias, TypeVar
from uuid import UUID

import asyncpg
import trio
import trio_asyncio  # type: ignore[import-untyped]  # trio-asyncio ships no types

from ._config import RuntimeConfig
from ._errors import InvalidArgument, StoreUnavailable, WriteRejected
from ._migrations import MIGRATION_LOCK_KEY, load_migrations
from ._model import EMPTY_METADATA, JsonObject, Message, Note, Session, check_metadata, check_text
from ._store import ListQuery, WriteBatch

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

T = TypeVar("T")
R = TypeVar("R")

#: Seconds a pool may take to close on exit before its connections are dropped.
#: After the runtime has stopped no connection is in use, so closing takes
#: milliseconds; a close that hangs (PITFALLS: a pending cancel) is cut short.
POOL_CLOSE_TIMEOUT: Final = 5.0

#: `application_name` of every connection, as `pg_stat_activity` shows it.
_APPLICATION_NAME: Final = "trio-sessions"

#: Timeout of the single connection made by the admin helpers below.
ADMIN_CONNECT_TIMEOUT: Final = 10.0

_MICROSECOND: Final = timedelta(microseconds=1)

#: Rows per statement of a write: ~4 ms of encoding full rows (see _aio_write).
_ROWS_PER_STATEMENT: Final = 500

# ------------------------------------------------------------------------- SQL

# The columns of `sessions`, in the order of `Session`'s fields.
_SESSION_COLUMNS: Final = (
    "id, user_id, agent, chat_id, title, state, metadata, notes, is_active, message_count,"
    " created_at, updated_at, last_activity, expires_at, ended_at, end_reason, version, timeout"
)

# One statement upserts a whole batch: one array per column, unnested into rows.
# The WHERE of DO UPDATE is the version guard that makes retries and stale
# writers harmless (a row only ever moves to a newer version).
_UPSERT_SESSIONS: Final = f"""
INSERT INTO sessions ({_SESSION_COLUMNS})
SELECT id, user_id, agent, chat_id, title, state, metadata::jsonb, notes::jsonb, is_active,
       message_count, created_at, updated_at, last_activity, expires_at, ended_at, end_reason,
       version, timeout
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::boolean[], $10::integer[], $11::timestamptz[], $12::timestamptz[],
            $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[], $17::bigint[],
            $18::float8[])
     AS row ({_SESSION_COLUMNS})
ON CONFLICT (id) DO UPDATE SET
    user_id = EXCLUDED.user_id, agent = EXCLUDED.agent, chat_id = EXCLUDED.chat_id,
    title = EXCLUDED.title, state = EXCLUDED.state, metadata = EXCLUDED.metadata,
    notes = EXCLUDED.notes, is_active = EXCLUDED.is_active,
    message_count = EXCLUDED.message_count, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, last_activity = EXCLUDED.last_activity,
    expires_at = EXCLUDED.expires_at, ended_at = EXCLUDED.ended_at,
    end_reason = EXCLUDED.end_reason, version = EXCLUDED.version, timeout = EXCLUDED.timeout
WHERE sessions.version < EXCLUDED.version
"""

# Rows changed only by activity (WriteBatch.touched): five columns, not
# eighteen, under the same version guard; a row not stored stays missing.
# Touched rows come from activity alone, so `updated_at` is `last_activity`
# (WriteBatch), and `expires_at` comes as the microseconds after it: an
# integer times a microsecond is exact in PostgreSQL (below 2**53, and the
# longest timeout is 2**45 us), and time-only intervals add the same in every
# time zone. asyncpg encodes an integer in a quarter of a timestamp's time.
_TOUCH_SESSIONS: Final = """
UPDATE sessions AS s
SET last_activity = t.last_activity, updated_at = t.last_activity,
    expires_at = t.last_activity + t.expires_in * INTERVAL '1 microsecond',
    version = t.version, message_count = t.message_count
FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::integer[])
     AS t (id, last_activity, expires_in, version, message_count)
WHERE s.id = t.id AND s.version < t.version
"""

# A retried append finds its (session_id, seq) stored and is skipped; of two
# copies in one batch the first is kept (test_message_appends_are_idempotent).
_INSERT_MESSAGES: Final = """
INSERT INTO session_messages (session_id, seq, role, content, created_at)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::timestamptz[])
ON CONFLICT (session_id, seq) DO NOTHING
"""

_DELETE_MESSAGES: Final = "DELETE FROM session_messages WHERE session_id = ANY($1::uuid[])"
_DELETE_SESSIONS: Final = "DELETE FROM sessions WHERE id = ANY($1::uuid[])"

# A session's row and its newest $2 messages in one statement: one round trip,
# and one snapshot (a single statement sees one), so the messages match the
# row even while a flush commits. The messages come as four arrays, oldest
# first (NULL when there are none), which asyncpg decodes in C: cheaper than
# a row per message repeating the session's columns, or JSON.
_LOAD_SESSION: Final = f"""
SELECT {", ".join(f"s.{column.strip()}" for column in _SESSION_COLUMNS.split(","))},
       m.seqs, m.roles, m.contents, m.created
FROM sessions AS s CROSS JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) AS seqs, array_agg(role ORDER BY seq) AS roles,
           array_agg(content ORDER BY seq) AS contents, array_agg(created_at ORDER BY seq) AS created
    FROM (SELECT seq, role, content, created_at FROM session_messages
          WHERE session_id = s.id ORDER BY seq DESC LIMIT $2) AS newest
) AS m
WHERE s.id = $1
"""

_LOAD_SESSIONS: Final = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ANY($1::uuid[])"

_NEWEST_MESSAGES_UP_TO: Final = """
SELECT seq, role, content, created_at FROM session_messages
WHERE session_id = $1 AND seq <= $2 ORDER BY seq DESC LIMIT $3
"""

# extract() gives the exact numeric number of seconds (PostgreSQL 14 and later);
# its cast to float8 rounds correctly, as Python's datetime.timestamp() does,
# so the two are equal (test_live_deadlines_are_exact_timestamps).
_LIVE_DEADLINES: Final = """
SELECT id, extract(epoch FROM expires_at)::float8 FROM sessions WHERE is_active ORDER BY expires_at
"""

_HEALTH_CHECK: Final = "SELECT 1"

_CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED_MIGRATIONS: Final = "SELECT name FROM schema_migrations"
_RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (name) VALUES ($1)"
_TERMINATE_CONNECTIONS: Final = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = $1 AND pid <> pg_backend_pid()
"""
_LOCK_MIGRATIONS: Final = "SELECT pg_advisory_lock($1)"
_UNLOCK_MIGRATIONS: Final = "SELECT pg_advisory_unlock($1)"

# The optional equality filters of `list`, in `ListQuery` order; `after` and
# the limit follow them.
_LIST_FILTERS: Final = ("user_id = ${}", "agent = ${}", "chat_id = ${}", "is_active = ${}")


def _list_sql(present: tuple[bool, ...]) -> str:
    """The `list` query for one combination of present filters (run at import only)."""
    conditions = []
    count = 0
    for template, on in zip(_LIST_FILTERS, present[:4], strict=True):
        if on:
            count += 1
            conditions.append(template.format(count))
    if present[4]:  # keyset pagination: strictly after the last row of the previous page
        conditions.append(f"(created_at, id) < (${count + 1}, ${count + 2})")
        count += 2
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"SELECT {_SESSION_COLUMNS} FROM sessions{where}"
            f" ORDER BY created_at DESC, id DESC LIMIT ${count + 1}")


# Keyed by (user_id, agent, chat_id, active, after) "is given": 32 constant texts.
_LIST_SQL: Final = {present: _list_sql(present)
                    for present in itertools.product((False, True), repeat=5)}


# ----------------------------------------------------------------------- store


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
            `postgresql://postgres:@/postgres?host=/path/to/socket/dir`.
        config: the pool settings (`pool_min`, `pool_max`, `connect_timeout`,
            `command_timeout`, `max_inactive_connection_lifetime`); defaults
            when None.
    """

    def __init__(self, url: str, config: RuntimeConfig | None = None) -> None:
        self._url = check_text("url", url, max_chars=4096)
        self._config = RuntimeConfig() if config is None else config
        self._in_use = False
        self._loop: Any = None  # the trio-asyncio loop (untyped) while connected
        self._pool: Pool | None = None

    def __repr__(self) -> str:
        return f"<PostgresStore {_redact(self._url)} {'connected' if self._pool else 'closed'}>"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        """Open the pool and apply pending migrations; close the pool on exit.

        Entering blocks until the pool's first `pool_min` connections are open
        and the schema is current. Leaving closes the pool, shielded from
        cancellation, within `POOL_CLOSE_TIMEOUT` seconds; after that the
        connections are dropped. An exception raised by the body comes out
        as it was raised (not wrapped in trio-asyncio's exception groups).

        Raises:
            StoreUnavailable: the server cannot be reached (on entry).
            RuntimeError: the store is already connected.
        """
        if self._in_use:
            raise RuntimeError("this PostgresStore is already connected; make one store per runtime")
        self._in_use = True
        try:
            migrations = load_migrations()
            async with _asyncio_loop() as loop:
                with _store_errors():
                    # On a connection of its own, closed before the pool opens:
                    # the advisory lock is released by an explicit unlock (or
                    # by closing), never left to a pooled connection's reset.
                    await _run(loop, _aio_migrate_url, self._url, migrations, self._config.connect_timeout)
                    pool = await _run(loop, _aio_create_pool, self._url, self._config)
                try:
                    self._loop, self._pool = loop, pool
                    yield
                finally:
                    self._loop, self._pool = None, None
                    await _close_pool(loop, pool)
        finally:
            self._in_use = False

    async def load(self, session_id: UUID, *, messages: int) -> tuple[Session, tuple[Message, ...]] | None:
        """The stored session and its newest `messages` messages, oldest first.

        One statement, so one round trip and one snapshot: the messages match
        the row even while another writer commits.
        Returns None when no such session is stored.
        """
        row = await self._call(_aio_fetchrow, _LOAD_SESSION, session_id, messages)
        if row is None:
            return None
        seqs = row[18]
        loaded = () if seqs is None else tuple(map(Message, seqs, row[19], row[20], row[21]))
        return _session_from_row(row), loaded

    async def load_sessions(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        """The stored rows (without messages) of those of `session_ids` that exist, in one statement."""
        if not session_ids:
            await trio.lowlevel.checkpoint()
            return {}
        rows = await self._call(_aio_fetch, _LOAD_SESSIONS, list(session_ids))
        return {row[0]: _session_from_row(row) for row in rows}

    async def load_messages(self, session_id: UUID, *, limit: int, up_to_seq: int) -> tuple[Message, ...]:
        """The newest `limit` messages with `seq <= up_to_seq`, oldest first."""
        rows = await self._call(_aio_fetch, _NEWEST_MESSAGES_UP_TO, session_id, up_to_seq, limit)
        return _messages_from_rows(rows)

    async def live_deadlines(self) -> list[tuple[UUID, float]]:
        """`(id, expires_at.timestamp())` of every active session, by `expires_at`."""
        rows = await self._call(_aio_fetch, _LIVE_DEADLINES)
        return [tuple(row) for row in rows]  # (uuid, float8): see the SQL

    async def write(self, batch: WriteBatch) -> None:
        """Apply one batch in one transaction (see `WriteBatch`).

        Five kinds of statement run, each over many rows: the session
        upsert, the activity update of touched rows, the message appends,
        and the deletes of messages and rows. Rows are written in id order,
        so two stores writing overlapping batches lock rows in the same order
        instead of deadlocking.

        Raises:
            WriteRejected: PostgreSQL refused the data (SQLSTATE class 22 or
                23, e.g. a NUL character); nothing of the batch was written.
            StoreUnavailable: a transient failure; the batch may be retried.
        """
        loop, pool = self._connected()
        if not len(batch):
            await trio.lowlevel.checkpoint()
            return
        with _store_errors(rejectable=True):
            await _run(loop, _aio_write, pool, _by_id(batch.sessions), _by_id(batch.touched),
                       batch.messages, sorted(batch.deletes))

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
        rows = await self._call(_aio_fetch, _LIST_SQL[present], *args)
        return [_session_from_row(row) for row in rows]

    async def health_check(self) -> None:
        """Return when PostgreSQL answers `SELECT 1`.

        Raises:
            StoreUnavailable: any failure, transient or not.
        """
        loop, pool = self._connected()
        try:
            await _run(loop, _aio_fetch, pool, _HEALTH_CHECK)
        except Exception as exc:
            raise StoreUnavailable(f"PostgreSQL health check failed: {_describe(exc)}") from exc

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run `fn(pool, *args)` on the asyncio side, translating transient errors."""
        loop, pool = self._connected()
        with _store_errors():
            return await _run(loop, fn, pool, *args)

    def _connected(self) -> tuple[Any, Pool]:
        if self._pool is None:
            raise RuntimeError(
                "PostgresStore is not connected: use it inside `async with store.connect():`"
                " (did you forget open_runtime()?)")
        return self._loop, self._pool


# ----------------------------------------------------- the asyncio side
# These coroutine functions run on the trio-asyncio loop, called through `_run`.


async def _aio_create_pool(url: str, config: RuntimeConfig) -> Pool:
    # No type codecs are registered: JSON columns are encoded with json.dumps,
    # sent as text and cast to jsonb in SQL, and read back as text.
    return await asyncpg.create_pool(
        url,
        min_size=config.pool_min,
        max_size=config.pool_max,
        max_inactive_connection_lifetime=config.max_inactive_connection_lifetime,
        timeout=config.connect_timeout,
        command_timeout=config.command_timeout,
        server_settings={"application_name": _APPLICATION_NAME},
        reset=_aio_keep_session,
    )


async def _aio_keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset: nothing (asyncpg has already rolled back an open transaction).

    The default reset runs `SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL;` on every release: a round trip per call, for
    session state this store never creates (no advisory locks, cursors,
    LISTEN or SET on pooled connections: migrations run on a connection of
    their own). A connection that broke is still dropped on release:
    asyncpg terminates a closed connection instead of resetting it.
    """


async def _aio_apply_migrations(connection: Connection, migrations: Sequence[tuple[str, str]]) -> list[str]:
    """Apply the migrations `schema_migrations` lacks, in order; return their names.

    The session-level advisory lock makes concurrent runners (several
    processes starting at once) take turns: the first applies, the others
    then find every file recorded. Each file and its record commit together.
    The caller gives a connection of its own (not a pooled one) and closes
    it afterwards. On error the lock is not released here: an unlock on a
    broken or cancelled connection would only hide the error, and the lock
    goes anyway when the caller terminates the connection.
    """
    await connection.execute(_LOCK_MIGRATIONS, MIGRATION_LOCK_KEY)
    await connection.execute(_CREATE_SCHEMA_MIGRATIONS)
    applied = {row[0] for row in await connection.fetch(_APPLIED_MIGRATIONS)}
    newly_applied = []
    for name, sql in migrations:
        if name in applied:
            continue
        async with connection.transaction():
            await connection.execute(sql)
            await connection.execute(_RECORD_MIGRATION, name)
        newly_applied.append(name)
    await connection.execute(_UNLOCK_MIGRATIONS, MIGRATION_LOCK_KEY)
    return newly_applied


async def _aio_fetch(pool: Pool, sql: str, *args: object) -> list[asyncpg.Record]:
    return await pool.fetch(sql, *args)


async def _aio_fetchrow(pool: Pool, sql: str, *args: object) -> asyncpg.Record | None:
    return await pool.fetchrow(sql, *args)


async def _aio_write(pool: Pool, sessions: Sequence[Session], touched: Sequence[Session],
                     messages: Sequence[tuple[UUID, Message]], deletes: list[UUID]) -> None:
    # The same order as MemoryStore.write: rows, then messages, then deletes.
    # Each statement takes at most _ROWS_PER_STATEMENT rows, its arrays built
    # just before it: encoding holds the event loop (Trio's, that is), and a
    # whole batch of full rows would hold it ~15 ms (benchmarks/s5).
    async with pool.acquire() as connection, connection.transaction():
        await _aio_execute_in_parts(connection, _UPSERT_SESSIONS, _session_columns, sessions)
        await _aio_execute_in_parts(connection, _TOUCH_SESSIONS, _touched_columns, touched)
        await _aio_execute_in_parts(connection, _INSERT_MESSAGES, _message_columns, messages)
        if deletes:
            await connection.execute(_DELETE_MESSAGES, deletes)
            await connection.execute(_DELETE_SESSIONS, deletes)


async def _aio_execute_in_parts(connection: Connection, statement: str,
                                columns: Callable[[Sequence[R]], list[Sequence[Any]]],
                                rows: Sequence[R]) -> None:
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        await connection.execute(statement, *columns(rows[start:start + _ROWS_PER_STATEMENT]))


async def _aio_terminate(pool: Pool) -> None:
    pool.terminate()


async def _aio_execute_once(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url, timeout=ADMIN_CONNECT_TIMEOUT)
    try:
        await connection.execute(sql)
    finally:
        connection.terminate()  # nothing is pending: no need for a graceful close


async def _aio_fetchval_once(url: str, sql: str, *args: object) -> Any:
    connection = await asyncpg.connect(url, timeout=ADMIN_CONNECT_TIMEOUT)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        connection.terminate()


async def _aio_migrate_url(url: str, migrations: Sequence[tuple[str, str]], connect_timeout: float
                           ) -> list[str]:
    connection = await asyncpg.connect(url, timeout=connect_timeout,
                                       server_settings={"application_name": _APPLICATION_NAME})
    try:
        applied = await _aio_apply_migrations(connection, migrations)
    except BaseException:
        connection.terminate()  # also releases the advisory lock
        raise
    await connection.close()
    return applied


# ------------------------------------------------------- the bridge


async def _run(loop: Any, fn: Callable[..., Awaitable[T]], *args: object) -> T:
    """`await fn(*args)` on the asyncio loop `loop`, from Trio."""
    result: T = await trio_asyncio.aio_as_trio(fn, loop=loop)(*args)
    return result


@asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[Any]:
    """`trio_asyncio.open_loop()`, re-raising the body's own exception unwrapped.

    trio-asyncio wraps whatever leaves its loop in one exception group per
    internal nursery. When the group holds nothing but the exception that
    left our body, that exception is re-raised as it was, so callers see
    `StoreUnavailable` (or their own error) plainly.
    """
    escaped: BaseException | None = None
    try:
        async with trio_asyncio.open_loop() as loop:
            try:
                yield loop
            except BaseException as exc:
                escaped = exc
                raise
    except BaseExceptionGroup as group:
        if escaped is not None and _only_wraps(group, escaped):
            _reraise(escaped)
        raise


async def _close_pool(loop: Any, pool: Pool) -> None:
    """Close `pool` gracefully, shielded and within `POOL_CLOSE_TIMEOUT`; else terminate it."""
    with trio.move_on_after(POOL_CLOSE_TIMEOUT, shield=True):
        try:
            await _run(loop, pool.close)
        except Exception as exc:
            if not _is_transient(exc):
                raise
        else:
            return
    # Closing timed out or the connections broke: drop them (a no-op when
    # asyncpg already terminated the pool after a cancelled close).
    with trio.CancelScope(shield=True):
        await _run(loop, _aio_terminate, pool)


# ------------------------------------------------------- rows


# A JSON string (skipped) or a number json.dumps wrote with a positive exponent.
_STRING_OR_EXPONENT_NUMBER: Final = re.compile(r'("(?:[^"\\]|\\.)*")|(-?[0-9.]+e\+[0-9]+)')


#: One encoder for every row (json.dumps with options builds a new one per call).
_COMPACT_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

#: `json.dumps(text, ensure_ascii=False)` of a str, in C.
_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring


def _encode_metadata(metadata: Mapping[str, Any]) -> str:
    """JSON text for a jsonb column that reads back as the same Python values.

    jsonb keeps a number as an exact decimal and prints it without exponent,
    so a float that json.dumps writes as `1.5e+300` (any float of 1e16 or
    more) would read back as an int. Written positionally with a `.0`, it
    reads back as the same float (test_round_trip_of_every_field).

    Most sessions have no metadata; the others share one immutable
    `JsonObject` across their versions, which encodes itself once.
    """
    if not metadata:
        return "{}"
    text = metadata.json_text() if type(metadata) is JsonObject else _COMPACT_JSON.encode(metadata)
    if "e+" not in text:
        return text
    return _STRING_OR_EXPONENT_NUMBER.sub(_positional, text)


def _positional(match: re.Match[str]) -> str:
    string, number = match.groups()
    return string if number is None else format(float(number), ".1f")


def _encode_notes(notes: tuple[Note, ...]) -> str:
    """`[{"text": ..., "created_at": "<ISO-8601 UTC>"}, ...]`, as compact JSON.

    The same text as json.dumps of that list, built directly: an ISO
    timestamp needs no escaping, and most sessions have no notes at all.
    """
    if not notes:
        return "[]"
    return "[" + ",".join(
        f'{{"text":{_json_string(note.text)},"created_at":"{note.created_at.astimezone(UTC).isoformat()}"}}'
        for note in notes) + "]"


def _decode_notes(text: str) -> tuple[Note, ...]:
    return tuple(Note(item["text"], _as_utc(datetime.fromisoformat(item["created_at"])))
                 for item in json.loads(text))


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _session_columns(sessions: Sequence[Session]) -> list[Sequence[Any]]:
    """The 18 column arrays of `_UPSERT_SESSIONS`, rows in the order given."""
    rows = [
        (s.id, s.user_id, s.agent, s.chat_id, s.title, s.state, _encode_metadata(s.metadata),
         _encode_notes(s.notes), s.is_active, s.message_count, s.created_at, s.updated_at,
         s.last_activity, s.expires_at, s.ended_at, s.end_reason, s.version, s.timeout)
        for s in sessions
    ]
    return list(zip(*rows, strict=True))


def _touched_columns(sessions: Sequence[Session]) -> list[Sequence[Any]]:
    """The 5 column arrays of `_TOUCH_SESSIONS`, rows in the order given."""
    rows = [(s.id, s.last_activity, (s.expires_at - s.last_activity) // _MICROSECOND, s.version,
             s.message_count)
            for s in sessions]
    return list(zip(*rows, strict=True))


def _by_id(sessions: Sequence[Session]) -> list[Session]:
    """Sessions in id order: sorted by `id.int`, the same order as by `id`
    (UUIDs compare by it), but compared in C rather than by `UUID.__lt__`,
    ten times faster."""
    return sorted(sessions, key=_id_int)


def _id_int(session: Session) -> int:
    return session.id.int


def _message_columns(messages: Sequence[tuple[UUID, Message]]) -> list[Sequence[Any]]:
    """The 5 column arrays of `_INSERT_MESSAGES`, in batch order (first copy wins)."""
    rows = [(session_id, m.seq, m.role, m.content, m.created_at) for session_id, m in messages]
    return list(zip(*rows, strict=True))


def _session_from_row(row: asyncpg.Record) -> Session:
    """The `Session` of a row's first 18 columns (`_SESSION_COLUMNS`; `load` adds more)."""
    (id_, user_id, agent, chat_id, title, state, metadata, notes, is_active, message_count,
     created_at, updated_at, last_activity, expires_at, ended_at, end_reason, version, timeout) = row[:18]
    return Session(
        id=id_, user_id=user_id, agent=agent, chat_id=chat_id, title=title, state=state,
        # jsonb prints an empty object or array so: most sessions skip decoding.
        metadata=EMPTY_METADATA if metadata == "{}" else check_metadata(json.loads(metadata)),
        notes=() if notes == "[]" else _decode_notes(notes),
        is_active=is_active, message_count=message_count, created_at=created_at,
        updated_at=updated_at, last_activity=last_activity, expires_at=expires_at,
        ended_at=ended_at, end_reason=end_reason, version=version, timeout=timeout,
    )


def _messages_from_rows(rows: Sequence[asyncpg.Record]) -> tuple[Message, ...]:
    """Messages from rows fetched newest first, returned oldest first."""
    return tuple(Message(row[0], row[1], row[2], row[3]) for row in reversed(rows))


# ------------------------------------------------------- errors

# Operator intervention (server shutting down, or a query cancelled by an
# administrator), too many connections, serialization failure, deadlock.
_TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "57014", "53300", "40001", "40P01"})


def _is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later may succeed (PITFALLS, "transient errors")."""
    if isinstance(exc, OSError):  # includes TimeoutError (asyncio's too) from connect/command timeouts
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate or ""
        return sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg's client-side errors are misuse (bugs) except this one.
        return "connection is closed" in str(exc)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # A connection the server has just terminated (e.g. pg_terminate_backend)
        # can fail its next query this way instead of as "connection is closed"
        # (MagicStack/asyncpg#784, #1069). We never share a connection between
        # calls, so the state clash can only be that dead connection; the pool
        # drops it on release, closed by then (test_lost_connections_are_replaced).
        return str(exc).startswith("cannot switch to state")
    return False


def _is_rejected_data(exc: BaseException) -> bool:
    """A data exception (class 22, including asyncpg's own argument encoding
    errors) or an integrity constraint violation (class 23)."""
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in {"22", "23"}


@contextmanager
def _store_errors(*, rejectable: bool = False) -> Iterator[None]:
    """Translate what leaves the block: transient -> StoreUnavailable, data -> WriteRejected.

    Args:
        rejectable: translate data errors too (for `write` only: elsewhere a
            data error is a bug of ours).
    """
    try:
        yield
    except Exception as raised:
        exc = _sole_leaf(raised)
        if rejectable and _is_rejected_data(exc):
            raise WriteRejected(f"PostgreSQL rejected the batch: {_describe(exc)}") from exc
        if _is_transient(exc):
            raise StoreUnavailable(f"PostgreSQL is unavailable: {_describe(exc)}") from exc
        raise


def _sole_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _only_wraps(group: BaseException, target: BaseException) -> bool:
    """Whether `group` is a chain of one-member groups ending at `target`."""
    while group is not target and isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group is target


def _reraise(exc: BaseException) -> NoReturn:
    """`raise exc`, keeping its own `__context__` (not the group being handled)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def _describe(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' [{sqlstate}]' if sqlstate else ''}: {exc}"


# ------------------------------------------------------- admin helpers

_DATABASE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _quote_database_name(name: str) -> str:
    """`name` as a quoted SQL identifier, after checking it is a plain lower-case name."""
    if not isinstance(name, str) or not _DATABASE_NAME.fullmatch(name):
        raise InvalidArgument("name", f"must match {_DATABASE_NAME.pattern}, got {name!r:.80}")
    return '"' + name.replace('"', '""') + '"'


def database_url(url: str, name: str) -> str:
    """`url` with its database replaced by `name`, keeping user, host and query.

    Handles the embedded server's form, `postgresql://postgres:@/postgres?host=/dir`,
    and drops a `database` or `dbname` query parameter, which would override the path.
    """
    base, _, query = url.partition("?")
    scheme, separator, rest = base.partition("://")
    if not separator:
        raise InvalidArgument("url", f"must look like postgresql://user@host/database, got {_redact(url)!r}")
    netloc = rest.split("/", 1)[0]
    kept = [item for item in query.split("&") if item and item.split("=", 1)[0] not in {"database", "dbname"}]
    return f"{scheme}://{netloc}/{name}" + (f"?{'&'.join(kept)}" if kept else "")


def _redact(url: str) -> str:
    """`url` without its password, for messages."""
    return re.sub(r"(://[^:/@?]*:)[^@/?]*@", r"\1***@", url)


async def create_database(admin_url: str, name: str) -> str:
    """Create the database `name` on the server of `admin_url`; return its URL.

    Runs in its own trio-asyncio loop. The name is the only SQL text built
    from input here (a database name cannot be a bind parameter): it must
    match `^[a-z_][a-z0-9_]{0,62}$` and is quoted as an identifier.

    Raises:
        InvalidArgument: `name` is not a plain lower-case name.
        StoreUnavailable: the server cannot be reached.
        asyncpg.DuplicateDatabaseError: the database exists.
    """
    statement = "CREATE DATABASE " + _quote_database_name(name)
    async with _asyncio_loop() as loop:
        with _store_errors():
            await _run(loop, _aio_execute_once, admin_url, statement)
    return database_url(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop the database `name` if it exists, disconnecting its sessions first.

    Raises:
        InvalidArgument: `name` is not a plain lower-case name.
        StoreUnavailable: the server cannot be reached.
    """
    statement = "DROP DATABASE IF EXISTS " + _quote_database_name(name) + " WITH (FORCE)"
    async with _asyncio_loop() as loop:
        with _store_errors():
            await _run(loop, _aio_execute_once, admin_url, statement)


async def apply_migrations_to(url: str, config: RuntimeConfig | None = None) -> list[str]:
    """Apply pending migrations to the database at `url` (`trio-sessions migrate`).

    Safe to run while runtimes start on the same database: all runners take
    the same advisory lock.

    Args:
        url: the database.
        config: `connect_timeout` is used; defaults when None.

    Returns:
        The names of the migrations this call applied, in order (empty when
        the schema was already current).

    Raises:
        StoreUnavailable: the server cannot be reached.
    """
    connect_timeout = (RuntimeConfig() if config is None else config).connect_timeout
    migrations = load_migrations()
    async with _asyncio_loop() as loop:
        with _store_errors():
            return await _run(loop, _aio_migrate_url, url, migrations, connect_timeout)


async def terminate_connections(admin_url: str, name: str) -> int:
    """Terminate every connection to the database `name` but this one; return how many.

    For tests and operators: it simulates (or forces) the connection loss a
    server restart causes. The name is a bind parameter here.

    Raises:
        StoreUnavailable: the server cannot be reached.
    """
    async with _asyncio_loop() as loop:
        with _store_errors():
            count: int = await _run(loop, _aio_fetchval_once, admin_url, _TERMINATE_CONNECTIONS, name)
    return count
