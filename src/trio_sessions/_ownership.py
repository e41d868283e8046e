"""`Ownership`: one owner per session across every runtime sharing a store.

Several runtimes (processes) may share one store; each session has at most
one live actor among all of them. The protocol, with the store as the
coordination engine:

- **A lease per runtime.** The runtime registers an instance id with a lease
  in the store's time and renews it every `lease_renew_interval`. It
  acknowledges nothing once its own deadline has passed: the monotonic time
  at which its last successful renewal was *sent*, plus the lease, minus a
  tenth of it. A lapsed lease is final: the runtime retires its actors,
  flushes what it holds (the fence decides what still lands), forgets what
  it owned and registers under a new id. Lease traffic does not grow with
  sessions.
- **A fencing token per session.** A stored session names its owner and an
  epoch that grows at every change of owner. Every write carries the epoch
  the change was applied under; the store writes a session only where owner
  and epoch still match, under the row's lock (`WriteBatch`). A fenced
  session's changes are dropped, counted and logged, its durable callers get
  `SessionMoved`, and its actor stops.
- **Acquire on activation.** An actor for a session this runtime does not own
  takes it with one compare-and-set (`Store.acquire`) when no live instance
  owns it; ownership survives passivation. A session this runtime creates is
  its own at epoch 1.
- **Hand-off on demand.** When a live instance owns it, the runtime records a
  request (`Store.request_handoff`, which also wakes the owner) and waits,
  woken by the grant or polling every `handoff_poll_interval`; an owner that
  crashed is outlived (its lease lapses, the session is free). The owner's
  hand-off task stops the session's actor (what is queued is applied first),
  flushes, and grants the session to the requester in one store call;
  a turn held on the session (`SessionRuntime.turn`) ends first.
  Beyond `handoff_timeout` the waiting call gets `Overloaded`.
- **Expiry by the owner.** A runtime's deadline queue holds the sessions it
  owns; its sweeper adds the active sessions nobody live owns, which the
  expiry engine claims (`Store.claim`) before it expires them.
- **Graceful close** marks the instance left (`Store.leave`): its sessions
  are free at once, with no write per session.
- **A create is visible everywhere when it returns.** A runtime alone on
  the store writes creates behind, like any change; once it knows of
  another live instance (from its renewal) it flushes what it created
  alone, then commits each create before returning it (`shared`), and
  says so in its next renewal. A runtime that starts while others are live
  is shared from the start and acknowledges nothing until each of them has
  renewed as shared after its start (`Store.unaware`): no create it could
  miss is still unflushed. It goes back to writing creates behind when it
  is alone again.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

import trio
from loguru import logger

from ._actor import Hold
from ._errors import Overloaded, StoreUnavailable
from ._readthrough import Loaded
from ._store import Acquired, Joined, Store

if TYPE_CHECKING:
    from ._chats import KeyedLocks
    from ._clock import Clock
    from ._config import RuntimeConfig
    from ._deadlines import DeadlineQueue
    from ._metrics import Counters
    from ._model import Session
    from ._readthrough import ReadThrough
    from ._retry import Retry
    from ._writebehind import WriteBehind


class OwnershipHost(Protocol):
    """What ownership needs from the supervisor: to stop a session's actor, or all of them."""

    clock: Clock
    deadlines: DeadlineQueue
    writebehind: WriteBehind
    reads: ReadThrough
    turns: KeyedLocks[UUID]

    async def stop_session(self, session_id: UUID, hold: Hold) -> None: ...
    def unhold(self, session_id: UUID, hold: Hold) -> None: ...
    async def stop_all(self) -> None: ...


class Ownership:
    """This runtime's lease, the sessions it owns (with their epochs), hand-offs both ways."""

    def __init__(self, store: Store, config: RuntimeConfig, counters: Counters, retry: Retry,
                 host: OwnershipHost) -> None:
        self._store = store
        self._config = config
        self._counters = counters
        self._retry = retry
        self._host = host
        #: This runtime's instance id; a new one after a lapse.
        self.instance = uuid.uuid4()
        #: The sessions this instance owns, with the epoch of each.
        self.owned: dict[UUID, int] = {}
        #: Trio time until which this runtime may acknowledge (see the module's docstring).
        self.valid_until = -math.inf
        self._validated = trio.Event()  # set (and replaced) at each registration or renewal
        self._margin = config.lease_duration / 10
        self._releasing: set[UUID] = set()
        self._sweep_now = trio.Event()  # set after a rejoin: what was ours is free, queue it
        #: Other instances are live: this one commits each create before returning it, so that
        #: any of them finds it at once (concurrent creates share a commit).
        self.shared = False
        # Shared, and what was created while alone is flushed: renewals tell the store so.
        self._announced = False

    # ------------------------------------------------------------------ lease

    def valid(self, now: float) -> bool:
        return now < self.valid_until

    async def wait_valid(self) -> None:
        """Wait until this runtime holds a valid lease (at once when it does)."""
        while not self.valid(trio.current_time()):
            await self._validated.wait()
        await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register, then renew the lease and serve hand-off requests until cancelled."""
        await self._register()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_handoffs_forever, nursery)
            nursery.start_soon(self._sweep_forever)
            task_status.started()
            await self._renew_forever()

    async def _register(self) -> None:
        """Join the store under a new instance id, then validate the lease.

        Each attempt takes a new id: one whose answer was lost may have been
        registered, and registering that id again would be refused. A runtime
        that starts among live ones waits for them (`_wait_for_peers`),
        renewing its own lease meanwhile; the lease is validated from the last
        registration or renewal sent, never from one made before a long wait.
        """
        while True:
            try:
                joined, sent = await self._retry.read(self._join)
            except StoreUnavailable:  # retried with backoff inside; nothing is acknowledged meanwhile
                await trio.lowlevel.checkpoint()
                continue
            # Shared from the start: nothing was created here while alone.
            self.shared = self._announced = joined.shared
            if joined.shared:
                renewed = await self._wait_for_peers(joined.at, sent)
                if renewed is None:  # this registration lapsed meanwhile: join again
                    continue
                sent = renewed
            self._validate(sent)
            return

    async def _join(self) -> tuple[Joined, float]:
        """One attempt at registering, under a fresh id; with the Trio time it was sent."""
        self.instance = uuid.uuid4()
        sent = trio.current_time()
        return await self._store.register(self.instance, self._config.lease_duration), sent

    async def _wait_for_peers(self, since: float, sent: float) -> float | None:
        """Wait until no live instance may hold a create unflushed that this one would miss.

        Each of them commits its creates before returning them once it knows
        it is not alone, and says so at its next renewal (`Store.unaware`):
        at most `lease_renew_interval` after this start, or never for one
        that lapses meanwhile, which stops counting at `lease_duration`.
        This instance renews its own lease every `lease_renew_interval`
        meanwhile. Returns when the last renewal (or the registration) was
        sent, or None if this instance's lease ran out first.
        """
        config = self._config
        poll = config.lease_renew_interval / 8
        while True:
            if trio.current_time() >= sent + config.lease_renew_interval:
                if trio.current_time() >= sent + config.lease_duration - self._margin:
                    await trio.lowlevel.checkpoint()
                    return None  # the store did not answer in time: this lease may have lapsed
                asked = trio.current_time()
                try:
                    peers = await self._store.renew(self.instance, config.lease_duration, shared=True)
                except StoreUnavailable as exc:
                    self._retry.last_error = str(exc)
                else:
                    if peers is None:
                        return None
                    sent = asked
                    if not peers:  # alone after all
                        self.shared = self._announced = False
                        return sent
            try:
                if not await self._retry.read(self._store.unaware, self.instance, since):
                    return sent
            except StoreUnavailable:  # retried with backoff inside: ask again
                pass
            await trio.sleep(poll)

    def _validate(self, sent: float) -> None:
        self.valid_until = sent + self._config.lease_duration - self._margin
        self._validated.set()
        self._validated = trio.Event()  # for those who find the lease lapsed later

    async def _renew_forever(self) -> None:
        config = self._config
        sent = trio.current_time()
        while True:
            await trio.sleep_until(sent + config.lease_renew_interval)
            sent = trio.current_time()
            peers: int | None = None
            answered = False
            with trio.move_on_at(self.valid_until):  # noqa: ASYNC912  renew awaits; later is too late
                try:
                    peers = await self._store.renew(self.instance, config.lease_duration,
                                                    shared=self._announced)
                    answered = True
                except StoreUnavailable as exc:
                    self._retry.last_error = str(exc)
            if peers is not None:
                self._validate(sent)
                self.shared = self.shared or bool(peers)
                if not peers:
                    self.shared = self._announced = False
                elif not self._announced and await self._flushed_alone():
                    sent -= config.lease_renew_interval  # say so at once: a new instance waits for it
            elif answered or not self.valid(trio.current_time()):
                await self._rejoin()
                sent = trio.current_time()
            else:  # the store did not answer: try again soon, while the lease still holds
                sent -= config.lease_renew_interval * 3 / 4

    async def _flushed_alone(self) -> bool:
        """Flush what was created while alone (`shared` is set: creates are committed from now on).

        True once done, after which renewals tell the store this instance is
        shared. Gives up at the lease's end (the store is down: the renewals
        must go on); the next renewal tries again.
        """
        if not self._announced:
            logger.info("instance {} is no longer alone on the store: creates are committed before "
                        "they return", self.instance)
        with trio.move_on_at(self.valid_until - self._config.lease_renew_interval):
            await self._host.writebehind.flush()
            self._announced = True
        return self._announced

    async def _rejoin(self) -> None:
        """The lease lapsed: stop, flush what still can land, forget what was owned, register anew."""
        self.valid_until = -math.inf
        self._counters.lease_lapses += 1
        logger.warning("instance {} lost its lease (paused, or cut off from the store for longer than "
                       "lease_duration={}s); stopping its actors and rejoining",
                       self.instance, self._config.lease_duration)
        await self._host.stop_all()
        await self._host.writebehind.flush()  # fenced where another instance took over
        for session_id in self.owned:
            self._host.deadlines.discard(session_id)
        self.owned.clear()
        await self._register()
        self._sweep_now.set()

    async def leave(self) -> None:
        """Graceful close: every session of this instance is free at once."""
        try:
            await self._store.leave(self.instance)
        except StoreUnavailable as exc:  # its lease will lapse instead
            logger.warning("instance {} could not mark itself left: {}", self.instance, exc)
            await trio.lowlevel.checkpoint()
        self.valid_until = -math.inf

    # ------------------------------------------------------------ acquisition

    def created(self, session_id: UUID) -> None:
        self.owned[session_id] = 1

    def lost(self, session_id: UUID) -> None:
        self.owned.pop(session_id, None)

    async def load(self, session_id: UUID, *, messages: int) -> Loaded | None:
        """Read a session to activate it, acquiring it first if another instance may own it.

        Raises:
            Overloaded: its owner did not hand it over within `handoff_timeout`.
            StoreUnavailable: the store could not be read.
        """
        if session_id in self.owned:
            return await self._host.reads.session(session_id, messages=messages)
        config = self._config
        give_up = trio.current_time() + config.handoff_timeout
        asked: UUID | None = None
        while True:
            await self.wait_valid()
            instance = self.instance
            found = await self._retry.read(self._store.acquire, session_id, instance, messages=messages)
            if found is None:
                return None
            if isinstance(found, Acquired):
                if instance != self.instance:  # rejoined meanwhile: that was the old identity's
                    continue
                self.owned[session_id] = found.epoch
                self._counters.acquisitions += 1
                if asked is not None:
                    self._counters.handoffs_received += 1
                return Loaded(found.row, found.messages, self._host.writebehind.refused_version(session_id))
            # Asked again at every poll: the owner may have dropped the request
            # (it came while the owner was between giving the session up and
            # taking it back), and the newest request wins anyway.
            await self._retry.read(self._store.request_handoff, session_id, found.owner, instance)
            if found.owner != asked:
                self._counters.handoffs_requested += 1
                asked = found.owner
            left = give_up - trio.current_time()
            if left <= 0:
                raise Overloaded(f"session {session_id} is owned by instance {found.owner}, which did not "
                                 f"hand it over within handoff_timeout={config.handoff_timeout}s")
            with trio.move_on_after(min(left, config.handoff_poll_interval)):
                await self._store.wait_for_notice(instance)

    async def claim(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        """Take those of `session_ids` (not owned here) that nobody live owns, to expire them.

        Waits for a valid lease first: a claim made under an id that is not
        registered yet would be forgotten by the rejoin.
        """
        await self.wait_valid()
        instance = self.instance
        claimed = await self._retry.read(self._store.claim, list(session_ids), instance)
        rows = {}
        if instance == self.instance:
            for session_id, (row, epoch) in claimed.items():
                self.owned[session_id] = epoch
                rows[session_id] = row
        self._counters.acquisitions += len(rows)
        return rows

    # --------------------------------------------------------------- hand-off

    async def _serve_handoffs_forever(self, nursery: trio.Nursery) -> None:
        poll = self._config.handoff_poll_interval
        while True:
            with trio.move_on_after(poll):
                await self._store.wait_for_notice(self.instance)
            if not self.valid(trio.current_time()):
                continue
            try:
                requests = await self._store.handoff_requests(self.instance)
            except StoreUnavailable:
                continue
            for session_id, requester in requests:
                if session_id not in self._releasing:
                    self._releasing.add(session_id)
                    nursery.start_soon(self._hand_off, session_id, requester)

    async def _hand_off(self, session_id: UUID, requester: UUID) -> None:
        """Stop the session here, flush it, and grant it to `requester`."""
        await trio.lowlevel.checkpoint()
        host = self._host
        hold = Hold()
        instance = self.instance
        try:
            async with host.turns.hold(session_id):  # a turn held here ends first
                await host.stop_session(session_id, hold)
                await host.writebehind.flush()
                if instance != self.instance:  # rejoined meanwhile
                    return
                epoch = self.owned.get(session_id)
                if epoch is None:
                    # Not ours here, but the store may still say it is: a
                    # grant whose answer was lost (below). It decides, and
                    # the session, held, gets no actor meanwhile.
                    found = await self._retry.read(self._store.acquire, session_id, instance, messages=0)
                    if not isinstance(found, Acquired):
                        await self._store.drop_handoff(session_id, instance)
                        return
                    epoch = found.epoch
                # A retry after a grant that committed unanswered finds the
                # session no longer ours and answers False: granted either way.
                try:
                    store = self._store
                    granted = await self._retry.read(store.grant, session_id, instance, epoch, requester)
                finally:
                    # Granted, refused, or (StoreUnavailable) perhaps granted:
                    # nothing more is acknowledged here under this epoch. A
                    # call here acquires the session again, and finds it still
                    # ours if the grant did not commit; the requester asks
                    # again, and the branch above hands it over.
                    self.owned.pop(session_id, None)
                if granted:
                    host.deadlines.discard(session_id)
                    self._counters.handoffs_granted += 1
        except StoreUnavailable as exc:
            logger.warning("could not hand session {} over (will be asked again): {}", session_id, exc)
        finally:
            host.unhold(session_id, hold)
            self._releasing.discard(session_id)

    # ---------------------------------------------------------------- sweeper

    async def _sweep_forever(self) -> None:
        """Queue, every lease period, the active sessions due soon that no live instance owns."""
        period = self._config.lease_duration
        while True:
            with trio.move_on_after(period):
                await self._sweep_now.wait()
            self._sweep_now = trio.Event()
            try:
                await self.sweep(trio.current_time() + period)
            except StoreUnavailable:
                continue

    async def sweep(self, horizon: float) -> None:
        """Queue the active sessions due before the Trio time `horizon` that no live instance owns.

        Raises:
            StoreUnavailable: the store could not be read.
        """
        host = self._host
        free = await self._store.free_deadlines(host.clock.to_wall(horizon).timestamp())
        to_trio = host.clock.timestamp_to_trio
        for session_id, expires_at in free:
            if session_id not in host.deadlines:
                host.deadlines.push(session_id, to_trio(expires_at))
