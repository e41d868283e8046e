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
  the other's first call for it is timed;
- failover after a SIGKILL: a child process owns a session (it created it
  and wrote to it) and is killed with SIGKILL; the time from the kill to the
  first call elsewhere that succeeds on the session. Bounded by the lease
  (the owner's last renewal plus `lease_duration`, then at most one
  `handoff_poll_interval`), so it runs with a short lease (2 s) to keep the
  scenario short; the target is relative to the lease: at most lease + 1 s.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from typing import Final
from uuid import UUID

import trio

from trio_sessions import PostgresStore, RuntimeConfig, open_runtime

from ._harness import Check, Context, Result, percentiles

NAME: Final = "s8"
TITLE: Final = "Hand-offs between runtimes sharing one PostgreSQL"
NEEDS_POSTGRES: Final = True

TARGET_P50: Final = 0.010
TARGET_P99: Final = 0.100
TARGET_GRACEFUL: Final = 0.200
#: The short lease of the SIGKILL failover runs; the target is this plus one second.
KILL_LEASE: Final = 2.0
KILL_SETTINGS: Final = {"lease_duration": KILL_LEASE, "lease_renew_interval": KILL_LEASE / 5,
                        "handoff_poll_interval": 0.1}

# The owner that is killed: creates a session, writes to it (durably), says so, then idles.
OWNER = f"""
import sys, trio
from trio_sessions import PostgresStore, RuntimeConfig, open_runtime

async def main(url):
    config = RuntimeConfig(**{KILL_SETTINGS!r})
    async with open_runtime(config, store=PostgresStore(url, config)) as rt:
        session = await rt.create("k", "geral", durable=True)
        await rt.append_message(session.id, "user", "before the kill", durable=True)
        print(session.id, flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


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
        killed = await failovers_after_sigkill(url, ctx.size(5, 1))
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
    kills = result.table(
        f"failover after SIGKILL: from the kill of the owner (another process) to the first call on its "
        f"session that succeeds elsewhere; lease_duration {KILL_LEASE:g} s, renewed every "
        f"{KILL_LEASE / 5:g} s", "run", "seconds", "past the lease, s")
    for i, seconds in enumerate(killed, 1):
        kills.add(str(i), seconds, seconds - KILL_LEASE)
    result.checks.append(Check("s8 hand-off while the owner is alive, p50", hand["p50"] * 1e3,
                               TARGET_P50 * 1e3, "<=", " ms"))
    result.checks.append(Check("s8 hand-off while the owner is alive, p99", hand["p99"] * 1e3,
                               TARGET_P99 * 1e3, "<=", " ms"))
    result.checks.append(Check("s8 first call after the owner's graceful close, p99", fail["p99"] * 1e3,
                               TARGET_GRACEFUL * 1e3, "<=", " ms"))
    result.checks.append(Check(f"s8 first call after the owner's SIGKILL (lease {KILL_LEASE:g} s), slowest",
                               max(killed), KILL_LEASE + 1.0, "<=", " s"))
    return result


async def failovers_after_sigkill(url: str, runs: int) -> list[float]:
    """Seconds from an owner's SIGKILL to the first successful call on its session elsewhere."""
    config = RuntimeConfig(**KILL_SETTINGS)  # type: ignore[arg-type]
    times = []
    async with open_runtime(config, store=PostgresStore(url, config)) as survivor:
        for _ in range(runs):
            process = await trio.lowlevel.open_process([sys.executable, "-c", OWNER, url], stdout=-1)
            try:
                assert process.stdout is not None
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(100)
                    if not chunk:
                        raise RuntimeError("the owner process exited before it was ready")
                    line += chunk
                session_id = UUID(line.decode().strip())
            finally:
                process.send_signal(signal.SIGKILL)
                await process.wait()
            killed = time.perf_counter()
            await survivor.append_message(session_id, "user", "after the kill")
            times.append(time.perf_counter() - killed)
    return times
