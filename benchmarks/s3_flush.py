"""Scenario 3, the flusher against raw bulk writes of the same rows.

R sessions are stored first; then every round updates all of them to a new
version, four ways, on the same database (variants alternate):

- raw executemany: asyncpg `executemany` of a one-row upsert, one
  transaction per batch of `flush_batch` rows, the rows prebuilt as tuples
  (JSON already text): what the database and driver cost;
- raw unnest: one `INSERT ... SELECT FROM unnest(arrays)` upsert per batch,
  the column arrays prebuilt (the statement shape the store uses);
- store.write: `PostgresStore.write(WriteBatch(...))`, one batch after
  the other, from `Session` objects: the store's encoding plus the SQL;
- write-behind: `WriteBehind.record()` of every row (the actors' side),
  its flusher writing batches through `PostgresStore.write`, until
  `WriteBehind.flush()` returns: the whole path from an actor's change to
  its commit, fence included (the batch carries its owner and epochs, so
  the store's statements check them, as in the runtime: the sessions are
  claimed for one instance before the rounds start).

- write-behind + feed: the same with the durable event feed on
  (`event_feed=True`): every row also writes its "updated" event in the
  same transaction; its figure is its rows per second over the
  write-behind's without the feed, round by round.

The baseline is the faster raw variant of each round; the figure is the
write-behind's rows per second over it. All four use pools with the
runtime's settings, on the same server and table. The raw variants and
store.write write one batch at a time; the write-behind writes as it does in
the runtime, up to `flush_concurrency` batches at once (Python encodes one
while PostgreSQL executes another).
Every variant updates every row, which leaves dead row versions behind:
the table is vacuumed before each variant and the order of the variants
rotates from round to round, so that none always runs on the most bloated
table. Each variant starts after a full garbage collection, so that none
pays for the snapshots built for it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import trio

from trio_sessions import PostgresStore, RuntimeConfig, Session
from trio_sessions._metrics import Counters
from trio_sessions._retry import Retry
from trio_sessions._store import WriteBatch
from trio_sessions._writebehind import WriteBehind

from . import _pg
from ._harness import Check, Context, Result, median, snapshot_like

NAME: Final = "s3"
TITLE: Final = "Flush against raw bulk writes"
NEEDS_POSTGRES: Final = True

TARGET_RATIO: Final = 0.8
#: The event feed may cost at most this much flush throughput (feed on / feed off).
TARGET_FEED_RATIO: Final = 0.9

_COLUMNS: Final = ("id, user_id, agent, chat_id, title, state, metadata, notes, is_active, "
                   "message_count, created_at, updated_at, last_activity, expires_at, ended_at, "
                   "end_reason, version, timeout")
_ON_CONFLICT: Final = """
ON CONFLICT (id) DO UPDATE SET
    user_id = EXCLUDED.user_id, agent = EXCLUDED.agent, chat_id = EXCLUDED.chat_id,
    title = EXCLUDED.title, state = EXCLUDED.state, metadata = EXCLUDED.metadata,
    notes = EXCLUDED.notes, is_active = EXCLUDED.is_active,
    message_count = EXCLUDED.message_count, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, last_activity = EXCLUDED.last_activity,
    expires_at = EXCLUDED.expires_at, ended_at = EXCLUDED.ended_at,
    end_reason = EXCLUDED.end_reason, version = EXCLUDED.version, timeout = EXCLUDED.timeout
WHERE sessions.version < EXCLUDED.version
"""
UPSERT_ONE: Final = (f"INSERT INTO sessions ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, "
                     "$8::jsonb, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)" + _ON_CONFLICT)
UPSERT_UNNEST: Final = (
    f"INSERT INTO sessions ({_COLUMNS}) SELECT id, user_id, agent, chat_id, title, state, metadata::jsonb, "
    "notes::jsonb, is_active, message_count, created_at, updated_at, last_activity, expires_at, ended_at, "
    "end_reason, version, timeout FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], "
    "$6::text[], $7::text[], $8::text[], $9::boolean[], $10::integer[], $11::timestamptz[], "
    "$12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::text[], "
    f"$17::bigint[], $18::float8[]) AS row ({_COLUMNS})" + _ON_CONFLICT)


def _row(s: Session) -> tuple[Any, ...]:
    return (s.id, s.user_id, s.agent, s.chat_id, s.title, s.state, json.dumps(dict(s.metadata)), "[]",
            s.is_active, s.message_count, s.created_at, s.updated_at, s.last_activity, s.expires_at,
            s.ended_at, s.end_reason, s.version, s.timeout)


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def _raw_executemany(pool: _pg.RawPool, rows: list[tuple[Any, ...]], batch: int) -> float:
    started = time.perf_counter()
    for chunk in _batches(rows, batch):
        await pool.executemany_in_transaction(UPSERT_ONE, chunk)
    return time.perf_counter() - started  # noqa: ASYNC910  loops over a non-empty list whose body awaits


async def _raw_unnest(pool: _pg.RawPool, columns: list[list[list[Any]]]) -> float:
    started = time.perf_counter()
    for chunk in columns:
        await pool.execute_in_transaction(UPSERT_UNNEST, *chunk)
    return time.perf_counter() - started  # noqa: ASYNC910  loops over a non-empty list whose body awaits


async def _store_write(store: PostgresStore, sessions: list[Session], batch: int) -> float:
    started = time.perf_counter()
    for chunk in _batches(sessions, batch):
        await store.write(WriteBatch(tuple(chunk), (), ()))
    return time.perf_counter() - started  # noqa: ASYNC910  loops over a non-empty list whose body awaits


@dataclasses.dataclass(frozen=True)
class _Owner:
    """The instance the write-behind writes as, and the epoch of each session (`_writebehind.Owner`)."""

    instance: uuid.UUID
    owned: dict[uuid.UUID, int]


async def _write_behind(store: PostgresStore, config: RuntimeConfig, sessions: list[Session], owner: _Owner,
                        ) -> tuple[float, int]:
    counters = Counters()
    writebehind = WriteBehind(store, config, counters, Retry(config, counters, random.Random(3)), owner)
    async with trio.open_nursery() as nursery:
        await nursery.start(writebehind.run)
        started = time.perf_counter()
        for i, session in enumerate(sessions):
            if not writebehind.has_room():
                await writebehind.wait_for_room()
            writebehind.record(session)
            if i % config.flush_batch == config.flush_batch - 1:
                await trio.lowlevel.checkpoint()  # the actors' tasks take turns with the flusher
        await writebehind.flush()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    assert counters.flushed_sessions == len(sessions), counters
    return elapsed, counters.flush_batches


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    count = ctx.size(200_000, 2_000)
    batch = ctx.size(2000, 500)
    rounds = ctx.size(3, 1)
    config = RuntimeConfig(flush_batch=batch)
    # Each its own chat: one active session per chat (migration 0004).
    base = [dataclasses.replace(snapshot_like(), chat_id=f"55119{i:08d}@c.us") for i in range(count)]
    times: dict[str, list[float]] = {"raw executemany": [], "raw unnest": [], "store.write": [],
                                     "write-behind": [], "write-behind + feed": []}
    feed_config = dataclasses.replace(config, event_feed=True)
    flush_batches = 0
    async with ctx.fresh_database() as url:
        store = PostgresStore(url, config)
        async with store.connect(), _pg.open_raw_pool(url, config) as pool:
            await _raw_executemany(pool, [_row(s) for s in base], batch)  # the rows exist from here on
            instance = uuid.uuid4()
            await store.register(instance, 24 * 3600.0)
            claimed = await store.claim([s.id for s in base], instance)
            owner = _Owner(instance, {session_id: epoch for session_id, (_, epoch) in claimed.items()})
            version = 1
            variants = list(times)
            for round_ in range(rounds):
                for name in variants[round_ % 5:] + variants[:round_ % 5]:
                    version += 1
                    await pool.execute("VACUUM sessions")
                    sessions = [dataclasses.replace(s, version=version) for s in base]
                    # The 200,000 snapshots just built would otherwise bring on a full
                    # collection of the heap at a random point of whichever variant runs.
                    gc.collect()
                    if name == "raw executemany":
                        elapsed = await _raw_executemany(pool, [_row(s) for s in sessions], batch)
                    elif name == "raw unnest":
                        columns = [[list(column) for column in zip(*chunk, strict=True)]
                                   for chunk in _batches([_row(s) for s in sessions], batch)]
                        elapsed = await _raw_unnest(pool, columns)
                    elif name == "store.write":
                        elapsed = await _store_write(store, sessions, batch)
                    elif name == "write-behind":
                        elapsed, flush_batches = await _write_behind(store, config, sessions, owner)
                    else:
                        elapsed, _ = await _write_behind(store, feed_config, sessions, owner)
                    times[name].append(elapsed)
            stored = await pool.fetchval("SELECT count(*) FROM sessions WHERE version = $1", version)
            assert stored == count, (stored, count)

    raw_best = [min(a, b) for a, b in zip(times["raw executemany"], times["raw unnest"], strict=True)]
    table = result.table(
        f"{count:,} session rows updated per variant in batches of {batch:,} (one transaction each), "
        f"median of {rounds} alternating rounds; ratio = rows/s over the faster raw variant of the round",
        "variant", "rows/s", "ratio")
    ratios = {}
    for name, values in times.items():
        ratios[name] = median([best / t for t, best in zip(values, raw_best, strict=True)])
        table.add(name, median([count / t for t in values]), ratios[name])
    result.checks.append(Check("s3 write-behind flush / raw bulk upsert, rows per second",
                               ratios["write-behind"], TARGET_RATIO, ">="))
    feed_ratio = median([off / on for on, off in zip(times["write-behind + feed"], times["write-behind"],
                                                     strict=True)])
    table.add("write-behind + feed / write-behind", "", feed_ratio)
    result.checks.append(Check("s3 write-behind flush with the event feed / without, rows per second",
                               feed_ratio, TARGET_FEED_RATIO, ">="))
    result.notes.append(f"the write-behind wrote {flush_batches} batches in its last round")
    return result
