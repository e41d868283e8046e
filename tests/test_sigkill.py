"""A process killed with SIGKILL loses at most its last moments of non-durable writes.

A child process writes to PostgreSQL, durable and non-durable, with
`flush_interval` 0.2 s, and is killed mid-stream. What it had confirmed
durable must all be stored; of the rest only writes acknowledged within
`LOSS_BOUND` of the kill may be missing. The bound (README): a change is
committed at most `flush_interval` after it was acknowledged, plus the time
a batch takes to write, plus one more batch's write when a batch holding the
same session is still in flight. 0.4 s allows 0.2 s for the writes and scheduling.
"""

from __future__ import annotations

import signal
import sys
import time
from uuid import UUID

import trio

from trio_sessions import PostgresStore

LOSS_BOUND = 0.4

CHILD = """
import sys, time, trio
from trio_sessions import PostgresStore, RuntimeConfig, open_runtime

async def main(url):
    config = RuntimeConfig(flush_interval=0.2)
    async with open_runtime(config, store=PostgresStore(url, config)) as rt:
        sessions = [await rt.create(f"u{i}", "geral", durable=True) for i in range(20)]
        print("sessions", *[s.id for s in sessions], flush=True)
        n = 0
        while True:
            for i, s in enumerate(sessions):
                n += 1
                durable = n in (100, 200)  # early only: a durable write flushes the whole buffer at once
                content = f"{time.time():.6f} {n}"
                await rt.append_message(s.id, "user", content, durable=durable)
                if durable:
                    print("durable", content, flush=True)
            await trio.sleep(0.002)

trio.run(main, sys.argv[1])
"""


async def test_sigkill_loses_nothing_durable_and_nothing_older_than_the_bound(postgres_url: str) -> None:
    lines: list[str] = []
    started = trio.Event()
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process([sys.executable, "-c", CHILD, postgres_url],
                                                   stdout=-1)
        assert process.stdout is not None

        async def read() -> None:
            buffer = b""
            async for chunk in process.stdout:  # type: ignore[union-attr]
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                lines.extend(line.decode() for line in done)
                if lines and lines[0].startswith("sessions"):
                    started.set()

        nursery.start_soon(read)
        with trio.fail_after(60):
            await started.wait()
        await trio.sleep(1.5)  # noqa: ASYNC900 - the child writes on its own; this is the load's length
        process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    session_ids = [UUID(word) for word in lines[0].split()[1:]]
    durable = {line.split(" ", 1)[1] for line in lines[1:] if line.startswith("durable ")}
    assert durable
    store = PostgresStore(postgres_url)
    async with store.connect():
        stored: set[str] = set()
        for session_id in session_ids:
            stored |= {m.content for m in await store.load_messages(session_id, limit=10**6,
                                                                    up_to_seq=2**31 - 1)}
    assert durable <= stored
    # Writes are numbered in the order they were made, and carry the time they were made. A
    # missing write was made after the stored one numbered just below it, so that one's time
    # bounds its age; writes after the newest stored one are younger than it.
    made = {int(c.split()[1]): float(c.split()[0]) for c in stored}
    newest = max(made)
    below = [made[max(k for k in made if k < n)] for n in range(2, newest) if n not in made]
    oldest_lost = min([*below, made[newest]])
    assert killed_at - oldest_lost <= LOSS_BOUND, f"lost writes up to {killed_at - oldest_lost:.3f} s old"
    print(f"writes lost: at most {killed_at - oldest_lost:.3f} s old; {len(below)} gaps below the newest")
