"""Scenario 2, write-behind against write-through.

The baseline is the usual design of a session manager: every activity is one
`UPDATE sessions SET last_activity, expires_at, updated_at, version` on the
row, awaited by the caller, through a pool with the runtime's settings
(asyncpg under trio-asyncio, bridged like `trio_sessions._postgres._bridge`). It is the most
favourable form of write-through: no RETURNING, no row decoded.

Two workloads, each with the same concurrent callers:

- spread: every call touches a random one of many sessions (most sessions
  are touched about once per flush interval: little to coalesce);
- hot: few sessions, each touched 20 or more times per flush interval (the
  number of hot sessions is chosen from the spread workload's measured
  rate so that each gets about 25 touches per interval).

The runtime and the baseline work on disjoint sets of rows in one table, so
the baseline's updates never race the runtime's version guard. A third
variant, write-behind with the durable event feed on (`event_feed=True`:
one "updated" event per session per flush, in the same transaction), runs
on a second runtime over sessions of its own, alternating with the other
two; its figure is its throughput over the write-behind's without the
feed, round by round. Rows written per operation come from `rt.metrics()`:
(flushed_sessions + flushed_messages) / operations, after a final flush;
write-through writes one row per operation by construction.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import trio

from trio_sessions import RuntimeConfig, open_runtime
from trio_sessions._runtime import SessionRuntime

from . import _pg
from ._harness import Check, Context, Rate, Result, closed_loop, median

NAME: Final = "s2"
TITLE: Final = "Write-behind against write-through"
NEEDS_POSTGRES: Final = True

TARGET_SPEEDUP: Final = 20.0
TARGET_HOT_ROWS_PER_OP: Final = 0.05
TOUCHES_PER_INTERVAL: Final = 25
#: The event feed may cost at most this much throughput (feed on / feed off).
TARGET_FEED_RATIO: Final = 0.9

UPDATE_ACTIVITY: Final = """
UPDATE sessions SET last_activity = $2, expires_at = $3, updated_at = $2, version = version + 1
WHERE id = $1 AND is_active
"""


async def _measure_runtime(rt: SessionRuntime, ids: list[Any], callers: int, seconds: float
                           ) -> tuple[Rate, int]:
    rng = random.Random(1)
    before = rt.metrics()

    async def op(_: int) -> None:
        await rt.update_last_activity(ids[rng.randrange(len(ids))])

    rate = await closed_loop(callers, seconds, op)
    await rt.flush()
    after = rt.metrics()
    rows = (after.flushed_sessions - before.flushed_sessions
            + after.flushed_messages - before.flushed_messages)
    return rate, rows


async def _measure_write_through(pool: _pg.RawPool, ids: list[Any], callers: int, seconds: float
                                 ) -> Rate:
    rng = random.Random(2)
    timeout = timedelta(seconds=1800)

    async def op(_: int) -> None:
        now = datetime.now(UTC)
        await pool.execute(UPDATE_ACTIVITY, ids[rng.randrange(len(ids))], now, now + timeout)

    return await closed_loop(callers, seconds, op)


async def _alternate(pool: _pg.RawPool, baseline_ids: list[Any], rt: SessionRuntime, ids: list[Any],
                     feed: SessionRuntime, feed_ids: list[Any], callers: int, seconds: float, rounds: int,
                     ) -> tuple[dict[str, list[Rate]], int]:
    """`rounds` rounds of write-through, write-behind and write-behind with the feed (the last two
    swapping places every round): the rates, and rows the runtime without the feed wrote."""
    rates: dict[str, list[Rate]] = {"write-through": [], "write-behind": [], "write-behind + feed": []}
    rows = 0
    for round_ in range(rounds):
        rates["write-through"].append(await _measure_write_through(pool, baseline_ids, callers, seconds))
        runtimes = [("write-behind", rt, ids), ("write-behind + feed", feed, feed_ids)]
        for name, runtime, runtime_ids in runtimes if round_ % 2 == 0 else reversed(runtimes):
            rate, written = await _measure_runtime(runtime, runtime_ids, callers, seconds)
            rates[name].append(rate)
            if runtime is rt:
                rows += written
    return rates, rows  # noqa: ASYNC910  loops over a non-empty list whose body awaits


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    callers = ctx.size(100, 10)
    sessions = ctx.size(10_000, 200)
    seconds = ctx.size(3.0, 0.2)
    rounds = ctx.size(3, 1)
    config = RuntimeConfig(flush_interval=0.2)
    async with ctx.fresh_database() as url:
        await _pg.migrate(url)
        async with _pg.open_raw_pool(url, config) as pool, \
                open_runtime(dataclasses.replace(config, database_url=url)) as rt, \
                open_runtime(dataclasses.replace(config, database_url=url, event_feed=True)) as feed:
            await pool.execute(_pg.SEED_SESSIONS, sessions, 1800.0, 1800.0, 0)
            baseline_ids = [row[0] for row in await pool.fetch("SELECT id FROM sessions")]
            ids = [(await rt.create("user-42", "financeiro")).id for _ in range(sessions)]
            feed_ids = [(await feed.create("user-43", "financeiro")).id for _ in range(sessions)]
            for runtime, runtime_ids in ((rt, ids), (feed, feed_ids)):
                for session_id in runtime_ids:  # resident, as in steady state
                    await runtime.update_last_activity(session_id)
                await runtime.flush()

            spread, spread_rows = await _alternate(pool, baseline_ids, rt, ids, feed, feed_ids, callers,
                                                   seconds, rounds)
            behind_rate = median([r.per_second for r in spread["write-behind"]])
            hot_count = round(behind_rate * config.flush_interval / TOUCHES_PER_INTERVAL)
            hot_count = min(sessions, max(1, hot_count))
            hot, hot_rows = await _alternate(pool, baseline_ids[:hot_count], rt, ids[:hot_count], feed,
                                             feed_ids[:hot_count], callers, seconds, rounds)

    table = result.table(
        f"update_last_activity, {callers} concurrent callers, {seconds} s per variant, median of {rounds} "
        f"alternating rounds; flush_interval {config.flush_interval} s, pool {config.pool_min}-"
        f"{config.pool_max} connections",
        "workload", "sessions", "write-through ops/s", "write-behind ops/s", "speed-up",
        "touches/session/interval", "rows/op write-through", "rows/op write-behind",
        "write-behind + feed ops/s", "feed on / off")
    checks = []
    feed_ratios = []
    for label, rates, count, rows in (("spread", spread, sessions, spread_rows),
                                      ("hot", hot, hot_count, hot_rows)):
        speedup = median([b.per_second / t.per_second
                          for b, t in zip(rates["write-behind"], rates["write-through"], strict=True)])
        behind = median([r.per_second for r in rates["write-behind"]])
        ops = sum(r.ops for r in rates["write-behind"])
        touches = behind * config.flush_interval / count
        rows_per_op = rows / ops if ops else 0.0
        feed_ratio = median([on.per_second / off.per_second for on, off
                             in zip(rates["write-behind + feed"], rates["write-behind"], strict=True)])
        feed_ratios.append((label, feed_ratio))
        table.add(label, count, median([r.per_second for r in rates["write-through"]]), behind, speedup,
                  touches, 1.0, rows_per_op, median([r.per_second for r in rates["write-behind + feed"]]),
                  feed_ratio)
        checks.append((label, speedup, rows_per_op, touches))
    (_, spread_speedup, _, _), (_, hot_speedup, hot_rows_per_op, hot_touches) = checks
    result.checks.append(Check("s2 write-behind / write-through throughput, spread workload", spread_speedup,
                               TARGET_SPEEDUP, ">=", "x"))
    result.checks.append(Check("s2 write-behind / write-through throughput, hot workload", hot_speedup,
                               TARGET_SPEEDUP, ">=", "x"))
    result.checks.append(Check("s2 rows written per operation, hot workload", hot_rows_per_op,
                               TARGET_HOT_ROWS_PER_OP, "<="))
    for label, feed_ratio in feed_ratios:
        result.checks.append(Check(f"s2 write-behind with the event feed / without, {label} workload",
                                   feed_ratio, TARGET_FEED_RATIO, ">="))
    if hot_touches < 20:
        result.notes.append(f"hot workload reached only {hot_touches:.1f} touches per session per interval")
    result.notes.append("write-through: one UPDATE per call through an asyncpg pool with the runtime's pool "
                        "settings (no RETURNING: the most favourable baseline)")
    await trio.lowlevel.checkpoint()
    return result
