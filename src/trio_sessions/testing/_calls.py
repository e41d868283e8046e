"""The calls of the session API as values: what a history records and a model replays.

Each class is one per-session call of `SessionRuntime`, frozen, with the
arguments exactly as the caller passed them (valid or not). `run` makes the
call on a runtime; the reference model interprets the same value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from .._runtime import SessionRuntime


@dataclass(frozen=True, slots=True)
class Create:
    """`rt.create(user_id, agent, ...)`."""

    user_id: Any
    agent: Any
    chat_id: Any = None
    title: Any = None
    state: Any = "active"
    metadata: Any = None
    timeout: Any = None
    durable: Any = False

    session_id = None  # known only from the result

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.create(self.user_id, self.agent, chat_id=self.chat_id, title=self.title,
                               state=self.state, metadata=self.metadata, timeout=self.timeout,
                               durable=self.durable)


@dataclass(frozen=True, slots=True)
class Get:
    """`rt.get(session_id, user_id=...)`."""

    session_id: Any
    user_id: Any = None

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.get(self.session_id, user_id=self.user_id)


@dataclass(frozen=True, slots=True)
class Touch:
    """`rt.update_last_activity(session_id)`."""

    session_id: Any
    durable: Any = False

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.update_last_activity(self.session_id, durable=self.durable)


@dataclass(frozen=True, slots=True)
class Update:
    """`rt.update(session_id, expected_version=..., **changes)`; `changes` as (name, value) pairs."""

    session_id: Any
    changes: tuple[tuple[str, Any], ...] = ()
    expected_version: Any = None
    durable: Any = False

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.update(self.session_id, expected_version=self.expected_version,
                               durable=self.durable, **dict(self.changes))


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """`rt.append_message(session_id, role, content)`."""

    session_id: Any
    role: Any
    content: Any
    durable: Any = False

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.append_message(self.session_id, self.role, self.content, durable=self.durable)


@dataclass(frozen=True, slots=True)
class Context:
    """`rt.context(session_id, limit=...)`."""

    session_id: Any
    limit: Any = None

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.context(self.session_id, limit=self.limit)


@dataclass(frozen=True, slots=True)
class AddNote:
    """`rt.add_note(session_id, text)`."""

    session_id: Any
    text: Any
    durable: Any = False

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.add_note(self.session_id, self.text, durable=self.durable)


@dataclass(frozen=True, slots=True)
class End:
    """`rt.end(session_id, reason=...)`."""

    session_id: Any
    reason: Any = "ended"
    durable: Any = False

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.end(self.session_id, reason=self.reason, durable=self.durable)


@dataclass(frozen=True, slots=True)
class Delete:
    """`rt.delete(session_id)`."""

    session_id: Any

    async def run(self, rt: SessionRuntime) -> Any:
        return await rt.delete(self.session_id)


Call = Create | Get | Touch | Update | AppendMessage | Context | AddNote | End | Delete


def describe(call: Call) -> str:
    """A short, readable rendering of a call for counterexamples."""
    name = {Create: "create", Get: "get", Touch: "update_last_activity", Update: "update",
            AppendMessage: "append_message", Context: "context", AddNote: "add_note", End: "end",
            Delete: "delete"}[type(call)]
    parts = []
    for field in call.__dataclass_fields__:
        value = getattr(call, field)
        if field == "session_id":
            parts.append(_short(value))
        elif field == "changes":
            parts.extend(f"{k}={_value(v)}" for k, v in value)
        elif value is not None and value is not False and _DEFAULTS.get(field, _NONE) != value:
            parts.append(f"{field}={_value(value)}")
    return f"{name}({', '.join(parts)})"


_DEFAULTS = {"state": "active", "reason": "ended"}
_NONE = object()


def _short(value: object) -> str:
    return str(value)[:8] if isinstance(value, UUID) else repr(value)


def _value(value: object) -> str:
    try:
        if isinstance(value, Mapping):
            value = dict(value)
        text = repr(value)
    except Exception:  # hostile input (an int of 5,000 digits, a lying mapping) must not hide the report
        return f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."
