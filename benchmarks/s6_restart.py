"""Scenario 6, restart: start a runtime over N live sessions already in PostgreSQL.

The database is seeded in SQL (`generate_series`, full: 1,000,000 rows,
deadlines spread from one minute to one hour ahead, 1 % already due), then
analysed and checkpointed. Timed: entering `open_runtime` (connect,
migrations, loading every live deadline into the queue), then until every
due session has been expired (each is activated, loaded and written behind),
then leaving (the final flush). The baseline is the unavoidable part: the
same `SELECT id, expires_at FROM sessions WHERE is_active` fetched raw
through asyncpg under trio-asyncio. A second start, with nothing due any
more, separates loading from expiring.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

import trio

from trio_sessions import RuntimeConfig, open_runtime

from . import _pg
from ._harness import MIB, Check, Context, GcPauses, Result, median, rss_bytes

NAME: Final = "s6"
TITLE: Final = "Restart over live sessions in PostgreSQL"
NEEDS_POSTGRES: Final = True

TARGET_SECONDS: Final = 10.0
DUE_FRACTION: Final = 0.01


async def _raw_fetch(pool: _pg.RawPool) -> float:
    started = time.perf_counter()
    rows = await pool.fetch("SELECT id, expires_at FROM sessions WHERE is_active")
    elapsed = time.perf_counter() - started
    del rows
    return elapsed


async def _start(url: str, due: int) -> dict[str, Any]:
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    with GcPauses() as pauses:
        async with open_runtime(RuntimeConfig(database_url=url)) as rt:
            entered_gc = pauses.summary()
            entered = time.perf_counter()
            live = rt.metrics().live_sessions
            while rt.metrics().expired < due:  # noqa: ASYNC110 - a counter, no event to wait on
                await trio.sleep(0.001)
            expired = time.perf_counter()
            rss_after = rss_bytes()
            closing = time.perf_counter()
        closed = time.perf_counter()
    return {"enter_s": entered - started, "ready_s": expired - started, "close_s": closed - closing,
            "live": live, "rss_growth_mib": (rss_after - rss_before) / MIB, "enter_gc": entered_gc}


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    count = ctx.size(1_000_000, 2_000)
    due = int(count * DUE_FRACTION)
    async with ctx.fresh_database() as url:
        await _pg.migrate(url)
        async with _pg.open_raw_pool(url) as pool:
            started = time.perf_counter()
            await pool.execute(_pg.SEED_SESSIONS, count, 60.0, 3600.0, due)
            seeded = time.perf_counter() - started
            await pool.execute("ANALYZE sessions")
            await pool.execute("CHECKPOINT")
            raw = [await _raw_fetch(pool), await _raw_fetch(pool)]
            first = await _start(url, due)
            raw.append(await _raw_fetch(pool))
            second = await _start(url, 0)
            raw.append(await _raw_fetch(pool))
            still_live = await pool.fetchval("SELECT count(*) FROM sessions WHERE is_active")
    baseline = median(raw)
    table = result.table(
        f"{count:,} live sessions in PostgreSQL ({due:,} of them due); seeded in SQL in {seeded:.1f} s",
        "start", "enter s", "until due expired s", "ratio to raw fetch", "close s", "live at enter",
        "RSS growth MiB", "full GCs while entering", "their total s")
    for label, m in ((f"with {due:,} due", first), ("again, none due", second)):
        table.add(label, m["enter_s"], m["ready_s"], m["ready_s"] / baseline, m["close_s"], m["live"],
                  m["rss_growth_mib"], m["enter_gc"]["count"], m["enter_gc"]["total_s"])
    table.add("raw fetch of the live deadlines (baseline, median)", baseline, baseline, 1.0, None, None, None,
              None, None)
    if still_live != count - due:
        result.notes.append(f"{still_live:,} sessions live after the restarts; expected {count - due:,}")
    result.checks.append(Check(f"s6 restart over {count:,} live sessions ({due:,} due), until due expired",
                               first["ready_s"], TARGET_SECONDS, "<=", " s"))
    return result
