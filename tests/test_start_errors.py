"""Errors at start: every way a configuration or a server can fail, as one clear `SessionError`.

Each case runs against a real server (the run's PostgreSQL, or a Trio
listener that accepts and never answers) and checks that the message names
host, port, database and user, says what to do, and never holds the password.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import pytest
import trio
from loguru import logger

from trio_sessions import ConfigurationError, RuntimeConfig, StoreUnavailable, open_runtime
from trio_sessions._config import configured_url
from trio_sessions._migrations import load_migrations
from trio_sessions._postgres import PostgresStore, apply_migrations_to
from trio_sessions._postgres._bridge import execute_once, fetchval_once
from trio_sessions._store import WriteBatch

from .test_postgres import make_session

#: A role whose members must give a password, even on the embedded server's trust socket.
PASSWORD_GROUP = "password_login"
PASSWORD = "s3cr3t-Pa55"
FAST = RuntimeConfig(connect_timeout=2.0, pool_min=1)


def full_text(error: BaseException) -> str:
    """Everything a traceback of `error` would print, chained errors included."""
    return "".join(traceback.format_exception(error))


def socket_dir(url: str) -> str:
    return parse_qs(urlsplit(url).query)["host"][0]


async def fails_to_connect(url: str, config: RuntimeConfig = FAST) -> BaseException:
    """The error `PostgresStore(url).connect()` raises; it must be a plain (ungrouped) one."""
    with pytest.raises((ConfigurationError, StoreUnavailable)) as caught:
        async with PostgresStore(url, config).connect():
            pass  # pragma: no cover
    return caught.value


def assert_names(message: str, *, host: str, port: str, database: str, user: str) -> None:
    assert "\n" not in message
    for part in (f"host {host}", f"port {port}", f"database {database!r}", f"user {user!r}"):
        assert part in message, message


@pytest.fixture(scope="session")
def password_auth(postgres_server_url: str) -> Iterator[str]:
    """The embedded server, made to demand passwords of `PASSWORD_GROUP`'s members (its socket trusts
    everyone else); yields its socket folder."""

    async def hba_file() -> str:
        path: str = await fetchval_once(postgres_server_url, "SHOW hba_file")
        return path

    path = Path(trio.run(hba_file))
    if not path.is_file():
        pytest.skip("the test server's pg_hba.conf is not on this machine")
    original = path.read_text()
    path.write_text(f"local all +{PASSWORD_GROUP} scram-sha-256\n{original}")

    async def set_up() -> None:
        await execute_once(postgres_server_url, "SELECT pg_reload_conf()")
        await execute_once(postgres_server_url, f"DROP ROLE IF EXISTS {PASSWORD_GROUP}; "
                                                f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")

    trio.run(set_up)
    try:
        yield socket_dir(postgres_server_url)
    finally:
        path.write_text(original)
        trio.run(execute_once, postgres_server_url, "SELECT pg_reload_conf()")


@pytest.fixture
async def password_role(postgres_server_url: str, postgres_url: str, password_auth: str
                        ) -> AsyncIterator[str]:
    """A role that must log in with `PASSWORD`, owning the test's database; yields its name."""
    role = f"r_{uuid4().hex[:12]}"
    database = urlsplit(postgres_url).path.lstrip("/")
    await execute_once(postgres_server_url, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}' "
                                            f"IN ROLE {PASSWORD_GROUP}; "
                                            f"ALTER DATABASE {database} OWNER TO {role}")
    yield role
    await execute_once(postgres_url, f"DROP OWNED BY {role}")
    await execute_once(postgres_server_url, f"ALTER DATABASE {database} OWNER TO postgres; DROP ROLE {role}")


async def test_the_right_password_connects(password_role: str, postgres_url: str, password_auth: str) -> None:
    database = urlsplit(postgres_url).path.lstrip("/")
    async with PostgresStore(f"postgresql://{password_role}:{PASSWORD}@/{database}?host={password_auth}",
                             FAST).connect():
        pass


async def test_a_wrong_password_names_the_user_and_never_the_password(
        password_role: str, postgres_url: str, password_auth: str) -> None:
    database = urlsplit(postgres_url).path.lstrip("/")
    url = f"postgresql://{password_role}:wrong-{PASSWORD}@/{database}?host={password_auth}"

    error = await fails_to_connect(url)
    assert isinstance(error, ConfigurationError)
    message = str(error)
    assert f"refused the password of user {password_role!r}" in message
    assert "check the password" in message
    assert_names(message, host=password_auth, port="5432", database=database, user=password_role)
    assert PASSWORD not in full_text(error)
    # The CLI's path (`trio-sessions migrate`) says the same.
    with pytest.raises(ConfigurationError, match="refused the password"):
        await apply_migrations_to(url, FAST)


async def test_an_unknown_database_or_role_is_a_configuration_error(postgres_server_url: str) -> None:
    folder = socket_dir(postgres_server_url)
    error = await fails_to_connect(f"postgresql://postgres@/no_such_db?host={folder}")
    assert isinstance(error, ConfigurationError)
    assert "database 'no_such_db' does not exist" in str(error) and "createdb no_such_db" in str(error)
    assert_names(str(error), host=folder, port="5432", database="no_such_db", user="postgres")

    error = await fails_to_connect(f"postgresql://ghost@/postgres?host={folder}")
    assert isinstance(error, ConfigurationError)
    assert 'role "ghost" does not exist' in str(error)
    assert_names(str(error), host=folder, port="5432", database="postgres", user="ghost")


@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://app:hunter2@db.example:3306/app", "scheme 'mysql'"),
    ("postgresql://app:hunter2@db.example:fivefourthreetwo/app", "cannot be parsed"),
    ("db.example/app", "does not start with postgresql://"),
])
async def test_a_malformed_url_is_a_configuration_error(url: str, expected: str) -> None:
    error = await fails_to_connect(url)
    assert isinstance(error, ConfigurationError)
    assert expected in str(error)
    assert "hunter2" not in full_text(error)


async def test_an_unescaped_slash_in_the_password_never_shows_it() -> None:
    # The driver's own error quotes the password's first half as the port:
    # "invalid literal for int() with base 10: 'hunter'".
    error = await fails_to_connect("postgresql://app:hunter/2secret@db.example:5432/app")
    assert isinstance(error, ConfigurationError)
    text = full_text(error)
    assert "hunter" not in text and "2secret" not in text
    assert "%2F" in str(error)
    assert_names(str(error), host="db.example", port="5432", database="app", user="app")


async def test_missing_privileges_say_which(postgres_server_url: str, postgres_url: str) -> None:
    folder = socket_dir(postgres_server_url)
    database = urlsplit(postgres_url).path.lstrip("/")
    role = f"r_{uuid4().hex[:12]}"
    await execute_once(postgres_server_url, f"CREATE ROLE {role} LOGIN")
    try:
        # No CREATE on schema public (PostgreSQL 15 and later): the migrations cannot run.
        await execute_once(postgres_url, f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC")
        error = await fails_to_connect(f"postgresql://{role}@/{database}?host={folder}")
        assert isinstance(error, ConfigurationError)
        assert "permission denied for schema public" in str(error)
        assert "trio-sessions migrate" in str(error) and "auto_migrate=False" in str(error)
        assert_names(str(error), host=folder, port="5432", database=database, user=role)

        # No CONNECT on the database.
        await execute_once(postgres_server_url, f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
        error = await fails_to_connect(f"postgresql://{role}@/{database}?host={folder}")
        assert isinstance(error, ConfigurationError)
        assert f'permission denied for database "{database}"' in str(error)
    finally:
        await execute_once(postgres_server_url, f"DROP ROLE {role}")


async def test_a_server_that_never_answers_names_connect_timeout(nursery: trio.Nursery) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    held: list[trio.socket.SocketType] = []

    async def accept_and_say_nothing() -> None:
        while True:
            connection, _ = await listener.accept()
            held.append(connection)

    nursery.start_soon(accept_and_say_nothing)
    error = await fails_to_connect(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app",
                                   RuntimeConfig(connect_timeout=0.3))
    assert isinstance(error, StoreUnavailable)
    assert "did not answer within connect_timeout=0.3 s" in str(error)
    assert_names(str(error), host="127.0.0.1", port=str(port), database="app", user="app")
    assert held, "the store never reached the listener"
    assert PASSWORD not in full_text(error)
    nursery.cancel_scope.cancel()
    for connection in held:
        connection.close()
    listener.close()


async def test_a_refused_connection_is_store_unavailable() -> None:
    # A socket bound and not listening refuses connections to its port.
    with trio.socket.socket() as closed:
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        error = await fails_to_connect(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app")
    assert isinstance(error, StoreUnavailable)
    assert "cannot connect to PostgreSQL" in str(error) and "is running" in str(error)
    assert_names(str(error), host="127.0.0.1", port=str(port), database="app", user="app")
    assert PASSWORD not in full_text(error)


async def test_open_runtime_raises_the_error_unwrapped(postgres_server_url: str) -> None:
    url = f"postgresql://postgres@/no_such_db?host={socket_dir(postgres_server_url)}"
    with pytest.raises(ConfigurationError, match="does not exist"):
        async with open_runtime(RuntimeConfig(database_url=url, connect_timeout=2.0)):
            pass  # pragma: no cover


# ------------------------------------------------------------------ auto_migrate


@pytest.fixture
async def read_write_url(postgres_server_url: str, postgres_url: str) -> AsyncIterator[str]:
    """The URL of a role that may only SELECT, INSERT, UPDATE and DELETE on the test database's tables
    (which it sees once migrated: the grant covers tables made later by postgres too)."""
    role = f"r_{uuid4().hex[:12]}"
    database = urlsplit(postgres_url).path.lstrip("/")
    await execute_once(postgres_server_url, f"CREATE ROLE {role} LOGIN")
    await execute_once(postgres_url, f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC; "
                                     "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
                                     f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}")
    try:
        yield f"postgresql://{role}@/{database}?host={socket_dir(postgres_server_url)}"
    finally:
        await execute_once(postgres_url, f"DROP OWNED BY {role}")
        await execute_once(postgres_server_url, f"DROP ROLE {role}")


async def test_a_read_write_role_runs_on_a_migrated_database_without_auto_migrate(
        postgres_url: str, read_write_url: str) -> None:
    await apply_migrations_to(postgres_url)
    # Migrating needs CREATE on the schema even when nothing is pending.
    error = await fails_to_connect(read_write_url)
    assert isinstance(error, ConfigurationError) and "auto_migrate=False" in str(error)

    async with open_runtime(store=PostgresStore(read_write_url, FAST, migrate=False)) as rt:
        session = await rt.create("u", "geral", durable=True)
        await rt.append_message(session.id, "user", "oi", durable=True)
    async with open_runtime(store=PostgresStore(read_write_url, FAST, migrate=False)) as rt:
        assert [m.content for m in await rt.context(session.id)] == ["oi"]

    if "auto_migrate" in {field.name for field in dataclasses.fields(RuntimeConfig)}:
        config = dataclasses.replace(FAST, database_url=read_write_url, **{"auto_migrate": False})
        async with open_runtime(config) as rt:
            assert (await rt.get(session.id)).message_count == 1


async def test_without_auto_migrate_a_schema_behind_is_a_configuration_error(
        postgres_url: str, read_write_url: str) -> None:
    everything = [name for name, _ in load_migrations()]
    for url in (read_write_url, postgres_url):  # a fresh database: no schema_migrations at all
        with pytest.raises(ConfigurationError) as caught:
            async with PostgresStore(url, FAST, migrate=False).connect():
                pass  # pragma: no cover
        message = str(caught.value)
        assert "auto_migrate is off" in message and "trio-sessions migrate" in message
        assert ", ".join(everything) in message
    # Only the first migration applied: the others are named.
    await apply_migrations_to(postgres_url)
    await execute_once(postgres_url, f"DELETE FROM schema_migrations WHERE name <> '{everything[0]}'")
    behind = f"{len(everything) - 1} migrations are not applied"
    with pytest.raises(ConfigurationError, match=behind) as caught:
        async with PostgresStore(read_write_url, FAST, migrate=False).connect():
            pass  # pragma: no cover
    assert everything[0] not in str(caught.value) and everything[-1] in str(caught.value)


@pytest.mark.parametrize("url", [
    "postgresql://app:hunter2@db.example/app",
    "postgresql://app:hun/ter2@db.example:5432/app",
    "postgresql://app:hun@ter2@db.example/app",
    "postgresql://app:hun?ter2@db.example/app?sslmode=disable",
])
def test_a_store_never_shows_its_password(url: str) -> None:
    shown = repr(PostgresStore(url))
    assert "hun" not in shown and "ter2" not in shown
    assert "app:***@db.example" in shown


async def test_a_user_that_may_not_write_gets_a_configuration_error_naming_it(
        postgres_url: str, read_write_url: str) -> None:
    await apply_migrations_to(postgres_url)
    role = urlsplit(read_write_url).username
    await execute_once(postgres_url, f"REVOKE INSERT, UPDATE ON sessions FROM {role}")
    store = PostgresStore(read_write_url, FAST, migrate=False)
    async with store.connect():
        assert await store.live_deadlines() == []  # reading is still allowed
        with pytest.raises(ConfigurationError) as caught:
            await store.write(WriteBatch((make_session(),), (), ()))
    message = str(caught.value)
    assert "permission denied for table sessions" in message and "grant the privilege" in message
    assert f"user {role!r}" in message and "\n" not in message


# ------------------------------------------------------------ tracebacks that print local values


@contextmanager
def diagnosing_sink() -> Iterator[list[str]]:
    """loguru enabled for trio_sessions, into a sink that prints the values of every frame's locals
    (`diagnose=True`) and the frames above the catching one (`backtrace=True`)."""
    written: list[str] = []
    logger.enable("trio_sessions")
    sink = logger.add(written.append, level="DEBUG", diagnose=True, backtrace=True, colorize=False)
    try:
        yield written
    finally:
        logger.remove(sink)
        logger.disable("trio_sessions")


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, every exception chained to it (cause and context) and every member of a group."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        pending.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)


async def logged_start_failure(config: RuntimeConfig) -> tuple[BaseException, str]:
    """Start a runtime that cannot connect, log its error with `logger.exception`; the error and the log."""
    with diagnosing_sink() as written:
        try:
            async with open_runtime(config):
                pass  # pragma: no cover
        except (ConfigurationError, StoreUnavailable) as exc:
            logger.exception("the runtime did not start")
            error = exc
        else:  # pragma: no cover
            raise AssertionError("the runtime started")
        url = configured_url(config)
        assert url is not None
        with pytest.raises((ConfigurationError, StoreUnavailable)):
            try:
                await apply_migrations_to(url, config)  # `trio-sessions migrate`'s path
            except (ConfigurationError, StoreUnavailable):
                logger.exception("the migration did not start")
                raise
    return error, "".join(written)


def assert_hidden(secret: str, error: BaseException, log: str) -> None:
    assert "Traceback" in log and "the runtime did not start" in log and "the migration did not" in log
    assert secret not in log
    assert secret not in full_text(error)
    for exc in chain(error):
        assert secret not in str(exc) and secret not in repr(exc) and secret not in repr(exc.args)


async def test_a_wrong_password_never_shows_in_a_diagnosing_log(
        password_role: str, postgres_url: str, password_auth: str) -> None:
    database = urlsplit(postgres_url).path.lstrip("/")
    config = dataclasses.replace(
        FAST, database_url=f"postgresql://{password_role}:x{PASSWORD}@/{database}?host={password_auth}")
    error, log = await logged_start_failure(config)
    assert isinstance(error, ConfigurationError) and "refused the password" in log
    assert_hidden(PASSWORD, error, log)


async def test_a_refused_connection_never_shows_the_password_in_a_diagnosing_log() -> None:
    with trio.socket.socket() as closed:
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        config = dataclasses.replace(FAST, database_url=f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app")
        error, log = await logged_start_failure(config)
    assert isinstance(error, StoreUnavailable) and "cannot connect to PostgreSQL" in log
    assert_hidden(PASSWORD, error, log)


async def test_a_database_holding_a_relation_of_the_schema_is_a_configuration_error(
        postgres_url: str) -> None:
    """A refusal at start that names no known cause is still a SessionError (never the driver's)."""
    await execute_once(postgres_url, "CREATE VIEW sessions AS SELECT 1 AS x")
    with pytest.raises(ConfigurationError) as raised:
        async with open_runtime(RuntimeConfig(), store=PostgresStore(postgres_url)):
            pass
    message = str(raised.value)
    database = urlsplit(postgres_url).path.lstrip("/")
    assert "applying the schema" in message and repr(database) in message and "42P07" in message, message
