"""PostgreSQL, the system of record: `PostgresStore` and the admin helpers.

The package in six parts, top to bottom:

- `_store`: `PostgresStore`, which statement answers which `Store` call;
- `_admin`: databases created and dropped, migrations applied;
- `_rows`: snapshots to column arrays and records back to snapshots;
- `_sql`: the SQL text, constants only (every value is a bind parameter);
- `_bridge` (a package: `_calls`, `_errors`): asyncpg run from Trio through trio-asyncio, and the driver's
  errors translated. The only code of the package (and of trio-sessions)
  that imports asyncio, asyncpg or trio_asyncio; the others import it only
  when a connection is made, so `import trio_sessions` does not load the
  driver;
- `_target`: the host, port, database and user a URL names (never its
  password), and the words of the errors raised when a start fails.
"""

from ._admin import apply_migrations_to as apply_migrations_to
from ._admin import create_database as create_database
from ._admin import database_url as database_url
from ._admin import drop_database as drop_database
from ._admin import terminate_connections as terminate_connections
from ._store import PostgresStore as PostgresStore

__all__ = [
    "PostgresStore", "apply_migrations_to", "create_database", "database_url", "drop_database",
    "terminate_connections",
]
