"""`open_runtime` and `SessionRuntime`: the registry of actors, routing and supervision.

The runtime owns one nursery. In it run the write-behind flusher, the expiry
task, the idle sweeper, and the task of each actor that has work queued
(`SessionActor`). The registry maps a session id to its resident actor in
least-recently-used order; at most `max_resident` actors are registered, and
an actor that has not been called for `passivate_after` seconds is stopped.
Stopping an actor ("retiring" it) closes its mailbox: a busy actor finishes
the commands already queued, and a new actor for the same session waits for
it before loading.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import os
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from itertools import islice
from typing import Any, Final, ParamSpec, TypeVar
from uuid import UUID

import trio
from loguru import logger

from . import _model as model
from ._actor import (
    MUTATING,
    AddNote,
    AppendMessage,
    Command,
    Context,
    Delete,
    End,
    Expire,
    Read,
    Reply,
    SessionActor,
    Touch,
    Update,
    expired_snapshot,
)
from ._clock import Clock
from ._config import RuntimeConfig
from ._errors import InvalidArgument, Overloaded, RuntimeClosed, SessionNotFound, StoreUnavailable
from ._expiry import DeadlineQueue
from ._metrics import Counters, MetricsSnapshot
from ._model import Message, Page, Session, SessionEvent
from ._store import ListQuery, Store
from ._writebehind import WriteBehind

P = ParamSpec("P")
T = TypeVar("T")

MAX_PAGE: Final = 1000
_UNSET: Final[Any] = object()
#: The two Touch commands (immutable): the commonest call builds none.
_TOUCH: Final = {False: Touch(False), True: Touch(True)}


def _measured(name: str) -> Callable[[Callable[P, Coroutine[Any, Any, T]]],
                                      Callable[P, Coroutine[Any, Any, T]]]:
    """Count a public operation and record its latency (real time, also under MockClock)."""

    def decorate(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            histogram = args[0].counters.latency[name]  # type: ignore[attr-defined]
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                histogram.record(time.perf_counter() - started, failed=True)
                raise
            histogram.record(time.perf_counter() - started)
            return result

        return wrapper

    return decorate


class _Hold:
    """Holds a session that has no actor while the expiry task expires it."""

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped: trio.Event | None = trio.Event()

    def release(self) -> None:
        assert self.stopped is not None
        self.stopped.set()


class _ExpiryReply(Reply):
    """The answer to the expiry task's Expire: nobody waits, the id leaves `expiring`."""

    __slots__ = ("_expiring", "_session_id")

    def __init__(self, expiring: dict[UUID, float], session_id: UUID) -> None:
        super().__init__()
        self._expiring = expiring
        self._session_id = session_id

    def settle(self, value: Any, error: BaseException | None = None) -> None:
        self._expiring.pop(self._session_id, None)


class Subscription:
    """A stream of `SessionEvent`s from `SessionRuntime.subscribe()`.

    Iterate it with `async for`. Its buffer is bounded: when it is full, new
    events are dropped for this subscriber and counted in `dropped`, so a
    slow subscriber never stalls the runtime. The stream ends when the
    runtime closes.
    """

    def __init__(self, buffer: int) -> None:
        self._send, self._receive = trio.open_memory_channel[SessionEvent](buffer)
        #: Events this subscriber missed because its buffer was full.
        self.dropped = 0

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SessionEvent:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> SessionEvent:
        """The next event; raises `trio.EndOfChannel` once the runtime has closed."""
        return await self._receive.receive()

    def _offer(self, event: SessionEvent) -> bool:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            return False
        except trio.ClosedResourceError:
            pass
        return True


class SessionRuntime:
    """The session manager. Get one from `open_runtime()`; do not construct it directly.

    Every method that takes a session id accepts a `UUID` or its string form.
    Mutating methods take `durable`: with `durable=True` they return only after
    the change is committed to the store; otherwise they return once the
    session's actor has applied the change and handed it to the write-behind,
    which commits it within `flush_interval`.
    """

    def __init__(self, store: Store, config: RuntimeConfig) -> None:
        self.store = store
        self.config = config
        self.counters = Counters()
        self.clock = Clock()
        self.deadlines = DeadlineQueue()
        # Jitter comes from a generator of our own, seeded from the global one:
        # Hypothesis's st.random_module() seeds that, so a test run replays.
        self.writebehind = WriteBehind(store, config, self.counters, random.Random(random.getrandbits(64)))
        self._nursery: trio.Nursery  # the supervisor nursery, from _start()
        self._actors: OrderedDict[UUID, SessionActor] = OrderedDict()
        # Actors stopping, and holds of the expiry task: a new actor for one of
        # these sessions waits for it to finish first.
        self._retiring: dict[UUID, SessionActor | _Hold] = {}
        self._running = 0
        self._all_stopped = trio.lowlevel.ParkingLot()
        # A dict, not a set: events reach subscribers in the order they subscribed.
        self._subscribers: dict[Subscription, None] = {}
        self._expiring: dict[UUID, float] = {}  # sent by the expiry task, not yet answered
        # Due sessions without an actor, held, waiting for the expiry task's next store read.
        self._held: dict[UUID, tuple[_Hold, float]] = {}
        self._held_ready = trio.Event()
        self._background = trio.CancelScope()
        self._closed = False

    # -------------------------------------------------------------- lifecycle

    async def _load_deadlines(self) -> None:
        """Queue every live session of the store (those already due expire at once)."""
        live = await self.read_store(self.store.live_deadlines)  # by deadline: the bulk sort is cheap
        to_trio = self.clock.timestamp_to_trio
        self.deadlines.extend((session_id, to_trio(expires_at)) for session_id, expires_at in live)

    async def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        await nursery.start(self.writebehind.run)
        nursery.start_soon(self._run_background)

    async def _run_background(self) -> None:
        with self._background:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire_forever)
                nursery.start_soon(self._passivate_idle_forever)

    async def _shutdown(self, *, flush: bool) -> None:
        """Stop taking calls, let actors finish their mailboxes, flush, close subscribers.

        Runs shielded, within `shutdown_timeout`. Raises `StoreUnavailable` if
        acknowledged writes could not be committed in that time. With
        `flush=False` (one of the runtime's own tasks failed, so the flusher
        may be gone) it only closes.
        """
        self._closed = True
        self._background.cancel()
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.config.shutdown_timeout
            for actor in list(self._actors.values()):
                self.retire(actor)
            if flush:
                while self._running:
                    await self._all_stopped.park()
                await self.writebehind.flush()
        for subscription in self._subscribers:
            subscription._send.close()
        if scope.cancelled_caught:
            lost = self.writebehind.size
            raise StoreUnavailable(
                f"could not flush within shutdown_timeout={self.config.shutdown_timeout}s; "
                f"{lost} acknowledged writes were not committed")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeClosed("the runtime is closed; call it inside `async with open_runtime()`")

    # ------------------------------------------------ the actors' supervisor

    def publish(self, kind: str, session: Session) -> None:
        if not self._subscribers:
            return
        event = SessionEvent(kind, session)  # type: ignore[arg-type]
        for subscription in self._subscribers:
            if not subscription._offer(event):
                self.counters.events_dropped += 1

    def retire(self, actor: SessionActor) -> None:
        """Stop an actor: it takes no more commands; a busy one first applies those queued."""
        if actor.retired:
            return
        actor.retired = True
        if self._actors.get(actor.id) is actor:
            del self._actors[actor.id]
        if actor.busy:
            actor.stopped = trio.Event()
            self._retiring[actor.id] = actor
        actor.wake_posters()

    def start_task(self, actor: SessionActor) -> None:
        self._running += 1
        self._nursery.start_soon(actor.run, name=f"trio_sessions.actor {actor.id}")

    def task_done(self, actor: SessionActor) -> None:
        if actor.session is None:  # cancelled while loading: a new actor must load afresh
            self.retire(actor)
        if actor.stopped is not None:
            actor.stopped.set()
            if self._retiring.get(actor.id) is actor:
                del self._retiring[actor.id]
        self._running -= 1
        if not self._running:
            self._all_stopped.unpark_all()

    async def read_store(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call a store read, retrying `StoreUnavailable` up to `read_attempts` times."""
        delay = self.config.retry_initial_delay
        for attempt in range(1, self.config.read_attempts + 1):
            try:
                return await fn(*args, **kwargs)
            except StoreUnavailable:
                self.counters.store_errors += 1
                if attempt == self.config.read_attempts:
                    raise
                self.counters.retries += 1
                await trio.sleep(self.writebehind._rng.uniform(delay / 2, delay))
                delay = min(delay * 2, self.config.retry_max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---------------------------------------------------------------- routing

    def _activate(self, session_id: UUID, *, recently_used: bool = True) -> SessionActor:
        while len(self._actors) >= self.config.max_resident:
            self.counters.passivations += 1
            self.retire(next(iter(self._actors.values())))
        actor = SessionActor(session_id, self, self._retiring.get(session_id), trio.current_time())
        self._actors[session_id] = actor
        if not recently_used:  # an actor started only to expire goes first when room is needed
            self._actors.move_to_end(session_id, last=False)
        return actor  # its task starts with the first command posted (it loads first)

    async def _call(self, session_id: UUID, command: Command) -> Any:
        """Send a command to the session's actor (activating it) and wait for the answer.

        With `call_timeout` set, a command not applied in time is abandoned and
        the call raises `Overloaded`; the commit wait of `durable=True` is not
        part of that time.
        """
        self._check_open()
        actor = self._actors.get(session_id)
        if actor is not None and actor.idle():
            # Fast path: nothing is queued for this session, so the caller may
            # apply its command itself (SessionActor.apply), sparing two task
            # switches and the mailbox. It re-checks after its checkpoint.
            await trio.lowlevel.checkpoint()
            self._check_open()
            # Still idle means still resident: an actor leaves `_actors` only
            # by retiring, and a session has one actor that has not retired.
            if actor.idle() and (type(command) not in MUTATING or self.writebehind.has_room()):
                self._actors.move_to_end(session_id)
                actor.last_used = now = trio.current_time()
                value, waiter = actor.apply(command, now)
                if waiter is not None:
                    await waiter.wait()
                return value
        reply = Reply()
        timeout = self.config.call_timeout
        if timeout is None:
            await self._deliver(session_id, command, reply)
            value = await reply.wait()
        else:
            with trio.move_on_after(timeout) as scope:
                await self._deliver(session_id, command, reply)
                value = await reply.wait()
            if scope.cancelled_caught:
                raise Overloaded(f"{type(command).__name__} not applied within call_timeout={timeout}s")
        if reply.waiter is not None:
            await reply.waiter.wait()
        return value

    async def _deliver(self, session_id: UUID, command: Command, reply: Reply) -> None:
        while True:
            actor = self._actors.get(session_id)
            if actor is None:
                actor = self._activate(session_id)
            else:
                self._actors.move_to_end(session_id)
                actor.last_used = trio.current_time()
            if await actor.post(command, reply):
                return
            self._check_open()

    async def _send_expire(self, session_id: UUID, deadline: float, reply: Reply) -> None:
        while True:
            actor = self._actors.get(session_id)
            if actor is None:
                actor = self._activate(session_id, recently_used=False)
            if await actor.post(Expire(deadline), reply):
                return

    async def _expire_forever(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_held_forever)
            while True:
                due = await self.deadlines.wait_due()
                resident, held = self._split_resident(due)
                for session_id, deadline in resident:
                    actor = self._actors.get(session_id)
                    if actor is not None and actor.idle() and self.writebehind.has_room():
                        # Nothing queued for it: expire it here, as a caller's
                        # fast path would (no mailbox, no task switch, no reply).
                        actor.apply(Expire(deadline), self.clock.now())
                        continue
                    # Not awaited (one slow session must not hold up the rest), but
                    # tracked until the actor has answered, for cleanup_old_sessions.
                    self._expiring[session_id] = deadline
                    await self._send_expire(session_id, deadline, _ExpiryReply(self._expiring, session_id))
                if held:
                    self._held.update(held)
                    self._held_ready.set()

    async def _expire_held_forever(self) -> None:
        """Expire the held sessions (due, no actor), one store read at a time.

        Sessions falling due while a read is in flight wait for the next, so
        at 10,000 expiries a second the reads stay few and large instead of
        crowding the pool with one small read per due batch (benchmarks/s5).
        """
        try:
            while True:
                while not self._held:
                    self._held_ready = trio.Event()
                    await self._held_ready.wait()
                batch = dict(islice(self._held.items(), self.config.flush_batch))
                for session_id in batch:
                    del self._held[session_id]
                await self._expire_without_actors(batch)
        finally:
            self._release(self._held)
            self._held.clear()

    def _split_resident(self, due: list[tuple[UUID, float]]) -> tuple[
            list[tuple[UUID, float]], dict[UUID, tuple[_Hold, float]]]:
        """Due sessions with an actor (or one stopping), and holds on all the others."""
        resident = []
        held = {}
        for session_id, deadline in due:
            if session_id in self._actors or session_id in self._retiring:
                resident.append((session_id, deadline))
            else:
                hold = _Hold()
                self._retiring[session_id] = hold  # an actor started meanwhile waits for it
                self._expiring[session_id] = deadline
                held[session_id] = (hold, deadline)
        return resident, held

    async def _expire_without_actors(self, held: dict[UUID, tuple[_Hold, float]]) -> tuple[int, int]:
        """Expire sessions that have no actor, reading them all in one store query.

        Starting an actor per session would cost a task, a store round trip
        and, with max_resident reached, the eviction of a live actor that will
        need loading again (benchmarks/s5). Each session is held (an actor
        started for it waits) until its expiry is recorded. Returns (expired,
        could not be read); the latter are deferred and retried.
        """
        expired_count = failed = 0
        try:
            rows: dict[UUID, Session] = {}
            to_load = []
            for session_id in held:
                row, deleted, _ = self.writebehind.lookup(session_id)
                if row is not None:
                    rows[session_id] = row
                elif not deleted:
                    to_load.append(session_id)
            if to_load:
                try:
                    rows.update(await self.read_store(self.store.load_sessions, to_load))
                except StoreUnavailable:
                    until = self.clock.now() + self.config.retry_max_delay
                    for session_id in to_load:
                        self.deadlines.defer(session_id, held[session_id][1], until)
                    failed = len(to_load)
            await self.writebehind.wait_for_room()
            now = self.clock.now()
            for session_id, row in rows.items():
                if not row.is_active:
                    continue
                deadline = self.clock.to_trio(row.expires_at)
                if deadline > now:  # written by another process since: not due after all
                    self.deadlines.touch(session_id, deadline)
                    continue
                session = expired_snapshot(row)
                self.writebehind.record(session)
                self.counters.expired += 1
                self.publish("expired", session)
                expired_count += 1
        finally:
            self._release(held)
        return expired_count, failed

    def _release(self, held: Mapping[UUID, tuple[_Hold, float]]) -> None:
        """Let actors started for these sessions go on; they are no longer being expired."""
        for session_id, (hold, _) in held.items():
            hold.release()
            if self._retiring.get(session_id) is hold:
                del self._retiring[session_id]
            self._expiring.pop(session_id, None)

    async def _passivate_idle_forever(self) -> None:
        idle = self.config.passivate_after
        while True:
            if not self._actors:
                await trio.sleep(idle)
                continue
            oldest = next(iter(self._actors.values()))
            due = oldest.last_used + idle
            if due <= trio.current_time():
                self.counters.passivations += 1
                self.retire(oldest)
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep_until(due)

    # ------------------------------------------------------------ public API

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
        """
        timeout_s = self.config.session_timeout if timeout is None else model.check_seconds(
            "timeout", timeout, high=model.MAX_TIMEOUT)
        fields: dict[str, Any] = dict(
            user_id=model.check_text("user_id", user_id, max_chars=model.MAX_ID_CHARS),
            agent=model.check_text("agent", agent, max_chars=model.MAX_NAME_CHARS),
            chat_id=model.check_optional_text("chat_id", chat_id, max_chars=model.MAX_ID_CHARS),
            title=model.check_optional_text("title", title, max_chars=model.MAX_TITLE_CHARS),
            state=model.check_text("state", state, max_chars=model.MAX_NAME_CHARS),
            metadata=model.check_metadata(metadata),
        )
        model.check_bool("durable", durable)
        self._check_open()
        await trio.lowlevel.checkpoint()
        if not self.writebehind.has_room():
            timeout = self.config.call_timeout
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self.writebehind.wait_for_room()
            if not self.writebehind.has_room():
                raise Overloaded(f"create not applied within call_timeout={timeout}s")
        self._check_open()
        # From here to the record there is no checkpoint: the creation is atomic.
        now = self.clock.now()
        wall = self.clock.to_wall(now)
        deadline, expires_at = self.clock.deadline_after(wall, timeout_s)
        session = Session(
            id=uuid.uuid4(), notes=(), is_active=True, message_count=0, created_at=wall,
            updated_at=wall, last_activity=wall, expires_at=expires_at,
            ended_at=None, end_reason=None, version=1, timeout=timeout_s, **fields)
        self.writebehind.record(session)
        self.deadlines.push(session.id, deadline)
        self.publish("created", session)
        if durable:
            waiter = self.writebehind.durable_waiter(session.id)
            assert waiter is not None  # just recorded
            await waiter.wait()
        return session

    @_measured("get")
    async def get(self, session_id: UUID | str, *, user_id: str | None = None) -> Session:
        """The session's latest snapshot.

        Args:
            user_id: when given, the session must belong to this user.

        Raises:
            SessionNotFound: no such session, or it belongs to another user.
        """
        sid = model.check_session_id(session_id)
        if user_id is not None:
            model.check_text("user_id", user_id, max_chars=model.MAX_ID_CHARS)
        self._check_open()
        await trio.lowlevel.checkpoint()
        actor = self._actors.get(sid)
        # A resident actor's published snapshot is immutable: no need to queue
        # behind writes, unless the session may be overdue and must expire first.
        session = actor.session if actor is not None else None
        if session is None or (session.is_active and actor.deadline <= trio.current_time()):  # type: ignore[union-attr]
            session = await self._call(sid, Read())
        if user_id is not None and session.user_id != user_id:
            raise SessionNotFound(sid)
        return session

    @_measured("update_last_activity")
    async def update_last_activity(self, session_id: UUID | str, *, durable: bool = False) -> Session:
        """Record activity: moves `last_activity` to now and `expires_at` to now + timeout.

        Raises:
            SessionNotFound, SessionInactive.
        """
        sid = model.check_session_id(session_id)
        return await self._call(sid, _TOUCH[model.check_bool("durable", durable)])  # type: ignore[no-any-return]

    @_measured("update")
    async def update(self, session_id: UUID | str, *, expected_version: int | None = None,
                     title: str | None = _UNSET, state: str = _UNSET, agent: str = _UNSET,
                     chat_id: str | None = _UNSET, metadata: Mapping[str, Any] = _UNSET,
                     durable: bool = False) -> Session:
        """Change some fields; only the ones passed change. Does not count as activity.

        Args:
            expected_version: when given, apply only if the session is at this version.
            title, chat_id: None clears them.
            metadata: replaces the whole mapping.

        Raises:
            VersionConflict: `expected_version` is not the current version.
            SessionNotFound, SessionInactive, InvalidArgument.
        """
        sid = model.check_session_id(session_id)
        model.check_optional_int("expected_version", expected_version, low=1, high=2**63 - 1)
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
        command = Update(expected_version, changes, model.check_bool("durable", durable))
        return await self._call(sid, command)  # type: ignore[no-any-return]

    @_measured("append_message")
    async def append_message(self, session_id: UUID | str, role: str, content: str, *,
                             durable: bool = False) -> Session:
        """Append a message (`role`: user, assistant, system or tool). Counts as activity.

        Raises:
            SessionNotFound, SessionInactive, InvalidArgument.
        """
        sid = model.check_session_id(session_id)
        command = AppendMessage(model.check_role(role),
                                model.check_content(content, max_bytes=self.config.max_content_bytes),
                                model.check_bool("durable", durable))
        return await self._call(sid, command)  # type: ignore[no-any-return]

    @_measured("context")
    async def context(self, session_id: UUID | str, *, limit: int | None = None) -> tuple[Message, ...]:
        """The newest `limit` messages (at most `max_messages`), oldest first.

        Raises:
            SessionNotFound; InvalidArgument if `limit` is not 1..max_messages.
        """
        sid = model.check_session_id(session_id)
        limit = self.config.max_messages if limit is None else model.check_int(
            "limit", limit, low=1, high=self.config.max_messages)
        return await self._call(sid, Context(limit))  # type: ignore[no-any-return]

    @_measured("add_note")
    async def add_note(self, session_id: UUID | str, text: str, *, durable: bool = False) -> Session:
        """Attach a free-text note. Does not count as activity.

        Raises:
            SessionNotFound, SessionInactive, InvalidArgument.
        """
        sid = model.check_session_id(session_id)
        command = AddNote(model.check_text("text", text, max_chars=model.MAX_NOTE_CHARS),
                          model.check_bool("durable", durable))
        return await self._call(sid, command)  # type: ignore[no-any-return]

    @_measured("end")
    async def end(self, session_id: UUID | str, *, reason: str = "ended", durable: bool = False) -> Session:
        """Soft delete: the session becomes inactive and stays readable.

        Ending an inactive session returns it unchanged.

        Raises:
            SessionNotFound, InvalidArgument.
        """
        sid = model.check_session_id(session_id)
        command = End(model.check_text("reason", reason, max_chars=model.MAX_NAME_CHARS),
                      model.check_bool("durable", durable))
        return await self._call(sid, command)  # type: ignore[no-any-return]

    @_measured("delete")
    async def delete(self, session_id: UUID | str) -> None:
        """Hard delete: the row and every message. Returns once committed.

        Raises:
            SessionNotFound.
        """
        await self._call(model.check_session_id(session_id), Delete())

    @_measured("list")
    async def list(self, *, user_id: str | None = None, agent: str | None = None,
                   chat_id: str | None = None, active: bool | None = True, limit: int = 50,
                   after: str | None = None) -> Page:
        """One page of sessions, newest first (by creation, then id); filters combine.

        The store answers after everything acknowledged so far has been
        flushed, so the page reflects every change made before the call.

        Args:
            active: True for live sessions, False for ended or expired ones, None for all.
            limit: page size, 1 to 1000.
            after: the `next_cursor` of the previous page.
        """
        query = ListQuery(
            user_id=model.check_optional_text("user_id", user_id, max_chars=model.MAX_ID_CHARS),
            agent=model.check_optional_text("agent", agent, max_chars=model.MAX_NAME_CHARS),
            chat_id=model.check_optional_text("chat_id", chat_id, max_chars=model.MAX_ID_CHARS),
            active=None if active is None else model.check_bool("active", active),
            limit=model.check_int("limit", limit, low=1, high=MAX_PAGE) + 1,
            after=None if after is None else _decode_cursor(after),
        )
        self._check_open()
        await self.writebehind.flush()
        rows = await self.read_store(self.store.list, query)
        items = tuple(rows[:limit])
        cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
        return Page(items, cursor)

    @_measured("cleanup")
    async def cleanup_old_sessions(self) -> int:
        """Expire every session that is due now; returns how many this call expired.

        Sessions whose expiry failed earlier (the store could not be read) are
        tried again at once.

        Raises:
            StoreUnavailable: some due sessions could not be read from the
                store; they stay due and are retried (call again to insist).
        """
        self._check_open()
        await trio.lowlevel.checkpoint()
        # Also those the expiry task is expiring right now: this call's command
        # queues behind the task's (or its actor waits for the task's hold), so
        # it returns only once they are done.
        due = [*self.deadlines.pop_deferred(), *self.deadlines.pop_due(trio.current_time())]
        in_flight = list(self._expiring.items())
        resident, held = self._split_resident(due)
        replies = []
        for session_id, deadline in [*resident, *in_flight]:
            reply = Reply()
            await self._send_expire(session_id, deadline, reply)
            replies.append(reply)
        expired, failed = await self._expire_without_actors(held) if held else (0, 0)
        for reply in replies:
            try:
                expired += bool(await reply.wait())
            except SessionNotFound:
                pass
            except StoreUnavailable:
                failed += 1
        if failed:
            raise StoreUnavailable(f"{failed} due sessions could not be read to expire them "
                                   f"({expired} expired); they will be retried")
        return expired

    @_measured("flush")
    async def flush(self) -> None:
        """Wait until every change acknowledged before this call is committed."""
        self._check_open()
        await self.writebehind.flush()

    @asynccontextmanager
    async def subscribe(self, *, buffer: int | None = None) -> AsyncIterator[Subscription]:
        """Receive every event (created, updated, expired, ended, deleted) from now on.

        Args:
            buffer: events held for this subscriber; `subscriber_buffer` when None.
        """
        size = self.config.subscriber_buffer if buffer is None else model.check_int(
            "buffer", buffer, low=1, high=10_000_000)
        self._check_open()
        subscription = Subscription(size)
        self._subscribers[subscription] = None
        try:
            yield subscription
        finally:
            self._subscribers.pop(subscription, None)
            subscription._send.close()
            subscription._receive.close()

    def metrics(self) -> MetricsSnapshot:
        """A snapshot of the counters. Never blocks."""
        c = self.counters
        return MetricsSnapshot(
            operations=c.operations(), resident=len(self._actors),
            live_sessions=len(self.deadlines), pending_writes=self.writebehind.size,
            flush_batches=c.flush_batches, flushed_sessions=c.flushed_sessions,
            flushed_messages=c.flushed_messages, store_errors=c.store_errors, retries=c.retries,
            rejected_rows=c.rejected_rows, expired=c.expired, passivations=c.passivations,
            events_dropped=c.events_dropped, backpressure_waits=c.backpressure_waits)


def _encode_cursor(session: Session) -> str:
    raw = f"{session.created_at.isoformat()}|{session.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_cursor(cursor: object) -> tuple[datetime, UUID]:
    if not isinstance(cursor, str) or len(cursor) > 200:
        raise InvalidArgument("after", "must be a cursor from Page.next_cursor")
    try:
        created, _, session_id = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition("|")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, UUID(session_id)
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument("after", "must be a cursor from Page.next_cursor") from None


@asynccontextmanager
async def _open_store(config: RuntimeConfig, store: Store | None) -> AsyncIterator[Store]:
    if store is None:
        from ._postgres import PostgresStore

        url = config.database_url or os.environ.get("DATABASE_URL")
        if url is None:
            from ._embedded import open_embedded_postgres

            async with open_embedded_postgres(config.resolved_data_dir()) as embedded_url:
                store = PostgresStore(embedded_url, config)
                async with store.connect():
                    yield store
            return
        store = PostgresStore(url, config)
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
    elif not isinstance(config, RuntimeConfig):
        raise InvalidArgument("config", f"must be a RuntimeConfig, not {type(config).__name__}")
    if store is not None and not isinstance(store, Store):
        raise InvalidArgument("store", f"must implement the Store protocol, not {type(store).__name__}")
    body_error: BaseException | None = None
    shutdown_error: BaseException | None = None
    async with _open_store(config, store) as opened:
        runtime = SessionRuntime(opened, config)
        await runtime._load_deadlines()  # before the nursery: a failure comes out unwrapped
        async with trio.open_nursery() as nursery:
            await runtime._start(nursery)
            try:
                yield runtime
            except BaseException as exc:  # re-raised below, outside our nurseries
                body_error = exc
            try:
                await runtime._shutdown(flush=not nursery.cancel_scope.cancel_called)
            except StoreUnavailable as exc:
                shutdown_error = exc
            nursery.cancel_scope.cancel()
    if body_error is not None:
        if shutdown_error is not None:
            logger.error("{}", shutdown_error)
        raise body_error
    if shutdown_error is not None:
        raise shutdown_error
