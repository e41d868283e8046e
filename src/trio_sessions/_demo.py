"""The demo: a simulated orchestrator on one runtime, checked against PostgreSQL at the end.

Many users chat with the agents `financeiro`, `max` and `geral` through one
runtime, on the PostgreSQL of `DATABASE_URL` or, without it, on the
embedded server in its default data folder. After the runtime has closed
(which flushes everything), a fresh `PostgresStore` reads back every
session of the run and the check compares it with what the runtime
acknowledged to the demo. `trio-sessions demo` runs it (`_cli.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import trio

from ._config import RuntimeConfig
from ._demo_ledger import Ledger, check_store, report_check
from ._embedded import open_embedded_postgres
from ._errors import SessionInactive, VersionConflict
from ._metrics import MetricsSnapshot
from ._model import Message, Session, SessionEvent
from ._runtime import SessionRuntime, open_runtime
from ._subscriptions import Subscription

AGENTS: Final = ("financeiro", "max", "geral")

#: What users write to each agent, and what the agent answers (a stand-in for an LLM).
USER_LINES: Final = {
    "financeiro": ("Quero a segunda via do boleto", "Paguei o Pix, pode confirmar?",
                   "Qual o saldo da minha conta?", "Posso parcelar a fatura?"),
    "max": ("Oi Max, me recomenda um filme?", "Que música combina com chuva?",
            "Me conta uma curiosidade", "Qual livro eu leio agora?"),
    "geral": ("Qual o horário de atendimento?", "Como altero meu endereço?",
              "Vocês entregam no sábado?", "Preciso falar com um humano"),
}
AGENT_LINES: Final = ("Claro! Um momento, vou verificar.", "Pronto, já está resolvido.",
                      "Pode me passar o seu CPF?", "Entendi. Mais alguma coisa?")
TITLES: Final = {"financeiro": "Segunda via e pagamentos", "max": "Conversa com o Max",
                 "geral": "Atendimento geral"}

#: The workflow a user's conversation moves through; the payment webhook moves
#: "awaiting_payment" to "paid" behind the user's back (so versions conflict).
NEXT_STATE: Final = {"active": "awaiting_payment", "awaiting_payment": "resolved", "paid": "resolved"}

#: Seconds between progress lines.
PROGRESS_EVERY: Final = 5.0
#: The check's event subscription holds this many events, so that it never drops one.
EVENT_BUFFER: Final = 1_000_000



# ------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """The flags of `trio-sessions demo`."""

    #: Seconds the simulation runs.
    duration: float
    #: Simulated users, each in one conversation at a time.
    users: int
    #: Session timeout in seconds.
    timeout: float
    #: Seed of every user's and webhook's random choices.
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        """The options of a parsed `demo` command line; a random seed when none was given."""
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
        return cls(duration=args.duration, users=args.users, timeout=args.timeout, seed=seed)


@dataclass(slots=True)
class Tally:
    """What happened during the simulation, counted for the progress lines and the summary."""

    #: Sessions of this run that expired, and that were ended, seen on the event stream.
    expired: int = 0
    ended: int = 0
    #: Messages the runtime accepted from the demo.
    messages: int = 0
    notes: int = 0
    #: Workflow moves applied (by users and by the payment webhook).
    state_changes: int = 0
    #: `update(expected_version=...)` calls refused with `VersionConflict`.
    conflicts: int = 0
    #: Times a user's next call found the session expired (after going idle on purpose, or
    #: mid-conversation when the machine is too slow for the think times).
    found_expired: int = 0


# --------------------------------------------------------------- simulation


class Simulation:
    """Users and a payment webhook driving one runtime until `options.duration` has passed.

    Tasks stop on their own at the end (they never start a call after it and
    their sleeps end at it), so no call is ever cancelled half-way and the
    ledger knows the outcome of every call.
    """

    def __init__(self, rt: SessionRuntime, options: DemoOptions, ledger: Ledger, tally: Tally) -> None:
        self.rt = rt
        self.options = options
        self.ledger = ledger
        self.tally = tally
        self.start = trio.current_time()
        self.end = self.start + options.duration
        #: Sessions waiting for the payment webhook (a dict as an ordered set).
        self.awaiting: dict[UUID, None] = {}

    def over(self) -> bool:
        return trio.current_time() >= self.end

    async def sleep(self, seconds: float) -> bool:
        """Sleep, but not past the end; True if the whole time was slept."""
        wake = trio.current_time() + seconds
        await trio.sleep_until(min(wake, self.end))
        return wake <= self.end

    async def run(self) -> float:
        """Run every user and webhook task to the end; return the seconds it took."""
        async with trio.open_nursery() as progress:
            progress.start_soon(self.report_progress)
            async with trio.open_nursery() as nursery:
                for index in range(self.options.users):
                    nursery.start_soon(self.user, index, name=f"demo user {index}")
                for index in range(max(1, self.options.users // 50)):
                    nursery.start_soon(self.payment_webhook, index, name=f"demo webhook {index}")
            progress.cancel_scope.cancel()
        return trio.current_time() - self.start

    async def report_progress(self) -> None:
        """Print one line every `PROGRESS_EVERY` seconds until cancelled."""
        last_time, last_ops = self.start, 0
        while True:
            await trio.sleep_until(last_time + PROGRESS_EVERY)
            now, metrics = trio.current_time(), self.rt.metrics()
            ops = total_operations(metrics)
            print(f"[{now - self.start:6.1f}s] {(ops - last_ops) / (now - last_time):8,.0f} ops/s"
                  f"  live {metrics.live_sessions:,}  resident {metrics.resident:,}"
                  f"  pending writes {metrics.pending_writes:,}  flush batches {metrics.flush_batches:,}"
                  f"  expired {self.tally.expired:,}", flush=True)
            last_time, last_ops = now, ops

    # ------------------------------------------------------------------- users

    async def user(self, index: int) -> None:  # noqa: ASYNC910  a demo user that starts after the end does nothing, harmlessly
        """One user: conversations, one after another, until the end."""
        rng = random.Random(f"{self.options.seed}:{index}")
        user_id = f"user-{index:05d}"
        chat_id = f"55{rng.randint(11, 99)}9{rng.randint(10_000_000, 99_999_999)}@c.us"
        while not self.over():
            await self.conversation(rng, user_id, chat_id if rng.random() < 0.6 else None)

    async def conversation(self, rng: random.Random, user_id: str, chat_id: str | None) -> None:
        """One session, from `create` until it is ended, expires, is abandoned or the demo ends."""
        agent = rng.choice(AGENTS)
        session = self.ledger.created_session(await self.rt.create(
            user_id, agent, chat_id=chat_id, title=TITLES[agent] if rng.random() < 0.7 else None,
            metadata={"channel": "whatsapp" if chat_id else "web", "locale": "pt-BR",
                      "campaign": rng.choice(("none", "black-friday", "renegociacao"))}))
        try:
            for turn in range(1, rng.randint(2, 8) + 1):
                if self.over():
                    return
                session = await self.turn(rng, session, turn)
                if session.state == "resolved":
                    self.ledger.observe(await self.rt.end(session.id, reason="resolved"))
                    return
            await self.leave(rng, session)
        except SessionInactive:
            # Expired between two turns: only when the machine is too slow for the think times.
            self.tally.found_expired += 1

    async def turn(self, rng: random.Random, session: Session, turn: int) -> Session:
        """The user writes; the orchestrator builds a prompt; the agent may move the workflow, answers."""
        await self.sleep(rng.uniform(0.02, 0.4))  # the user types
        line = f"{rng.choice(USER_LINES[session.agent])} (#{turn})"
        session = await self.append(session, "user", line)
        context = await self.rt.context(session.id)
        self.ledger.check_context(session.id, context, self.rt.config.max_messages)
        build_prompt(session, context)  # what a model would be sent (there is no model here)
        await self.sleep(rng.uniform(0.02, 0.4))  # the model thinks
        if rng.random() < 0.35:
            session = await self.advance_state(session)
        session = await self.append(session, "assistant", rng.choice(AGENT_LINES))
        session = self.ledger.observe(await self.rt.update_last_activity(session.id))  # delivery receipt
        if rng.random() < 0.15:
            session = self.ledger.observe(await self.rt.add_note(session.id, f"turn {turn}: {line}"))
            self.tally.notes += 1
        return session

    async def append(self, session: Session, role: str, content: str) -> Session:
        """Append a message and record it in the ledger."""
        answered = await self.rt.append_message(session.id, role, content)
        self.tally.messages += 1
        return self.ledger.appended(answered, role, content)

    async def advance_state(self, session: Session) -> Session:
        """Move the workflow one step, unless someone changed the session since `session`."""
        next_state = NEXT_STATE.get(session.state)
        if next_state is None:
            return session  # noqa: ASYNC910  the workflow's end: nothing to call
        try:
            session = await self.rt.update(session.id, expected_version=session.version, state=next_state)
        except VersionConflict:
            # The payment webhook got there first: re-read, decide again next turn.
            self.tally.conflicts += 1
            return self.ledger.observe(await self.rt.get(session.id, user_id=session.user_id))
        self.tally.state_changes += 1
        if next_state == "awaiting_payment":
            self.awaiting[session.id] = None
        return self.ledger.observe(session)

    async def leave(self, rng: random.Random, session: Session) -> None:  # noqa: ASYNC910  walking away is no call
        """End the conversation: say goodbye, go idle past the timeout, or just walk away."""
        roll = rng.random()
        if roll < 0.45:
            self.ledger.observe(await self.rt.end(session.id, reason="user_left"))
        elif roll < 0.75:
            await self.come_back_too_late(rng, session)
        # else abandoned: it expires on its own while the user starts another conversation

    async def come_back_too_late(self, rng: random.Random, session: Session) -> None:
        """Stay away longer than the timeout, then write: the session must have expired."""
        if not await self.sleep(self.options.timeout * rng.uniform(1.2, 1.6)) or self.over():
            return
        try:
            late = await self.append(session, "user", "Oi, ainda está aí?")
        except SessionInactive:
            self.tally.found_expired += 1
            return
        self.ledger.problems.append(
            f"session {session.id}: accepted a message at {late.last_activity.isoformat()}, "
            f"after it expired at {session.expires_at.isoformat()}")

    # ------------------------------------------------------------- the webhook

    async def payment_webhook(self, index: int) -> None:
        """Confirm payments: move sessions from "awaiting_payment" to "paid" (optimistically)."""
        rng = random.Random(f"{self.options.seed}:webhook:{index}")
        while await self.sleep(rng.uniform(0.05, 0.3)):
            if not self.awaiting:
                continue
            session_id = rng.choice(tuple(self.awaiting))
            del self.awaiting[session_id]
            try:
                session = self.ledger.observe(await self.rt.get(session_id))
                if session.state != "awaiting_payment":
                    continue
                self.ledger.observe(await self.rt.update(
                    session_id, expected_version=session.version, state="paid"))
                self.tally.state_changes += 1
            except VersionConflict:
                self.tally.conflicts += 1
                self.awaiting[session_id] = None  # try again later
            except SessionInactive:
                pass  # ended or expired before it was paid


def build_prompt(session: Session, context: Sequence[Message]) -> str:
    """What an orchestrator would send to the model: the agent, then the conversation."""
    lines = [f"system: you are {session.agent}; workflow state {session.state}"]
    lines.extend(f"{message.role}: {message.content}" for message in context)
    return "\n".join(lines)


# -------------------------------------------------------------------- events


async def watch_events(rt: SessionRuntime, ledger: Ledger, tally: Tally, *,
                       task_status: trio.TaskStatus[Subscription] = trio.TASK_STATUS_IGNORED) -> None:
    """Observe every event from before the first `create` until the runtime has closed.

    Run it in a nursery around `open_runtime()`, not inside it: the stream
    ends only when the runtime has closed, and events published while it
    closes (an expiry the actors apply on their way out) must be seen too.
    """
    async with rt.subscribe(buffer=EVENT_BUFFER) as events:
        task_status.started(events)
        async for event in events:
            record_event(event, ledger, tally)


def record_event(event: SessionEvent, ledger: Ledger, tally: Tally) -> None:
    """Count and observe an event if it concerns a session of this run."""
    session_id = event.session.id
    if event.kind == "created":
        ledger.announced.add(session_id)
    elif session_id not in ledger.announced:
        return  # a session of an earlier run, expired by this runtime
    if event.kind == "expired":
        tally.expired += 1
    elif event.kind == "ended":
        tally.ended += 1
    ledger.observe(event.session)


# --------------------------------------------------------------------- demo


def demo_config(options: DemoOptions, url: str) -> RuntimeConfig:
    """`RuntimeConfig.from_env()` on `url`, sized as a real deployment would be.

    One actor per user (each has at most one conversation at a time), so the
    LRU bound does not thrash; passivation shows through idle actors, which
    stop after half a session timeout.
    """
    return dataclasses.replace(
        RuntimeConfig.from_env(),
        database_url=url,
        session_timeout=options.timeout,
        max_resident=options.users,
        passivate_after=options.timeout / 2,
    )


async def run_demo(options: DemoOptions, url: str) -> int:
    """Run the simulation on the database at `url`, print a summary, check the database.

    Returns:
        0 when PostgreSQL holds exactly what the runtime acknowledged, 1 otherwise.
    """
    config = demo_config(options, url)
    print(f"demo: {options.users:,} users for {options.duration:g} s, session timeout "
          f"{options.timeout:g} s, max_resident {config.max_resident:,}, seed {options.seed}",
          flush=True)
    ledger, tally = Ledger(), Tally()
    # The watcher's nursery encloses the runtime: it sees events until the runtime has closed.
    async with trio.open_nursery() as nursery, open_runtime(config) as rt:
        events: Subscription = await nursery.start(watch_events, rt, ledger, tally)
        elapsed = await Simulation(rt, options, ledger, tally).run()
    metrics = rt.metrics()  # final: the runtime has flushed everything on the way out
    print_summary(elapsed, metrics, ledger, tally, config)
    problems = list(ledger.problems)
    if events.dropped:
        problems.append(f"the event subscription dropped {events.dropped} events: the check cannot "
                        f"know the newest version of every session")
    if ledger.announced != ledger.created:
        problems.append(f"{len(ledger.created - ledger.announced)} sessions had no 'created' event, "
                        f"{len(ledger.announced - ledger.created)} 'created' events had no create() call")
    problems.extend(await check_store(url, config, ledger))
    return report_check(problems, ledger)


def total_operations(metrics: MetricsSnapshot) -> int:
    return sum(stats.count for stats in metrics.operations.values())


def print_summary(elapsed: float, metrics: MetricsSnapshot, ledger: Ledger, tally: Tally,
                  config: RuntimeConfig) -> None:
    """Print what the run did and how the runtime performed."""
    operations = total_operations(metrics)
    rows = metrics.flushed_sessions + metrics.flushed_messages
    touch = metrics.operations["update_last_activity"]
    earlier = metrics.expired - tally.expired
    print(f"summary after {elapsed:.1f} s:")
    print(f"  sessions    created {len(ledger.created):,}, expired {tally.expired:,}, "
          f"ended {tally.ended:,} (sessions of earlier runs expired: {earlier:,})")
    print(f"  activity    {tally.messages:,} messages, {tally.notes:,} notes, "
          f"{tally.state_changes:,} state changes, {tally.conflicts:,} version conflicts, "
          f"{tally.found_expired:,} users came back to an expired session")
    print(f"  operations  {operations:,} ({operations / elapsed:,.0f} per second)")
    print(f"  writes      {metrics.flush_batches:,} flush batches, {rows:,} rows "
          f"({metrics.flushed_sessions:,} sessions + {metrics.flushed_messages:,} messages), "
          f"{rows / max(1, operations):.3f} rows written per operation")
    print(f"  actors      {metrics.passivations:,} passivations (max_resident {config.max_resident:,}), "
          f"{metrics.backpressure_waits:,} backpressure waits, {metrics.store_errors:,} store errors")
    print(f"  latency     update_last_activity p50 {touch.p50 * 1000:.3f} ms, "
          f"p99 {touch.p99 * 1000:.3f} ms, max {touch.max * 1000:.3f} ms", flush=True)


async def demo(options: DemoOptions) -> int:
    """`trio-sessions demo`: on `DATABASE_URL`, or on the embedded server, opened here."""
    config = RuntimeConfig.from_env()
    if config.database_url is not None:
        return await run_demo(options, config.database_url)
    # Opened here rather than by the runtime, because the check needs the URL
    # after the runtime has closed (and one server start serves both).
    async with open_embedded_postgres(config.resolved_data_dir()) as url:
        return await run_demo(options, url)
