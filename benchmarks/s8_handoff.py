"""Scenario 8, hand-offs between runtimes sharing one PostgreSQL.

Two runtimes run in this process, each with its own `PostgresStore` (its
own pool, lease and LISTEN connection): to PostgreSQL they are two
processes. Timed, one call at a time:

- hand-off while the owner is alive: a session resident in one runtime
  gets an `append_message` through the other, which asks the owner, waits
  for the grant, acquires the session and applies the call; then back,
  alternating, over a few sessions;
- baseline: the same `append_message` through one runtime that owns the
  sessions but keeps one resident (`max_resident=1`), so that every call
  loads its session from the store, flushed first (the part of a hand-off a
  runtime alone pays too, at every activation);
- failover after a graceful close: a runtime owning a session closes, and
  the other's first call for it is timed.

Failover after a SIGKILL is bounded by the lease (`lease_duration`, plus
one `handoff_poll_interval`); tests/test_processes.py exercises it with
real processes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Final

from trio_sessions import PostgresStore, RuntimeConfig, open_runtime

from ._harness import Check, Context, Result, percentiles

NAME: Final = "s8"
TITLE: Final = "Hand-offs between runtimes sharing one PostgreSQL"
NEEDS_POSTGRES: Final = True

TARGET_P50: Final = 0.010
TARGET_P99: Final = 0.100
TARGET_GRACEFUL: Final = 0.200


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    rounds = ctx.size(500, 20)
    sessions_n = 5
    config = RuntimeConfig()
    handoffs: list[float] = []
    activations: list[float] = []
    graceful: list[float] = []
    async with ctx.fresh_database() as url:
        async with open_runtime(config, store=PostgresStore(url, config)) as a, \
                open_runtime(config, store=PostgresStore(url, config)) as b:
            sessions = [await a.create(f"u{i}", "geral", durable=True) for i in range(sessions_n)]
            owner = {session.id: a for session in sessions}
            for round_ in range(rounds):
                session = sessions[round_ % sessions_n]
                caller = b if owner[session.id] is a else a
                started = time.perf_counter()
                await caller.append_message(session.id, "user", f"r{round_}")
                handoffs.append(time.perf_counter() - started)
                owner[session.id] = caller
        # Both closed: every session is free. The baseline's runtime keeps one
        # actor resident, so each call on the next session passivates the last
        # and loads this one from the store: the activation a runtime alone pays.
        async with open_runtime(dataclasses.replace(config, max_resident=1),
                                store=PostgresStore(url, config)) as c:
            for session in sessions:  # acquired once (ownership survives passivation)
                await c.get(session.id)
            for round_ in range(rounds):
                session = sessions[round_ % sessions_n]
                await c.flush()  # so the load reads the store, not the write-behind buffer
                started = time.perf_counter()
                await c.append_message(session.id, "user", f"baseline {round_}")
                activations.append(time.perf_counter() - started)
        for _ in range(ctx.size(20, 3)):
            async with open_runtime(config, store=PostgresStore(url, config)) as survivor:
                async with open_runtime(config, store=PostgresStore(url, config)) as leaving:
                    session = await leaving.create("g", "geral", durable=True)
                    await leaving.append_message(session.id, "user", "before the close")
                started = time.perf_counter()
                await survivor.append_message(session.id, "user", "after the close")
                graceful.append(time.perf_counter() - started)
    hand = percentiles(handoffs, (50, 90, 99))
    base = percentiles(activations, (50, 90, 99))
    fail = percentiles(graceful, (50, 90, 99))
    table = result.table(
        f"one call at a time: {rounds} hand-offs alternating between two runtimes over {sessions_n} "
        "sessions; the baseline is the same call activating its session from the store in one runtime",
        "case", "p50 ms", "p90 ms", "p99 ms", "p50 ratio to baseline")
    table.add("hand-off while the owner is alive", hand["p50"] * 1e3, hand["p90"] * 1e3, hand["p99"] * 1e3,
              hand["p50"] / base["p50"])
    table.add("activation from the store (baseline)", base["p50"] * 1e3, base["p90"] * 1e3, base["p99"] * 1e3,
              1.0)
    table.add(f"first call after the owner closed ({len(graceful)} runs)", fail["p50"] * 1e3,
              fail["p90"] * 1e3, fail["p99"] * 1e3, fail["p50"] / base["p50"])
    result.checks.append(Check("s8 hand-off while the owner is alive, p50", hand["p50"] * 1e3,
                               TARGET_P50 * 1e3, "<=", " ms"))
    result.checks.append(Check("s8 hand-off while the owner is alive, p99", hand["p99"] * 1e3,
                               TARGET_P99 * 1e3, "<=", " ms"))
    result.checks.append(Check("s8 first call after the owner's graceful close, p99", fail["p99"] * 1e3,
                               TARGET_GRACEFUL * 1e3, "<=", " ms"))
    return result
