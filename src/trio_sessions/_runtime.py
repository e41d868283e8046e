"""`SessionRuntime`, the public API, and `open_runtime`, which runs one.

`SessionRuntime` validates arguments, turns each call into a command for the
session's actor and measures it; everything else (the registry of actors,
routing, passivation, expiry, the write-behind) belongs to its private
`Supervisor`. Every public method states what cancellation does.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Concatenate, Final, ParamSpec, TypeVar
from uuid import UUID

import trio
from loguru import logger

from . import _model as model
from ._commands import TOUCH, AddNote, AppendMessage, Context, Delete, End, Read, Update
from ._config import RuntimeConfig, configured_url, environment_url
from ._cursor import decode_cursor, encode_cursor
from ._errors import InvalidArgument, SessionNotFound, StoreUnavailable
from ._feed import FollowedEvents
from ._health import Health
from ._metrics import MetricsSnapshot
from ._model import EventPage, Message, Page, Session
from ._store import ListQuery, Store
from ._subscriptions import Subscription
from ._supervisor import Supervisor

P = ParamSpec("P")
T = TypeVar("T")

MAX_PAGE: Final = 1000
#: Sessions of one chat that `chat_turn` finds ended when their turn comes, before it gives up.
_CHAT_TURN_ATTEMPTS: Final = 5
_UNSET: Final[Any] = object()


def _measured(name: str) -> Callable[[Callable[Concatenate[SessionRuntime, P], Coroutine[Any, Any, T]]],
                                      Callable[Concatenate[SessionRuntime, P], Coroutine[Any, Any, T]]]:
    """Count a public operation and record its latency (real time, also under MockClock)."""

    def decorate(fn: Callable[Concatenate[SessionRuntime, P], Coroutine[Any, Any, T]],
                 ) -> Callable[Concatenate[SessionRuntime, P], Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(runtime: SessionRuntime, /, *args: P.args, **kwargs: P.kwargs) -> T:
            histogram = runtime._sup.counters.latency[name]
            started = time.perf_counter()
            try:
                result = await fn(runtime, *args, **kwargs)
            except BaseException as exc:
                histogram.record_error(time.perf_counter() - started, exc)
                raise
            histogram.record(time.perf_counter() - started)
            return result

        return wrapper

    return decorate


class SessionRuntime:
    """The session manager. Get one from `open_runtime()`; do not construct it directly.

    Every method that takes a session id accepts a `UUID` or its string form.
    Mutating methods take `durable`: with `durable=True` they return only after
    the change is committed to the store; otherwise they return once the
    session's actor has applied the change and handed it to the write-behind,
    which commits it within `flush_interval`.

    Cancellation: a call cancelled before its change is applied changes
    nothing (the command is abandoned, never applied later); a `durable=True`
    call cancelled while it waits for the commit has been applied and will be
    committed, only the wait is given up. Reads are simply abandoned.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    @property
    def config(self) -> RuntimeConfig:
        """The settings this runtime runs with."""
        return self._sup.config

    def deadline(self, session: Session) -> float:
        """The Trio time at which `session` (this snapshot) expires: its `expires_at` on Trio's clock.

        For `trio.sleep_until` or `trio.move_on_at`; exact, also under `MockClock`.
        Never blocks.

        Raises:
            InvalidArgument: `session` is not a `Session`, or its `expires_at`
                is not a timezone-aware datetime (a naive one would be read
                as local time).
        """
        if not isinstance(session, Session):
            raise InvalidArgument("session", f"must be a Session, not {type(session).__name__}")
        expires = session.expires_at
        if not isinstance(expires, datetime) or datetime.utcoffset(expires) is None:
            raise InvalidArgument("session", "its expires_at must be a timezone-aware datetime")
        return self._sup.clock.to_trio(expires)

    def _opening(self, user_id: object, agent: object, chat_id: object, title: object, state: object,
                 metadata: object, timeout: object, *, chat: Callable[..., str | None],
                 ) -> tuple[float, dict[str, Any]]:
        """The checked timeout and fields of a new session (`chat` checks `chat_id`: optional or not)."""
        timeout_s = self.config.session_timeout if timeout is None else model.check_seconds(
            "timeout", timeout, high=model.MAX_TIMEOUT)
        return timeout_s, dict(
            user_id=model.check_text("user_id", user_id, max_chars=model.MAX_ID_CHARS),
            agent=model.check_text("agent", agent, max_chars=model.MAX_NAME_CHARS),
            chat_id=chat("chat_id", chat_id, max_chars=model.MAX_ID_CHARS),
            title=model.check_optional_text("title", title, max_chars=model.MAX_TITLE_CHARS),
            state=model.check_text("state", state, max_chars=model.MAX_NAME_CHARS),
            metadata=model.check_metadata(metadata),
        )

    @_measured("create")
    async def create(
            self, user_id: str, agent: str, *, chat_id: str | None = None,
                     title: str | None = None, state: str = "active",
                     metadata: Mapping[str, Any] | None = None,
                     timeout: float | None = None,  # noqa: ASYNC109 - the session's, not the call's
                     durable: bool = False) -> Session:
        """Start a session for `user_id` with `agent`.

        Args:
            user_id: the owner; at most 200 characters.
            agent: the agent's name, e.g. "financeiro".
            chat_id: the chat channel the session is bound to, if any.
            title, state: free text; `state` names a workflow state.
            metadata: plain JSON with string keys (stored read-only).
            timeout: sliding expiration in seconds; `session_timeout` when None.
            durable: return only after the session is committed.

        Returns:
            The new session at version 1.

        Raises:
            InvalidArgument: naming the bad argument; nothing is created.
            ChatSessionExists: `chat_id` is given and the chat already has an
                active session with `agent` for `user_id` (see
                `session_for_chat`); nothing is created.

        A session with a `chat_id` is written through to the store before
        the call returns (durable, whatever `durable` says): the store
        decides which session has a chat, in one runtime or many.

        Cancellation: while it waits for room in a full write-behind buffer,
        nothing is created; once created, a durable call cancelled during the
        commit wait leaves the session created (and it is committed).
        """
        timeout_s, fields = self._opening(user_id, agent, chat_id, title, state, metadata, timeout,
                                          chat=model.check_optional_text)
        return await self._sup.create(fields, timeout_s, model.check_bool("durable", durable))

    @_measured("session_for_chat")
    async def session_for_chat(
            self, user_id: str, agent: str, chat_id: str, *, title: str | None = None,
            state: str = "active", metadata: Mapping[str, Any] | None = None,
            timeout: float | None = None,  # noqa: ASYNC109 - the session's, not the call's
    ) -> Session:
        """The chat's active session with `agent` for `user_id`, opened now if it has none.

        Atomic: concurrent calls for one chat, in this runtime or in any
        other sharing the store, all get the same session. A chat has at
        most one active session per user and agent, and one that ended or
        expired is never revived: the next call opens a new one. A session
        this runtime holds is answered from memory (no store call); opening
        one writes it through to the store before returning.

        Args:
            user_id, agent, chat_id: the chat's key.
            title, state, metadata, timeout: for a session opened now, as `create` takes them;
                a session found is returned as it is.

        Returns:
            The session (version 1 if it was opened by this call).

        Raises:
            InvalidArgument: naming the bad argument; nothing is opened.
            StoreUnavailable: the store could not decide (retry the call).
            Overloaded: the session's owner, another runtime, did not hand it over in time.

        Cancellation: nothing is opened if cancelled before the write; once
        written, the session is the chat's, and the next call finds it.
        """
        timeout_s, fields = self._opening(user_id, agent, chat_id, title, state, metadata, timeout,
                                          chat=model.check_text)
        key = (fields["user_id"], fields["agent"], fields["chat_id"])
        return await self._sup.chats.session_for(key, fields, timeout_s)

    @asynccontextmanager
    async def turn(self, session_id: UUID | str, *, user_id: str | None = None) -> AsyncIterator[Session]:
        """Hold the session's turn for the block: one exchange at a time, kept together.

        `async with rt.turn(sid) as session:` waits until no other task holds
        the session's turn (first come, first served), then yields its
        latest snapshot. Calls on the session are never refused for want of
        the turn; it is for the application, which holds it from a user's
        message to the agent's answer so that two messages sent at once are
        answered one after the other, not interleaved. Across runtimes
        sharing a store, the owner of a session hands it over only once the
        turn held on it has ended, so turns exclude each other there too
        (a turn longer than `handoff_timeout` makes other runtimes' calls on
        the session fail with `Overloaded`).

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user (the turn is not held).

        A turn is not reentrant: a task that holds a session's turn and asks
        for it again gets `InvalidArgument`.

        Cancellation: while waiting, nothing is held; leaving the block releases the turn.
        """
        sid = model.check_session_id(session_id)
        owner = _owner(user_id)
        self._sup.check_open()
        if self._sup.turns.held_here(sid):
            raise InvalidArgument("session_id", f"this task already holds the turn of session {sid}")
        if owner is not None:
            await self.get(sid, user_id=owner)  # another user's session: refused before any wait
        async with self._sup.turns.hold(sid):
            session = await self.get(sid, user_id=owner)
            yield session

    @asynccontextmanager
    async def chat_turn(
            self, user_id: str, agent: str, chat_id: str, *, title: str | None = None,
            state: str = "active", metadata: Mapping[str, Any] | None = None,
            timeout: float | None = None,  # noqa: ASYNC109 - the session's, not the call's
    ) -> AsyncIterator[Session]:
        """`session_for_chat` and `turn` together: the chat's active session, its turn held for the block.

        `async with rt.chat_turn(user_id, agent, chat_id) as session:` is an
        orchestrator's handling of one incoming message: the session is
        active when the block starts (one that ended while this call waited
        for the turn is left for the chat's next session), and no other
        turn on it runs until the block ends. End the session inside a turn
        (as the answer to "thanks, bye"), and no other turn finds it ended
        half-way. Arguments and errors are those of `session_for_chat` and
        `turn`.
        """
        for _ in range(_CHAT_TURN_ATTEMPTS):
            session = await self.session_for_chat(user_id, agent, chat_id, title=title, state=state,
                                                  metadata=metadata, timeout=timeout)
            async with self.turn(session.id) as current:
                if current.is_active:
                    yield current
                    return
        raise StoreUnavailable(f"chat {chat_id!r}: each of its last {_CHAT_TURN_ATTEMPTS} sessions ended "
                               "before its turn came; retry the call")

    @_measured("get")
    async def get(self, session_id: UUID | str, *, user_id: str | None = None) -> Session:
        """The session's latest snapshot.

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user.

        Cancellation: nothing changes (a read is simply abandoned).
        """
        sid = model.check_session_id(session_id)
        user_id = _owner(user_id)  # the plain string: a subclass's __ne__ must not decide ownership
        sup = self._sup
        sup.check_open()
        await trio.lowlevel.checkpoint()
        # A resident actor's published snapshot is immutable: no need to queue
        # behind writes, unless the session may be overdue and must expire first.
        session = sup.snapshot(sid)
        if session is None:
            session = await sup.call(sid, Read())
        if user_id is not None and session.user_id != user_id:
            raise SessionNotFound(sid)
        return session

    @_measured("update_last_activity")
    async def update_last_activity(self, session_id: UUID | str, *, durable: bool = False) -> Session:
        """Record activity: moves `last_activity` to now and `expires_at` to now + timeout.

        Raises:
            SessionNotFound, SessionInactive.

        Cancellation: before the change is applied, nothing changes; while a
        durable call waits for the commit, the change stands and is committed.
        """
        sid = model.check_session_id(session_id)
        return await self._sup.call(sid, TOUCH[model.check_bool("durable", durable)])

    @_measured("update")
    async def update(self, session_id: UUID | str, *, expected_version: int | None = None,
                     title: str | None = _UNSET, state: str = _UNSET, agent: str = _UNSET,
                     chat_id: str | None = _UNSET, metadata: Mapping[str, Any] = _UNSET,
                     durable: bool = False, user_id: str | None = None) -> Session:
        """Change some fields; only the ones passed change. Does not count as activity.

        Args:
            expected_version: when given, apply only if the session is at this version.
            title, chat_id: None clears them.
            metadata: replaces the whole mapping.
            user_id: when given, the session must belong to this user.

        Raises:
            VersionConflict: `expected_version` is not the current version.
            SessionNotFound: no such session, or it belongs to another user.
            ChatSessionExists: the new agent or chat would give the chat a
                second active session; nothing changed.
            SessionInactive, InvalidArgument.

        A change of `agent` or `chat_id` of an active session bound to a
        chat is written through to the store before the call returns (the
        store decides which session has a chat), so it is durable and costs
        a flush and a round trip.

        Cancellation: before the change is applied, nothing changes; while a
        durable call waits for the commit, the change stands and is committed.
        """
        sid = model.check_session_id(session_id)
        expected_version = model.check_optional_int("expected_version", expected_version,
                                                    low=1, high=2**63 - 1)
        changes: dict[str, Any] = {}
        if title is not _UNSET:
            changes["title"] = model.check_optional_text("title", title, max_chars=model.MAX_TITLE_CHARS)
        if state is not _UNSET:
            changes["state"] = model.check_text("state", state, max_chars=model.MAX_NAME_CHARS)
        if agent is not _UNSET:
            changes["agent"] = model.check_text("agent", agent, max_chars=model.MAX_NAME_CHARS)
        if chat_id is not _UNSET:
            changes["chat_id"] = model.check_optional_text("chat_id", chat_id, max_chars=model.MAX_ID_CHARS)
        if metadata is not _UNSET:
            changes["metadata"] = model.check_metadata(metadata)
        through = "agent" in changes or "chat_id" in changes
        command = Update(expected_version, changes, model.check_bool("durable", durable), _owner(user_id),
                         through)
        if through:  # the session's chat may change: the store decides (`Chats.update`)
            return await self._sup.chats.update(sid, command)
        return await self._sup.call(sid, command)

    @_measured("append_message")
    async def append_message(self, session_id: UUID | str, role: str, content: str, *,
                             durable: bool = False, user_id: str | None = None) -> Session:
        """Append a message (`role`: user, assistant, system or tool). Counts as activity.

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user.
            SessionInactive, InvalidArgument.

        Cancellation: before the change is applied, nothing changes; while a
        durable call waits for the commit, the change stands and is committed.
        """
        sid = model.check_session_id(session_id)
        command = AppendMessage(model.check_role(role),
                                model.check_content(content, max_bytes=self.config.max_content_bytes),
                                model.check_bool("durable", durable), _owner(user_id))
        return await self._sup.call(sid, command)

    @_measured("context")
    async def context(self, session_id: UUID | str, *, limit: int | None = None,
                      user_id: str | None = None) -> tuple[Message, ...]:
        """The newest `limit` messages (at most `max_messages`), oldest first.

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user.
            InvalidArgument: `limit` is not 1..max_messages.

        Cancellation: nothing changes (a read is simply abandoned).
        """
        sid = model.check_session_id(session_id)
        limit = self.config.max_messages if limit is None else model.check_int(
            "limit", limit, low=1, high=self.config.max_messages)
        return await self._sup.call(sid, Context(limit, _owner(user_id)))

    @_measured("add_note")
    async def add_note(self, session_id: UUID | str, text: str, *, durable: bool = False,
                       user_id: str | None = None) -> Session:
        """Attach a free-text note. Does not count as activity.

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user.
            SessionInactive, InvalidArgument.

        Cancellation: before the change is applied, nothing changes; while a
        durable call waits for the commit, the change stands and is committed.
        """
        sid = model.check_session_id(session_id)
        command = AddNote(model.check_text("text", text, max_chars=model.MAX_NOTE_CHARS),
                          model.check_bool("durable", durable), _owner(user_id))
        return await self._sup.call(sid, command)

    @_measured("end")
    async def end(self, session_id: UUID | str, *, reason: str = "ended", durable: bool = False,
                  user_id: str | None = None) -> Session:
        """Soft delete: the session becomes inactive and stays readable.

        Ending an inactive session returns it unchanged.

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user.
            InvalidArgument.

        Cancellation: before the change is applied, nothing changes; while a
        durable call waits for the commit, the change stands and is committed.
        """
        sid = model.check_session_id(session_id)
        command = End(model.check_text("reason", reason, max_chars=model.MAX_NAME_CHARS),
                      model.check_bool("durable", durable), _owner(user_id))
        return await self._sup.call(sid, command)

    @_measured("delete")
    async def delete(self, session_id: UUID | str) -> None:
        """Hard delete: the row and every message. Returns once committed.

        Raises:
            SessionNotFound.

        Cancellation: before the delete is applied, nothing changes; while it
        waits for the commit, the session is already gone and the delete is
        committed.
        """
        await self._sup.call(model.check_session_id(session_id), Delete())

    @_measured("list")
    async def list(self, *, user_id: str | None = None, agent: str | None = None,
                   chat_id: str | None = None, active: bool | None = True, limit: int = 50,
                   after: str | None = None) -> Page:
        """One page of sessions, newest first (by creation, then id); filters combine.

        The store answers once every change this runtime acknowledged
        that the page could show has been flushed (with `user_id`, only
        that user's changes are waited for: with none pending, no flush),
        so the page reflects every change made here before the call; of
        other runtimes sharing the store, it shows what they have flushed.

        Args:
            active: True for live sessions, False for ended or expired ones, None for all.
            limit: page size, 1 to 1000.
            after: the `next_cursor` of the previous page.

        Raises:
            InvalidArgument: a filter out of range, or a cursor the runtime did not make.
            StoreUnavailable: the store could not be read in `read_attempts` tries.

        Cancellation: nothing changes (the flush it waits for goes on).
        """
        query = _list_query(user_id, agent, chat_id, active, limit, after)
        limit = query.limit - 1  # the plain number that was checked
        self._sup.check_open()
        rows = await self._sup.reads.list(query)
        items = tuple(rows[:limit])
        cursor = encode_cursor(items[-1]) if len(rows) > limit else None
        return Page(items, cursor)

    def iter_sessions(self, *, user_id: str | None = None, agent: str | None = None,
                      chat_id: str | None = None, active: bool | None = True,
                      page_size: int = 100) -> AsyncIterator[Session]:
        """Every session matching the filters, newest first: `async for s in rt.iter_sessions(...)`.

        Reads one `list()` page of `page_size` at a time, following
        `next_cursor` until the last page. Each page is read (after a flush, as `list()` says)
        when the previous one is used up, so the whole is not one snapshot:
        a session created meanwhile sorts before the cursor and is not seen,
        and one that changes meanwhile shows as its page read it.

        The filters are those of `list()` and are checked here, before the
        first page. Raises what `list()` raises, from the step that reads a
        page. Cancellation: nothing changes; the iterator can go on.
        """
        model.check_int("page_size", page_size, low=1, high=MAX_PAGE)
        _list_query(user_id, agent, chat_id, active, page_size, None)
        self._sup.check_open()
        filters: dict[str, Any] = dict(user_id=user_id, agent=agent, chat_id=chat_id, active=active)
        return _SessionPages(self, filters, page_size)

    @_measured("cleanup_old_sessions")
    async def cleanup_old_sessions(self) -> int:
        """Expire every session that is due now; returns how many this call expired.

        Sessions whose expiry failed earlier (the store could not be read) are
        tried again at once.

        Raises:
            StoreUnavailable: some due sessions could not be read from the
                store; they stay due and are retried (call again to insist).

        Cancellation: what it already expired stays expired, and the
        expiries it queued are still applied; only the count is lost.
        """
        self._sup.check_open()
        return await self._sup.expiry.cleanup()

    @_measured("flush")
    async def flush(self) -> None:
        """Wait until every change acknowledged before this call is committed (or refused).

        Cancellation: only the wait is given up; the flush goes on.
        """
        self._sup.check_open()
        await self._sup.writebehind.flush()

    async def read_events(self, *, after: str | None = None, limit: int = 100) -> EventPage:
        """One page of the durable event feed: the committed changes after the cursor `after`.

        Any runtime on the store reads every runtime's events (those that
        have `event_feed` on write them). At least once, in order per
        session: a consumer that stores `next_cursor` once it has handled a
        page, and reads again after it, sees every event of every session
        whose change was committed, each session's in version order (events
        of different sessions may interleave out of commit order); a
        consumer that crashes before storing its cursor reads the same
        events again. An event is readable once its change is committed
        (within `flush_interval` of the call, or when a `durable=True` call
        returns) and every transaction on the database older than it has
        ended. Events older than `event_retention` are pruned: a consumer
        that falls that far behind misses them.

        Args:
            after: `EventPage.next_cursor` or `FeedEvent.cursor`; None reads
                from the oldest event kept.
            limit: page size, 1 to 10000.

        Returns:
            `EventPage(events, next_cursor)`; with no new events, `events`
            is empty and `next_cursor` is `after`.

        Raises:
            InvalidArgument: `limit` out of range, or `after` not a cursor the feed made.
            StoreUnavailable: the store could not be read in `read_attempts` tries.

        Cancellation: nothing changes; read the same page again.
        """
        self._sup.check_open()
        return await self._sup.feed.read(after, limit)

    def follow_events(self, *, after: str | None = None, limit: int = 100) -> FollowedEvents:
        """Every event of the durable feed after `after`, as they come: `async for e in rt.follow_events()`.

        Never ends by itself: it reads pages of `limit` (as `read_events`),
        and after an empty page waits `event_poll_interval` before asking
        again. Its `cursor` attribute is the cursor of the last event it
        yielded: store it to resume after a restart. The arguments are
        checked here, before the first step.

        Raises:
            InvalidArgument: as `read_events`, here.
            StoreUnavailable: from the step whose read failed (the iterator can go on).

        Cancellation: nothing is lost; the iterator goes on from its `cursor`.
        """
        self._sup.check_open()
        return self._sup.feed.follow(after, limit)

    @asynccontextmanager
    async def subscribe(self, *, buffer: int | None = None) -> AsyncIterator[Subscription]:
        """Receive every event (created, updated, expired, ended, deleted, rejected) from now on.

        Entering and leaving never block. In-process and best-effort: a full
        buffer drops events for this subscriber (counted in `dropped`). A
        subscription made first thing in the `open_runtime()` block, before
        it first blocks, sees the expiries of sessions that fell due while
        nothing ran.

        Args:
            buffer: events held for this subscriber; `subscriber_buffer` when None.
        """
        size = self.config.subscriber_buffer if buffer is None else model.check_int(
            "buffer", buffer, low=1, high=10_000_000)
        self._sup.check_open()
        subscription = self._sup.events.add(size)
        try:
            yield subscription
        finally:
            self._sup.events.remove(subscription)

    async def health(self) -> Health:
        """What a readiness probe needs: is the store reachable, and is the write-behind keeping up.

        Probes the store once (`Store.health_check`, one `SELECT 1` on
        PostgreSQL), for at most a second; the rest is read from memory.
        Cheap enough to call every second. Cancellation: nothing changes.
        """
        self._sup.check_open()
        return await self._sup.health(probe_timeout=1.0)

    def metrics(self) -> MetricsSnapshot:
        """A snapshot of the counters. Never blocks."""
        return self._sup.metrics()


class _SessionPages:
    """What `iter_sessions` returns: an async iterator over pages of `list()`."""

    __slots__ = ("_cursor", "_filters", "_items", "_last", "_page_size", "_runtime")

    def __init__(self, runtime: SessionRuntime, filters: dict[str, Any], page_size: int) -> None:
        self._runtime = runtime
        self._filters = filters
        self._page_size = page_size
        self._items: deque[Session] = deque()
        self._cursor: str | None = None
        self._last = False

    def __aiter__(self) -> _SessionPages:
        return self

    async def __anext__(self) -> Session:
        if not self._items and not self._last:
            page = await self._runtime.list(**self._filters, limit=self._page_size, after=self._cursor)
            # Only the page is taken in: cancelled above, the iterator stays where it was.
            self._items.extend(page.items)
            self._cursor = page.next_cursor
            self._last = page.next_cursor is None
        else:
            await trio.lowlevel.checkpoint()
        if not self._items:
            raise StopAsyncIteration
        return self._items.popleft()


def _list_query(user_id: object, agent: object, chat_id: object, active: object, limit: object,
                after: object) -> ListQuery:
    """The checked query of `list()`, asking for one row more than `limit` (to know if a page follows)."""
    return ListQuery(
        user_id=model.check_optional_text("user_id", user_id, max_chars=model.MAX_ID_CHARS),
        agent=model.check_optional_text("agent", agent, max_chars=model.MAX_NAME_CHARS),
        chat_id=model.check_optional_text("chat_id", chat_id, max_chars=model.MAX_ID_CHARS),
        active=None if active is None else model.check_bool("active", active),
        limit=model.check_int("limit", limit, low=1, high=MAX_PAGE) + 1,
        after=None if after is None else decode_cursor(after),
    )


def _owner(user_id: object) -> str | None:
    """The `user_id=` ownership check's argument, validated as `get` validates it (None: no check)."""
    return None if user_id is None else model.check_text("user_id", user_id, max_chars=model.MAX_ID_CHARS)


@asynccontextmanager
async def _open_store(config: RuntimeConfig, store: Store | None) -> AsyncIterator[Store]:
    if store is None:
        from ._postgres import PostgresStore

        migrate = config.auto_migrate
        url = configured_url(config) or environment_url()
        if url is None:
            from ._embedded import open_embedded_postgres

            async with open_embedded_postgres(config.resolved_data_dir()) as embedded_url:
                store = PostgresStore(embedded_url, config, migrate=migrate)
                async with store.connect():
                    yield store
            return
        store = PostgresStore(url, config, migrate=migrate)
    async with store.connect():
        yield store


@asynccontextmanager
async def open_runtime(config: RuntimeConfig | None = None, *,
                       store: Store | None = None) -> AsyncIterator[SessionRuntime]:
    """Run a session runtime for the duration of the `async with` block.

    Entering connects the store (starting an embedded PostgreSQL when there is
    no `database_url` and no `DATABASE_URL`), applies migrations and loads the
    deadlines of live sessions; sessions that expired while nothing ran are
    expired at once. Leaving stops every actor after it has finished its
    queued commands, flushes every acknowledged change and closes the store.
    Both block.

    Args:
        config: settings; `RuntimeConfig()` when None.
        store: the backend; PostgreSQL from `config` when None.

    An exception raised by the block comes out as it was raised; failures of
    the runtime's own tasks come out as an exception group. If leaving cannot
    flush within `shutdown_timeout`, it raises `StoreUnavailable`.
    """
    if config is None:
        config = RuntimeConfig()
    elif not issubclass(type(config), RuntimeConfig):
        raise InvalidArgument("config", f"must be a RuntimeConfig, not {type(config).__name__}")
    if store is not None and not isinstance(store, Store):
        raise InvalidArgument("store", f"must implement the Store protocol, not {type(store).__name__}")
    body_error: BaseException | None = None
    shutdown_error: BaseException | None = None
    async with _open_store(config, store) as opened:
        supervisor = Supervisor(opened, config)
        await supervisor.expiry.load()  # before the nursery: a failure comes out unwrapped
        async with trio.open_nursery() as nursery:
            await supervisor.start(nursery)
            runtime = SessionRuntime(supervisor)
            supervisor.expiry.released.set()  # runs once the block first blocks
            try:
                yield runtime
            except BaseException as exc:  # re-raised below, outside our nurseries
                body_error = exc
            try:
                await supervisor.shutdown(flush=not nursery.cancel_scope.cancel_called)
            except StoreUnavailable as exc:
                shutdown_error = exc
            nursery.cancel_scope.cancel()
    if body_error is not None:
        if shutdown_error is not None:
            logger.error("{}", shutdown_error)
        raise body_error
    if shutdown_error is not None:
        raise shutdown_error
