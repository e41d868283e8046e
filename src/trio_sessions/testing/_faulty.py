"""`FaultyStore`: any store, with the failures PostgreSQL really produces, reproducibly.

A test wraps a real store (usually a `MemoryStore`) and opens a runtime on the
wrapper. Every store call may be delayed, may fail as if the server were down
or overloaded, and a write may commit and still report failure (the commit's
outcome is unknown to the caller). The runtime must lose nothing it
acknowledged; a test checks that by comparing `.inner` with its own model
after the runtime has flushed.

Reproducibility: all randomness comes from one `random.Random(seed)` owned by
the wrapper, and every store call draws the same four numbers from it
(latency, failure roll, failure kind, unknown-commit roll) before its first
checkpoint, whatever the settings. So the fault plan is a function of the seed
and the order of calls only, and changing one knob (say `latency`) does not
reshuffle the faults the other knobs produce.
"""

from __future__ import annotations

import builtins
import math
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from uuid import UUID

import trio

from .._errors import InvalidArgument, StoreUnavailable
from .._store import Store

if TYPE_CHECKING:
    from .._model import FeedEvent, Message, Session
    from .._store import Acquired, Busy, Joined, ListQuery, WriteBatch

# What `failure_rate` injects: the transient errors PostgresStore turns into
# StoreUnavailable (`_postgres._bridge._errors.is_transient`),
# as (asyncpg exception, SQLSTATE, server or driver message).
TRANSIENT_FAULTS: Final[tuple[tuple[str, str | None, str], ...]] = (
    ("ConnectionResetError", None, "[Errno 104] Connection reset by peer"),
    ("ConnectionDoesNotExistError", "08003", "connection was closed in the middle of operation"),
    ("ConnectionFailureError", "08006", "server closed the connection unexpectedly"),
    ("AdminShutdownError", "57P01", "terminating connection due to administrator command"),
    ("TooManyConnectionsError", "53300", "sorry, too many clients already"),
    ("SerializationError", "40001", "could not serialize access due to concurrent update"),
    ("DeadlockDetectedError", "40P01", "deadlock detected"),
)


def _unknown_commit() -> StoreUnavailable:
    return StoreUnavailable(
        "PostgreSQL is unavailable: TransactionResolutionUnknownError [08007]: "
        "connection lost during COMMIT, the transaction's outcome is unknown "
        "(injected by FaultyStore: it was committed)")


@dataclass(frozen=True, slots=True)
class FaultStatistics:
    """What a `FaultyStore` has done so far; returned by `FaultyStore.statistics()`."""

    #: Calls made through the wrapper, `connect` included.
    calls: int
    #: Calls that raised an injected `StoreUnavailable` without reaching the inner store
    #: (an outage or a `failure_rate` failure).
    failures: int
    #: Changes (writes, places, acquisitions, claims, grants) that the inner store applied and
    #: that then raised `StoreUnavailable` (08007).
    unknown_commits: int


class FaultyStore:
    """A `Store` that wraps another and injects PostgreSQL's transient failures.

    Every call (`load`, `load_messages`, `load_sessions`, `live_deadlines`,
    `write`, `list`, `health_check`, and the ownership calls `register`,
    `renew`, `leave`, `acquire`, `claim`, `free_deadlines`,
    `request_handoff`, `handoff_requests`, `grant`, `drop_handoff`, the
    chat's `place`, and the feed's `read_events` and `prune_events`; not
    `wait_for_notice`) first sleeps for a latency drawn from `latency` (a
    checkpoint even when it is 0), then:

    1. inside an outage window, raises `StoreUnavailable` ("connection refused");
    2. else, with probability `failure_rate`, raises `StoreUnavailable` naming
       one of the transient errors PostgreSQL raises (`TRANSIENT_FAULTS`); the
       inner store is not called, so nothing was applied;
    3. else calls the inner store; for the calls that change data or
       ownership (`write`, `place`, `acquire`, `claim`, `grant`), with
       probability `unknown_commit_rate`, the inner call is applied and
       *then* `StoreUnavailable` (08007, transaction_resolution_unknown) is
       raised.

    `connect()` is the inner store's, except that entering it during an
    outage raises `StoreUnavailable`; it draws nothing from the generator.

    Args:
        inner: the store that keeps the data (reachable as `.inner`).
        seed: seeds the wrapper's own `random.Random`; the same seed and the
            same order of calls give the same latencies and faults.
        failure_rate: probability, 0 to 1, that a call fails before reaching
            the inner store.
        latency: `(low, high)` seconds of Trio time each call sleeps first,
            drawn uniformly.
        outages: `(start, end)` windows in Trio time (`trio.current_time()`,
            so virtual under `MockClock`): a call arriving at `start <= t < end`
            fails. `end` may be `math.inf`.
        unknown_commit_rate: probability, 0 to 1, that a change (see 3.)
            which reached the inner store reports failure anyway.

    Raises:
        InvalidArgument: naming the bad argument.
    """

    def __init__(self, inner: Store, *, seed: int = 0, failure_rate: float = 0.0,
                 latency: tuple[float, float] = (0.0, 0.0),
                 outages: Sequence[tuple[float, float]] = (),
                 unknown_commit_rate: float = 0.0) -> None:
        if not isinstance(inner, Store):
            raise InvalidArgument("inner", f"must implement the Store protocol, not {type(inner).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidArgument("seed", f"must be an integer, not {type(seed).__name__}")
        #: The wrapped store, which holds the data.
        self.inner: Final = inner
        self._seed = seed
        self._rng = random.Random(seed)
        self._failure_rate = _probability("failure_rate", failure_rate)
        self._unknown_commit_rate = _probability("unknown_commit_rate", unknown_commit_rate)
        self._latency = _latency(latency)
        self._outages = _outages(outages)
        #: Calls made through the wrapper, `connect` included.
        self.calls = 0
        #: Calls that failed without reaching the inner store (outages and `failure_rate`).
        self.failures = 0
        #: Writes applied by the inner store that then raised `StoreUnavailable`.
        self.unknown_commits = 0

    def __repr__(self) -> str:
        return (f"FaultyStore({self.inner!r}, seed={self._seed}, failure_rate={self._failure_rate}, "
                f"latency={self._latency}, outages={self._outages}, "
                f"unknown_commit_rate={self._unknown_commit_rate})")

    def statistics(self) -> FaultStatistics:
        """The counters as a frozen record. Never blocks."""
        return FaultStatistics(calls=self.calls, failures=self.failures,
                               unknown_commits=self.unknown_commits)

    def outage_at(self, when: float) -> tuple[float, float] | None:
        """The outage window covering Trio time `when`, or None."""
        for start, end in self._outages:
            if start <= when < end:
                return start, end
        return None

    # ------------------------------------------------------------ the protocol

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        self.calls += 1
        window = self.outage_at(trio.current_time())
        if window is not None:
            await trio.lowlevel.checkpoint()
            self.failures += 1
            raise _outage_error(window)
        async with self.inner.connect():
            yield

    async def load(self, session_id: UUID, *, messages: int) -> tuple[Session, tuple[Message, ...]] | None:
        await self._arrive()
        return await self.inner.load(session_id, messages=messages)

    async def load_messages(self, session_id: UUID, *, limit: int, up_to_seq: int) -> tuple[Message, ...]:
        await self._arrive()
        return await self.inner.load_messages(session_id, limit=limit, up_to_seq=up_to_seq)

    async def load_sessions(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        await self._arrive()
        return await self.inner.load_sessions(session_ids)

    async def live_deadlines(self) -> list[tuple[UUID, float]]:
        await self._arrive()
        return await self.inner.live_deadlines()

    async def write(self, batch: WriteBatch) -> tuple[UUID, ...]:
        unknown = await self._arrive()
        fenced = await self.inner.write(batch)
        self._maybe_unknown(unknown)
        return fenced

    async def place(self, row: Session, instance: UUID, epoch: int, *, created: bool,
                    event: bool = False) -> Session | UUID:
        unknown = await self._arrive()
        placed = await self.inner.place(row, instance, epoch, created=created, event=event)
        self._maybe_unknown(unknown)
        return placed

    async def register(self, instance: UUID, lease: float) -> Joined:
        await self._arrive()
        return await self.inner.register(instance, lease)

    async def renew(self, instance: UUID, lease: float, *, shared: bool = False) -> int | None:
        await self._arrive()
        return await self.inner.renew(instance, lease, shared=shared)

    async def unaware(self, instance: UUID, since: float) -> int:
        await self._arrive()
        return await self.inner.unaware(instance, since)

    async def leave(self, instance: UUID) -> None:
        await self._arrive()
        await self.inner.leave(instance)

    async def acquire(self, session_id: UUID, instance: UUID, *, messages: int) -> Acquired | Busy | None:
        unknown = await self._arrive()
        found = await self.inner.acquire(session_id, instance, messages=messages)
        self._maybe_unknown(unknown)
        return found

    async def claim(self, session_ids: Sequence[UUID], instance: UUID) -> dict[UUID, tuple[Session, int]]:
        unknown = await self._arrive()
        claimed = await self.inner.claim(session_ids, instance)
        self._maybe_unknown(unknown)
        return claimed

    async def free_deadlines(self, before: float | None = None) -> list[tuple[UUID, float]]:
        await self._arrive()
        return await self.inner.free_deadlines(before)

    async def request_handoff(self, session_id: UUID, owner: UUID, requester: UUID) -> None:
        await self._arrive()
        await self.inner.request_handoff(session_id, owner, requester)

    async def handoff_requests(self, instance: UUID) -> list[tuple[UUID, UUID]]:
        await self._arrive()
        return await self.inner.handoff_requests(instance)

    async def grant(self, session_id: UUID, instance: UUID, epoch: int, to: UUID) -> bool:
        unknown = await self._arrive()
        granted = await self.inner.grant(session_id, instance, epoch, to)
        self._maybe_unknown(unknown)
        return granted

    async def drop_handoff(self, session_id: UUID, instance: UUID) -> None:
        await self._arrive()
        await self.inner.drop_handoff(session_id, instance)

    async def wait_for_notice(self, instance: UUID) -> None:
        # Not faulted: a lost wake-up is what the callers' polling covers, and
        # a wait that fails would only be retried at once.
        await self.inner.wait_for_notice(instance)

    async def list(self, query: ListQuery) -> list[Session]:
        await self._arrive()
        return await self.inner.list(query)

    async def read_events(self, after: tuple[int, int] | None, limit: int) -> builtins.list[FeedEvent]:
        await self._arrive()
        return await self.inner.read_events(after, limit)

    async def prune_events(self, older_than: float, limit: int) -> int:
        await self._arrive()
        return await self.inner.prune_events(older_than, limit)

    async def health_check(self) -> None:
        await self._arrive()
        await self.inner.health_check()

    # ------------------------------------------------------------------ faults

    def _maybe_unknown(self, roll: float) -> None:
        """After a change was applied: report it failed, if `roll` says so."""
        if roll < self._unknown_commit_rate:
            self.unknown_commits += 1
            raise _unknown_commit()

    async def _arrive(self) -> float:
        """Draw this call's plan, sleep its latency, then fail it or let it through.

        Returns the call's unknown-commit roll (only the changes use it). The
        draws happen before the first checkpoint, so they follow call order.
        """
        self.calls += 1
        rng = self._rng
        delay = rng.uniform(*self._latency)
        failure_roll = rng.random()
        kind = TRANSIENT_FAULTS[rng.randrange(len(TRANSIENT_FAULTS))]
        unknown_roll = rng.random()
        await trio.sleep(delay)
        window = self.outage_at(trio.current_time())
        if window is not None:
            self.failures += 1
            raise _outage_error(window)
        if failure_roll < self._failure_rate:
            self.failures += 1
            name, sqlstate, text = kind
            code = f" [{sqlstate}]" if sqlstate else ""
            raise StoreUnavailable(
                f"PostgreSQL is unavailable: {name}{code}: {text} (injected by FaultyStore)")
        return unknown_roll


def _outage_error(window: tuple[float, float]) -> StoreUnavailable:
    return StoreUnavailable(
        "PostgreSQL is unavailable: ConnectionRefusedError: [Errno 111] Connect call failed "
        f"('127.0.0.1', 5432) (injected outage until t={window[1]})")


def _show(value: object) -> str:
    """A short repr for an error message (a huge int cannot be shown: say so)."""
    try:
        return f"{value!r:.60}"
    except ValueError:
        return f"a {type(value).__name__} too large to show"


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(field, f"must be a number, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidArgument(field, f"is out of range, got {_show(value)}") from None
    if math.isnan(number):
        raise InvalidArgument(field, "must be a number, got nan")
    return number


def _probability(field: str, value: object) -> float:
    probability = _number(field, value)
    if not 0.0 <= probability <= 1.0:
        raise InvalidArgument(field, f"must be a probability between 0 and 1, got {_show(value)}")
    return probability


def _pair(field: str, value: object) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise InvalidArgument(field, f"must be a pair of numbers, got {_show(value)}")
    return _number(field, value[0]), _number(field, value[1])


def _latency(value: object) -> tuple[float, float]:
    low, high = _pair("latency", value)
    if not 0.0 <= low <= high < math.inf:
        raise InvalidArgument("latency",
                              f"must be (low, high) with 0 <= low <= high < inf, got {_show(value)}")
    return low, high


def _outages(value: object) -> tuple[tuple[float, float], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgument("outages", f"must be a sequence of (start, end) pairs, got {_show(value)}")
    windows = []
    for window in value:
        start, end = _pair("outages", window)
        if not -math.inf < start < end:
            raise InvalidArgument("outages", f"each window must have finite start < end, got {_show(window)}")
        windows.append((start, end))
    return tuple(sorted(windows))
