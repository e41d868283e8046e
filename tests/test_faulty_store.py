"""FaultyStore: outages, transient failures, unknown commits and latency, reproducibly.

Then the property it exists for: a runtime on a faulty store loses no
acknowledged write.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from trio_sessions import (
    InvalidArgument,
    MemoryStore,
    Message,
    RuntimeConfig,
    Session,
    SessionRuntime,
    StoreUnavailable,
    open_runtime,
)
from trio_sessions._store import Acquired, Busy, ListQuery, WriteBatch
from trio_sessions.testing import FaultStatistics, FaultyStore
from trio_sessions.testing._faulty import TRANSIENT_FAULTS

T = TypeVar("T")

WALL = datetime(2025, 1, 1, tzinfo=UTC)
EVERYTHING = ListQuery(user_id=None, agent=None, chat_id=None, active=None, limit=1000, after=None)


def _session(session_id: UUID | None = None, *, version: int = 1, messages: int = 0) -> Session:
    return Session(
        id=session_id or uuid4(), user_id="u1", agent="geral", chat_id=None, title=None, state="active",
        metadata={}, notes=(), is_active=True, message_count=messages, created_at=WALL, updated_at=WALL,
        last_activity=WALL, expires_at=WALL + timedelta(hours=1), ended_at=None, end_reason=None,
        version=version, timeout=3600.0)


def _message(seq: int) -> Message:
    return Message(seq, "user", f"m{seq}", WALL)


def _every_call(store: FaultyStore) -> list[Callable[[], Awaitable[Any]]]:
    """One of each store call: the reads, a write, and the health check."""
    session = _session()
    return [
        store.health_check,
        lambda: store.load(session.id, messages=10),
        lambda: store.load_messages(session.id, limit=10, up_to_seq=10),
        store.live_deadlines,
        lambda: store.list(EVERYTHING),
        lambda: store.write(WriteBatch((session,), ((session.id, _message(1)),), ())),
    ]


async def _outcome(call: Callable[[], Awaitable[Any]]) -> str:
    try:
        await call()
    except StoreUnavailable as exc:
        return str(exc)  # noqa: ASYNC910  the call checkpointed before it returned
    return "ok"


# ------------------------------------------------------------------- outages


async def test_outage_windows_start_and_end_exactly(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    store = FaultyStore(MemoryStore(), outages=[(t0 + 30.0, t0 + 31.0), (t0 + 10.0, t0 + 20.0)])
    # The window is [start, end): down from its first instant, up again at its end.
    for offset, down in [(0.0, False), (9.999, False), (10.0, True), (15.0, True), (19.999, True),
                         (20.0, False), (29.5, False), (30.0, True), (30.999, True), (31.0, False)]:
        await trio.sleep_until(t0 + offset)
        for call in _every_call(store):
            outcome = await _outcome(call)
            assert trio.current_time() == t0 + offset  # no latency configured
            if down:
                end = t0 + (20.0 if offset < 30 else 31.0)
                assert "ConnectionRefusedError" in outcome and "Connect call failed" in outcome
                assert f"outage until t={end}" in outcome
            else:
                assert outcome == "ok"
    assert store.statistics() == FaultStatistics(calls=60, failures=30, unknown_commits=0)
    assert store.outage_at(t0 + 10.0) == (t0 + 10.0, t0 + 20.0)
    assert store.outage_at(t0 + 20.0) is None


async def test_connect_fails_only_during_an_outage(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    store = FaultyStore(MemoryStore(), failure_rate=1.0, outages=[(t0 + 5.0, t0 + 6.0)])
    async with store.connect():  # failure_rate does not apply to connect
        pass
    await trio.sleep(5.0)
    with trio.testing.assert_checkpoints(), pytest.raises(StoreUnavailable, match="Connect call failed"):
        async with store.connect():
            pytest.fail("entered during an outage")  # pragma: no cover
    await trio.sleep(1.0)
    async with store.connect():
        pass
    assert store.statistics() == FaultStatistics(calls=3, failures=1, unknown_commits=0)


async def test_an_open_ended_outage_never_ends(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    store = FaultyStore(MemoryStore(), outages=[(t0 + 1.0, math.inf)])
    await trio.sleep(1000.0)
    with pytest.raises(StoreUnavailable, match="until t=inf"):
        await store.health_check()


# --------------------------------------------------------- transient failures


async def test_failure_rate_zero_never_fails(autojump_clock: MockClock) -> None:  # noqa: ASYNC910  every store call in the loop checkpoints
    store = FaultyStore(MemoryStore(), seed=3, failure_rate=0.0)
    for _ in range(50):
        for call in _every_call(store):
            assert await _outcome(call) == "ok"
    assert store.statistics() == FaultStatistics(calls=300, failures=0, unknown_commits=0)


async def test_failure_rate_one_always_fails_and_reaches_nothing(autojump_clock: MockClock) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, seed=3, failure_rate=1.0, unknown_commit_rate=1.0)
    seen = set()
    for _ in range(50):
        for call in _every_call(store):
            outcome = await _outcome(call)
            assert outcome != "ok" and "(injected by FaultyStore)" in outcome
            seen.add(outcome)
    assert await inner.list(EVERYTHING) == []  # a failed write applied nothing
    assert store.statistics() == FaultStatistics(calls=300, failures=300, unknown_commits=0)
    # Every transient kind PostgresStore retries shows up, with its SQLSTATE when it has one.
    for name, sqlstate, text in TRANSIENT_FAULTS:
        code = f" [{sqlstate}]" if sqlstate else ""
        assert f"PostgreSQL is unavailable: {name}{code}: {text} (injected by FaultyStore)" in seen
    assert {s for _, s, _ in TRANSIENT_FAULTS} >= {"08003", "08006", "57P01", "53300", "40001", "40P01"}


async def test_failure_rate_is_a_probability_per_call(autojump_clock: MockClock) -> None:
    store = FaultyStore(MemoryStore(), seed=11, failure_rate=0.3)
    outcomes = [await _outcome(store.health_check) for _ in range(2000)]
    failed = sum(outcome != "ok" for outcome in outcomes)
    assert 0.25 < failed / len(outcomes) < 0.35
    assert store.statistics().failures == failed


# ---------------------------------------------------------------- determinism


async def _script(store: FaultyStore) -> list[tuple[str, float]]:
    """A fixed sequence of calls: each outcome and the virtual time it took."""
    results = []
    for _ in range(40):
        for call in _every_call(store):
            started = trio.current_time()
            outcome = await _outcome(call)
            # Rounded: the same latency, added to different start times, differs in the last bits.
            results.append((outcome, round(trio.current_time() - started, 9)))
    return results  # noqa: ASYNC910  every call in the loop checkpoints


async def test_the_same_seed_gives_the_same_faults(autojump_clock: MockClock) -> None:
    def faulty(seed: int, latency: tuple[float, float] = (0.0, 0.5)) -> FaultyStore:
        return FaultyStore(MemoryStore(), seed=seed, failure_rate=0.4, unknown_commit_rate=0.3,
                           latency=latency)

    first, again = faulty(7), faulty(7)
    assert await _script(first) == await _script(again)
    assert first.statistics() == again.statistics()
    assert first.statistics().failures > 0 and first.statistics().unknown_commits > 0
    assert await _script(faulty(8)) != await _script(faulty(7))
    # Latency has its own draw in every call's plan: changing it does not move the faults.
    without_latency = [outcome for outcome, _ in await _script(faulty(7, latency=(0.0, 0.0)))]
    assert without_latency == [outcome for outcome, _ in await _script(faulty(7))]


# ------------------------------------------------------------ unknown commits


async def test_an_unknown_commit_is_committed_and_raises(autojump_clock: MockClock) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, unknown_commit_rate=1.0)
    session = _session(messages=2)
    batch = WriteBatch((session,), ((session.id, _message(1)), (session.id, _message(2))), ())
    with pytest.raises(StoreUnavailable, match=r"TransactionResolutionUnknownError \[08007\]"):
        await store.write(batch)
    assert await inner.load(session.id, messages=10) == (session, (_message(1), _message(2)))
    # What the write-behind does next: the same batch again. Harmless: the row's
    # version is not newer, and the messages are already there.
    with pytest.raises(StoreUnavailable, match="08007"):
        await store.write(batch)
    assert await inner.load(session.id, messages=10) == (session, (_message(1), _message(2)))
    # An older row after a newer one changes nothing either.
    newer = dataclasses.replace(session, version=2, title="t")
    for row in (newer, session):
        with pytest.raises(StoreUnavailable):
            await store.write(WriteBatch((row,), (), ()))
    assert await inner.load(session.id, messages=10) == (newer, (_message(1), _message(2)))
    assert store.statistics() == FaultStatistics(calls=4, failures=0, unknown_commits=4)


async def test_unknown_commits_are_for_changes_only(autojump_clock: MockClock) -> None:  # noqa: ASYNC910  every call in the loop checkpoints
    store = FaultyStore(MemoryStore(), unknown_commit_rate=1.0)
    for call in _every_call(store)[:-1]:  # all but the write
        assert await _outcome(call) == "ok"
    assert store.unknown_commits == 0


async def test_changes_of_ownership_may_commit_unanswered(autojump_clock: MockClock) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, unknown_commit_rate=1.0)
    a, b = uuid4(), uuid4()
    for instance in (a, b):
        await inner.register(instance, 60.0)
    taken, claimed = _session(), _session()
    await inner.write(WriteBatch((taken, claimed), (), ()))  # stored with no owner: free
    with pytest.raises(StoreUnavailable, match="08007"):
        await store.acquire(taken.id, a, messages=0)
    found = await inner.acquire(taken.id, a, messages=0)  # taken all the same: a's, under epoch 1
    assert isinstance(found, Acquired) and found.epoch == 1
    with pytest.raises(StoreUnavailable, match="08007"):
        await store.grant(taken.id, a, 1, b)
    assert await inner.acquire(taken.id, a, messages=0) == Busy(b)  # granted all the same
    with pytest.raises(StoreUnavailable, match="08007"):
        await store.claim([claimed.id], a)
    assert await inner.claim([claimed.id], a) == {claimed.id: (claimed, 1)}  # a's already
    assert store.unknown_commits == 3


async def test_a_failure_before_the_commit_wins_over_an_unknown_commit(autojump_clock: MockClock) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, failure_rate=1.0, unknown_commit_rate=1.0)
    session = _session()
    with pytest.raises(StoreUnavailable):
        await store.write(WriteBatch((session,), (), ()))
    assert await inner.load(session.id, messages=0) is None
    assert (store.failures, store.unknown_commits) == (1, 0)


# -------------------------------------------------------------------- latency


async def test_latency_is_virtual_time_drawn_from_the_range(autojump_clock: MockClock) -> None:
    store = FaultyStore(MemoryStore(), seed=5, latency=(1.0, 2.0))
    durations = [duration for _, duration in await _script(store)]
    assert all(1.0 <= duration <= 2.0 for duration in durations)
    assert max(durations) - min(durations) > 0.5  # drawn, not fixed


async def test_every_call_is_a_checkpoint(autojump_clock: MockClock) -> None:
    t0 = trio.current_time()
    store = FaultyStore(MemoryStore(), outages=[(t0 + 1.0, t0 + 2.0)])
    for call in _every_call(store):
        with trio.testing.assert_checkpoints():
            await call()
    await trio.sleep(1.0)
    for call in _every_call(store):  # failing calls too
        with trio.testing.assert_checkpoints(), pytest.raises(StoreUnavailable):
            await call()


async def test_cancelled_during_latency_applies_nothing(autojump_clock: MockClock) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, latency=(5.0, 5.0))
    session = _session()
    with trio.move_on_after(1.0):
        await store.write(WriteBatch((session,), (), ()))
    assert await inner.load(session.id, messages=0) is None


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"inner": object()}, "inner"),
    ({"seed": "1"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": True}, "seed"),
    ({"failure_rate": 1.5}, "failure_rate"),
    ({"failure_rate": -0.1}, "failure_rate"),
    ({"failure_rate": math.nan}, "failure_rate"),
    ({"failure_rate": "0.1"}, "failure_rate"),
    ({"failure_rate": True}, "failure_rate"),
    ({"failure_rate": 10**5000}, "failure_rate"),
    ({"unknown_commit_rate": 2}, "unknown_commit_rate"),
    ({"latency": (1.0, 0.5)}, "latency"),
    ({"latency": (-1.0, 1.0)}, "latency"),
    ({"latency": (0.0, math.inf)}, "latency"),
    ({"latency": (0.0,)}, "latency"),
    ({"latency": "ab"}, "latency"),
    ({"latency": 1.0}, "latency"),
    ({"outages": [(5.0, 5.0)]}, "outages"),
    ({"outages": [(math.nan, 1.0)]}, "outages"),
    ({"outages": [(-math.inf, 1.0)]}, "outages"),
    ({"outages": [(1.0,)]}, "outages"),
    ({"outages": (1.0, 2.0)}, "outages"),
    ({"outages": "x"}, "outages"),
    ({"outages": None}, "outages"),
])
def test_bad_arguments_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"inner": MemoryStore(), **kwargs}
    with pytest.raises(InvalidArgument) as raised:
        FaultyStore(**arguments)
    assert raised.value.field == field


def test_statistics_is_a_frozen_record() -> None:
    store = FaultyStore(MemoryStore(), outages=[(3.0, 4.0), (1.0, 2.0)])
    snapshot = store.statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.calls = 1  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(FaultStatistics)] == ["calls", "failures", "unknown_commits"]
    assert "outages=((1.0, 2.0), (3.0, 4.0))" in repr(store)


# ---------------------------------------------------- a runtime on faulty store


class _Acknowledged:
    """The model: per session, the newest snapshot the runtime answered with, and its messages."""

    def __init__(self) -> None:
        self.sessions: dict[UUID, Session] = {}
        self.messages: dict[UUID, dict[int, str]] = {}

    def saw(self, session: Session) -> Session:
        known = self.sessions.get(session.id)
        if known is None or known.version < session.version:
            self.sessions[session.id] = session
        return session

    def expected_messages(self, session_id: UUID) -> list[tuple[int, str]]:
        return sorted(self.messages.get(session_id, {}).items())


async def _until_applied(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Retry a call refused with StoreUnavailable: a read failed, nothing was applied."""
    while True:
        try:
            return await fn(*args, **kwargs)
        except StoreUnavailable:
            await trio.sleep(0.05)


async def _worker(rt: SessionRuntime, model: _Acknowledged, rng: random.Random, *,
                  sessions: int, steps: int, max_messages: int) -> None:
    """Own a few sessions (so their order of changes is known) and change them at random."""
    ids = []
    for _ in range(sessions):
        session = await rt.create(f"u{rng.randrange(3)}", rng.choice(["financeiro", "max", "geral"]),
                                  timeout=3600.0, durable=rng.random() < 0.2)
        ids.append(model.saw(session).id)
    for step in range(steps):
        session_id = rng.choice(ids)
        durable = rng.random() < 0.1
        action = rng.randrange(7)
        if action <= 1:
            role = rng.choice(["user", "assistant"])
            content = f"message {step} 😀 '; DROP TABLE sessions; --"
            session = await _until_applied(rt.append_message, session_id, role, content, durable=durable)
            model.messages.setdefault(session_id, {})[session.message_count] = content
            model.saw(session)
        elif action == 2:
            model.saw(await _until_applied(rt.update_last_activity, session_id, durable=durable))
        elif action == 3:
            model.saw(await _until_applied(rt.update, session_id, title=f"t{step}", metadata={"step": step},
                                           durable=durable))
        elif action == 4:
            model.saw(await _until_applied(rt.add_note, session_id, f"note {step}", durable=durable))
        elif action == 5:
            assert model.saw(await _until_applied(rt.get, session_id)) == model.sessions[session_id]
        else:
            context = await _until_applied(rt.context, session_id)
            seen = [(m.seq, m.content) for m in context]
            assert seen == model.expected_messages(session_id)[-max_messages:]
        await trio.sleep(rng.uniform(0.0, 0.25))
    last = rng.choice(ids)
    model.saw(await _until_applied(rt.end, last, reason="done"))


async def _assert_store_holds(inner: MemoryStore, model: _Acknowledged) -> None:  # noqa: ASYNC910  every load in the loop checkpoints
    """Every session's newest acknowledged snapshot is the stored row; messages are 1..n."""
    for session_id, acknowledged in model.sessions.items():
        loaded = await inner.load(session_id, messages=10_000)
        assert loaded is not None
        stored, messages = loaded
        assert stored == acknowledged
        assert [m.seq for m in messages] == list(range(1, acknowledged.message_count + 1))
        assert [(m.seq, m.content) for m in messages] == model.expected_messages(session_id)


# Seeds whose first three calls (the start-up read of live deadlines, alone at
# that moment, so always the same three plans) do not all fail: with
# read_attempts=3 that would fail open_runtime itself.
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
async def test_a_runtime_on_a_faulty_store_loses_no_acknowledged_write(
        autojump_clock: MockClock, seed: int) -> None:
    t0 = trio.current_time()
    inner = MemoryStore()
    store = FaultyStore(inner, seed=seed, failure_rate=0.3, unknown_commit_rate=0.1,
                        latency=(0.0, 0.02), outages=[(t0 + 3.0, t0 + 5.0)])
    # Few resident actors and quick passivation: sessions are re-activated from the
    # buffer and the store over and over, so reads fail too.
    config = RuntimeConfig(retry_initial_delay=0.01, retry_max_delay=0.5, flush_interval=0.05,
                           max_resident=3, passivate_after=0.5, max_messages=4, session_timeout=3600.0)
    model = _Acknowledged()
    async with open_runtime(config, store=store) as rt:
        async with trio.open_nursery() as nursery:
            for worker in range(4):
                nursery.start_soon(functools.partial(
                    _worker, rt, model, random.Random(f"{seed}-{worker}"),
                    sessions=3, steps=30, max_messages=config.max_messages))
        metrics = rt.metrics()
    assert trio.current_time() > t0 + 5.0, "the workload should outlast the outage"

    assert len(model.sessions) == 12
    await _assert_store_holds(inner, model)
    # Whether this run met an unknown commit depends on how many writes it made,
    # which the runtime's own retry jitter varies; the next test makes sure of it.
    assert store.statistics().failures > 0
    assert metrics.store_errors > 0 and metrics.retries > 0


async def test_a_runtime_survives_unknown_commits(autojump_clock: MockClock) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, seed=1, unknown_commit_rate=0.5)
    config = RuntimeConfig(retry_initial_delay=0.01, flush_interval=0.05, session_timeout=3600.0)
    model = _Acknowledged()
    async with open_runtime(config, store=store) as rt:
        sessions = [model.saw(await rt.create("u1", "max", durable=True)) for _ in range(3)]
        for step in range(20):  # durable: one write (at least) per call, so some are unknown
            session = sessions[step % 3]
            content = f"m{step}"
            acknowledged = await rt.append_message(session.id, "user", content, durable=True)
            model.messages.setdefault(session.id, {})[acknowledged.message_count] = content
            model.saw(acknowledged)
    await _assert_store_holds(inner, model)
    assert store.statistics().unknown_commits > 0

