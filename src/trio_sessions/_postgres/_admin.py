"""Helpers for operators and tests: databases made and dropped, migrations, URLs.

Each runs on a connection of its own, through the bridge (imported at the
call, so that importing this module does not load asyncpg).
"""

from __future__ import annotations

import re
from typing import Final

from .._config import RuntimeConfig
from .._errors import InvalidArgument
from .._migrations import load_migrations
from .._secrets import SecretUrl
from . import _sql as sql

_DATABASE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _quote_database_name(name: str) -> str:
    """`name` as a quoted SQL identifier, after checking it is a plain lower-case name."""
    if not isinstance(name, str) or not _DATABASE_NAME.fullmatch(name):
        raise InvalidArgument("name", f"must match {_DATABASE_NAME.pattern}, got {name!r:.80}")
    return '"' + name.replace('"', '""') + '"'


def database_url(url: str | SecretUrl, name: str) -> str:
    """`url` with its database replaced by `name`, keeping user, host and query.

    Handles the embedded server's form, `postgresql://postgres:@/postgres?host=/dir`,
    and drops a `database` or `dbname` query parameter, which would override the path.
    A helper for tests and operators: the URL it returns is a `str`, password included.
    """
    base, _, query = SecretUrl.of(url).reveal().partition("?")
    scheme, separator, rest = base.partition("://")
    if not separator:
        raise InvalidArgument(
            "url", f"must look like postgresql://user@host/database, got {str(SecretUrl.of(url))!r}")
    netloc = rest.split("/", 1)[0]
    kept = [item for item in query.split("&") if item and item.split("=", 1)[0] not in {"database", "dbname"}]
    return f"{scheme}://{netloc}/{name}" + (f"?{'&'.join(kept)}" if kept else "")


async def create_database(admin_url: str | SecretUrl, name: str) -> str:
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
    from ._bridge import execute_once

    await execute_once(admin_url, statement)
    return database_url(admin_url, name)


async def drop_database(admin_url: str | SecretUrl, name: str) -> None:
    """Drop the database `name` if it exists, disconnecting its sessions first.

    Raises:
        InvalidArgument: `name` is not a plain lower-case name.
        StoreUnavailable: the server cannot be reached.
    """
    statement = "DROP DATABASE IF EXISTS " + _quote_database_name(name) + " WITH (FORCE)"
    from ._bridge import execute_once

    await execute_once(admin_url, statement)


async def apply_migrations_to(url: str | SecretUrl, config: RuntimeConfig | None = None) -> list[str]:
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
    from ._bridge import migrate

    return await migrate(url, migrations, connect_timeout)


async def terminate_connections(admin_url: str | SecretUrl, name: str) -> int:
    """Terminate every connection to the database `name` but this one; return how many.

    For tests and operators: it simulates (or forces) the connection loss a
    server restart causes. The name is a bind parameter here.

    Raises:
        StoreUnavailable: the server cannot be reached.
    """
    from ._bridge import fetchval_once

    count: int = await fetchval_once(admin_url, sql.TERMINATE_CONNECTIONS, name)
    return count
