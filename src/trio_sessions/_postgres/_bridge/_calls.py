"""The bridge's calls: asyncpg, run from Trio through trio-asyncio.

- `open_database()` opens a trio-asyncio loop and the connection pool in
  it, and hands out a `Database` holding both. Every call crosses into
  asyncio once, as `aio_as_trio(fn, loop=loop)(*args)`, where `fn` is one of
  the `_aio_*` coroutine functions below: they are the only code that runs
  on the asyncio side. The loop is passed explicitly because trio-asyncio
  otherwise finds it through a context variable that a Trio task started
  outside `open_loop()` lacks.
- asyncio objects (the pool, its connections) never outlive their loop: the
  pool is made inside `open_database()` and closed before the loop is.
- Every call runs under `store_errors` (and a connection or migration under
  `start_errors` too), which turn the driver's exceptions into
  trio-sessions' own (`_errors`). Failures to connect or to migrate are
  told apart here, on the asyncio side, where the step is known
  (`StartFailed`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import asyncpg
import trio
import trio_asyncio  # type: ignore[import-untyped]  # trio-asyncio ships no types

from ..._config import RuntimeConfig
from ..._errors import StoreUnavailable
from ..._migrations import MIGRATION_LOCK_KEY
from ..._secrets import SecretUrl
from .. import _sql as sql
from .. import _target as target
from ._errors import StartFailed, describe, is_transient, only_wraps, reraise, start_errors, store_errors

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

T = TypeVar("T")

#: One statement of a transaction and its arguments.
Statement: TypeAlias = tuple[str, Sequence[Any]]
#: The statements of one transaction, told each one's rows: a generator that
#: yields a statement and is sent its rows (see `Database.transaction`).
Script: TypeAlias = Generator[Statement, "list[asyncpg.Record]", None]

#: Seconds a pool may take to close on exit before its connections are dropped.
#: After the runtime has stopped no connection is in use, so closing takes
#: milliseconds; a close that hangs (a pending cancel) is cut short.
POOL_CLOSE_TIMEOUT: Final = 5.0

#: `application_name` of every connection, as `pg_stat_activity` shows it.
APPLICATION_NAME: Final = "trio-sessions"

#: Timeout of the single connection made by the admin helpers.
ADMIN_CONNECT_TIMEOUT: Final = 10.0


class Database:
    """A connection pool on its own trio-asyncio loop; made by `open_database()`.

    Every method is a Trio checkpoint and translates the driver's errors
    (see the module's docstring). Cancelling a call cancels its query.
    `control` is the dedicated connection of leases and notifications.
    """

    __slots__ = ("_loop", "_pool", "_url", "control")

    def __init__(self, loop: Any, pool: Pool, url: SecretUrl, config: RuntimeConfig) -> None:
        self._loop = loop  # the trio-asyncio loop (untyped)
        self._pool = pool
        self._url = url  # for error messages, which show it redacted
        self.control = Control(loop, url, config)

    async def fetch(self, statement: str, *args: object) -> list[asyncpg.Record]:
        """The rows of one statement."""
        with store_errors(url=self._url):
            return await _run(self._loop, _aio_fetch, self._pool, statement, *args)

    async def fetchrow(self, statement: str, *args: object) -> asyncpg.Record | None:
        """The first row of one statement, or None."""
        with store_errors(url=self._url):
            return await _run(self._loop, _aio_fetchrow, self._pool, statement, *args)

    async def transaction(self, script: Script) -> None:
        """Run the statements `script` yields, in order, in one transaction, on one pooled connection.

        `script` is a generator: each statement it yields runs before it is
        resumed, and is sent the statement's rows (empty for one that returns
        none), so that it can choose what runs next, and build each
        statement's arguments just before it runs.

        Raises:
            WriteRejected: PostgreSQL refused the data (SQLSTATE class 22 or
                23); nothing was written.
            StoreUnavailable: a transient failure; the transaction may be retried.
        """
        with store_errors(rejectable=True, url=self._url):
            await _run(self._loop, _aio_transaction, self._pool, script)

    async def health_check(self) -> None:
        """Return when PostgreSQL answers `SELECT 1`; raise `StoreUnavailable` on any failure."""
        try:
            await _run(self._loop, _aio_fetch, self._pool, sql.HEALTH_CHECK)
        except Exception as exc:
            raise StoreUnavailable(f"PostgreSQL health check failed: {describe(exc)}") from exc


#: Called on the asyncio side for each notification on a channel one listens to.
Listener: TypeAlias = Callable[[], None]


class Control:
    """The dedicated connection (not a pooled one) for the lease and `LISTEN`.

    A pooled connection's reset drops its listeners, so notifications need a
    connection of their own; the lease renewal gives it regular traffic, so a
    dead connection is noticed within one renewal. It is opened at the first
    call, and opened again (listening again on every channel) at the call
    after one that found it broken: notifications sent in the gap are lost,
    which is why whoever waits for one also polls. One call at a time: the
    lease task and a closing runtime's `leave` may overlap, and a connection
    runs one operation at once (a Trio call returns only once its asyncio
    side has finished, cancelled or not, so a Trio lock is enough).
    """

    __slots__ = ("_channels", "_config", "_connection", "_lock", "_loop", "_url")

    def __init__(self, loop: Any, url: SecretUrl, config: RuntimeConfig) -> None:
        self._loop = loop
        self._url = url
        self._config = config
        self._connection: asyncpg.Connection[asyncpg.Record] | None = None
        self._channels: dict[str, Callable[..., None]] = {}
        self._lock = trio.Lock()

    async def fetchval(self, statement: str, *args: object) -> Any:
        """The first value of one statement, on the dedicated connection."""
        async with self._lock:
            with store_errors(url=self._url):
                return await _run(self._loop, self._aio_fetchval, statement, args)

    async def listen(self, channel: str, listener: Listener) -> None:
        """Call `listener` at each notification on `channel` (until `unlisten`)."""
        def callback(*_: object) -> None:
            listener()

        self._channels[channel] = callback
        async with self._lock:
            with store_errors(url=self._url):
                await _run(self._loop, self._aio_listen, channel, callback)

    async def unlisten(self, channel: str) -> None:
        callback = self._channels.pop(channel, None)
        if callback is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            with store_errors(url=self._url):
                await _run(self._loop, self._aio_unlisten, channel, callback)

    async def close(self) -> None:
        with trio.move_on_after(POOL_CLOSE_TIMEOUT, shield=True):  # noqa: ASYNC912  _run awaits the close
            async with self._lock:
                await _run(self._loop, self._aio_close)

    # asyncio side
    async def _aio_connection(self) -> asyncpg.Connection[asyncpg.Record]:
        connection = self._connection
        if connection is None or connection.is_closed():
            self._connection = None
            connection = await asyncpg.connect(
                self._url.reveal(), timeout=self._config.connect_timeout,
                command_timeout=self._config.command_timeout,
                server_settings=_server_settings(self._config))
            for channel, callback in self._channels.items():
                await connection.add_listener(channel, callback)
            self._connection = connection
        return connection  # noqa: ASYNC910  runs on the asyncio side

    async def _aio_fetchval(self, statement: str, args: Sequence[object]) -> Any:
        connection = await self._aio_connection()
        try:
            return await connection.fetchval(statement, *args)
        except asyncpg.PostgresError:
            raise  # the server answered: the connection is fine
        except BaseException:  # broken, timed out or cancelled: the next call connects afresh
            self._connection = None
            connection.terminate()
            raise

    async def _aio_listen(self, channel: str, callback: Callable[..., None]) -> None:  # noqa: ASYNC910  asyncio side
        connection = await self._aio_connection()
        if channel in self._channels:
            await connection.add_listener(channel, callback)

    async def _aio_unlisten(self, channel: str, callback: Callable[..., None]) -> None:  # noqa: ASYNC910  asyncio side
        connection = self._connection
        if connection is not None and not connection.is_closed():
            await connection.remove_listener(channel, callback)

    async def _aio_close(self) -> None:  # noqa: ASYNC910  runs on the asyncio side
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            try:
                await connection.close(timeout=POOL_CLOSE_TIMEOUT)
            except Exception:
                connection.terminate()


def _server_settings(config: RuntimeConfig) -> dict[str, str]:
    """Settings of every connection of the runtime: a name, and bounds on how long locks are held.

    `lock_timeout` bounds a statement's wait for a row lock, and
    `idle_in_transaction_session_timeout` ends a transaction whose process
    stopped in the middle of it (frozen with SIGSTOP, say), releasing its
    locks: a frozen process cannot hold the others up for longer.
    """
    return {"application_name": APPLICATION_NAME,
            "lock_timeout": f"{max(1, round(config.lock_timeout * 1000))}ms",
            "idle_in_transaction_session_timeout":
                f"{max(1, round(config.idle_transaction_timeout * 1000))}ms"}


@asynccontextmanager
async def open_database(url: SecretUrl, config: RuntimeConfig, migrations: Sequence[tuple[str, str]], *,
                        migrate: bool = True) -> AsyncIterator[Database]:
    """Apply pending `migrations` to `url` (or check that none is pending), then open the pool.

    Entering blocks until the schema is current and the pool's first
    `pool_min` connections are open. Leaving closes the pool, shielded from
    cancellation, within `POOL_CLOSE_TIMEOUT` seconds; after that the
    connections are dropped. An exception raised by the body comes out as it
    was raised (not wrapped in trio-asyncio's exception groups).

    Args:
        migrate: apply what is pending; when False only read `schema_migrations`,
            so that a user with no right to create tables can run the runtime.

    Raises:
        ConfigurationError: the URL, password, database, role or privileges
            cannot work, or (`migrate=False`) a migration is not applied.
        StoreUnavailable: the server cannot be reached (on entry).
    """
    async with _asyncio_loop() as loop:
        with store_errors(), start_errors(url, config.connect_timeout):
            # On a connection of its own, closed before the pool opens: the
            # advisory lock is released by an explicit unlock (or by
            # closing), never left to a pooled connection's reset.
            if migrate:
                await _run(loop, _aio_migrate_url, url, migrations, config.connect_timeout)
            else:
                missing = await _run(loop, _aio_missing_migrations, url, migrations, config.connect_timeout)
                if missing:
                    raise target.schema_behind(url, missing)
            pool = await _run(loop, _aio_create_pool, url, config)
        database = Database(loop, pool, url, config)
        try:
            yield database
        finally:
            try:
                await database.control.close()
            finally:
                await _close_pool(loop, pool)


async def execute_once(url: str | SecretUrl, statement: str) -> None:
    """Run one statement on a connection of its own, in a loop of its own (admin helpers)."""
    url = SecretUrl.of(url)
    async with _asyncio_loop() as loop:
        with store_errors(), start_errors(url, ADMIN_CONNECT_TIMEOUT):
            await _run(loop, _aio_execute_once, url, statement)


async def fetchval_once(url: str | SecretUrl, statement: str, *args: object) -> Any:
    """The first value of one statement, on a connection and a loop of its own (admin helpers)."""
    url = SecretUrl.of(url)
    async with _asyncio_loop() as loop:
        with store_errors(), start_errors(url, ADMIN_CONNECT_TIMEOUT):
            return await _run(loop, _aio_fetchval_once, url, statement, *args)


async def migrate(url: str | SecretUrl, migrations: Sequence[tuple[str, str]], connect_timeout: float
                  ) -> list[str]:
    """Apply the `migrations` the database lacks, in a loop of its own; return their names."""
    url = SecretUrl.of(url)
    async with _asyncio_loop() as loop:
        with store_errors(), start_errors(url, connect_timeout):
            return await _run(loop, _aio_migrate_url, url, migrations, connect_timeout)


# ----------------------------------------------------- the asyncio side
# These coroutine functions run on the trio-asyncio loop, called through `_run`.


async def _aio_connect(url: SecretUrl, connect_timeout: float) -> asyncpg.Connection[asyncpg.Record]:
    try:
        return await asyncpg.connect(url.reveal(), timeout=connect_timeout,
                                     server_settings={"application_name": APPLICATION_NAME})
    except Exception as exc:
        raise StartFailed("connect") from exc


async def _aio_create_pool(url: SecretUrl, config: RuntimeConfig) -> Pool:
    # No type codecs are registered: JSON columns are encoded with json.dumps,
    # sent as text and cast to jsonb in SQL, and read back as text.
    try:
        return await asyncpg.create_pool(
            url.reveal(),
            min_size=config.pool_min,
            max_size=config.pool_max,
            max_inactive_connection_lifetime=config.max_inactive_connection_lifetime,
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings=_server_settings(config),
            reset=_aio_keep_session,
        )
    except Exception as exc:
        raise StartFailed("connect") from exc


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
    await connection.execute(sql.LOCK_MIGRATIONS, MIGRATION_LOCK_KEY)
    await connection.execute(sql.CREATE_SCHEMA_MIGRATIONS)
    applied = {row[0] for row in await connection.fetch(sql.APPLIED_MIGRATIONS)}
    newly_applied = []
    for name, text in migrations:
        if name in applied:
            continue
        async with connection.transaction():
            await connection.execute(text)
            await connection.execute(sql.RECORD_MIGRATION, name)
        newly_applied.append(name)
    await connection.execute(sql.UNLOCK_MIGRATIONS, MIGRATION_LOCK_KEY)
    return newly_applied


async def _aio_fetch(pool: Pool, statement: str, *args: object) -> list[asyncpg.Record]:
    return await pool.fetch(statement, *args)


async def _aio_fetchrow(pool: Pool, statement: str, *args: object) -> asyncpg.Record | None:
    return await pool.fetchrow(statement, *args)


async def _aio_transaction(pool: Pool, script: Script) -> None:
    async with pool.acquire() as connection, connection.transaction():
        statement = _resume(script, None)
        while statement is not None:
            statement = _resume(script, await connection.fetch(statement[0], *statement[1]))


def _resume(script: Script, found: list[asyncpg.Record] | None) -> Statement | None:
    """The script's next statement, `found` being the rows of the one before (None at the start)."""
    try:
        return next(script) if found is None else script.send(found)
    except StopIteration:
        return None


async def _aio_terminate(pool: Pool) -> None:  # noqa: ASYNC910  runs on the asyncio side
    pool.terminate()


async def _aio_execute_once(url: SecretUrl, statement: str) -> None:
    connection = await _aio_connect(url, ADMIN_CONNECT_TIMEOUT)
    try:
        await connection.execute(statement)
    finally:
        connection.terminate()  # nothing is pending: no need for a graceful close


async def _aio_fetchval_once(url: SecretUrl, statement: str, *args: object) -> Any:
    connection = await _aio_connect(url, ADMIN_CONNECT_TIMEOUT)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        connection.terminate()


async def _aio_migrate_url(url: SecretUrl, migrations: Sequence[tuple[str, str]], connect_timeout: float
                           ) -> list[str]:
    connection = await _aio_connect(url, connect_timeout)
    try:
        applied = await _aio_apply_migrations(connection, migrations)
    except BaseException as exc:
        connection.terminate()  # also releases the advisory lock
        if isinstance(exc, asyncpg.PostgresError):
            raise StartFailed("migrate") from exc
        raise
    await connection.close()
    return applied


async def _aio_missing_migrations(url: SecretUrl, migrations: Sequence[tuple[str, str]],
                                  connect_timeout: float) -> list[str]:
    """The names of `migrations` that `schema_migrations` lacks, only reading it."""
    connection = await _aio_connect(url, connect_timeout)
    try:
        if await connection.fetchval(sql.SCHEMA_MIGRATIONS_EXISTS):
            applied = {row[0] for row in await connection.fetch(sql.APPLIED_MIGRATIONS)}
        else:
            applied = set()
    except asyncpg.PostgresError as exc:
        raise StartFailed("migrate") from exc
    finally:
        connection.terminate()  # nothing is pending
    return [name for name, _ in migrations if name not in applied]


# ------------------------------------------------------- the Trio side


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
        if escaped is not None and only_wraps(group, escaped):
            reraise(escaped)
        raise


async def _close_pool(loop: Any, pool: Pool) -> None:
    """Close `pool` gracefully, shielded and within `POOL_CLOSE_TIMEOUT`; else terminate it."""
    with trio.move_on_after(POOL_CLOSE_TIMEOUT, shield=True):  # noqa: ASYNC912  _run awaits the close
        try:
            await _run(loop, pool.close)
        except Exception as exc:
            if not is_transient(exc):
                raise
        else:
            return
    # Closing timed out or the connections broke: drop them (a no-op when
    # asyncpg already terminated the pool after a cancelled close).
    with trio.CancelScope(shield=True):
        await _run(loop, _aio_terminate, pool)
