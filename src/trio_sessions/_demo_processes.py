"""`trio-sessions demo --processes N`: the demo's orchestrator as N worker processes on one database.

Each worker is a process of its own (`python -m trio_sessions._demo_processes`)
running the demo's `Simulation` on its own runtime, all on the same
database. User i is the same user, on the same WhatsApp chat, in every
worker, as if a load balancer sent each of their messages to any worker: a
chat's session moves from process to process (hand-offs), and one session
per chat, whole turns and every acknowledged write must hold across them.
A worker writes its ledger (`Ledger.to_json`) once its runtime has closed;
this process merges the ledgers and checks PostgreSQL against the result,
as the demo in one process does.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final
from uuid import uuid4

import trio
from loguru import logger

from ._demo import DemoOptions, Simulation, Tally, demo_config, total_operations, watch_events
from ._demo_ledger import Ledger, chat_overlaps, check_active_chats, check_store, report_check
from ._runtime import open_runtime
from ._secrets import SecretUrl
from ._subscriptions import Subscription

#: The environment variable through which a worker gets the database URL.
URL_ENV: Final = "TRIO_SESSIONS_DEMO_WORKER_URL"


async def run_processes(options: DemoOptions, url: SecretUrl) -> int:
    """Run `options.processes` workers on the database at `url`, then check it against all they were told.

    Returns:
        0 when PostgreSQL holds exactly what the runtimes acknowledged (and
        every worker exited cleanly), 1 otherwise.
    """
    config = demo_config(options, url)
    run = uuid4().hex[:12]
    print(f"demo: {options.processes} worker processes, each serving the same {options.users:,} users "
          f"(any worker may get any user's next message) for {options.duration:g} s, session timeout "
          f"{options.timeout:g} s, seed {options.seed}", flush=True)
    problems: list[str] = []
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trio-sessions-demo-") as folder:
        outs = [Path(folder) / f"w{index}.json" for index in range(options.processes)]
        codes: list[int] = [0] * options.processes
        async with trio.open_nursery() as nursery:
            for index, out in enumerate(outs):
                nursery.start_soon(_run_worker, options, url, index, run, out, codes)
        for index, (out, code) in enumerate(zip(outs, codes, strict=True)):
            if code != 0 or not await trio.Path(out).exists():
                problems.append(f"worker w{index} exited with status {code} (its output is above)")
            else:
                reports.append(json.loads(await trio.Path(out).read_text()))
    ledger = Ledger(run=run, shared=True)
    for report in reports:
        ledger.merge(report["ledger"], f"w{report['worker']}")
        print(f"w{report['worker']} summary: {report['operations']:,} operations in "
              f"{report['elapsed']:.1f} s, {report['tally']['chat_messages']:,} chat messages; "
              f"hand-offs asked {report['handoffs_requested']:,}, "
              f"received {report['handoffs_received']:,}, granted "
              f"{report['handoffs_granted']:,}; fenced sessions {report['fenced']:,}, lease lapses "
              f"{report['lapses']:,}", flush=True)
    problems.extend(ledger.problems)
    problems.extend(chat_overlaps(ledger.sessions(), "acknowledged"))
    if ledger.announced != ledger.created:
        problems.append(f"{len(ledger.created - ledger.announced)} sessions had no 'created' event, "
                        f"{len(ledger.announced - ledger.created)} 'created' events had no call")
    problems.extend(await check_store(url, config, ledger))
    return report_check(problems, ledger)


async def _run_worker(options: DemoOptions, url: SecretUrl, index: int, run: str, out: Path,
                      codes: list[int]) -> None:
    # The worker prints its progress lines straight to this process's stdout. The URL goes in
    # its environment, not on its command line, which any user of the machine can read (`ps`).
    command = [sys.executable, "-m", "trio_sessions._demo_processes", str(index), run, str(out),
               str(options.duration), str(options.users), str(options.timeout), str(options.seed)]
    process = await trio.run_process(command, check=False, env={**os.environ, URL_ENV: url.reveal()})
    codes[index] = process.returncode


async def worker(options: DemoOptions, url: SecretUrl, index: int, run: str, out: Path) -> None:
    """One worker: the simulation on a runtime of its own; its ledger and figures written to `out`."""
    config = demo_config(options, url)
    ledger, tally = Ledger(run=run, shared=True), Tally()
    async with trio.open_nursery() as nursery, open_runtime(config) as rt:
        events: Subscription = await nursery.start(watch_events, rt, ledger, tally)
        elapsed = await Simulation(rt, options, ledger, tally, worker=index).run()
        chat_problems, tally.active_chats = await check_active_chats(rt, ledger)
    ledger.problems.extend(chat_problems)
    if events.dropped:
        ledger.problems.append(f"the event subscription dropped {events.dropped} events")
    metrics = rt.metrics()
    await trio.Path(out).write_text(json.dumps({
        "worker": index, "ledger": ledger.to_json(), "tally": {"chat_messages": tally.chat_messages},
        "elapsed": elapsed, "operations": total_operations(metrics),
        "handoffs_requested": metrics.handoffs_requested, "handoffs_received": metrics.handoffs_received,
        "handoffs_granted": metrics.handoffs_granted, "fenced": metrics.fenced_sessions,
        "lapses": metrics.lease_lapses,
    }))


def main(argv: Sequence[str]) -> None:
    """`python -m trio_sessions._demo_processes INDEX RUN OUT DURATION USERS TIMEOUT SEED`.

    The database URL comes in the environment variable `URL_ENV`.
    """
    index, run, out, duration, users, timeout, seed = argv
    url = SecretUrl(os.environ.pop(URL_ENV))
    # As the command itself does (`_cli`): the library's warnings and errors to stderr.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("trio_sessions")
    options = DemoOptions(duration=float(duration), users=int(users), timeout=float(timeout), seed=int(seed))
    trio.run(worker, options, url, int(index), run, Path(out))


if __name__ == "__main__":
    main(sys.argv[1:])
