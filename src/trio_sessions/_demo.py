"""The demo: a simulated orchestrator on one runtime, checked against PostgreSQL at the end.

Many users chat with the agents `financeiro`, `max` and `geral` through one
runtime, on the PostgreSQL of `DATABASE_URL` or, without it, on the
embedded server in its default data folder: on their WhatsApp chat, where
each message finds the chat's session (`session_for_chat`), or on the web,
in a session of its own (`create`); each exchange holds the session's turn.
At the end the runtime lists the active sessions (one per chat at most);
after it has closed (which flushes everything), a fresh `PostgresStore`
reads back every session of the run and the check compares it with what
the runtime acknowledged to the demo (`_demo_ledger`). `trio-sessions demo`
runs it (`_cli.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import trio

from ._config import RuntimeConfig, configured_url
from ._demo_ledger import (
    Ledger,
    answer,
    chat_overlaps,
    check_active_chats,
    check_store,
    question,
    report_check,
)
from ._embedded import open_embedded_postgres
from ._errors import SessionInactive, VersionConflict
from ._metrics import MetricsSnapshot
from ._model import Message, Session, SessionEvent
from ._runtime import SessionRuntime, open_runtime
from ._secrets import SecretUrl
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

#: How often a user on a chat sends two messages at the same instant (two turns at once).
TWO_AT_ONCE: Final = 0.2
#: Times a message asks for the chat's session and finds it ended before it gives up (a problem).
TURN_ATTEMPTS: Final = 3

#: Each process of `demo --processes N` numbers its users' messages from its own multiple of this.
WORKER_NUMBERS: Final = 1_000_000_000

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
    #: Worker processes on the one database (`_demo_processes`); 1: this process alone.
    processes: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        """The options of a parsed `demo` command line; a random seed when none was given."""
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
        return cls(duration=args.duration, users=args.users, timeout=args.timeout, seed=seed,
                   processes=args.processes)


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
    #: Messages that arrived on a chat (each asked `session_for_chat`), and pairs sent at once.
    chat_messages: int = 0
    two_at_once: int = 0
    #: Times a user came back to the chat after the timeout and was answered in a new session.
    reopened: int = 0
    #: Sessions of this run that hold a chat at the end, by the listing of active sessions.
    active_chats: int = 0


# --------------------------------------------------------------- simulation


@dataclass(slots=True)
class User:
    """One simulated user: their random choices, their WhatsApp chat, the messages they sent."""

    rng: random.Random
    user_id: str
    chat_id: str
    #: Messages sent so far: the next one is numbered `sent + 1` (`_demo_ledger.question`).
    sent: int = 0

    def next_number(self) -> int:
        self.sent += 1
        return self.sent


@dataclass(frozen=True, slots=True)
class ChatRoute:
    """A conversation on a chat: the chat's key, and what a session opened for it gets."""

    user_id: str
    agent: str
    chat_id: str
    title: str | None
    metadata: Mapping[str, str]


class Simulation:
    """Users and a payment webhook driving one runtime until `options.duration` has passed.

    A conversation on WhatsApp is the chat's: every incoming message asks
    `session_for_chat` for the chat's session (which opens one when the last
    ended or expired), as a stateless orchestrator does; a conversation on the
    web has a session of its own, from `create`. Every exchange (the user's
    message, the prompt, the agent's answer) holds the session's turn
    (`rt.turn`), and sometimes a user sends two messages at once, which are
    answered one after the other.

    Tasks stop on their own at the end (they never start an exchange after
    it and their sleeps end at it), so no call is ever cancelled half-way and
    the ledger knows the outcome of every call.
    """

    def __init__(self, rt: SessionRuntime, options: DemoOptions, ledger: Ledger, tally: Tally, *,
                 worker: int | None = None) -> None:
        self.rt = rt
        self.options = options
        self.ledger = ledger
        self.tally = tally
        #: This process's number in `demo --processes N` (None alone): user i is the same user,
        #: on the same chat, in every process, but makes other choices in each.
        self.worker = worker
        self.start = trio.current_time()
        self.end = self.start + options.duration
        #: Sessions waiting for the payment webhook (a dict as an ordered set).
        self.awaiting: dict[UUID, None] = {}

    @property
    def name(self) -> str:
        """How this process's lines begin: nothing alone, `w0 ` and so on among several."""
        return "" if self.worker is None else f"w{self.worker} "

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
            shared = "" if self.worker is None else (
                f"  hand-offs asked {metrics.handoffs_requested:,} granted {metrics.handoffs_granted:,}"
                f"  fenced {metrics.fenced_sessions:,}")
            print(f"{self.name}[{now - self.start:6.1f}s] {(ops - last_ops) / (now - last_time):8,.0f} ops/s"
                  f"  live {metrics.live_sessions:,}  resident {metrics.resident:,}"
                  f"  pending writes {metrics.pending_writes:,}  flush batches {metrics.flush_batches:,}"
                  f"  expired {self.tally.expired:,}{shared}", flush=True)
            last_time, last_ops = now, ops

    # ------------------------------------------------------------------- users

    async def user(self, index: int) -> None:  # noqa: ASYNC910  a demo user that starts after the end does nothing, harmlessly
        """One user: conversations, one after another, until the end."""
        rng = random.Random(f"{self.options.seed}:{index}")
        chat_id = f"55{rng.randint(11, 99)}9{rng.randint(10_000_000, 99_999_999)}@c.us"
        user = User(rng, f"user-{index:05d}", chat_id)
        if self.worker is not None:  # the same user, other choices; numbers unique across processes
            user.rng = random.Random(f"{self.options.seed}:{index}:{self.worker}")
            user.sent = self.worker * WORKER_NUMBERS
        while not self.over():
            if rng.random() < 0.6:
                await self.chat_conversation(user)
            else:
                await self.web_conversation(user)

    def opening(self, rng: random.Random, agent: str, channel: str) -> tuple[str | None, Mapping[str, str]]:
        """The title and metadata of a session opened now (tagged with the run, `Ledger.run`)."""
        title = TITLES[agent] if rng.random() < 0.7 else None
        return title, {"channel": channel, "locale": "pt-BR", "run": self.ledger.run,
                       "campaign": rng.choice(("none", "black-friday", "renegociacao"))}

    async def web_conversation(self, user: User) -> None:
        """One session of its own, from `create` until it is ended, expires, is abandoned or the demo ends."""
        rng = user.rng
        agent = rng.choice(AGENTS)
        title, metadata = self.opening(rng, agent, "web")
        session = self.ledger.created_session(await self.rt.create(
            user.user_id, agent, title=title, metadata=metadata))
        try:
            for _ in range(rng.randint(2, 8)):
                if not await self.sleep(rng.uniform(0.02, 0.4)):  # the user types
                    return
                async with self.rt.turn(session.id) as session:
                    session = await self.exchange(rng, self.ledger.observe(session), user.next_number())
                if not session.is_active:
                    return  # resolved
            await self.leave(user, session, None)
        except SessionInactive:
            # Expired between two turns: only when the machine is too slow for the think times.
            self.tally.found_expired += 1

    async def chat_conversation(self, user: User) -> None:  # noqa: ASYNC910  at least two messages, each sleeps first
        """A conversation on the user's chat with one agent: each message finds the chat's session.

        Messages go through `chat_message`, which finds the session (or opens
        one) for every message. Sometimes two arrive at the same instant.
        The conversation is over when its session ends or expires, after a few
        messages, or at the end of the demo.
        """
        rng = user.rng
        agent = rng.choice(AGENTS)
        title, metadata = self.opening(rng, agent, "whatsapp")
        chat = ChatRoute(user.user_id, agent, user.chat_id, title, metadata)
        session: Session | None = None
        for _ in range(rng.randint(2, 8)):
            if not await self.sleep(rng.uniform(0.02, 0.4)):  # the user types
                return
            if rng.random() < TWO_AT_ONCE:
                session = await self.two_messages(user, chat)
            else:
                session = await self.chat_message(rng, user, chat)
            if session is None or not session.is_active:
                return  # expired mid-exchange, or resolved
        if session is not None:
            await self.leave(user, session, chat)

    async def two_messages(self, user: User, chat: ChatRoute) -> Session | None:
        """Two messages sent at the same instant: two turns at once, answered one after the other.

        Returns the session of the later answer (None if it expired mid-exchange).
        """
        self.tally.two_at_once += 1
        # Each message gets its own random choices, so that they do not depend on the scheduling.
        seeds = (user.rng.getrandbits(64), user.rng.getrandbits(64))
        answered: list[Session | None] = []

        async def message(seed: int) -> None:
            answered.append(await self.chat_message(random.Random(seed), user, chat))

        async with trio.open_nursery() as nursery:
            for seed in seeds:
                nursery.start_soon(message, seed)
        return answered[-1]

    async def chat_message(self, rng: random.Random, user: User, chat: ChatRoute,
                           text: str | None = None, *, gone: Session | None = None) -> Session | None:
        """A message arrives on the chat: answer it in the chat's session, with its turn held.

        The session is asked for every message (`session_for_chat`). If it
        ended (or expired) while the message waited for its turn (the other
        of two messages sent at once was the last one of its workflow), the
        message goes to the chat's next session.

        Args:
            text: what the user writes; one of the agent's `USER_LINES` if None.
            gone: the chat's session before the user went away for longer
                than the timeout: it must not be answered again.

        Returns:
            The session after the answer; None if it expired during the exchange.
        """
        number = user.next_number()
        self.tally.chat_messages += 1
        for _ in range(TURN_ATTEMPTS):
            found = self.ledger.chat_session(await self.rt.session_for_chat(
                chat.user_id, chat.agent, chat.chat_id, title=chat.title, metadata=chat.metadata))
            # Alone, the chat's session had no message since `gone`; among several processes the
            # same user may have gone on writing through another, keeping it active.
            if gone is not None and found.id == gone.id and self.worker is None:
                self.ledger.problems.append(
                    f"session {gone.id}: session_for_chat answered it at {found.last_activity.isoformat()}, "
                    f"after it expired at {gone.expires_at.isoformat()}")
            async with self.rt.turn(found.id) as session:
                if not self.ledger.observe(session).is_active:
                    continue  # it ended while this message waited for the turn: ask again
                try:
                    return await self.exchange(rng, session, number, text)
                except SessionInactive:
                    # Expired mid-exchange: only when the machine is too slow for the think times.
                    self.tally.found_expired += 1
                    return None
        self.ledger.problems.append(f"chat {(chat.user_id, chat.agent, chat.chat_id)}: session_for_chat "
                                    f"answered an inactive session {TURN_ATTEMPTS} times in a row")
        return None  # noqa: ASYNC910  TURN_ATTEMPTS > 0 tries, each asked session_for_chat

    async def exchange(self, rng: random.Random, session: Session, number: int,
                       text: str | None = None) -> Session:
        """One exchange, with the session's turn held by the caller.

        The user's message arrives; the orchestrator builds a prompt; the
        agent may move the workflow, answers; the session ends once resolved.
        """
        text = rng.choice(USER_LINES[session.agent]) if text is None else text
        session = await self.append(session, "user", question(text, number))
        context = await self.rt.context(session.id)
        self.ledger.check_context(session.id, context, self.rt.config.max_messages)
        build_prompt(session, context)  # what a model would be sent (there is no model here)
        await self.sleep(rng.uniform(0.02, 0.4))  # the model thinks
        if rng.random() < 0.35:
            session = await self.advance_state(session)
        session = await self.append(session, "assistant", answer(rng.choice(AGENT_LINES), number))
        session = self.ledger.observe(await self.rt.update_last_activity(session.id))  # delivery receipt
        if rng.random() < 0.15:
            session = self.ledger.observe(await self.rt.add_note(session.id, f"answered: {text}"))
            self.tally.notes += 1
        if session.state == "resolved":
            session = self.ledger.observe(await self.rt.end(session.id, reason="resolved"))
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

    async def leave(self, user: User, session: Session, chat: ChatRoute | None) -> None:  # noqa: ASYNC910  walking away is no call
        """End the conversation: say goodbye, go idle past the timeout, or just walk away."""
        roll = user.rng.random()
        if roll < 0.45:
            async with self.rt.turn(session.id) as session:
                self.ledger.observe(await self.rt.end(session.id, reason="user_left"))
        elif roll < 0.75:
            await self.come_back_too_late(user, session, chat)
        # else abandoned: it expires on its own, unless the user's next conversation on the chat
        # is with the same agent (then session_for_chat answers with it)

    async def come_back_too_late(self, user: User, session: Session, chat: ChatRoute | None) -> None:
        """Stay away longer than the timeout, then write: the session must have expired.

        On the web the message is refused; on the chat it goes to a new session.
        """
        if not await self.sleep(self.options.timeout * user.rng.uniform(1.2, 1.6)) or self.over():
            return
        if chat is not None:
            answered = await self.chat_message(user.rng, user, chat, "Oi, ainda está aí?", gone=session)
            if answered is not None and answered.id != session.id:
                self.tally.reopened += 1
            return
        async with self.rt.turn(session.id) as current:
            try:
                late = await self.append(current, "user", question("Oi, ainda está aí?", user.next_number()))
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
    elif (session_id not in ledger.announced and session_id not in ledger.inherited
          and event.session.metadata.get("run") != ledger.run):
        return  # a session of an earlier run, expired by this runtime (one of this run may
        # have been created by another process of `demo --processes`)
    if event.kind == "expired":
        tally.expired += 1
    elif event.kind == "ended":
        tally.ended += 1
    ledger.observe(event.session)


# --------------------------------------------------------------------- demo


def demo_config(options: DemoOptions, url: SecretUrl) -> RuntimeConfig:
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


async def run_demo(options: DemoOptions, url: SecretUrl) -> int:
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
        chat_problems, tally.active_chats = await check_active_chats(rt, ledger)
    metrics = rt.metrics()  # final: the runtime has flushed everything on the way out
    print_summary(elapsed, metrics, ledger, tally, config)
    problems = [*ledger.problems, *chat_problems, *chat_overlaps(ledger.sessions(), "acknowledged")]
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
    found = metrics.operations["session_for_chat"]
    opened = sum(session.chat_id is not None for session in ledger.sessions() if session.id in ledger.created)
    earlier = metrics.expired - tally.expired
    print(f"summary after {elapsed:.1f} s:")
    print(f"  sessions    created {len(ledger.created):,}, expired {tally.expired:,}, "
          f"ended {tally.ended:,} (sessions of earlier runs expired: {earlier:,})")
    print(f"  activity    {tally.messages:,} messages, {tally.notes:,} notes, "
          f"{tally.state_changes:,} state changes, {tally.conflicts:,} version conflicts, "
          f"{tally.found_expired:,} users came back to an expired session")
    print(f"  chats       {tally.chat_messages:,} messages asked session_for_chat "
          f"({tally.two_at_once:,} times two at once), {opened:,} sessions opened, "
          f"{tally.reopened:,} reopened after the timeout, {tally.active_chats:,} held at the end")
    print(f"  operations  {operations:,} ({operations / elapsed:,.0f} per second)")
    print(f"  writes      {metrics.flush_batches:,} flush batches, {rows:,} rows "
          f"({metrics.flushed_sessions:,} sessions + {metrics.flushed_messages:,} messages), "
          f"{rows / max(1, operations):.3f} rows written per operation")
    print(f"  actors      {metrics.passivations:,} passivations (max_resident {config.max_resident:,}), "
          f"{metrics.backpressure_waits:,} backpressure waits, {metrics.store_errors:,} store errors")
    print(f"  latency     update_last_activity p50 {touch.p50 * 1000:.3f} ms, "
          f"p99 {touch.p99 * 1000:.3f} ms, max {touch.max * 1000:.3f} ms; "
          f"session_for_chat p50 {found.p50 * 1000:.3f} ms, p99 {found.p99 * 1000:.3f} ms", flush=True)


async def demo(options: DemoOptions) -> int:
    """`trio-sessions demo`: on `DATABASE_URL`, or on the embedded server, opened here."""
    from ._demo_processes import run_processes

    run = run_demo if options.processes == 1 else run_processes
    config = RuntimeConfig.from_env()
    if (url := configured_url(config)) is not None:
        return await run(options, url)
    # Opened here rather than by the runtime, because the check needs the URL
    # after the runtime has closed (and one server start serves both, and
    # every worker process of `--processes`).
    async with open_embedded_postgres(config.resolved_data_dir()) as embedded:
        return await run(options, SecretUrl(embedded))
