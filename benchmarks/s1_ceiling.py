"""Scenario 1, the actor ceiling: `update_last_activity` against a bare Trio request/reply.

N concurrent callers (1, 10, 100, 1000), each on a session of its own, call
back to back for a fixed time. The ceiling is what Trio itself allows: one
server task per "session", a bounded memory channel as its mailbox (the
runtime's `mailbox_size`), each caller sending `(request, its reply
channel)` and receiving a frozen `Session` built once. A second baseline
also builds a new snapshot per call (`dataclasses.replace` with new
timestamps, as the actor does), to show how much of the gap is the snapshot
itself. The runtime runs on `MemoryStore` and on PostgreSQL with its
write-behind (flushes happen during the measurement, in the same thread).
Variants alternate within each round; the figure is the median over rounds
of runtime/ceiling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import trio

from trio_sessions import MemoryStore, RuntimeConfig, open_runtime
from trio_sessions._runtime import SessionRuntime

from ._harness import Check, Context, Rate, Result, closed_loop, median, snapshot_like

NAME: Final = "s1"
TITLE: Final = "Actor ceiling"
NEEDS_POSTGRES: Final = True

TARGET_POSTGRES_RATIO: Final = 0.6

Op = Callable[[int], Awaitable[Any]]


@asynccontextmanager
async def bare_servers(callers: int, *, copy_snapshot: bool, mailbox: int) -> AsyncIterator[Op]:
    """One server task per caller behind a memory channel; yields the caller's op."""
    snapshot = snapshot_like()
    async with trio.open_nursery() as nursery:
        mailboxes = []
        replies = []
        for _ in range(callers):
            send, receive = trio.open_memory_channel[tuple[object, trio.MemorySendChannel[Any]]](mailbox)
            nursery.start_soon(_serve, receive, snapshot, copy_snapshot)
            mailboxes.append(send)
            replies.append(trio.open_memory_channel[Any](1))

        async def op(index: int) -> Any:
            reply_send, reply_receive = replies[index]
            await mailboxes[index].send(("touch", reply_send))
            return await reply_receive.receive()

        yield op
        for send in mailboxes:
            send.close()


async def _serve(receive: trio.MemoryReceiveChannel[tuple[object, trio.MemorySendChannel[Any]]],
                 snapshot: Any, copy_snapshot: bool) -> None:
    timeout = timedelta(seconds=1800)
    async for _request, reply in receive:
        if copy_snapshot:
            now = datetime.fromtimestamp(trio.current_time(), UTC)
            snapshot = dataclasses.replace(snapshot, last_activity=now, expires_at=now + timeout,
                                           updated_at=now, version=snapshot.version + 1)
        reply.send_nowait(snapshot)


async def runtime_op(rt: SessionRuntime, callers: int) -> Op:
    ids = [(await rt.create("user-42", "financeiro", metadata={"channel": "whatsapp"})).id
           for _ in range(callers)]
    for session_id in ids:  # make every actor resident before timing
        await rt.update_last_activity(session_id)
    await rt.flush()

    async def op(index: int) -> Any:
        return await rt.update_last_activity(ids[index])

    return op


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    concurrencies = ctx.size([1, 10, 100, 1000], [1, 10])
    seconds = ctx.size(1.5, 0.15)
    rounds = ctx.size(3, 1)
    config = RuntimeConfig(flush_interval=0.2)
    table = result.table(
        f"update_last_activity vs a bare Trio request/reply ({seconds} s per variant, median of "
        f"{rounds} alternating rounds; ratio = variant / ceiling)",
        "callers", "ceiling ops/s", "+snapshot ops/s", "ratio", "memory ops/s", "ratio",
        "postgres ops/s", "ratio", "pg rows/op")
    series: dict[str, list[float]] = {"callers": [], "ceiling": [], "ceiling+snapshot": [],
                                      "memory": [], "postgres": []}
    pg_ratios = []
    assert ctx.server_url is not None
    async with ctx.fresh_database() as url:
        async with open_runtime(config, store=MemoryStore()) as memory_rt, \
                open_runtime(dataclasses.replace(config, database_url=url)) as pg_rt:
            for callers in concurrencies:
                memory_op = await runtime_op(memory_rt, callers)
                pg_op = await runtime_op(pg_rt, callers)
                rates: dict[str, list[Rate]] = {k: [] for k in ("ceiling", "ceiling+snapshot", "memory",
                                                                 "postgres")}
                rows = 0
                for _ in range(rounds):
                    async with bare_servers(callers, copy_snapshot=False, mailbox=config.mailbox_size) as op:
                        rates["ceiling"].append(await closed_loop(callers, seconds, op))
                    async with bare_servers(callers, copy_snapshot=True, mailbox=config.mailbox_size) as op:
                        rates["ceiling+snapshot"].append(await closed_loop(callers, seconds, op))
                    rates["memory"].append(await closed_loop(callers, seconds, memory_op))
                    await memory_rt.flush()
                    before = pg_rt.metrics()
                    rates["postgres"].append(await closed_loop(callers, seconds, pg_op))
                    await pg_rt.flush()
                    after = pg_rt.metrics()
                    rows += (after.flushed_sessions - before.flushed_sessions
                             + after.flushed_messages - before.flushed_messages)

                def ratio(name: str, rates: dict[str, list[Rate]] = rates) -> float:
                    return median([v.per_second / c.per_second
                                   for v, c in zip(rates[name], rates["ceiling"], strict=True)])

                rate = {k: median([r.per_second for r in v]) for k, v in rates.items()}
                pg_ops = sum(r.ops for r in rates["postgres"])
                table.add(callers, rate["ceiling"], rate["ceiling+snapshot"], ratio("ceiling+snapshot"),
                          rate["memory"], ratio("memory"), rate["postgres"], ratio("postgres"),
                          rows / pg_ops if pg_ops else 0.0)
                series["callers"].append(callers)
                for k in rate:
                    series[k].append(rate[k])
                pg_ratios.append((callers, ratio("postgres")))
    result.series["throughput"] = series
    for callers, value in pg_ratios:
        result.checks.append(Check(f"s1 postgres write-behind / ceiling, {callers} callers", value,
                                   TARGET_POSTGRES_RATIO, ">="))
    result.notes.append("ceiling: bare Trio memory-channel request/reply returning a prebuilt frozen "
                        "Session; +snapshot: the same, building a new snapshot per call "
                        "(dataclasses.replace with new timestamps and version)")
    return result
