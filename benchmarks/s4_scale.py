"""Scenario 4, scale: N live sessions with at most M resident actors.

For each store (MemoryStore, then PostgreSQL with write-behind), in a
process of its own so that resident memory starts from a fresh heap:

1. open a runtime (`max_resident=M`, timeouts long enough that nothing
   expires) and create N sessions from 10 concurrent tasks: the create rate,
   and RSS (VmRSS of /proc/self/status) sampled as sessions accumulate;
   bytes per live session = RSS growth / N, after a flush and `gc.collect()`;
2. make M sessions resident (one touch each): bytes per resident actor;
3. activity on random sessions, 100 concurrent callers, side by side:
   first on the M resident sessions only (the baseline: no activation),
   then on all N (most calls re-activate a passivated session and stop the
   least recently used: passivation churn). Ratio = churn / resident.

`create` does not start an actor (a new session is only recorded and
queued for expiry), so after step 1 no actor is resident. RSS includes the
benchmark's own list of N ids (8 bytes per session: the UUIDs themselves
are the runtime's). With MemoryStore, RSS also holds the store's copy of
every session (the same immutable objects, kept alive by the store);
with PostgreSQL it holds what the runtime itself needs: the deadline queue
of every live session, resident actors and the write-behind buffer.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from typing import Any, Final

import trio

from trio_sessions import MemoryStore, RuntimeConfig, open_runtime

from ._harness import MIB, Check, Context, Result, closed_loop, peak_rss_bytes, rss_bytes

NAME: Final = "s4"
TITLE: Final = "Scale: live sessions, memory and passivation churn"
NEEDS_POSTGRES: Final = True

TARGET_RSS_MIB: Final = 1.5 * 1024
TARGET_SESSIONS: Final = 1_000_000
TARGET_RESIDENT: Final = 50_000
CREATORS: Final = 10
CALLERS: Final = 100


async def measure(kind: str, sessions: int, resident: int, seconds: float, url: str | None) -> dict[str, Any]:
    """Steps 1-3 above on one store; returns the figures (run in its own process)."""
    gc.collect()
    rss_start = rss_bytes()
    config = RuntimeConfig(database_url=url, max_resident=resident, session_timeout=86_400.0,
                           passivate_after=86_400.0)
    store = MemoryStore() if kind == "memory" else None
    out: dict[str, Any] = {"store": kind, "sessions": sessions, "max_resident": resident}
    async with open_runtime(config, store=store) as rt:
        gc.collect()
        rss_open = rss_bytes()
        ids: list[Any] = []
        samples: dict[str, list[float]] = {"live": [0], "rss_mib": [rss_open / MIB]}
        sample_every = max(1, sessions // 20)

        async def creator(count: int) -> None:  # noqa: ASYNC910  awaits in a non-empty loop
            for _ in range(count):
                ids.append((await rt.create("user-42", "financeiro", metadata={"channel": "whatsapp"})).id)
                if len(ids) % sample_every == 0:
                    samples["live"].append(len(ids))
                    samples["rss_mib"].append(rss_bytes() / MIB)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(CREATORS):
                nursery.start_soon(creator, sessions // CREATORS + (i < sessions % CREATORS))
        created_in = time.perf_counter() - started
        await rt.flush()
        flushed_in = time.perf_counter() - started
        gc.collect()
        rss_created = rss_bytes()
        samples["live"].append(len(ids))
        samples["rss_mib"].append(rss_created / MIB)

        started = time.perf_counter()
        hot = ids[:resident]

        # Activate the first M, CALLERS at a time.
        async def warm(first: int) -> None:  # noqa: ASYNC910  awaits in a non-empty loop
            for session_id in hot[first::CALLERS]:
                await rt.update_last_activity(session_id)

        async with trio.open_nursery() as nursery:
            for first in range(CALLERS):
                nursery.start_soon(warm, first)
        warmed_in = time.perf_counter() - started
        await rt.flush()
        gc.collect()
        rss_resident = rss_bytes()
        samples["live"].append(len(ids))  # the same live sessions, now with M actors resident
        samples["rss_mib"].append(rss_resident / MIB)
        # What Python's cyclic GC has to walk in this steady state, and what one full pass costs.
        tracked = len(gc.get_objects())
        started = time.perf_counter()
        gc.collect()
        full_gc_s = time.perf_counter() - started

        rng = random.Random(4)

        async def touch_resident(_: int) -> None:
            await rt.update_last_activity(hot[rng.randrange(resident)])

        async def touch_any(_: int) -> None:
            await rt.update_last_activity(ids[rng.randrange(sessions)])

        resident_rate = await closed_loop(CALLERS, seconds, touch_resident)
        await rt.flush()
        before = rt.metrics()
        churn_rate = await closed_loop(CALLERS, seconds, touch_any)
        await rt.flush()
        after = rt.metrics()
        gc.collect()
        rss_churned = rss_bytes()
        out.update(
            live=after.live_sessions, resident_after=after.resident,
            rss_start_mib=rss_start / MIB, rss_open_mib=rss_open / MIB, rss_created_mib=rss_created / MIB,
            rss_resident_mib=rss_resident / MIB, rss_churned_mib=rss_churned / MIB,
            bytes_per_session=(rss_created - rss_open) / sessions,
            bytes_per_actor=(rss_resident - rss_created) / max(1, min(resident, sessions)),
            create_per_s=sessions / created_in, create_flushed_per_s=sessions / flushed_in,
            warm_per_s=min(resident, sessions) / warmed_in,
            resident_ops_per_s=resident_rate.per_second, churn_ops_per_s=churn_rate.per_second,
            passivations_per_op=(after.passivations - before.passivations) / max(1, churn_rate.ops),
            backpressure_waits=after.backpressure_waits, samples=samples, tracked_objects=tracked,
            full_gc_s=full_gc_s)
        started = time.perf_counter()
    out["close_s"] = time.perf_counter() - started
    out["peak_rss_mib"] = peak_rss_bytes() / MIB
    return out


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    sessions = ctx.size(TARGET_SESSIONS, 2_000)
    resident = ctx.size(TARGET_RESIDENT, 200)
    seconds = ctx.size(5.0, 0.3)
    measured = []
    for kind in ("memory", "postgres"):
        if kind == "postgres":
            async with ctx.fresh_database() as url:
                measured.append(await _measure_in_child(kind, sessions, resident, seconds, url))
        else:
            measured.append(await _measure_in_child(kind, sessions, resident, seconds, None))

    table = result.table(
        f"{sessions:,} live sessions, max_resident {resident:,}; {CREATORS} creating tasks, "
        f"{CALLERS} touching callers for {seconds} s per workload",
        "store", "RSS open MiB", f"RSS at {sessions:,} live MiB", "bytes/session", "bytes/actor",
        f"RSS +{resident:,} actors MiB", "create/s", "touch resident ops/s", "touch random ops/s",
        "ratio", "passivations/op")
    for m in measured:
        table.add(m["store"], m["rss_open_mib"], m["rss_created_mib"], m["bytes_per_session"],
                  m["bytes_per_actor"], m["rss_resident_mib"], m["create_per_s"], m["resident_ops_per_s"],
                  m["churn_ops_per_s"], m["churn_ops_per_s"] / m["resident_ops_per_s"],
                  m["passivations_per_op"])
    more = result.table("more", "store", "creates incl. flush/s", f"activations/s ({CALLERS} callers)",
                        "RSS after churn MiB", "peak RSS MiB", "backpressure waits", "close s",
                        "GC-tracked objects", "one full GC ms")
    for m in measured:
        more.add(m["store"], m["create_flushed_per_s"], m["warm_per_s"], m["rss_churned_mib"],
                 m["peak_rss_mib"], m["backpressure_waits"], m["close_s"], m["tracked_objects"],
                 m["full_gc_s"] * 1000)
    result.series["memory"] = {m["store"]: m["samples"] for m in measured}
    for m in measured:
        # The target's steady state: TARGET_SESSIONS live, TARGET_RESIDENT of them resident.
        label = f"s4 RSS with {TARGET_SESSIONS:,} live sessions, {TARGET_RESIDENT:,} resident, {m['store']}"
        if (sessions, resident) == (TARGET_SESSIONS, TARGET_RESIDENT):
            rss = m["rss_resident_mib"]
        else:
            rss = (m["rss_open_mib"] + (m["bytes_per_session"] * TARGET_SESSIONS
                                        + m["bytes_per_actor"] * TARGET_RESIDENT) / MIB)
            label += f" (extrapolated from {sessions:,} and {resident:,})"
        result.checks.append(Check(label, rss, TARGET_RSS_MIB, "<=", " MiB"))
    result.notes.append("the PostgreSQL process's own memory is not counted (it is another process)")
    result.notes.append("GC-tracked objects and one full GC: with N live and M resident sessions, what every "
                        "full (generation-2) collection of Python's cyclic GC walks, and how long it pauses "
                        "the process")
    return result


async def _measure_in_child(kind: str, sessions: int, resident: int, seconds: float,
                            url: str | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.s4_scale", kind, str(sessions), str(resident), str(seconds)]
    if url is not None:
        command.append(url)
    process = await trio.run_process(command, capture_stdout=True)
    measured: dict[str, Any] = json.loads(process.stdout)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s4_scale")
    parser.add_argument("store", choices=["memory", "postgres"])
    parser.add_argument("sessions", type=int)
    parser.add_argument("resident", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("url", nargs="?")
    args = parser.parse_args()
    out = trio.run(measure, args.store, args.sessions, args.resident, args.seconds, args.url)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
