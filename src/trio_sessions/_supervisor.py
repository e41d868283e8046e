"""`Supervisor`: the registry of actors, routing, passivation, and the runtime's tasks.

The supervisor owns one nursery. In it run the write-behind flusher, the
expiry engine, the idle sweeper, and the task of each actor that has work
queued. The registry maps a session id to its resident actor in
least-recently-used order; at most `max_resident` actors are registered, and
an actor not called for `passivate_after` seconds is stopped. Stopping an
actor ("retiring" it) closes its mailbox: a busy actor finishes the commands
already queued, and a new actor for the same session waits for it (or for
the expiry engine's hold) before it loads.

The public `SessionRuntime` holds one of these and calls nothing else.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, TypeVar
from uuid import UUID

import trio

from . import _transitions as transitions
from ._actor import Hold, Predecessor, SessionActor
from ._chats import Chats, KeyedLocks
from ._clock import Clock
from ._commands import Command, Read, Reply
from ._config import RuntimeConfig
from ._deadlines import DeadlineQueue
from ._errors import Overloaded, RuntimeClosed, StoreUnavailable
from ._expiry import ExpiryEngine
from ._feed import EventFeed
from ._health import Health
from ._metrics import Counters, MetricsSnapshot
from ._model import EventKind, Session
from ._ownership import Ownership
from ._readthrough import ReadThrough
from ._retry import Retry, foreign_failure
from ._store import Store
from ._subscriptions import EventHub
from ._writebehind import WriteBehind

T = TypeVar("T")


class Supervisor:
    """Runs the actors of one runtime and the tasks that serve them all."""

    def __init__(self, store: Store, config: RuntimeConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.clock = Clock()
        self.deadlines = DeadlineQueue()
        self.retry = Retry(config, self.counters, random.Random(random.getrandbits(64)))
        self.ownership = Ownership(store, config, self.counters, self.retry, self)
        self.writebehind = WriteBehind(store, config, self.counters, self.retry, self.ownership)
        self.writebehind.on_refused = self._reconcile
        self.writebehind.on_fenced = self._fenced
        self.reads = ReadThrough(store, self.writebehind, self.retry)
        self.events = EventHub(self.counters)
        self.feed = EventFeed(store, config, self.retry)
        self.expiry = ExpiryEngine(self)
        self.chats = Chats(store, self, size=config.max_resident)
        #: The turns held on sessions (`SessionRuntime.turn`); a hand-off waits for one to end.
        self.turns: KeyedLocks[UUID] = KeyedLocks()
        self._actors: OrderedDict[UUID, SessionActor] = OrderedDict()
        # Actors stopping, and the expiry engine's holds: a new actor for one of
        # these sessions waits for it to finish first.
        self._retiring: dict[UUID, Predecessor] = {}
        self._running = 0
        self._all_stopped = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery  # the supervisor nursery, from start()
        self._background = trio.CancelScope()
        self.closed = False

    # -------------------------------------------------------------- lifecycle

    async def start(self, nursery: trio.Nursery) -> None:
        """Take a lease, start the flusher, the expiry engine and the idle sweeper in `nursery`.

        Ready on return.
        """
        self._nursery = nursery
        await nursery.start(self.ownership.run)
        await nursery.start(self.writebehind.run)
        await nursery.start(self._run_background)

    async def _run_background(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                              ) -> None:
        with self._background:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.expiry.run)
                await nursery.start(self._passivate_idle_forever)
                if self.config.event_feed:
                    await nursery.start(self.feed.run)
                task_status.started()

    def stop_background(self) -> None:
        """Stop expiring and passivating (shutdown; tests that drive expiry by hand)."""
        self._background.cancel()

    async def shutdown(self, *, flush: bool) -> None:  # noqa: ASYNC910  flush=False: nothing to wait for
        """Stop taking calls, let actors finish their mailboxes, flush, end subscriptions.

        Runs shielded, within `shutdown_timeout`. Raises `StoreUnavailable` if
        acknowledged writes could not be committed in that time. With
        `flush=False` (one of the runtime's own tasks failed, so the flusher
        may be gone) it only closes.
        """
        self.closed = True
        self._background.cancel()
        with trio.CancelScope(shield=True) as scope:  # noqa: ASYNC912  shielded to finish, within a deadline
            scope.deadline = trio.current_time() + self.config.shutdown_timeout
            for actor in list(self._actors.values()):
                self.retire(actor)
            if flush:
                while self._running:
                    await self._all_stopped.park()
                await self.writebehind.flush()
                await self.ownership.leave()  # flushed: this instance's sessions are free at once
        self.events.close()
        if scope.cancelled_caught:
            raise StoreUnavailable(
                f"could not flush within shutdown_timeout={self.config.shutdown_timeout}s; "
                f"{self.writebehind.size} acknowledged writes were not committed")

    def check_open(self) -> None:
        if self.closed:
            raise RuntimeClosed("the runtime is closed; call it inside `async with open_runtime()`")

    # ------------------------------------------------- what actors call back

    def publish(self, kind: EventKind, session: Session) -> None:
        self.events.publish(kind, session)

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

    # ---------------------------------------------- what the engine calls back

    def resident(self, session_id: UUID) -> SessionActor | None:
        return self._actors.get(session_id)

    def has_actor(self, session_id: UUID) -> bool:
        """An actor is registered for the session, or one is still stopping (or held)."""
        return session_id in self._actors or session_id in self._retiring

    def hold(self, session_id: UUID, hold: Hold) -> None:
        self._retiring[session_id] = hold

    def unhold(self, session_id: UUID, hold: Hold) -> None:
        hold.release()
        if self._retiring.get(session_id) is hold:
            del self._retiring[session_id]

    def send_nowait(self, session_id: UUID, command: Command[Any], reply: Reply[Any]) -> None:
        """Queue one of the runtime's own commands, never waiting for mailbox room."""
        actor = self._actors.get(session_id)
        if actor is None:
            actor = self._activate(session_id, recently_used=False)
        queued = actor.post_nowait(command, reply)
        assert queued  # a registered actor has not retired

    async def stop_session(self, session_id: UUID, hold: Hold) -> None:
        """Stop the session's actor (after what it has queued) and hold it: no actor loads until unheld."""
        while True:
            actor = self._actors.get(session_id)
            if actor is not None:
                self.retire(actor)
            previous = self._retiring.get(session_id)
            if previous is None:
                break
            assert previous.stopped is not None
            await previous.stopped.wait()
        self._retiring[session_id] = hold
        await trio.lowlevel.checkpoint()

    async def stop_all(self) -> None:
        """Retire every actor (the lease lapsed); those still applying queued commands refuse them."""
        for actor in list(self._actors.values()):
            self.retire(actor)
        await trio.lowlevel.checkpoint()

    def _fenced(self, session_id: UUID) -> None:
        """Another instance took the session: this runtime forgets it, and stops its actor."""
        self.ownership.lost(session_id)
        self.deadlines.discard(session_id)
        actor = self._actors.get(session_id)
        if actor is not None:
            self.retire(actor)

    def _reconcile(self, session_id: UUID, refused: Session | None) -> None:
        """The database refused a session's row: tell subscribers, and reload the session.

        The resident actor (whose state holds the refused change) retires; a
        new one reads the session through the write-behind, so it answers
        with what is stored (renumbered above every version handed out) or
        with the buffered changes that came after the refused one.
        """
        if refused is not None:
            self.publish("rejected", refused)
        if self.closed:
            return
        actor = self._actors.get(session_id)
        if actor is not None:
            self.retire(actor)
        self.send_nowait(session_id, Read(), Reply[Session]())

    # ---------------------------------------------------------------- routing

    def _activate(self, session_id: UUID, *, recently_used: bool = True) -> SessionActor:
        while len(self._actors) >= self.config.max_resident:
            self.counters.passivations += 1
            self.retire(next(iter(self._actors.values())))
        actor = SessionActor(session_id, self, self._retiring.get(session_id), trio.current_time())
        self._actors[session_id] = actor
        if not recently_used:  # an actor started only for the runtime goes first when room is needed
            self._actors.move_to_end(session_id, last=False)
        return actor  # its task starts with the first command posted (it loads first)

    def adopt(self, session: Session) -> None:
        """Make a session this runtime just wrote through resident, loaded as written (no store read)."""
        if session.id in self._actors or session.id in self._retiring:
            return
        actor = self._activate(session.id)
        actor.session = session
        actor.deadline = self.clock.to_trio(session.expires_at)

    def snapshot(self, session_id: UUID) -> Session | None:
        """The resident actor's published snapshot, if a read may answer with it.

        Not when it may be overdue, nor while a change of it is being written
        through (that change is the session already, unpublished).
        """
        actor = self._actors.get(session_id)
        if actor is None:
            return None
        session = actor.session
        if session is None or actor.writing or (session.is_active and actor.deadline <= trio.current_time()):
            return None
        return session

    async def call(self, session_id: UUID, command: Command[T]) -> T:
        """Send a command to the session's actor (activating it) and wait for the answer.

        With `call_timeout` set, a command not applied in time is abandoned and
        the call raises `Overloaded`; the commit wait of a durable command is
        not part of that time. Cancelled before the command is applied, the
        command is abandoned (never applied); cancelled after, only the wait
        for its commit is given up.
        """
        self.check_open()
        actor = self._actors.get(session_id)
        if actor is not None and actor.idle() and not command.through:
            # Fast path: nothing is queued for this session, so the caller may
            # apply its command itself (SessionActor.apply), sparing two task
            # switches and the mailbox. It checks after its checkpoint; the
            # lease once, there (a lapsed one sends it the slow way, to wait).
            await trio.lowlevel.checkpoint()
            self.check_open()
            # Still idle means still resident: an actor leaves `_actors` only
            # by retiring, and a session has one actor that has not retired.
            if actor.idle() and (not command.mutating or self.writebehind.has_room()):
                now = trio.current_time()
                if self.ownership.valid(now):
                    self._actors.move_to_end(session_id)
                    actor.last_used = now
                    value, waiter = actor.apply(command, now)
                    if waiter is not None:
                        await waiter.wait()
                    return value
        reply = Reply[T]()
        timeout = self.config.call_timeout
        # No checkpoint before the delivery while the lease holds: calls queue
        # in the order they arrived.
        if timeout is None:
            if not self.ownership.valid(trio.current_time()):
                await self.ownership.wait_valid()
            await self._deliver(session_id, command, reply)
            value = await reply.wait()
        else:
            with trio.move_on_after(timeout) as scope:
                if not self.ownership.valid(trio.current_time()):
                    await self.ownership.wait_valid()
                await self._deliver(session_id, command, reply)
                value = await reply.wait()
            if scope.cancelled_caught:
                raise Overloaded(f"{type(command).__name__} not applied within call_timeout={timeout}s")
        if reply.waiter is not None:
            await reply.waiter.wait()
        return value

    async def _deliver(self, session_id: UUID, command: Command[Any], reply: Reply[Any]) -> None:
        while True:
            actor = self._actors.get(session_id)
            if actor is None:
                actor = self._activate(session_id)
            else:
                self._actors.move_to_end(session_id)
                actor.last_used = trio.current_time()
            if await actor.post(command, reply):
                return
            self.check_open()

    async def create(self, fields: Mapping[str, Any], seconds: float, durable: bool) -> Session:
        """Record a new session expiring `seconds` after its last activity.

        No actor starts: one does with the first call on the session. A
        session with a chat is written through (`Chats.create`).
        """
        if fields["chat_id"] is not None:
            key = (fields["user_id"], fields["agent"], fields["chat_id"])
            return await self.chats.create(key, fields, seconds)
        self.check_open()
        await trio.lowlevel.checkpoint()
        writebehind = self.writebehind
        ownership = self.ownership
        if not writebehind.has_room() or not ownership.valid(trio.current_time()):
            call_timeout = self.config.call_timeout
            with trio.move_on_after(math.inf if call_timeout is None else call_timeout):
                await ownership.wait_valid()
                await writebehind.wait_for_room()
            if not writebehind.has_room() or not ownership.valid(trio.current_time()):
                raise Overloaded(f"create not applied within call_timeout={call_timeout}s")
        self.check_open()
        # From here to the record there is no checkpoint: the creation is atomic.
        wall = self.clock.to_wall(self.clock.now())
        deadline, expires_at = self.clock.deadline_after(wall, seconds)
        session = transitions.created(uuid.uuid4(), fields, seconds, wall, expires_at)
        ownership.created(session.id)
        writebehind.record(session, created=True)
        self.deadlines.push(session.id, deadline)
        self.publish("created", session)
        if durable or ownership.shared:  # shared: other runtimes must find it when this returns
            waiter = writebehind.durable_waiter(session.id)
            assert waiter is not None  # just recorded
            await waiter.wait()
        return session

    async def _passivate_idle_forever(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                                      ) -> None:
        idle = self.config.passivate_after
        task_status.started()
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

    async def health(self, probe_timeout: float) -> Health:
        """Probe the store (at most `probe_timeout` seconds) and read the write-behind's state."""
        reachable = False
        with trio.move_on_after(probe_timeout):  # noqa: ASYNC912  every store call checkpoints
            try:
                await self.reads.probe()
            except StoreUnavailable:
                pass
            except AssertionError:
                raise
            except Exception as exc:  # a foreign exception: unreachable, and said so
                self.retry.last_error = str(foreign_failure(exc))
            else:
                reachable = True
        writebehind = self.writebehind
        return Health(  # noqa: ASYNC910  the probe checkpoints
            store_reachable=reachable, oldest_pending_age=writebehind.oldest_age(),
            pending_writes=writebehind.size, max_pending=self.config.max_pending,
            consecutive_flush_failures=self.retry.write_failures, last_error=self.retry.last_error)

    def metrics(self) -> MetricsSnapshot:
        c = self.counters
        return MetricsSnapshot(
            operations=c.operations(), resident=len(self._actors),
            live_sessions=len(self.deadlines), pending_writes=self.writebehind.size,
            oldest_pending_age=self.writebehind.oldest_age(), flush_batches=c.flush_batches,
            flushed_sessions=c.flushed_sessions,
            flushed_messages=c.flushed_messages, store_errors=c.store_errors, retries=c.retries,
            rejected_rows=c.rejected_rows, expired=c.expired, passivations=c.passivations,
            events_dropped=c.events_dropped, backpressure_waits=c.backpressure_waits,
            owned=len(self.ownership.owned), acquisitions=c.acquisitions,
            handoffs_requested=c.handoffs_requested, handoffs_received=c.handoffs_received,
            handoffs_granted=c.handoffs_granted, fenced_sessions=c.fenced_sessions,
            lease_lapses=c.lease_lapses)
