"""The reference model: a plain, sequential specification of the session API.

`SessionModel` answers every per-session call the way the runtime must: the
same snapshots (field for field, timestamps included), the same messages and
the same errors, for a call made at a given Trio time. It has no actors, no
buffer and no store: one dict of `ModelState`s and pure functions.

Time is explicit. A session is live while `now` is before its deadline; a
call that checks liveness at or after the deadline first expires it (version
+1, `end_reason="expired"`, `ended_at = expires_at`), exactly as the runtime
does whether its expiry task got there first or not. Reads of context and
hard deletes do not check liveness.

The linearizability checker (`_history.py`) uses the same `apply` function on
one session's `ModelState` at a time. A chat couples sessions (at most one
active session per `(user_id, agent, chat_id)`): `SessionModel` answers for
that, across its sessions (`session_for_chat`, and the `ChatSessionExists`
of `create` and `update`); `apply` alone does not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final
from uuid import UUID

from .. import _model as checks
from .._clock import Clock
from .._config import RuntimeConfig
from .._errors import (
    ChatSessionExists,
    InvalidArgument,
    SessionError,
    SessionInactive,
    SessionNotFound,
    VersionConflict,
)
from .._model import Message, Note, Session
from ._calls import AddNote, AppendMessage, Call, Context, Create, Delete, End, Get, Touch, Update


@dataclass(frozen=True, slots=True)
class ModelState:
    """What the model knows of one session: its snapshot and every message it was sent."""

    session: Session | None = None
    messages: tuple[Message, ...] = ()
    deleted: bool = False

    @property
    def exists(self) -> bool:
        return self.session is not None and not self.deleted


ABSENT: Final = ModelState()


def deadline(state: ModelState, clock: Clock) -> float | None:
    """The Trio time at which a live session expires, or None if it is not live."""
    session = state.session
    if session is None or state.deleted or not session.is_active:
        return None
    return clock.to_trio(session.expires_at)


def expire_due(state: ModelState, now: float, clock: Clock) -> ModelState:
    """The state at `now` if the session's deadline has passed: expired at the deadline."""
    due = deadline(state, clock)
    if due is None or due > now:
        return state
    session = state.session
    assert session is not None
    at = session.expires_at
    expired = replace(session, is_active=False, ended_at=at, end_reason="expired", updated_at=at,
                      version=session.version + 1)
    return replace(state, session=expired)


def validate(call: Call, config: RuntimeConfig) -> None:
    """Raise `InvalidArgument` for the arguments the runtime must refuse."""
    if not isinstance(call, Create):
        checks.check_session_id(call.session_id)
    match call:
        case Create():
            if call.timeout is not None:
                checks.check_seconds("timeout", call.timeout, high=checks.MAX_TIMEOUT)
            checks.check_text("user_id", call.user_id, max_chars=checks.MAX_ID_CHARS)
            checks.check_text("agent", call.agent, max_chars=checks.MAX_NAME_CHARS)
            checks.check_optional_text("chat_id", call.chat_id, max_chars=checks.MAX_ID_CHARS)
            checks.check_optional_text("title", call.title, max_chars=checks.MAX_TITLE_CHARS)
            checks.check_text("state", call.state, max_chars=checks.MAX_NAME_CHARS)
            checks.check_metadata(call.metadata)
            checks.check_bool("durable", call.durable)
        case Get():
            if call.user_id is not None:
                checks.check_text("user_id", call.user_id, max_chars=checks.MAX_ID_CHARS)
        case Touch():
            checks.check_bool("durable", call.durable)
        case Update():
            checks.check_optional_int("expected_version", call.expected_version, low=1, high=2**63 - 1)
            for name, value in call.changes:
                if name in ("title", "chat_id"):
                    limit = checks.MAX_TITLE_CHARS if name == "title" else checks.MAX_ID_CHARS
                    checks.check_optional_text(name, value, max_chars=limit)
                elif name in ("state", "agent"):
                    checks.check_text(name, value, max_chars=checks.MAX_NAME_CHARS)
                elif name == "metadata":
                    checks.check_metadata(value)
                else:
                    raise InvalidArgument(name, "is not a field update() changes")
            checks.check_bool("durable", call.durable)
        case AppendMessage():
            checks.check_role(call.role)
            checks.check_content(call.content, max_bytes=config.max_content_bytes)
            checks.check_bool("durable", call.durable)
        case Context():
            if call.limit is not None:
                checks.check_int("limit", call.limit, low=1, high=config.max_messages)
        case AddNote():
            checks.check_text("text", call.text, max_chars=checks.MAX_NOTE_CHARS)
            checks.check_bool("durable", call.durable)
        case End():
            checks.check_text("reason", call.reason, max_chars=checks.MAX_NAME_CHARS)
            checks.check_bool("durable", call.durable)
        case Delete():
            pass


def apply(state: ModelState, call: Call, now: float, config: RuntimeConfig, clock: Clock,
          *, new_id: UUID | None = None) -> tuple[ModelState, Any]:
    """Apply one call at Trio time `now`: (new state, result); raises the runtime's errors.

    Args:
        new_id: the id `Create` gives the new session (the runtime's is random).
    """
    validate(call, config)
    if isinstance(call, Create):
        assert new_id is not None, "Create needs the new session's id"
        return _create(call, new_id, now, config, clock)
    if not state.exists:
        raise SessionNotFound(checks.check_session_id(call.session_id))
    wall = clock.to_wall(now)
    if isinstance(call, Context):
        limit = config.max_messages if call.limit is None else call.limit
        return state, state.messages[-min(limit, config.max_messages):]
    if isinstance(call, Delete):
        return replace(state, session=None, messages=(), deleted=True), None
    state = expire_due(state, now, clock)
    session = state.session
    assert session is not None
    if isinstance(call, Get):
        if call.user_id is not None and call.user_id != session.user_id:
            raise SessionNotFound(session.id)
        return state, session
    if isinstance(call, End):
        if not session.is_active:
            return state, session
        ended = replace(session, is_active=False, ended_at=wall, end_reason=call.reason, updated_at=wall,
                        version=session.version + 1)
        return replace(state, session=ended), ended
    if not session.is_active:
        raise SessionInactive(session.id, session.end_reason)
    if isinstance(call, Touch):
        new = _activity(session, wall, clock)
        return replace(state, session=new), new
    if isinstance(call, AppendMessage):
        message = Message(session.message_count + 1, call.role, call.content, wall)
        new = _activity(session, wall, clock, message_count=message.seq)
        return replace(state, session=new, messages=(*state.messages, message)), new
    if isinstance(call, AddNote):
        new = replace(session, notes=(*session.notes, Note(call.text, wall)), updated_at=wall,
                      version=session.version + 1)
        return replace(state, session=new), new
    assert isinstance(call, Update)
    if call.expected_version is not None and call.expected_version != session.version:
        raise VersionConflict(call.expected_version, session.version)
    if not call.changes:
        return state, session
    changes: dict[str, Any] = {name: checks.check_metadata(value) if name == "metadata" else value
                               for name, value in call.changes}
    new = replace(session, updated_at=wall, version=session.version + 1, **changes)
    return replace(state, session=new), new


def _create(call: Create, session_id: UUID, now: float, config: RuntimeConfig,
            clock: Clock) -> tuple[ModelState, Session]:
    timeout = config.session_timeout if call.timeout is None else float(call.timeout)
    wall = clock.to_wall(now)
    _, expires_at = clock.deadline_after(wall, timeout)
    session = Session(
        id=session_id, user_id=call.user_id, agent=call.agent, chat_id=call.chat_id, title=call.title,
        state=call.state, metadata=checks.check_metadata(call.metadata), notes=(), is_active=True,
        message_count=0, created_at=wall, updated_at=wall, last_activity=wall, expires_at=expires_at,
        ended_at=None, end_reason=None, version=1, timeout=timeout)
    return ModelState(session), session


def _activity(session: Session, wall: Any, clock: Clock, **changes: Any) -> Session:
    _, expires_at = clock.deadline_after(wall, session.timeout)
    return replace(session, last_activity=wall, expires_at=expires_at, updated_at=wall,
                   version=session.version + 1, **changes)


class SessionModel:
    """The whole API, sequentially: the spec to compare a runtime with.

    Every method takes the Trio time `now` at which the call happens (under
    `MockClock`, `trio.current_time()`); `create` also takes the id to give
    the session. Results and errors are the runtime's, field for field.

    Args:
        config: the runtime's configuration (limits, timeouts).
        clock: converts Trio time to timestamps; create it inside the same
            `trio.run` as the runtime (`Clock()`), so both agree on the wall time.
    """

    def __init__(self, config: RuntimeConfig | None = None, clock: Clock | None = None) -> None:
        self.config = RuntimeConfig() if config is None else config
        self.clock = Clock() if clock is None else clock
        self.states: dict[UUID, ModelState] = {}

    def call(self, call: Call, now: float, *, new_id: UUID | None = None) -> Any:
        """Apply any call; the typed methods below are shorthands for this."""
        if isinstance(call, Create):
            key = new_id
        else:
            validate(call, self.config)
            key = checks.check_session_id(call.session_id)
        state = self.states.get(key, ABSENT) if key is not None else ABSENT
        new_state, result = apply(state, call, now, self.config, self.clock, new_id=new_id)
        if isinstance(result, Session) and isinstance(call, Create | Update):
            chat = _chat_of(result)
            before = state.session if state.exists else None
            if chat is not None and (before is None or _chat_of(expire_due(state, now, self.clock).session)
                                     != chat):
                holder = self.chat_holder(*chat, now=now)
                if holder is not None and holder.id != result.id:
                    raise ChatSessionExists(*chat, holder.id)
        if key is not None:
            self.states[key] = new_state
        return result

    def chat_holder(self, user_id: str, agent: str, chat_id: str, *, now: float) -> Session | None:
        """The session that has the chat at `now` (active, not overdue), if any."""
        for session_id in self.states:
            session = self.state_at(session_id, now).session
            if session is not None and _chat_of(session) == (user_id, agent, chat_id) \
                    and self.states[session_id].exists:
                return session
        return None

    def session_for_chat(self, user_id: Any, agent: Any, chat_id: Any, *, session_id: UUID, now: float,
                         **kwargs: Any) -> Session:
        """The chat's session at `now`, or a new one with id `session_id` (`create`'s other arguments)."""
        checks.check_text("chat_id", chat_id, max_chars=checks.MAX_ID_CHARS)
        validate(Create(user_id, agent, chat_id=chat_id, **kwargs), self.config)
        holder = self.chat_holder(user_id, agent, chat_id, now=now)
        if holder is not None:
            return holder
        return self.create(user_id, agent, chat_id=chat_id, session_id=session_id, now=now, **kwargs)

    def state_at(self, session_id: UUID, now: float) -> ModelState:
        """A session's state at `now`, with expiry applied if its deadline passed."""
        return expire_due(self.states.get(session_id, ABSENT), now, self.clock)

    def live_sessions(self, now: float) -> list[Session]:
        """The sessions still active at `now`."""
        return [s.session for s in (self.state_at(i, now) for i in self.states)
                if s.session is not None and s.exists and s.session.is_active]

    def create(self, user_id: Any, agent: Any, *, session_id: UUID, now: float,
               **kwargs: Any) -> Session:
        result: Session = self.call(Create(user_id, agent, **kwargs), now, new_id=session_id)
        return result

    def get(self, session_id: Any, *, now: float, user_id: Any = None) -> Session:
        result: Session = self.call(Get(session_id, user_id), now)
        return result

    def update_last_activity(self, session_id: Any, *, now: float) -> Session:
        result: Session = self.call(Touch(session_id), now)
        return result

    def update(self, session_id: Any, *, now: float, expected_version: Any = None,
               **changes: Any) -> Session:
        result: Session = self.call(Update(session_id, tuple(changes.items()), expected_version), now)
        return result

    def append_message(self, session_id: Any, role: Any, content: Any, *, now: float) -> Session:
        result: Session = self.call(AppendMessage(session_id, role, content), now)
        return result

    def context(self, session_id: Any, *, now: float, limit: Any = None) -> tuple[Message, ...]:
        result: tuple[Message, ...] = self.call(Context(session_id, limit), now)
        return result

    def add_note(self, session_id: Any, text: Any, *, now: float) -> Session:
        result: Session = self.call(AddNote(session_id, text), now)
        return result

    def end(self, session_id: Any, *, now: float, reason: Any = "ended") -> Session:
        result: Session = self.call(End(session_id, reason), now)
        return result

    def delete(self, session_id: Any, *, now: float) -> None:
        self.call(Delete(session_id), now)


def _chat_of(session: Session | None) -> tuple[str, str, str] | None:
    if session is None or session.chat_id is None or not session.is_active:
        return None
    return session.user_id, session.agent, session.chat_id


def same_outcome(expected: Any, actual: Any) -> bool:
    """Whether two outcomes (a value, or a raised `SessionError`) are the same answer."""
    if isinstance(expected, SessionError) or isinstance(actual, SessionError):
        if type(expected) is not type(actual):
            return False
        if isinstance(expected, VersionConflict):
            assert isinstance(actual, VersionConflict)
            return (expected.expected, expected.actual) == (actual.expected, actual.actual)
        if isinstance(expected, ChatSessionExists):
            assert isinstance(actual, ChatSessionExists)
            return expected.session_id == actual.session_id
        if isinstance(expected, SessionInactive):
            assert isinstance(actual, SessionInactive)
            # "expired" and "resolved" are different answers: the reason is the answer.
            return (expected.session_id, expected.end_reason) == (actual.session_id, actual.end_reason)
        return True
    return bool(expected == actual)
