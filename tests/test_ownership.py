"""Several runtimes on one store: one owner per session, hand-offs, leases, fencing.

Two or three runtimes share one `MemoryStore` in one Trio run, on virtual
time (MockClock); `FaultyStore` cuts one of them off from the store. The
same protocol against PostgreSQL, with real processes, is in
test_processes.py.
"""

from __future__ import annotations

from uuid import UUID

import pytest
import trio
from trio.testing import MockClock

from trio_sessions import (
    MemoryStore,
    RuntimeConfig,
    SessionMoved,
    SessionRuntime,
    StoreUnavailable,
    open_runtime,
)
from trio_sessions.testing import FaultyStore

CONFIG = RuntimeConfig(flush_interval=0.2, retry_max_delay=1.0)


async def owned_by(store: MemoryStore, session_id: object) -> object:
    """The instance the store names as the session's owner (a test's view of the row)."""
    await trio.lowlevel.checkpoint()
    return store._owners[session_id][0]  # type: ignore[index]


async def test_a_session_created_in_one_runtime_is_served_by_another(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=store) as b:
        session = await a.create("u", "geral", durable=True)
        await a.append_message(session.id, "user", "oi")
        # b asks a to hand the session over; a applies what it holds, flushes, grants.
        found = await b.get(session.id)
        assert found.message_count == 1
        assert a.metrics().handoffs_granted == 1 and b.metrics().handoffs_received == 1
        assert (a.metrics().owned, b.metrics().owned) == (0, 1)
        # And back: every turn lands after the one before, whichever runtime takes it.
        for turn in range(10):
            await (a, b)[turn % 2].append_message(session.id, "user", f"m{turn}")
        messages = await a.context(session.id, limit=50)
        assert [m.content for m in messages] == ["oi", *(f"m{turn}" for turn in range(10))]
        assert [m.seq for m in messages] == list(range(1, 12))
        await a.flush()
    stored = await store.load(session.id, messages=100)
    assert stored is not None
    assert [m.content for m in stored[1]] == ["oi", *(f"m{turn}" for turn in range(10))]
    assert stored[0].message_count == 11


async def test_concurrent_writers_in_two_runtimes_lose_nothing(autojump_clock: MockClock) -> None:
    """The lost-write measurement of the issue, on virtual time: every acknowledged change lands."""
    store = MemoryStore()
    acknowledged: dict[object, list[str]] = {}
    async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=store) as b:
        sessions = [await a.create("u", "geral", durable=True) for _ in range(5)]
        for session in sessions:
            acknowledged[session.id] = []

        async def writer(runtime: SessionRuntime, name: str) -> None:
            for i in range(30):
                session = sessions[(i * 7 + len(name)) % len(sessions)]
                await runtime.append_message(session.id, "user", f"{name}{i}")
                acknowledged[session.id].append(f"{name}{i}")
                if i % 4 == 0:
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            for name in ("a", "aa", "aaa"):
                nursery.start_soon(writer, a, name)
            for name in ("b", "bb"):
                nursery.start_soon(writer, b, name)
    for session_id, sent in acknowledged.items():
        stored = await store.load(session_id, messages=1000)
        assert stored is not None
        contents = [m.content for m in stored[1]]
        assert sorted(contents) == sorted(sent)
        assert [m.seq for m in stored[1]] == list(range(1, len(sent) + 1))
        # Each writer's own messages in the order it sent them.
        for name in ("a", "aa", "aaa", "b", "bb"):
            assert [c for c in contents if c.rstrip("0123456789") == name] == [
                c for c in sent if c.rstrip("0123456789") == name]


async def test_graceful_close_frees_its_sessions_at_once(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with open_runtime(CONFIG, store=store) as b:
        async with open_runtime(CONFIG, store=store) as a:
            session = await a.create("u", "geral")
            await a.update(session.id, state="waiting")  # flushed by the close
        start = trio.current_time()
        found = await b.get(session.id)
        # No hand-off and no wait for a's lease: a left.
        assert trio.current_time() - start < 0.01
        assert found.state == "waiting"
        assert b.metrics().handoffs_requested == 0


class GrantAnswerLost(MemoryStore):
    """A MemoryStore whose first grant commits and then reports the connection lost (08007)."""

    lost = 0

    async def grant(self, session_id: UUID, instance: UUID, epoch: int, to: UUID) -> bool:
        granted = await super().grant(session_id, instance, epoch, to)
        if not self.lost:
            self.lost += 1
            raise StoreUnavailable("connection lost during COMMIT: the outcome is unknown (injected)")
        return granted


class GrantRefused(MemoryStore):
    """A MemoryStore whose first `failures` grants fail before reaching the data."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def grant(self, session_id: UUID, instance: UUID, epoch: int, to: UUID) -> bool:
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise StoreUnavailable("connection refused (injected)")
        return await super().grant(session_id, instance, epoch, to)


async def test_a_grant_whose_answer_was_lost_acknowledges_nothing_under_its_epoch(
        autojump_clock: MockClock) -> None:
    """The old owner must not take the session back from its own memory: the store decides."""
    store = GrantAnswerLost()
    async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=store) as b:
        session = await a.create("u", "geral", durable=True)
        await a.append_message(session.id, "user", "a1")
        await b.append_message(session.id, "user", "b1")  # a's grant commits; its answer is lost
        assert store.lost == 1 and await owned_by(store, session.id) == b._sup.ownership.instance
        await a.append_message(session.id, "user", "a2")  # handed back by b, not written over b's
        await b.append_message(session.id, "user", "b2")
        await a.flush()
        await b.flush()
        assert a.metrics().fenced_sessions == b.metrics().fenced_sessions == 0
    stored = await store.load(session.id, messages=10)
    assert stored is not None
    assert [m.content for m in stored[1]] == ["a1", "b1", "a2", "b2"]


async def test_an_owner_whose_grant_failed_hands_the_session_over_when_asked_again(
        autojump_clock: MockClock) -> None:
    """Every try of the grant failed: the owner forgot the session, but the store still names it."""
    store = GrantRefused(CONFIG.read_attempts)
    async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=store) as b:
        session = await a.create("u", "geral", durable=True)
        await a.append_message(session.id, "user", "a1")
        await b.append_message(session.id, "user", "b1")  # asked again at b's next poll
        assert store.failures == 0 and await owned_by(store, session.id) == b._sup.ownership.instance
        await a.append_message(session.id, "user", "a2")
        await b.flush()
        await a.flush()
    stored = await store.load(session.id, messages=10)
    assert stored is not None
    assert [m.content for m in stored[1]] == ["a1", "b1", "a2"]


async def test_a_crashed_owner_is_outlived(autojump_clock: MockClock) -> None:
    """An owner that stops answering loses the session when its lease lapses, not before."""
    store = MemoryStore()
    cut_off = FaultyStore(store, outages=[(5.0, 100.0)])
    config = CONFIG
    async with open_runtime(config, store=store) as b, open_runtime(config, store=cut_off) as a:
        session = await a.create("u", "geral", durable=True)
        await a.update(session.id, title="before", durable=True)
        await trio.sleep_until(5.0)
        start = trio.current_time()
        found = await b.get(session.id)
        # a renewed at t=4 at the latest, so its lease ran to t=14 at most.
        assert 14.0 - start - config.lease_renew_interval <= trio.current_time() - start
        assert trio.current_time() <= 14.0 + config.handoff_poll_interval
        assert found.title == "before"
        assert b.metrics().handoffs_requested == 1
        await b.update(session.id, title="after", durable=True)
        # a is cut off past its lease: whatever it acknowledged now could be lost, so
        # its callers wait for it to rejoin (bounded here by the caller's own timeout).
        assert a.metrics().lease_lapses == 1
        with trio.move_on_after(10.0) as waited:
            await a.update(session.id, title="never")
        assert waited.cancelled_caught
        await trio.sleep_until(100.0)
        assert (await a.get(session.id)).title == "after"


async def test_a_runtime_cut_off_longer_than_its_lease_is_fenced(autojump_clock: MockClock) -> None:
    """A runtime whose lease lapsed with changes unflushed: another took over, the old ones are fenced."""
    store = MemoryStore()
    cut_off = FaultyStore(store, outages=[(10.0, 40.0)])
    async with open_runtime(CONFIG, store=store) as b, open_runtime(CONFIG, store=cut_off) as a:
        session = await a.create("u", "geral", durable=True)
        await a.get(session.id)  # resident in a
        await trio.sleep_until(10.0)
        # Acknowledged while a's lease still held, never flushed: the bound of write-behind.
        await a.update(session.id, title="from a")
        async with trio.open_nursery() as nursery:
            durable_answer: list[BaseException] = []

            async def durable_call() -> None:
                with pytest.raises(StoreUnavailable) as raised:
                    await a.update(session.id, state="from-a", durable=True)
                durable_answer.append(raised.value)

            async def call_while_lapsed() -> None:
                await trio.sleep_until(22.0)
                # Waits for the rejoin, then takes the session back from b.
                await a.add_note(session.id, "waited", durable=True)
                assert trio.current_time() >= 40.0

            nursery.start_soon(durable_call)
            nursery.start_soon(call_while_lapsed)
            await trio.sleep_until(25.0)  # a's lease ran out at t<20
            assert (await b.update(session.id, title="from b", durable=True)).title == "from b"
        # The durable caller of a was never acknowledged: SessionMoved (or unavailable).
        assert len(durable_answer) == 1 and isinstance(durable_answer[0], SessionMoved)
        await trio.sleep_until(45.0)  # a is back: rejoined, its stale changes fenced
        assert a.metrics().lease_lapses == 1
        assert a.metrics().fenced_sessions >= 1
        assert (await a.get(session.id)).title == "from b"  # a hand-off from b, not a's old state
    stored = await store.load(session.id, messages=0)
    assert stored is not None and stored[0].title == "from b"
    assert [note.text for note in stored[0].notes] == ["waited"]


async def test_the_sessions_of_a_runtime_that_left_expire_in_another(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with open_runtime(CONFIG, store=store) as b:
        async with b.subscribe() as events:
            async with open_runtime(CONFIG, store=store) as a:
                session = await a.create("u", "geral", timeout=60.0)
            with trio.fail_after(120.0):
                event = await events.receive()
            assert (event.kind, event.session.id) == ("expired", session.id)
            assert trio.current_time() == pytest.approx(b.deadline(session), abs=1e-6)
    stored = await store.load(session.id, messages=0)
    assert stored is not None and stored[0].end_reason == "expired"
    assert await owned_by(store, session.id) is not None


async def test_a_hand_off_waits_for_what_the_owner_has_queued(autojump_clock: MockClock) -> None:
    """Calls queued at the owner when the request comes are applied there first, then handed over."""
    store = MemoryStore()
    async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=store) as b:
        session = await a.create("u", "geral", durable=True)
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(a.append_message, session.id, "user", f"a{i}")
            await trio.testing.wait_all_tasks_blocked()
            found = await b.append_message(session.id, "user", "b")
        assert found.message_count == 21
        assert [m.content for m in await b.context(session.id, limit=50)][-1] == "b"


async def test_a_call_made_as_a_paused_runtime_wakes_up_waits_for_the_rejoin(
        autojump_clock: MockClock) -> None:
    """A process frozen past its lease (here: its clock jumps) is called before its lease task runs."""
    store = MemoryStore()
    async with open_runtime(CONFIG, store=store) as a:
        session = await a.create("u", "geral", durable=True)
        await a.get(session.id)
        autojump_clock.jump(CONFIG.lease_duration * 2)  # no task ran meanwhile
        with trio.fail_after(CONFIG.lease_duration):
            found = await a.update(session.id, title="after the pause", durable=True)
        assert found.title == "after the pause"
        assert a.metrics().lease_lapses == 1


async def test_a_create_is_found_by_another_runtime_when_it_returns(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    slow = RuntimeConfig(flush_interval=60.0)  # only what must be flushed is flushed
    async with open_runtime(slow, store=store) as a:
        alone = await a.create("u", "geral")  # written behind: a is alone on the store
        assert await store.load(alone.id, messages=0) is None
        started = trio.current_time()
        async with open_runtime(slow, store=store) as b:
            # b acknowledged nothing until a had flushed what it created alone and said it is shared.
            assert trio.current_time() - started <= CONFIG.lease_renew_interval + 0.5
            assert (await b.get(alone.id)).id == alone.id
            for runtime, other in ((a, b), (b, a)):
                made = await runtime.create("u", "max")  # committed before it returns (with others)
                assert await store.load(made.id, messages=0) is not None
                found = await other.append_message(made.id, "user", "oi")
                assert found.message_count == 1
        await trio.sleep(CONFIG.lease_renew_interval * 2)  # a renews, alone again
        assert not a._sup.ownership.shared
        back = await a.create("u", "geral")
        assert await store.load(back.id, messages=0) is None  # written behind again


async def test_runtimes_starting_together_wait_one_renewal_at_most(autojump_clock: MockClock) -> None:
    """Six runtimes start at once: those waiting for their peers do not wait for each other."""
    store = MemoryStore()
    opened: list[float] = []
    lapses: list[int] = []

    async def one(delay: float) -> None:
        await trio.sleep(delay)
        started = trio.current_time()
        async with open_runtime(CONFIG, store=store) as rt:
            opened.append(trio.current_time() - started)
            session = await rt.create("u", "geral")
            for i in range(10):
                await rt.append_message(session.id, "user", str(i))
                await trio.sleep(0.5)
            lapses.append(rt.metrics().lease_lapses)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, 0.01 * i)
    assert max(opened) <= CONFIG.lease_renew_interval + 0.5, opened
    assert lapses == [0] * 6


async def test_a_runtime_that_waited_for_a_lapsing_peer_starts_with_a_whole_lease(
        autojump_clock: MockClock) -> None:
    """A start that waits out a peer cut off from the store renews its own lease meanwhile.

    b starts at t=1.5 while a, cut off since t=1, is still live in the store
    (until t=10), and waits for it. b's lease must then run from a renewal
    made after the wait, not from its registration before it: b never lapses.
    """
    store = MemoryStore()
    cut_off = FaultyStore(store, outages=[(1.0, 100.0)])
    async with open_runtime(CONFIG, store=cut_off) as a:
        await trio.sleep_until(1.5)
        async with open_runtime(CONFIG, store=store) as b:
            opened = trio.current_time()
            assert 10.0 <= opened <= 10.0 + CONFIG.lease_renew_interval
            session = await b.create("u", "geral")
            while trio.current_time() < opened + 3 * CONFIG.lease_duration:
                await b.append_message(session.id, "user", "oi")
                await trio.sleep(0.5)
            assert b.metrics().lease_lapses == 0
            assert a.metrics().lease_lapses == 1
