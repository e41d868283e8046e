"""Raw asyncpg under trio-asyncio, bridged the way `trio_sessions._postgres` does it.

The baselines of scenarios 2, 3 and 6 (write-through updates, raw bulk
upserts, a raw fetch of the live deadlines) and the fast seeding of large
databases run through this: one trio-asyncio loop, one asyncpg pool made
with the runtime's pool settings, every call crossing into asyncio once as
`aio_as_trio(fn, loop=loop)(*args)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import trio
import trio_asyncio  # type: ignore[import-untyped]  # trio-asyncio ships no types

from trio_sessions import RuntimeConfig


class RawPool:
    """An asyncpg pool used from Trio. Get one from `open_raw_pool`."""

    def __init__(self, loop: Any, pool: asyncpg.Pool) -> None:
        self._loop = loop
        self.pool = pool

    async def run(self, fn: Any, *args: Any) -> Any:
        """`await fn(*args)` on the asyncio side (fn: a coroutine function)."""
        return await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args)

    async def execute(self, sql: str, *args: Any) -> str:
        return await self.run(self.pool.execute, sql, *args)  # type: ignore[no-any-return]

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.run(self.pool.fetch, sql, *args)  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.run(self.pool.fetchval, sql, *args)

    async def executemany_in_transaction(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.run(_aio_executemany, self.pool, sql, rows)

    async def execute_in_transaction(self, sql: str, *args: Any) -> None:
        await self.run(_aio_execute_tx, self.pool, sql, args)


async def _aio_executemany(pool: asyncpg.Pool, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await connection.executemany(sql, rows)


async def _aio_execute_tx(pool: asyncpg.Pool, sql: str, args: Sequence[Any]) -> None:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(sql, *args)


@asynccontextmanager
async def open_raw_pool(url: str, config: RuntimeConfig | None = None) -> AsyncIterator[RawPool]:
    """A pool with the runtime's settings (`pool_min`, `pool_max`, timeouts) on its own loop."""
    config = RuntimeConfig() if config is None else config
    async with trio_asyncio.open_loop() as loop:
        pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool, loop=loop)(
            url, min_size=config.pool_min, max_size=config.pool_max,
            max_inactive_connection_lifetime=config.max_inactive_connection_lifetime,
            timeout=config.connect_timeout, command_timeout=None,
            server_settings={"application_name": "trio-sessions-bench"})
        try:
            yield RawPool(loop, pool)
        finally:
            with trio.move_on_after(5, shield=True):
                await trio_asyncio.aio_as_trio(pool.close, loop=loop)()
            pool.terminate()


async def migrate(url: str) -> None:
    """Apply the runtime's schema to a fresh database (as the runtime would on start)."""
    from trio_sessions._postgres import apply_migrations_to

    await apply_migrations_to(url)


#: Bulk seeding in SQL: `$1` live sessions with deadlines spread evenly over
#: `$2` .. `$3` seconds from now (the first `$4` already due), one row per
#: `generate_series` value, as the runtime would have written them.
SEED_SESSIONS = """
INSERT INTO sessions (id, user_id, agent, chat_id, title, state, metadata, notes, is_active,
                      message_count, created_at, updated_at, last_activity, expires_at, ended_at,
                      end_reason, version, timeout)
SELECT gen_random_uuid(), 'user-' || (g % 50000), (ARRAY['financeiro', 'max', 'geral'])[1 + g % 3],
       NULL, 'Segunda via do boleto', 'active', '{"channel":"whatsapp","tier":"gold"}'::jsonb,
       '[]'::jsonb, true, 0, e - make_interval(secs => 1800), e - make_interval(secs => 1800),
       e - make_interval(secs => 1800), e, NULL, NULL, 1, 1800.0
FROM generate_series(1, $1::int) AS g,
     LATERAL (SELECT now() + make_interval(secs => CASE
                 WHEN g <= $4::int THEN -1.0 - g * 0.001
                 ELSE $2::float8 + ($3::float8 - $2::float8) * g / $1::int
             END) AS e) AS deadline
"""
