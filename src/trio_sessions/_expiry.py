"""`ExpiryEngine`: expires idle sessions on time, resident or not.

It sleeps on the `DeadlineQueue` until the earliest deadline, then expires
what is due. A resident session's actor expires it (`Expire`, applied at
once when the actor is idle, else queued past its mailbox's bound: the
engine never waits for one session). A session without an actor is read
from the store in bulk by a second task and expired there, without starting
an actor: at 10,000 expiries a second an actor per session would cost a task,
a store round trip and the eviction of a live actor (benchmarks/s5). While it
is being expired such a session is *held*: an actor started for it meanwhile
waits for the hold to be released before it loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import trio

from . import _transitions as transitions
from ._actor import Hold
from ._commands import Command, Expire, Reply
from ._errors import SessionNotFound, StoreUnavailable
from ._model import EventKind, Session

if TYPE_CHECKING:
    from ._actor import SessionActor
    from ._clock import Clock
    from ._config import RuntimeConfig
    from ._deadlines import DeadlineQueue
    from ._metrics import Counters
    from ._ownership import Ownership
    from ._readthrough import ReadThrough
    from ._writebehind import WriteBehind


class ExpiryHost(Protocol):
    """What the engine needs from the supervisor: its registry and its shared parts."""

    clock: Clock
    config: RuntimeConfig
    counters: Counters
    deadlines: DeadlineQueue
    writebehind: WriteBehind
    reads: ReadThrough
    ownership: Ownership

    def publish(self, kind: EventKind, session: Session) -> None: ...
    def resident(self, session_id: UUID) -> SessionActor | None: ...
    def has_actor(self, session_id: UUID) -> bool: ...
    def hold(self, session_id: UUID, hold: Hold) -> None: ...
    def unhold(self, session_id: UUID, hold: Hold) -> None: ...
    def send_nowait(self, session_id: UUID, command: Command[Any], reply: Reply[Any]) -> None: ...


class _Untracked(Reply[bool]):
    """The answer to the engine's own Expire: nobody waits; the id leaves `expiring`."""

    __slots__ = ("_expiring", "_session_id")

    def __init__(self, expiring: dict[UUID, float], session_id: UUID) -> None:
        super().__init__()
        self._expiring = expiring
        self._session_id = session_id

    def settle(self, value: bool | None, error: BaseException | None = None) -> None:
        self._expiring.pop(self._session_id, None)


class ExpiryEngine:
    """The expiry task (`run`) and `cleanup` (for `cleanup_old_sessions`)."""

    def __init__(self, host: ExpiryHost) -> None:
        self._host = host
        # Sent to an actor or held, not yet done: cleanup() waits for these too.
        self._expiring: dict[UUID, float] = {}
        # Due sessions without an actor, held, waiting for the next store read.
        self._held: dict[UUID, tuple[Hold, float]] = {}
        self._held_ready = trio.Event()
        #: Set by `open_runtime` as it hands the runtime over: nothing expires before,
        #: so a subscription made first thing in the block sees the start-up expiries.
        self.released = trio.Event()

    async def load(self) -> None:
        """Queue every live session of the store that no live runtime owns (those due expire at once)."""
        host = self._host
        live = await host.reads.free_deadlines()  # by deadline: the bulk sort is cheap
        to_trio = host.clock.timestamp_to_trio
        host.deadlines.extend((session_id, to_trio(expires_at)) for session_id, expires_at in live)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire sessions as they fall due, until cancelled."""
        host = self._host
        async with trio.open_nursery() as nursery:
            await nursery.start(self._expire_held_forever)
            task_status.started()
            await self.released.wait()
            while True:
                due = await host.deadlines.wait_due()
                resident, held = self._split_resident(due)
                for session_id, deadline in resident:
                    actor = host.resident(session_id)
                    if (actor is not None and actor.idle() and host.writebehind.has_room()
                            and host.ownership.valid(trio.current_time())):
                        # Nothing queued for it: expire it here, as a caller's
                        # fast path would (no mailbox, no task switch, no reply).
                        try:
                            actor.apply(Expire(deadline), host.clock.now())
                            continue
                        except SessionNotFound:
                            continue  # deleted meanwhile: nothing to expire
                        except StoreUnavailable:
                            # Loaded under an identity the runtime has given up
                            # since (SessionActor._admit retired it): the slow
                            # way below activates it afresh, as a caller's retry.
                            pass
                    # Not awaited (one slow session must not hold up the rest), but
                    # tracked until the actor has answered, for cleanup().
                    self._expiring[session_id] = deadline
                    host.send_nowait(session_id, Expire(deadline), _Untracked(self._expiring, session_id))
                if held:
                    self._held.update(held)
                    self._held_ready.set()

    async def cleanup(self) -> int:
        """Expire every session due now, including those being expired; how many this call expired.

        Raises:
            StoreUnavailable: some due sessions could not be read; they stay due.
        """
        host = self._host
        await trio.lowlevel.checkpoint()
        if not host.ownership.valid(trio.current_time()):
            raise StoreUnavailable("this runtime's lease on its sessions lapsed (the store was out of reach "
                                   f"for longer than lease_duration={host.config.lease_duration}s); "
                                   "it is rejoining, try again")
        # Due sessions no live runtime owns (their owner left, or lapsed since the
        # last sweep) are this call's too.
        await host.ownership.sweep(trio.current_time() + 1e-6)  # those due at this instant too
        due = [*host.deadlines.pop_deferred(), *host.deadlines.pop_due(trio.current_time())]
        # Those the task is expiring right now too: this call's command queues
        # behind the task's (or its actor waits for the task's hold), so it
        # returns only once they are done.
        in_flight = list(self._expiring.items())
        resident, held = self._split_resident(due)
        replies = []
        for session_id, deadline in [*resident, *in_flight]:
            reply = Reply[bool]()
            host.send_nowait(session_id, Expire(deadline), reply)
            replies.append(reply)
        expired, failed = await self._expire_without_actors(held) if held else (0, 0)
        for reply in replies:
            try:
                expired += await reply.wait()
            except SessionNotFound:
                pass
            except StoreUnavailable:
                failed += 1
        if failed:
            raise StoreUnavailable(f"{failed} due sessions could not be read to expire them "
                                   f"({expired} expired); they will be retried")
        return expired

    async def _expire_held_forever(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                                   ) -> None:
        """Expire the held sessions, one store read at a time.

        Sessions falling due while a read is in flight wait for the next, so
        at 10,000 expiries a second the reads stay few and large instead of
        crowding the pool with one small read per due batch (benchmarks/s5).
        """
        task_status.started()
        try:
            while True:
                while not self._held:
                    self._held_ready = trio.Event()
                    await self._held_ready.wait()
                batch = dict(islice(self._held.items(), self._host.config.flush_batch))
                for session_id in batch:
                    del self._held[session_id]
                await self._expire_without_actors(batch)
        finally:
            self._release(self._held)
            self._held.clear()

    def _split_resident(self, due: list[tuple[UUID, float]]) -> tuple[
            list[tuple[UUID, float]], dict[UUID, tuple[Hold, float]]]:
        """Due sessions with an actor (or one stopping), and holds on all the others."""
        host = self._host
        resident = []
        held = {}
        for session_id, deadline in due:
            if host.has_actor(session_id):
                resident.append((session_id, deadline))
            else:
                hold = Hold()
                host.hold(session_id, hold)  # an actor started meanwhile waits for it
                self._expiring[session_id] = deadline
                held[session_id] = (hold, deadline)
        return resident, held

    async def _expire_without_actors(self, held: dict[UUID, tuple[Hold, float]]) -> tuple[int, int]:
        """Expire held sessions, reading them all in one store query: (expired, could not be read).

        Those that could not be read are deferred and retried.
        """
        host = self._host
        expired_count = failed = 0
        try:
            owned = host.ownership.owned
            rows, unreadable = await host.reads.sessions([i for i in held if i in owned])
            free = [session_id for session_id in held if session_id not in owned]
            if free:  # queued by the sweeper (or at start): expired by whoever claims them
                try:
                    claimed = await host.ownership.claim(free)
                except StoreUnavailable:
                    unreadable = [*unreadable, *free]
                else:
                    rows.update(claimed)
                    for session_id in free:
                        if session_id not in claimed:  # a live runtime owns it: its own to expire
                            host.deadlines.discard(session_id)
            if unreadable:
                until = host.clock.now() + host.config.retry_max_delay
                for session_id in unreadable:
                    host.deadlines.defer(session_id, held[session_id][1], until)
                failed = len(unreadable)
            await host.writebehind.wait_for_room()
            now = host.clock.now()
            if not host.ownership.valid(now):  # the lease lapsed: nothing here is ours to change
                return expired_count, failed
            for session_id, row in rows.items():
                if not row.is_active:
                    continue
                refused = host.writebehind.refused_version(session_id)
                if refused >= row.version:  # stored, with newer versions refused: see Loaded
                    row = transitions.reverted(row, refused)
                deadline = host.clock.to_trio(row.expires_at)
                if deadline > now:  # written by another process since: not due after all
                    host.deadlines.touch(session_id, deadline)
                    continue
                session = transitions.expired(row)
                host.writebehind.record(session, kind="expired")
                host.counters.expired += 1
                host.publish("expired", session)
                expired_count += 1
        finally:
            self._release(held)
        return expired_count, failed

    def _release(self, held: Mapping[UUID, tuple[Hold, float]]) -> None:
        """Let actors started for these sessions go on; they are no longer being expired."""
        host = self._host
        for session_id, (hold, _) in held.items():
            host.unhold(session_id, hold)
            self._expiring.pop(session_id, None)
