"""The demo's ledger: what the runtime acknowledged to it, and the check against PostgreSQL.

Every snapshot the simulated orchestrator receives goes into the `Ledger`;
after the runtime has closed, `check_store` reads every session of the run
back with a fresh `PostgresStore` and lists each difference from what was
acknowledged.

Two rules of chats are checked too. A chat `(user_id, agent, chat_id)` never
has two active sessions at once: not in PostgreSQL at the end
(`check_active_chats`, through the runtime's `iter_sessions`), and not at any
moment of the run, by the sessions' lifetimes (`chat_overlaps`, over what was
acknowledged and over what is stored). And turns are never interleaved: the
demo numbers every user's message (`question`) and has the agent's answer
name it (`answer`), so a session's stored messages must be exchanges, each a
question followed at once by its answer (`exchange_problems`).
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import trio

from ._config import RuntimeConfig
from ._model import Message, Session
from ._postgres import PostgresStore
from ._secrets import SecretUrl

if TYPE_CHECKING:
    from ._runtime import SessionRuntime

#: `messages=` of the check's loads: more than any session of a demo holds.
ALL_MESSAGES: Final = 1_000_000
#: Differences printed when the check fails (all are counted).
SHOWN_PROBLEMS: Final = 20

#: What the demo returns: the process's exit code.
OK: Final = 0
CHECK_FAILED: Final = 1

#: `page_size=` of the listing of active sessions at the end: the largest page `list()` serves.
LISTING_PAGE: Final = 1000

#: How the demo tags a user's message and the agent's answer to it (`question`, `answer`).
_QUESTION: Final = re.compile(r" \[m(\d+)\]\Z")
_ANSWER: Final = re.compile(r" \[re m(\d+)\]\Z")

#: A chat: (user_id, agent, chat_id).
Chat = tuple[str, str, str]


def question(text: str, number: int) -> str:
    """A user's message as the demo writes it: numbered (per user), so that its answer can name it."""
    return f"{text} [m{number}]"


def answer(text: str, number: int) -> str:
    """The agent's answer to the user's message `number`, as the demo writes it."""
    return f"{text} [re m{number}]"


def chat_of(session: Session) -> Chat | None:
    """The chat a session is bound to (active or not); None for one bound to no chat."""
    return None if session.chat_id is None else (session.user_id, session.agent, session.chat_id)


@dataclass(slots=True)
class Ledger:
    """What the runtime acknowledged to this run: the expectation of the final check.

    Every snapshot the demo sees, from a reply or from the event stream, goes
    through `observe`; the newest version of each session is what PostgreSQL
    must hold. Every accepted message goes through `appended`.
    """

    #: Tags this run's sessions, in their metadata: a chat's session from an earlier run has another.
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: Ids of the sessions this run opened (by `create()` or `session_for_chat()`).
    created: set[UUID] = field(default_factory=set)
    #: Ids of earlier runs' sessions that `session_for_chat()` answered: their messages are not known.
    inherited: set[UUID] = field(default_factory=set)
    #: Ids announced by a "created" event (the database also holds earlier runs' sessions).
    announced: set[UUID] = field(default_factory=set)
    #: The highest-version snapshot seen per session.
    newest: dict[UUID, Session] = field(default_factory=dict)
    #: Every message accepted per session, in order.
    messages: dict[UUID, list[Message]] = field(default_factory=dict)
    #: Inconsistencies seen while the runtime ran.
    problems: list[str] = field(default_factory=list)
    #: Other processes write to the same sessions (`demo --processes N`): this ledger knows only
    #: the messages this process appended, each at the `seq` its answer gave it.
    shared: bool = False

    def observe(self, session: Session) -> Session:
        """Keep `session` if it is the newest version seen; return it."""
        known = self.newest.get(session.id)
        if known is None or session.version > known.version:
            self.newest[session.id] = session
        elif session.version == known.version and session != known:
            self.problems.append(f"session {session.id}: two different snapshots at version "
                                 f"{session.version} (first -> second): {differences(known, session)}")
        return session

    def created_session(self, session: Session) -> Session:
        """Record a session returned by `create()`."""
        self.created.add(session.id)
        self.messages[session.id] = []
        return self.observe(session)

    def chat_session(self, session: Session) -> Session:
        """Record a session returned by `session_for_chat()`: found, or opened by the call."""
        if session.id not in self.created and session.id not in self.inherited:
            if session.metadata.get("run") == self.run:
                return self.created_session(session)
            self.inherited.add(session.id)  # still active from an earlier run (the same seed, soon after)
        return self.observe(session)

    def appended(self, session: Session, role: str, content: str) -> Session:
        """Record the message that `append_message` answered with `session`."""
        messages = self.messages.get(session.id)
        if messages is None:  # inherited: what it held before is not known
            return self.observe(session)
        if self.shared:
            if messages and messages[-1].seq >= session.message_count:
                self.problems.append(f"session {session.id}: append_message answered message_count "
                                     f"{session.message_count} after {messages[-1].seq}")
        elif session.message_count != len(messages) + 1:
            self.problems.append(f"session {session.id}: append_message answered message_count "
                                 f"{session.message_count}, expected {len(messages) + 1}")
        # The actor stamps the message and the activity with the same instant.
        messages.append(Message(session.message_count, role, content, session.last_activity))
        return self.observe(session)

    def check_context(self, session_id: UUID, context: Sequence[Message], limit: int) -> None:
        """`context()` must answer the newest messages this run appended, oldest first."""
        appended = self.messages.get(session_id)
        if appended is None:
            return  # inherited
        if self.shared:  # of the others' messages only their numbering is known here
            known = {message.seq: message for message in appended}
            seqs = [message.seq for message in context]
            consecutive = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else not appended
            if not consecutive or any(known.get(message.seq, message) != message for message in context):
                self.problems.append(f"session {session_id}: context() answered seq {seqs}, which "
                                     f"disagrees with the messages this process appended")
            return
        expected = tuple(appended[-limit:])
        if tuple(context) != expected:
            self.problems.append(f"session {session_id}: context() answered {len(context)} messages "
                                 f"(seq {[m.seq for m in context]}), expected seq "
                                 f"{[m.seq for m in expected]}")

    def sessions(self) -> list[Session]:
        """The newest snapshot of every session of the run (inherited ones included)."""
        return [self.newest[session_id] for session_id in self.created | self.inherited]

    def to_json(self) -> dict[str, Any]:
        """The ledger as plain JSON values, for the parent of `demo --processes N` (`merge`)."""
        return {
            "run": self.run, "created": sorted(map(str, self.created)),
            "inherited": sorted(map(str, self.inherited)), "announced": sorted(map(str, self.announced)),
            "newest": [session.to_dict() for session in self.newest.values()],
            "messages": {str(session_id): [[m.seq, m.role, m.content, m.created_at.isoformat()]
                                           for m in appended]
                         for session_id, appended in self.messages.items()},
            "problems": self.problems,
        }

    def merge(self, data: Mapping[str, Any], where: str) -> None:
        """Add another process's ledger (`to_json`): the newest snapshots, and its messages by `seq`."""
        self.created.update(map(UUID, data["created"]))
        self.inherited.update(map(UUID, data["inherited"]))
        self.announced.update(map(UUID, data["announced"]))
        for session in data["newest"]:
            self.observe(Session.from_dict(session))
        for session_id, appended in data["messages"].items():
            by_seq = {m.seq: m for m in self.messages.get(UUID(session_id), [])}
            for seq, role, content, at in appended:
                message = Message(seq, role, content, datetime.fromisoformat(at))
                if by_seq.setdefault(seq, message) != message:
                    self.problems.append(f"session {session_id}: two messages acknowledged at seq {seq}: "
                                         f"{by_seq[seq].content!r} and {content!r} ({where})")
            self.messages[UUID(session_id)] = sorted(by_seq.values(), key=lambda m: m.seq)
        self.problems.extend(f"{where}: {problem}" for problem in data["problems"])

    def exchanges(self) -> int:
        """The exchanges this run completed: the answers it appended."""
        return sum(message.role == "assistant" for appended in self.messages.values() for message in appended)


async def check_active_chats(rt: SessionRuntime, ledger: Ledger) -> tuple[list[str], int]:
    """List the active sessions in PostgreSQL: at most one per chat, none that the ledger saw end.

    Call it after the simulation, while the runtime is open: `list()` answers
    after flushing what the runtime acknowledged, so a session whose end (or
    expiry) the ledger saw before the listing started must read inactive.

    Returns:
        The problems, and how many of this run's sessions hold a chat at the end.
    """
    ended = {session_id for session_id, session in ledger.newest.items() if not session.is_active}
    run = ledger.created | ledger.inherited
    holders: dict[Chat, list[UUID]] = {}
    problems: list[str] = []
    async for session in rt.iter_sessions(active=True, page_size=LISTING_PAGE):
        if session.id in ended:
            problems.append(f"session {session.id}: active in PostgreSQL at the end, after the runtime "
                            f"acknowledged its end ({ledger.newest[session.id].end_reason})")
        if (chat := chat_of(session)) is not None:
            holders.setdefault(chat, []).append(session.id)
    for chat, held in holders.items():
        if len(held) > 1:
            problems.append(f"chat {chat}: {len(held)} active sessions in PostgreSQL at the end: "
                            f"{', '.join(map(str, held))}")
    return problems, sum(session_id in run for held in holders.values() for session_id in held)


def chat_overlaps(sessions: Iterable[Session], where: str) -> list[str]:
    """The chats that had two active sessions at once, by the lifetimes of `sessions`.

    A session is active from `created_at` to `ended_at` (an expiry is dated
    at the deadline itself, however late it ran); one still active, to its
    `expires_at` (past it, it is expired, applied or not). The demo never
    moves a session to another chat, so a session's lifetime is its chat's.
    Of one chat, each session must open once the one before it is over.
    """
    by_chat: dict[Chat, list[Session]] = {}
    for session in sessions:
        if (chat := chat_of(session)) is not None:
            by_chat.setdefault(chat, []).append(session)
    problems = []
    for chat, held in by_chat.items():
        held.sort(key=lambda session: session.created_at)
        last = held[0]
        for session in held[1:]:
            if session.created_at < _over_at(last):
                problems.append(
                    f"chat {chat}: two active sessions at once {where}: {session.id} opened at "
                    f"{session.created_at.isoformat()}, while {last.id} (opened at "
                    f"{last.created_at.isoformat()}) was active until {_over_at(last).isoformat()}")
            if _over_at(session) > _over_at(last):
                last = session
    return problems


def _over_at(session: Session) -> datetime:
    return session.expires_at if session.ended_at is None else session.ended_at


def exchange_problems(session: Session, messages: Sequence[Message]) -> list[str]:
    """Turns never interleaved: the messages are exchanges, each a question and then its answer.

    The demo writes a session's messages only with the session's turn held,
    one exchange per turn: the user's message (`question`, numbered), then
    the agent's answer naming it (`answer`). So messages 1, 3, 5... are
    questions, each followed at once by its answer. Only the last message may
    be a question left unanswered, in a session that expired (during that
    exchange, or while the user was away: the message that found it expired).
    """
    for index in range(0, len(messages), 2):
        asked = messages[index]
        number = _tag(asked, "user", _QUESTION)
        if number is None:
            return [f"session {session.id}: message {asked.seq} ({asked.role}: {asked.content!r}) "
                    f"should be a user's message opening an exchange"]
        if index + 1 == len(messages):
            if session.end_reason != "expired":
                return [f"session {session.id}: its last message {asked.seq} ({asked.content!r}) "
                        f"has no answer, and the session did not expire"]
            break
        answered = messages[index + 1]
        if _tag(answered, "assistant", _ANSWER) != number:
            return [f"session {session.id}: message {answered.seq} ({answered.role}: {answered.content!r}) "
                    f"should answer message {asked.seq} ({asked.content!r}): turns interleaved"]
    return []


def _tag(message: Message, role: str, pattern: re.Pattern[str]) -> int | None:
    match = pattern.search(message.content)
    return int(match[1]) if message.role == role and match is not None else None


async def check_store(url: SecretUrl, config: RuntimeConfig, ledger: Ledger) -> list[str]:
    """Compare every session of this run in PostgreSQL with the newest snapshot the demo saw.

    Uses a fresh `PostgresStore`, so it reads what was committed, not any
    cache. Also checks the stored sessions' chats (`chat_overlaps`) and
    messages (`exchange_problems`).
    """
    store = PostgresStore(url, config)
    problems: list[str] = []
    stored: list[Session] = []
    limiter = trio.CapacityLimiter(config.pool_max)

    async def check_one(session_id: UUID) -> None:
        async with limiter:
            loaded = await store.load(session_id, messages=ALL_MESSAGES)
        problems.extend(compare_session(session_id, loaded, ledger))
        if loaded is not None:
            stored.append(loaded[0])

    async with store.connect(), trio.open_nursery() as nursery:
        for session_id in ledger.created | ledger.inherited:
            nursery.start_soon(check_one, session_id)
    problems.extend(chat_overlaps(stored, "in PostgreSQL"))
    return problems


def compare_session(session_id: UUID, loaded: tuple[Session, tuple[Message, ...]] | None,
                    ledger: Ledger) -> list[str]:
    """The differences between a stored session (and its messages) and the ledger."""
    if loaded is None:
        return [f"session {session_id}: not in PostgreSQL"]
    stored, stored_messages = loaded
    expected = ledger.newest[session_id]
    problems = []
    if stored != expected:
        problems.append(f"session {session_id}: stored row differs (acknowledged -> stored): "
                        f"{differences(expected, stored)}")
    appended = ledger.messages.get(session_id)
    if appended is None:
        return problems  # inherited: its earlier messages are not known
    problems.extend(exchange_problems(stored, stored_messages))
    if list(stored_messages) != appended:
        first = next((i for i, (a, b) in enumerate(zip(stored_messages, appended, strict=False))
                      if a != b), min(len(stored_messages), len(appended)))
        problems.append(f"session {session_id}: {len(stored_messages)} messages stored, "
                        f"{len(appended)} acknowledged; first difference at position {first + 1}")
    return problems


def differences(expected: Session, actual: Session) -> str:
    """The fields in which two snapshots differ, as `name: expected -> actual`."""
    return "; ".join(
        f"{name}: {_show(getattr(expected, name))} -> {_show(getattr(actual, name))}"
        for name in (f.name for f in dataclasses.fields(Session))
        if getattr(expected, name) != getattr(actual, name))


def _show(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else repr(value)


def report_check(problems: list[str], ledger: Ledger) -> int:
    """Print the check's verdict; return the exit code."""
    if not problems:
        messages = sum(len(appended) for appended in ledger.messages.values())
        chats = {chat for session in ledger.sessions() if (chat := chat_of(session)) is not None}
        earlier = (f", and the rows of {len(ledger.inherited):,} sessions of an earlier run"
                   if ledger.inherited else "")
        print(f"check passed: {len(ledger.created):,} sessions, {messages:,} messages match{earlier}")
        print(f"check passed: {len(chats):,} chats never had two active sessions at once, "
              f"{ledger.exchanges():,} exchanges were never interleaved")
        return OK
    print(f"check failed: {len(problems):,} differences between PostgreSQL and what the runtime "
          f"acknowledged, or broken rules of chats and turns:")
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"  {problem}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(problems) - SHOWN_PROBLEMS:,} more")
    return CHECK_FAILED
