"""The bridge: asyncpg run from Trio through trio-asyncio, and the driver's errors translated.

The only code of trio-sessions that imports asyncio, asyncpg or
trio_asyncio: `_calls` (the loop, the pool, each call across) and `_errors`
(the driver's exceptions turned into trio-sessions' own). The rest of the
package imports it only when a store connects.
"""

from ._calls import Database as Database
from ._calls import Script as Script
from ._calls import Statement as Statement
from ._calls import execute_once as execute_once
from ._calls import fetchval_once as fetchval_once
from ._calls import migrate as migrate
from ._calls import open_database as open_database
from ._errors import store_errors as store_errors
from ._errors import violated_constraint as violated_constraint

__all__ = [
    "Database", "Script", "Statement", "execute_once", "fetchval_once", "migrate", "open_database",
    "store_errors", "violated_constraint",
]
