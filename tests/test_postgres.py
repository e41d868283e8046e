"""PostgreSQL specifics: migrations, error mapping, connection life cycle, the embedded server.

What every store must do is in test_store_contract.py; this module covers
what only `PostgresStore` and its helpers have.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
import trio

from trio_sessions._config import RuntimeConfig
from trio_sessions._embedded import HANDLE_PIDS, USER_STARTS, _start_time, open_embedded_postgres
from trio_sessions._errors import InvalidArgument, StoreUnavailable, WriteRejected
from trio_sessions._migrations import load_migrations, migrations_dir
from trio_sessions._model import Message, Session, check_metadata
from trio_sessions._postgres import (
    PostgresStore,
    apply_migrations_to,
    create_database,
    database_url,
    drop_database,
    terminate_connections,
)
from trio_sessions._postgres._bridge import store_errors
from trio_sessions._store import WriteBatch

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
UNREACHABLE = "postgresql://postgres@/postgres?host=/nonexistent/trio-sessions-test"


def make_session(**fields: object) -> Session:
    values: dict[str, object] = dict(
        id=uuid4(), user_id="u1", agent="geral", chat_id=None, title=None, state="active",
        metadata=check_metadata({"k": "v"}), notes=(), is_active=True, message_count=0,
        created_at=T0, updated_at=T0, last_activity=T0, expires_at=T0 + timedelta(minutes=30),
        ended_at=None, end_reason=None, version=1, timeout=1800.0,
    )
    values.update(fields)
    return Session(**values)  # type: ignore[arg-type]  # tests pass invalid values on purpose


# ------------------------------------------------------------------ migrations


def test_migrations_are_found_in_order() -> None:
    folder = migrations_dir()
    assert (folder / "0001_initial.sql").is_file()
    names = [name for name, _ in load_migrations()]
    assert names[0] == "0001_initial.sql"
    assert names == sorted(names)


def test_misnamed_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sql").write_text("SELECT 1;")
    (tmp_path / "2_oops.sql").write_text("SELECT 1;")
    with pytest.raises(RuntimeError, match="NNNN_description"):
        load_migrations(tmp_path)


async def test_migrations_apply_once(postgres_url: str) -> None:
    everything = [name for name, _ in load_migrations()]
    assert await apply_migrations_to(postgres_url) == everything
    assert await apply_migrations_to(postgres_url) == []
    store = PostgresStore(postgres_url)
    async with store.connect():  # finds the schema current and uses it
        await store.write(WriteBatch((make_session(),), (), ()))
    assert await apply_migrations_to(postgres_url) == []


async def test_concurrent_migration_runners_apply_each_file_once(postgres_url: str) -> None:
    applied: list[str] = []

    async def run_migrations() -> None:
        applied.extend(await apply_migrations_to(postgres_url))

    async def open_store() -> None:
        store = PostgresStore(postgres_url, RuntimeConfig(pool_min=1))
        async with store.connect():
            await store.health_check()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(run_migrations)
            nursery.start_soon(open_store)
    # The stores may have applied them too, but no file was applied twice
    # (a second CREATE TABLE would have failed) and all are recorded.
    assert len(applied) == len(set(applied))
    assert await apply_migrations_to(postgres_url) == []


# ------------------------------------------------------------------ errors


async def test_data_errors_reject_the_whole_batch(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    async with store.connect():
        good = make_session()
        bad_rows = {
            "22021": make_session(title="nul \x00 inside"),  # text refuses NUL
            "22P05": make_session(metadata=check_metadata({"k": "v"}) | {"nul": "\x00"}),  # so does jsonb
            "23502": make_session(user_id=None),  # NOT NULL
            "22000": make_session(message_count=2**40),  # asyncpg's own encoding check
        }
        for sqlstate, bad in bad_rows.items():
            with pytest.raises(WriteRejected) as caught:
                await store.write(WriteBatch((good, bad), ((good.id, Message(1, "user", "hi", T0)),), ()))
            assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
            assert caught.value.__cause__.sqlstate == sqlstate
        # Atomic: nothing of the refused batches was written.
        assert await store.load(good.id, messages=5) is None


async def test_a_large_batch_goes_in_parts_of_one_transaction(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    async with store.connect():
        sessions = sorted((make_session() for _ in range(1200)), key=lambda s: s.id)
        # The last row in id order, in the third statement, is refused: the
        # first two statements' rows must go with it.
        refused = [*sessions[:-1], make_session(id=sessions[-1].id, user_id=None)]
        with pytest.raises(WriteRejected):
            await store.write(WriteBatch(tuple(refused), (), ()))
        assert await store.load_sessions([s.id for s in sessions]) == {}
        touched = [make_session(id=s.id, version=2, last_activity=T0 + timedelta(seconds=1),
                                updated_at=T0 + timedelta(seconds=1),
                                expires_at=T0 + timedelta(seconds=1801)) for s in sessions]
        await store.write(WriteBatch(tuple(sessions), (), ()))
        await store.write(WriteBatch((), (), (), tuple(touched)))
        assert await store.load_sessions([s.id for s in sessions]) == {s.id: s for s in touched}


async def test_unreachable_server_is_unavailable() -> None:
    store = PostgresStore(UNREACHABLE, RuntimeConfig(connect_timeout=1.0))
    with pytest.raises(StoreUnavailable) as caught:
        async with store.connect():
            pytest.fail("connected to a server that does not exist")
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(StoreUnavailable):
        await apply_migrations_to(UNREACHABLE)
    with pytest.raises(StoreUnavailable):
        await create_database(UNREACHABLE, "t_never")


async def test_lost_connections_are_replaced(postgres_server_url: str, postgres_url: str) -> None:
    store = PostgresStore(postgres_url, RuntimeConfig(pool_min=1, pool_max=1))
    async with store.connect():
        session = make_session()
        await store.write(WriteBatch((session,), (), ()))
        name = postgres_url.partition("?")[0].rpartition("/")[2]
        assert await terminate_connections(postgres_server_url, name) == 1
        # The dead connection fails one call at most (as StoreUnavailable,
        # which the runtime retries); the pool then connects anew.
        for _ in range(2):
            try:
                assert await store.load(session.id, messages=0) == (session, ())
                break
            except StoreUnavailable:
                pass
        else:
            pytest.fail("the pool did not replace its lost connection")


@pytest.mark.parametrize("error", [
    OSError("socket"), ConnectionRefusedError(), TimeoutError(),
    asyncpg.ConnectionDoesNotExistError("gone"), asyncpg.ConnectionFailureError("x"),
    asyncpg.ClientCannotConnectError("x"), asyncpg.AdminShutdownError("x"),
    asyncpg.CrashShutdownError("x"), asyncpg.CannotConnectNowError("x"),
    asyncpg.TooManyConnectionsError("x"), asyncpg.SerializationError("x"),
    asyncpg.DeadlockDetectedError("x"), asyncpg.QueryCanceledError("x"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ExceptionGroup("trio-asyncio", [ExceptionGroup("nursery", [asyncpg.AdminShutdownError("x")])]),
], ids=lambda error: type(error).__name__)
def test_transient_errors_become_store_unavailable(error: Exception) -> None:
    for rejectable in (False, True):
        with pytest.raises(StoreUnavailable) as caught, store_errors(rejectable=rejectable):
            raise error
        assert caught.value.__cause__ is not None
        assert not isinstance(caught.value.__cause__, ExceptionGroup)


@pytest.mark.parametrize("error", [
    asyncpg.CharacterNotInRepertoireError("x"), asyncpg.NotNullViolationError("x"),
    asyncpg.CheckViolationError("x"), asyncpg.NumericValueOutOfRangeError("x"),
], ids=lambda error: type(error).__name__)
def test_data_errors_are_rejections_only_in_write(error: Exception) -> None:
    with pytest.raises(WriteRejected) as caught, store_errors(rejectable=True):
        raise error
    assert caught.value.__cause__ is error
    with pytest.raises(type(error)), store_errors():
        raise error


@pytest.mark.parametrize("error", [
    asyncpg.UndefinedTableError("x"), asyncpg.SyntaxOrAccessError("x"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ValueError("bug"), KeyError("bug"),
], ids=lambda error: type(error).__name__)
def test_other_errors_propagate_unchanged(error: Exception) -> None:
    with pytest.raises(type(error)) as caught, store_errors(rejectable=True):
        raise error
    assert caught.value is error


# ------------------------------------------------------------------ life cycle


async def test_body_errors_come_out_unwrapped(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, RuntimeConfig(pool_min=1))
    with pytest.raises(KeyError, match="mine"):
        async with store.connect():
            raise KeyError("mine")
    with trio.move_on_after(0.05) as scope:  # a cancelled body closes cleanly too
        async with store.connect():
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_store_reconnects_but_not_twice_at_once(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, RuntimeConfig(pool_min=1))
    with pytest.raises(RuntimeError, match="not connected"):
        await store.health_check()
    async with store.connect():
        with pytest.raises(RuntimeError, match="already connected"):
            async with store.connect():
                pass  # pragma: no cover
        await store.health_check()
    with pytest.raises(RuntimeError, match="not connected"):
        await store.load(uuid4(), messages=1)
    async with store.connect():
        await store.health_check()


def test_database_url_replaces_only_the_database() -> None:
    assert (database_url("postgresql://postgres:@/postgres?host=/tmp/pg", "t_1")
            == "postgresql://postgres:@/t_1?host=/tmp/pg")
    assert (database_url("postgresql://u:p@db.example:5432/app?sslmode=require&dbname=x", "t_2")
            == "postgresql://u:p@db.example:5432/t_2?sslmode=require")
    assert database_url("postgres://localhost", "t_3") == "postgres://localhost/t_3"


async def test_database_names_are_validated(postgres_server_url: str) -> None:
    for name in ("", "Upper", "semi;colon", 'quo"te', "1digit", "x" * 64, "a-b"):
        with pytest.raises(InvalidArgument):
            await create_database(postgres_server_url, name)
        with pytest.raises(InvalidArgument):
            await drop_database(postgres_server_url, name)


async def test_embedded_server_starts_shares_and_persists(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    session = make_session()
    async with open_embedded_postgres(data_dir) as url:
        # A second user of the same folder shares the server; its leaving
        # does not stop the server under the first.
        async with open_embedded_postgres(data_dir) as same_url:
            assert same_url == url
        store = PostgresStore(url, RuntimeConfig(pool_min=1))
        async with store.connect():
            await store.write(WriteBatch((session,), (), ()))
    # Stopped now; the data stays in the folder for the next start.
    async with open_embedded_postgres(data_dir) as url:
        store = PostgresStore(url, RuntimeConfig(pool_min=1))
        async with store.connect():
            assert await store.load(session.id, messages=0) == (session, ())
    assert (data_dir / "PG_VERSION").is_file()


#: A process that starts the embedded server of the folder argv[1], says so, and waits to be killed.
EMBEDDED_OWNER = """
import sys, trio
from trio_sessions._embedded import open_embedded_postgres

async def main():
    async with open_embedded_postgres(sys.argv[1]):
        print("started", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def postmaster_running(data_dir: Path) -> int | None:
    """The pid of the postmaster of `data_dir` while it runs (a zombie is not running), else None."""
    import psutil

    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        running = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (FileNotFoundError, psutil.NoSuchProcess):
        return None
    return pid if running else None


async def orphan_a_server(data_dir: Path) -> tuple[int, int, int]:
    """Start the embedded server of `data_dir` in a child and kill the child with SIGKILL.

    Returns the orphaned postmaster's pid, the dead owner's pid and its start time.
    """
    owner = await trio.lowlevel.open_process([sys.executable, "-c", EMBEDDED_OWNER, str(data_dir)],
                                             stdout=subprocess.PIPE)
    assert owner.stdout is not None
    try:
        said = b""
        while b"\n" not in said:
            chunk = await owner.stdout.receive_some()
            assert chunk, "the owner exited before starting the server"
            said += chunk
        assert said == b"started\n"
        started = _start_time(owner.pid)
        assert started is not None
    finally:
        owner.kill()  # SIGKILL: nothing of the owner's clean-up runs
        await owner.wait()
        await owner.stdout.aclose()
    orphan = postmaster_running(data_dir)
    assert orphan is not None
    return orphan, owner.pid, started


async def check_the_next_run_stops(data_dir: Path, orphan: int) -> None:
    """The next run on `data_dir` reuses the orphaned server and stops it when it leaves."""
    try:
        async with open_embedded_postgres(data_dir) as url:  # reuses the orphan
            assert postmaster_running(data_dir) == orphan
            async with PostgresStore(url, RuntimeConfig(pool_min=1)).connect():
                pass
        assert postmaster_running(data_dir) is None
    finally:
        if postmaster_running(data_dir) == orphan:  # the test failed: leave no server behind
            os.kill(orphan, signal.SIGTERM)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times are read from /proc")
async def test_a_server_orphaned_by_a_killed_owner_is_stopped_by_the_next_run(tmp_path: Path) -> None:
    orphan, _, _ = await orphan_a_server(tmp_path / "data")
    await check_the_next_run_stops(tmp_path / "data", orphan)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times are read from /proc")
async def test_an_orphan_whose_owner_pid_was_reused_is_stopped_by_the_next_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    orphan, owner, owner_started = await orphan_a_server(data_dir)
    # The owner recorded its start when it joined (the first run on the folder: after initdb).
    assert json.loads((data_dir / USER_STARTS).read_text()) == {str(owner): owner_started}
    # The owner's pid given to another process: a live one, which started after the owner.
    other = await trio.lowlevel.open_process(["sleep", "600"])
    try:
        assert _start_time(other.pid) != owner_started
        (data_dir / HANDLE_PIDS).write_text(json.dumps([other.pid]))
        (data_dir / USER_STARTS).write_text(json.dumps({str(other.pid): owner_started}))
        await check_the_next_run_stops(data_dir, orphan)
    finally:
        other.kill()
        await other.wait()


async def test_the_lease_connection_takes_overlapping_calls_one_at_a_time(postgres_url: str) -> None:
    """The lease task and a closing runtime's leave() may overlap on the one dedicated connection."""
    store = PostgresStore(postgres_url)
    async with store.connect():
        instances = [uuid4() for _ in range(3)]
        for instance in instances:
            await store.register(instance, 30.0)
        renewed: list[int | None] = []

        async def renew(instance: object) -> None:
            renewed.append(await store.renew(instance, 30.0))  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            for instance in instances * 4:
                nursery.start_soon(renew, instance)
            nursery.start_soon(store.leave, instances[0])
        assert len(renewed) == 12
        assert await store.renew(instances[0], 30.0) is None  # it left: final
        assert await store.renew(instances[1], 30.0) == 1  # instances[2] is live too


async def test_a_create_in_one_process_is_found_by_another_when_it_returns(postgres_url: str) -> None:
    """Two runtimes on two pools of one database: b starts once a has flushed what it made alone."""
    from trio_sessions import PostgresStore as Store
    from trio_sessions import open_runtime

    config = RuntimeConfig(flush_interval=30.0, lease_renew_interval=0.5)  # nothing flushes by itself
    async with open_runtime(config, store=Store(postgres_url, config)) as a:
        alone = await a.create("u", "geral")
        async with open_runtime(config, store=Store(postgres_url, config)) as b:
            assert (await b.get(alone.id)).id == alone.id
            made = await a.create("u", "max")  # with b live: committed before it returns
            assert (await b.append_message(made.id, "user", "oi")).message_count == 1
            again = await b.create("u", "max")
            assert (await a.get(again.id)).id == again.id
