"""Several processes on one PostgreSQL: nothing acknowledged is lost, one writer per session.

Real processes share a fresh database and append to the same few sessions,
each call routed to a random session, as a load balancer would send a
chat's webhooks to any worker. One process is closed and replaced by a new
one (a rolling restart); one is killed with SIGKILL in the middle; one
reaches the database through a TCP proxy that cuts all its connections
twice (a commit's answer may be lost) and refuses new ones for a while,
shorter than a lease. Another,
writing alone to a session of its own and flushing seldom, is frozen with
SIGSTOP for longer than its lease while it holds unflushed changes; the
test process takes that session over and changes it; when the frozen one
wakes, its late flush must be fenced, not written over the new owner's
change. Afterwards every session's messages are numbered 1..n without a
gap, every write a process acknowledged is stored (for the killed and the
frozen process: every durable one; what they acknowledged and had not
flushed is the bound of write-behind, README "Several processes"; the cut
one loses nothing unless a cut outlasted its lease), and each caller's writes to a session are stored in the
order it made them.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections import defaultdict
from pathlib import Path
from uuid import UUID

import trio

from trio_sessions import PostgresStore, RuntimeConfig, open_runtime

from .proxy import Proxy

#: How long the fault run's workers write: 6 s in the suite. `FAULT_SECONDS=300` makes a long run
#: on demand (more rolling restarts, SIGKILLs and connection cuts; the same checks).
FAULT_SECONDS = float(os.environ.get("FAULT_SECONDS", "6"))

# Short leases so that a dead owner is outlived within the test's few seconds.
SETTINGS = dict(flush_interval=0.05, lease_duration=3.0, lease_renew_interval=0.5, handoff_poll_interval=0.1)

WORKER = f"""
import os, random, sys, trio
from uuid import UUID
from trio_sessions import PostgresStore, RuntimeConfig, SessionError, open_runtime

async def main(url, name, seconds, ids, flush_interval, durable_every):
    config = RuntimeConfig(**{{**{SETTINGS!r}, "flush_interval": flush_interval}})
    rng = random.Random(name)
    sessions = [UUID(i) for i in ids.split(",")]
    async with open_runtime(config, store=PostgresStore(url, config)) as rt:
        print("ready", flush=True)
        end = trio.current_time() + seconds
        made = 0

        async def caller(k):
            nonlocal made
            while trio.current_time() < end:
                session_id = rng.choice(sessions)
                made += 1
                content = f"{{name}} {{k}} {{made}}"
                durable = durable_every > 0 and made % durable_every == 0
                try:
                    await rt.append_message(session_id, "user", content, durable=durable)
                except SessionError as exc:
                    print("error", type(exc).__name__, session_id, content, "|", exc, flush=True)
                else:
                    print("ack", "d" if durable else "n", session_id, content, flush=True)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            for k in range(4):
                nursery.start_soon(caller, k)
    print("fenced", rt.metrics().fenced_sessions, "lapses", rt.metrics().lease_lapses, flush=True)
    print("closed", flush=True)

trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], float(sys.argv[5]),
         int(sys.argv[6]))
"""


class Worker:
    """One child process and the lines it printed."""

    def __init__(self, name: str, ids: str, *, seconds: float = 6.0,
                 flush_interval: float = SETTINGS["flush_interval"], durable_every: int = 3,
                 script: str = WORKER) -> None:
        self.name = name
        self.script = script
        self.args = [ids, str(flush_interval), str(durable_every)]
        self.seconds = seconds
        self.lines: list[str] = []
        self.ready = trio.Event()
        self.process: trio.Process | None = None
        self.stderr = Path()

    async def run(self, url: str, errors: Path) -> None:
        self.stderr = errors / f"{self.name}.stderr"
        with self.stderr.open("wb") as stderr:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-c", self.script, url, self.name, str(self.seconds), *self.args], stdout=-1,
                stderr=stderr)
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            self.lines.extend(line.decode() for line in done)
            if "ready" in self.lines:
                self.ready.set()
        await self.process.wait()

    def acks(self, *, durable_only: bool = False) -> list[tuple[UUID, str]]:
        return [(UUID(words[2]), " ".join(words[3:])) for line in self.lines
                if (words := line.split())[0] == "ack" and (words[1] == "d" or not durable_only)]

    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("error")]


async def test_processes_sharing_sessions_lose_nothing_acknowledged(postgres_url: str,
                                                                 tmp_path: Path) -> None:
    config = RuntimeConfig(**SETTINGS)  # type: ignore[arg-type]
    async with open_runtime(config, store=PostgresStore(postgres_url, config)) as rt:
        sessions = [await rt.create(f"u{i}", "geral", durable=True) for i in range(6)]
        own = await rt.create("f", "geral", durable=True)  # the frozen process's session
    ids = ",".join(str(s.id) for s in sessions)
    # a and b run throughout; r1 closes after 2 s and r2 takes its place (a rolling restart),
    # and so on in a long run.
    steady = [Worker("a", ids, seconds=FAULT_SECONDS), Worker("b", ids, seconds=FAULT_SECONDS)]
    restarted = [Worker(f"r{i}", ids, seconds=2.0 if i == 1 else 3.0)
                 for i in range(1, max(2, round(FAULT_SECONDS / 3)) + 1)]
    killed = [Worker(f"k{i}", ids, seconds=10**6) for i in range(1, max(1, round(FAULT_SECONDS / 6)) + 1)]
    cut = Worker("c", ids, seconds=FAULT_SECONDS)  # through the proxy, which cuts its connections
    # Non-durable writes and a slow flush: it holds unflushed changes when it stops.
    frozen = Worker("f", str(own.id), flush_interval=1.0, durable_every=0)
    with trio.fail_after(120 + 2 * FAULT_SECONDS):  # a stuck hand-off shows as this, not as a hung suite
        await run_workers(postgres_url, config, steady, restarted, killed, frozen, own.id, tmp_path, cut)
    steady += restarted
    for worker in killed:
        assert worker.process is not None and worker.process.returncode == -signal.SIGKILL
    for worker in {*steady, cut, frozen}:
        assert worker.process is not None and worker.process.returncode == 0, (
            worker.name, worker.stderr.read_text()[-3000:])
        assert worker.lines[-1] == "closed"
    # The cut process rides its cuts out within its lease, as a rule. Under a heavy load a cut and
    # the reconnection after it can outlast the lease: then it lapsed, was fenced and rejoined, and
    # is held to what a frozen process must keep (durable writes); otherwise to everything.
    cut_lapsed = int(cut.lines[-2].split()[3]) > 0
    if not cut_lapsed:
        steady.append(cut)
    # The frozen process's late changes were fenced, not written over the new owner's.
    assert int(frozen.lines[-2].split()[1]) >= 1, frozen.lines[-12:]
    # A caller of the frozen process may be told StoreUnavailable (its call was refused as the
    # lease lapsed: retry), and one of the cut process (its call needed the store while it was out
    # of reach, past read_attempts); nobody else sees an error.
    assert not [line for worker in [*steady, *killed] if worker is not cut for line in worker.errors()]
    moved = {"SessionMoved"} if cut_lapsed else set()
    assert {line.split()[1] for line in cut.errors()} <= {"StoreUnavailable", *moved}
    assert {line.split()[1] for line in frozen.errors()} <= {"SessionMoved", "StoreUnavailable"}

    store = PostgresStore(postgres_url)
    stored: dict[UUID, list[str]] = {}
    async with store.connect():
        for session in [*sessions, own]:
            loaded = await store.load(session.id, messages=0)
            assert loaded is not None
            messages = await store.load_messages(session.id, limit=10**6, up_to_seq=2**31 - 1)
            assert [m.seq for m in messages] == list(range(1, len(messages) + 1))
            assert loaded[0].message_count == len(messages)
            stored[session.id] = [m.content for m in messages]
        taken_over = await store.load(own.id, messages=0)
    assert taken_over is not None and taken_over[0].title == "taken over"
    assert "test t 1" in stored[own.id]
    everything = {(session_id, content) for session_id, contents in stored.items() for content in contents}
    must = {*(ack for worker in steady for ack in worker.acks()),
            *(ack for worker in [*killed, cut] for ack in worker.acks(durable_only=True))}
    missing = must - everything
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"
    # Each caller's writes to one session, in the order it made them.
    for session_id, contents in stored.items():
        by_caller: dict[tuple[str, str], list[int]] = defaultdict(list)
        for content in contents:
            name, caller, made = content.split()
            by_caller[name, caller].append(int(made))
        for made in by_caller.values():
            assert made == sorted(made), session_id
    acknowledged = sum(len(w.acks()) for w in [*steady, *killed, frozen])
    print(f"the cut process: {len(cut.acks())} acknowledged, {len(set(cut.acks()) - everything)} not "
          f"stored; {len(cut.errors())} calls refused; {cut.lines[-2]}; a steady one acknowledged "
          f"{len(steady[0].acks())}")
    lost_by_killed = sum(len(set(w.acks()) - everything) for w in killed)
    print(f"{acknowledged} acknowledged, {len(everything)} stored; non-durable writes lost by the "
          f"killed processes: {lost_by_killed}, fenced from the frozen one: "
          f"{len(set(frozen.acks()) - everything)}")


async def run_workers(url: str, config: RuntimeConfig, steady: list[Worker], restarted: list[Worker],
                      killed: list[Worker], frozen: Worker, own: UUID, errors: Path, cut: Worker) -> None:
    """Run the workers with their faults.

    A second in, kill the first of `killed` and freeze `frozen` while this
    process takes its session over; the others of `killed` are started and
    killed one after another. Throughout, the proxy in front of `cut` breaks
    its connections every couple of seconds.
    """
    async with trio.open_nursery() as outer:
        proxy = Proxy(url)
        await outer.start(proxy.run)
        async with trio.open_nursery() as nursery:
            for worker in [*steady, killed[0], frozen]:
                nursery.start_soon(worker.run, url, errors)
            nursery.start_soon(cut.run, proxy.url, errors)
            nursery.start_soon(cut_now_and_then, cut, proxy)
            nursery.start_soon(one_after_the_other, restarted, url, errors)
            with trio.fail_after(60):
                for worker in [*steady, killed[0], frozen, cut]:
                    await worker.ready.wait()
            await trio.sleep(1.0)  # noqa: ASYNC900 - the children write on their own; the load's length
            kill(killed[0])
            assert frozen.process is not None
            frozen.process.send_signal(signal.SIGSTOP)
            # Taken over once the frozen process's lease lapses; then it wakes.
            async with open_runtime(config, store=PostgresStore(url, config)) as rt:
                await rt.update(own, title="taken over", durable=True)
                await rt.append_message(own, "user", "test t 1", durable=True)
            frozen.process.send_signal(signal.SIGCONT)
            for worker in killed[1:]:
                nursery.start_soon(worker.run, url, errors)
                await worker.ready.wait()
                await trio.sleep(1.0)  # noqa: ASYNC900 - while it writes
                kill(worker)
                await trio.sleep(2.0)  # noqa: ASYNC900 - the others take its sessions over
        outer.cancel_scope.cancel()  # stop listening


def kill(worker: Worker) -> None:
    assert worker.process is not None
    worker.process.send_signal(signal.SIGKILL)


async def one_after_the_other(workers: list[Worker], url: str, errors: Path) -> None:  # noqa: ASYNC910 - never empty
    for worker in workers:
        await worker.run(url, errors)


async def cut_now_and_then(cut: Worker, proxy: Proxy) -> None:
    """Break the cut worker's connections 0.7 s after it is ready, then every 2 s while it writes."""
    await cut.ready.wait()
    await trio.sleep(0.7)  # noqa: ASYNC900 - while the workers write
    assert proxy.cut(refuse_for=0.5) >= 2  # the pool's and the lease's connections
    end = trio.current_time() + cut.seconds - 2.0
    refusals = itertools.cycle([1.0, 0.5])
    while trio.current_time() < end:
        await trio.sleep(2.0)  # noqa: ASYNC900 - while the workers write
        proxy.cut(refuse_for=next(refusals))  # (none if an earlier cut killed it: its exit status tells)


# Chats: each caller takes a chat's session and its turn for every message (chat_turn), appends
# the question and the answer, and now and then ends the session (the next message opens one).
CHAT_WORKER = f"""
import random, sys, trio
from trio_sessions import PostgresStore, RuntimeConfig, SessionError, open_runtime

async def main(url, name, seconds, chats, flush_interval, _):
    config = RuntimeConfig(**{{**{SETTINGS!r}, "flush_interval": flush_interval}})
    rng = random.Random(name)
    keys = [tuple(chat.split("/")) for chat in chats.split(",")]
    async with open_runtime(config, store=PostgresStore(url, config)) as rt:
        print("ready", flush=True)
        end = trio.current_time() + seconds
        made = 0

        async def caller(k):
            nonlocal made
            while trio.current_time() < end:
                key = rng.choice(keys)
                made += 1
                tag = f"{{name}}.{{k}}.{{made}}"
                try:
                    async with rt.chat_turn(*key) as session:
                        print("open", "/".join(key), session.id, session.version,
                              session.created_at.isoformat(), flush=True)
                        await rt.append_message(session.id, "user", "q " + tag)
                        print("ack", session.id, "q " + tag, flush=True)
                        await trio.sleep(rng.uniform(0, 0.02))
                        await rt.append_message(session.id, "assistant", "a " + tag)
                        print("ack", session.id, "a " + tag, flush=True)
                        if rng.random() < 0.1:
                            ended = await rt.end(session.id)
                            print("end", session.id, ended.version, ended.ended_at.isoformat(), flush=True)
                except SessionError as exc:
                    print("error", type(exc).__name__, tag, exc, flush=True)

        async with trio.open_nursery() as nursery:
            for k in range(4):
                nursery.start_soon(caller, k)
    print("closed", flush=True)

trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6])
"""


async def test_processes_agree_on_each_chats_session(postgres_url: str, tmp_path: Path) -> None:
    """Three processes, four callers each, on six chats: one session per chat at a time, turns whole."""
    keys = [(f"u{i % 3}", ("financeiro", "max")[i % 2], f"55119000000{i % 3}@c.us") for i in range(6)]
    chats = ",".join("/".join(key) for key in keys)
    workers = [Worker(name, chats, seconds=3.0, script=CHAT_WORKER) for name in ("a", "b", "c")]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(worker.run, postgres_url, tmp_path)
    for worker in workers:
        assert worker.process is not None and worker.process.returncode == 0, (
            worker.name, worker.stderr.read_text()[-3000:])
        assert worker.lines[-1] == "closed"
        assert not worker.errors(), worker.errors()[:3]
    acked = {(UUID(words[1]), " ".join(words[2:])) for worker in workers for line in worker.lines
             if (words := line.split())[0] == "ack"}
    opened = {(words[1], UUID(words[2])) for worker in workers for line in worker.lines
              if (words := line.split())[0] == "open"}
    store = PostgresStore(postgres_url)
    async with store.connect():
        rows = await store.load_sessions([session_id for _, session_id in opened])
        stored: dict[UUID, list[str]] = {}
        for session_id in rows:
            messages = await store.load_messages(session_id, limit=10**6, up_to_seq=2**31 - 1)
            stored[session_id] = [m.content for m in messages]
    missing = acked - {(session_id, c) for session_id, contents in stored.items() for c in contents}
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    for key in keys:
        sessions = sorted((rows[session_id] for chat, session_id in opened if chat == "/".join(key)),
                          key=lambda s: s.created_at)
        assert sum(s.is_active for s in sessions) <= 1, key
        # One after the other: each ended before the next was opened (one machine's clock).
        for before, after in itertools.pairwise(sessions):
            if not (before.ended_at is not None and before.ended_at <= after.created_at):
                for worker in workers:  # what each process saw of the two, for the report
                    for line in worker.lines:
                        if str(before.id) in line or str(after.id) in line:
                            print(worker.name, line)
            assert before.ended_at is not None and before.ended_at <= after.created_at, (key, before, after)
    for session_id, contents in stored.items():
        # Turns whole, across processes: every question is followed by its own answer.
        assert [c[2:] for c in contents[0::2]] == [c[2:] for c in contents[1::2]], (session_id, contents)
    print(f"{len(opened)} chat sessions over {len(keys)} chats, {len(acked)} messages acknowledged")
