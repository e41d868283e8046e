"""The error classes raised by trio-sessions.

Every error the runtime raises on purpose subclasses `SessionError`, so an
orchestrator can catch the whole family in one clause.
"""

from __future__ import annotations

from uuid import UUID


class SessionError(Exception):
    """Base class of every error trio-sessions raises on purpose."""


class SessionNotFound(SessionError, LookupError):
    """No such session, or it belongs to another user (no existence leak)."""

    def __init__(self, session_id: UUID | str) -> None:
        super().__init__(f"session {session_id} not found")
        self.session_id = session_id


class SessionInactive(SessionError):
    """The session has ended or expired; it can be read but not changed."""

    def __init__(self, session_id: UUID, end_reason: str | None) -> None:
        super().__init__(f"session {session_id} is inactive ({end_reason})")
        self.session_id = session_id
        self.end_reason = end_reason


class VersionConflict(SessionError):
    """`expected_version` did not match the session's current version."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected version {expected}, session is at {actual}")
        self.expected = expected
        self.actual = actual


class ChatSessionExists(SessionError):
    """The chat already has an active session with this agent for this user.

    One active session per `(user_id, agent, chat_id)`: `create` and `update`
    refuse to give a session a chat that has one (nothing is changed).
    `session_for_chat` finds that session instead of opening another.

    Attributes:
        user_id, agent, chat_id: the chat's key.
        session_id: the chat's active session.
    """

    def __init__(self, user_id: str, agent: str, chat_id: str, session_id: UUID) -> None:
        super().__init__(f"chat {chat_id!r} already has an active session with agent {agent!r} for this "
                         f"user ({session_id}): continue it with session_for_chat(), or end it first")
        self.user_id = user_id
        self.agent = agent
        self.chat_id = chat_id
        self.session_id = session_id


class InvalidArgument(SessionError, ValueError):
    """An argument was rejected before anything was changed.

    Attributes:
        field: the name of the offending argument or configuration field.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class RuntimeClosed(SessionError):
    """The runtime is shutting down or has shut down."""


class StoreUnavailable(SessionError):
    """The store could not be reached (a transient condition: retrying may work)."""


class SessionMoved(StoreUnavailable):
    """Another runtime took the session before this change was committed; it was not stored.

    Raised to a `durable=True` caller when its change is fenced: this
    runtime lost the session (its lease lapsed while it was paused or cut off
    from the store, and another runtime sharing the store took over). The
    session itself is fine: retrying the call applies it afresh.
    """


class ConfigurationError(SessionError):
    """The configuration cannot work, and retrying will not help.

    Raised on start for a malformed database URL, a wrong password, an
    unknown database or role, a missing privilege, or a schema that is not
    current while `auto_migrate` is off. The message names the server
    (host, port, database, user; never the password), what failed and
    which setting to change.
    """


class Overloaded(SessionError):
    """The runtime cannot take more work right now."""


class WriteRejected(SessionError):
    """The database refused a change's data for good.

    Raised by `Store.write` when the database refuses the batch's data, and to
    a `durable=True` caller whose change was refused.

    The write-behind answers by splitting the batch until it has isolated the
    rows that cause it; those are dropped, logged and counted, the rest are
    written. Anything else a store raises from `write` (other than
    `StoreUnavailable`, which is retried) is a bug and stops the runtime.
    """
