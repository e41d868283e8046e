"""The demo's ledger: what the runtime acknowledged to it, and the check against PostgreSQL.

Every snapshot the simulated orchestrator receives goes into the `Ledger`;
after the runtime has closed, `check_store` reads every session of the run
back with a fresh `PostgresStore` and lists each difference from what was
acknowledged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from uuid import UUID

import trio

from ._config import RuntimeConfig
from ._model import Message, Session
from ._postgres import PostgresStore

#: `messages=` of the check's loads: more than any session of a demo holds.
ALL_MESSAGES: Final = 1_000_000
#: Differences printed when the check fails (all are counted).
SHOWN_PROBLEMS: Final = 20

#: What the demo returns: the process's exit code.
OK: Final = 0
CHECK_FAILED: Final = 1


@dataclass(slots=True)
class Ledger:
    """What the runtime acknowledged to this run: the expectation of the final check.

    Every snapshot the demo sees, from a reply or from the event stream, goes
    through `observe`; the newest version of each session is what PostgreSQL
    must hold. Every accepted message goes through `appended`.
    """

    #: Ids returned by `create()` in this run.
    created: set[UUID] = field(default_factory=set)
    #: Ids announced by a "created" event (the database also holds earlier runs' sessions).
    announced: set[UUID] = field(default_factory=set)
    #: The highest-version snapshot seen per session.
    newest: dict[UUID, Session] = field(default_factory=dict)
    #: Every message accepted per session, in order.
    messages: dict[UUID, list[Message]] = field(default_factory=dict)
    #: Inconsistencies seen while the runtime ran.
    problems: list[str] = field(default_factory=list)

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

    def appended(self, session: Session, role: str, content: str) -> Session:
        """Record the message that `append_message` answered with `session`."""
        messages = self.messages[session.id]
        if session.message_count != len(messages) + 1:
            self.problems.append(f"session {session.id}: append_message answered message_count "
                                 f"{session.message_count}, expected {len(messages) + 1}")
        # The actor stamps the message and the activity with the same instant.
        messages.append(Message(session.message_count, role, content, session.last_activity))
        return self.observe(session)

    def check_context(self, session_id: UUID, context: Sequence[Message], limit: int) -> None:
        """`context()` must answer the newest messages this run appended, oldest first."""
        appended = self.messages[session_id]
        expected = tuple(appended[-limit:])
        if tuple(context) != expected:
            self.problems.append(f"session {session_id}: context() answered {len(context)} messages "
                                 f"(seq {[m.seq for m in context]}), expected seq "
                                 f"{[m.seq for m in expected]}")


async def check_store(url: str, config: RuntimeConfig, ledger: Ledger) -> list[str]:
    """Compare every session of this run in PostgreSQL with the newest snapshot the demo saw.

    Uses a fresh `PostgresStore`, so it reads what was committed, not any cache.
    """
    store = PostgresStore(url, config)
    problems: list[str] = []
    limiter = trio.CapacityLimiter(config.pool_max)

    async def check_one(session_id: UUID) -> None:
        async with limiter:
            loaded = await store.load(session_id, messages=ALL_MESSAGES)
        problems.extend(compare_session(session_id, loaded, ledger))

    async with store.connect(), trio.open_nursery() as nursery:
        for session_id in ledger.created:
            nursery.start_soon(check_one, session_id)
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
    appended = ledger.messages[session_id]
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
        print(f"check passed: {len(ledger.created):,} sessions, {messages:,} messages match")
        return OK
    print(f"check failed: {len(problems):,} differences between PostgreSQL and what the runtime "
          f"acknowledged:")
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"  {problem}")
    if len(problems) > SHOWN_PROBLEMS:
        print(f"  ... and {len(problems) - SHOWN_PROBLEMS:,} more")
    return CHECK_FAILED
