"""Scenario 7, latency under load: open-loop arrivals at half the measured maximum.

First the maximum: 1,000 callers back to back on the PostgreSQL runtime
(as in scenario 1). Then arrivals at half that rate, paced on Trio's clock
(arrival i is due at t0 + i / rate, served by caller i mod 1000, each caller
on a session of its own; one pacer task releases the due arrivals), for the
bare Trio request/reply of scenario 1, the runtime on MemoryStore and on PostgreSQL, all at the same rate.
Latency is counted from the arrival's scheduled time (so a caller that falls
behind counts its queueing: no coordinated omission), in Trio time (which
is `time.perf_counter` plus an offset).
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from trio_sessions import MemoryStore, RuntimeConfig, open_runtime

from ._harness import Context, GcPauses, Result, closed_loop, percentiles
from .s1_ceiling import bare_servers, runtime_op

NAME: Final = "s7"
TITLE: Final = "Latency under load"
NEEDS_POSTGRES: Final = True

LOAD: Final = 0.5


async def open_loop(callers: int, rate: float, seconds: float, op: Callable[[int], Awaitable[Any]]
                    ) -> tuple[list[float], list[float], float]:
    """Arrivals at `rate` per second for `seconds`; (latencies, service times, achieved rate).

    One pacer task sleeps until the next arrival is due and hands every due
    arrival to its caller (arrival i to caller i mod `callers`), waking it
    directly; a caller still busy with an earlier arrival finds the new one
    queued when it is done. So pacing costs one timer per wake-up of the
    pacer, not one per call (a `trio.sleep_until` per call would cost the
    runtime and the baseline a sizeable share of the CPU they are measured on).
    """
    total = int(rate * seconds)
    latencies: list[float] = []
    services: list[float] = []
    backlog: list[collections.deque[float]] = [collections.deque() for _ in range(callers)]
    parked: list[trio.lowlevel.Task | None] = [None] * callers
    start = trio.current_time() + 0.05
    done = trio.Event()
    finished = False

    async def caller(index: int) -> None:
        queue = backlog[index]
        while True:
            if not queue:
                parked[index] = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
                if finished:
                    return
            due = queue.popleft()
            began = trio.current_time()
            await op(index)
            now = trio.current_time()
            latencies.append(now - due)
            services.append(now - began)
            if len(latencies) == total:
                done.set()

    def wake(index: int) -> None:
        task = parked[index]
        if task is not None:
            parked[index] = None
            trio.lowlevel.reschedule(task)

    async with trio.open_nursery() as nursery:
        for index in range(callers):
            nursery.start_soon(caller, index)
        i = 0
        while i < total:
            await trio.sleep_until(start + i / rate)
            now = trio.current_time()
            while i < total and start + i / rate <= now:
                backlog[i % callers].append(start + i / rate)
                wake(i % callers)
                i += 1
        await done.wait()
        finished = True
        for index in range(callers):
            wake(index)
    return latencies, services, total / (trio.current_time() - start)


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    callers = ctx.size(1000, 50)
    seconds = ctx.size(5.0, 0.3)
    config = RuntimeConfig()
    measured: dict[str, tuple[list[float], list[float], float]] = {}
    collections: dict[str, dict[str, float]] = {}
    async with ctx.fresh_database() as url, \
            open_runtime(config, store=MemoryStore()) as memory_rt, \
            open_runtime(dataclasses.replace(config, database_url=url)) as pg_rt:
        memory_op = await runtime_op(memory_rt, callers)
        pg_op = await runtime_op(pg_rt, callers)
        maximum = (await closed_loop(callers, ctx.size(2.0, 0.2), pg_op)).per_second
        await pg_rt.flush()
        rate = LOAD * maximum
        tracked = len(gc.get_objects())
        async with bare_servers(callers, copy_snapshot=False, mailbox=config.mailbox_size) as op:
            with GcPauses() as pauses:
                measured["ceiling (bare Trio)"] = await open_loop(callers, rate, seconds, op)
            collections["ceiling (bare Trio)"] = pauses.summary()
        with GcPauses() as pauses:
            measured["memory"] = await open_loop(callers, rate, seconds, memory_op)
        collections["memory"] = pauses.summary()
        with GcPauses() as pauses:
            measured["postgres"] = await open_loop(callers, rate, seconds, pg_op)
        collections["postgres"] = pauses.summary()
        histogram = pg_rt.metrics().operations["update_last_activity"]
    table = result.table(
        f"update_last_activity, {callers:,} callers, open-loop arrivals at {rate:,.0f}/s = {LOAD:.0%} of "
        f"the PostgreSQL runtime's closed-loop maximum ({maximum:,.0f}/s), {seconds} s; latency from the "
        "scheduled arrival, in ms",
        "variant", "achieved/s", "p50", "p90", "p99", "p99.9", "max", "service p50", "service p99",
        "full GCs", "longest GC")
    result.series["latency"] = {}
    for name, (latencies, services, achieved) in measured.items():
        stats = percentiles(latencies)
        service = percentiles(services)
        table.add(name, achieved, *(stats[q] * 1000 for q in ("p50", "p90", "p99", "p99.9", "max")),
                  service["p50"] * 1000, service["p99"] * 1000, collections[name]["count"],
                  collections[name]["max_s"] * 1000)
        result.series["latency"][name] = stats
    result.notes.append(f"the runtime's own histogram (whole run, incl. the maximum's measurement): "
                        f"p50 {histogram.p50 * 1000:.3f} ms, p99 {histogram.p99 * 1000:.3f} ms, "
                        f"max {histogram.max * 1000:.3f} ms")
    result.notes.append(f"{tracked:,} GC-tracked objects in the process (two runtimes with {callers:,} "
                        "resident sessions each): full GCs pause every variant alike, the runtime's own "
                        "allocations make them more frequent")
    if any(math.isnan(v) for v in result.series["latency"]["postgres"].values()):
        result.notes.append("no call completed")
    return result
