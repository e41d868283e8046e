"""Scenario 10, one process against two on one PostgreSQL, with sticky routing by chat.

A Python process runs on one core, so a busy orchestrator runs several
workers behind a load balancer; with sticky routing each chat's webhooks go
to one worker, so hand-offs are rare and the workers share only the
database. This measures what a second worker adds: the same load (1,000
chats, 100 callers in all, each message a `session_for_chat` then an
`append_message`, back to back) through one worker process or split
between two by chat, on the suite's PostgreSQL (on the same machine,
sharing its cores). Every worker is a real process with its own runtime;
each opens its chats' sessions first, then all are told to go at once and
count the messages they completed in a fixed time. One and two processes
alternate, round after round. The figure is the aggregate messages per
second of two workers over one (median over rounds); the machine's core
count goes with it, since the server's work shares those cores.
"""

from __future__ import annotations

import os
import statistics
import sys
from typing import Final

import trio

from ._harness import Context, Result

NAME: Final = "s10"
TITLE: Final = "Two worker processes against one, sticky routing by chat"
NEEDS_POSTGRES: Final = True

WORKER: Final = """
import sys, trio
from trio_sessions import PostgresStore, RuntimeConfig, open_runtime

async def main(url, first, step, chats, callers, seconds):
    config = RuntimeConfig(max_resident=100_000)
    mine = [i for i in range(first, chats, step)]
    keys = [(f"u{i}", "financeiro", f"chat-{i}@c.us") for i in mine]
    async with open_runtime(config, store=PostgresStore(url, config)) as rt:
        for key in keys:  # opened (and resident) before the clock starts
            await rt.session_for_chat(*key)
        await rt.flush()
        print("ready", flush=True)
        await trio.lowlevel.FdStream(0).receive_some(1)  # "go"
        end = trio.current_time() + seconds
        done = 0

        async def caller(k):
            nonlocal done
            mine = keys[k::callers]
            i = 0
            while trio.current_time() < end:
                session = await rt.session_for_chat(*mine[i % len(mine)])
                await rt.append_message(session.id, "user", "oi")
                done += 1
                i += 1

        async with trio.open_nursery() as nursery:
            for k in range(min(callers, len(keys))):
                nursery.start_soon(caller, k)
        print("done", done, flush=True)

trio.run(main, sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6]))
"""


async def run(ctx: Context) -> Result:
    result = Result(NAME, TITLE)
    chats, callers = ctx.size(1000, 100), 100
    seconds = ctx.size(5.0, 1.0)
    rounds = ctx.size(3, 1)
    rates: dict[int, list[float]] = {1: [], 2: []}
    async with ctx.fresh_database() as url:
        for round_ in range(rounds):
            for processes in (1, 2) if round_ % 2 == 0 else (2, 1):
                rates[processes].append(await one_run(url, processes, chats, callers, seconds))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    cores = os.cpu_count()
    table = result.table(
        f"messages per second (session_for_chat + append_message), {chats:,} chats, {callers} callers in "
        f"all, {seconds:g} s per run, {rounds} rounds; {cores} cores shared with the PostgreSQL server",
        "workers", "messages/s (median)", "runs", "ratio to one worker")
    table.add("one process", one, ", ".join(f"{r:,.0f}" for r in rates[1]), 1.0)
    table.add("two processes, chats split between them", two, ", ".join(f"{r:,.0f}" for r in rates[2]),
              two / one)
    return result


async def one_run(url: str, processes: int, chats: int, callers: int, seconds: float) -> float:
    """Messages per second of `processes` workers sharing the chats (chat i to worker i % processes)."""
    workers = []
    lines: list[list[str]] = [[] for _ in range(processes)]
    ready = [trio.Event() for _ in range(processes)]
    async with trio.open_nursery() as nursery:
        for index in range(processes):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", WORKER, url, str(index), str(processes), str(chats),
                 str(callers // processes), str(seconds)], stdin=-1, stdout=-1)
            workers.append(process)
            nursery.start_soon(read_lines, process, lines[index], ready[index])
        with trio.fail_after(120):  # noqa: ASYNC912  never empty: one event per worker
            for event in ready:
                await event.wait()
        for process in workers:
            assert process.stdin is not None
            await process.stdin.send_all(b"g")
    for process in workers:
        if await process.wait() != 0:
            raise RuntimeError(f"a worker failed with exit status {process.returncode}")
    done = sum(int(line.split()[1]) for worker in lines for line in worker if line.startswith("done"))
    return done / seconds


async def read_lines(process: trio.Process, lines: list[str], ready: trio.Event) -> None:
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(line.decode() for line in complete)
        if "ready" in lines:
            ready.set()
