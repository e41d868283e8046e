"""Property-based concurrency tests on virtual time: the runtime against its model.

Hypothesis draws the calls, their arguments and (through `st.random_module()`)
Trio's scheduling, so every interleaving that fails replays and shrinks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from trio_sessions import (
    MemoryStore,
    RuntimeConfig,
    SessionEvent,
    SessionRuntime,
    StoreUnavailable,
    open_runtime,
)
from trio_sessions.testing import (
    FaultyStore,
    History,
    check_arrival_order,
    run_on_virtual_time,
    run_workload,
)

from .properties import check_runtime, check_shared_events, collect_events, resident_watch

# Small limits, so that passivation, eviction, batching, backpressure (a full
# write-behind: callers wait, and queue) and context trimming all happen within
# a few dozen calls.
CONFIG = RuntimeConfig(max_resident=3, max_messages=4, max_content_bytes=300, mailbox_size=2,
                       max_pending=6, flush_interval=0.5, flush_batch=3, passivate_after=2.0,
                       retry_initial_delay=0.05, retry_max_delay=0.5)
TIMEOUTS = st.sampled_from([1.0, 3.0, 7.5, 600.0, 600.0, 600.0])
PAUSES = st.sampled_from([0.0, 0.0, 0.0, 0.25, 1.0, 2.5, 8.0])


async def _workload_and_check(rt: SessionRuntime, data: DataObject, store: Any, *,
                              tasks: int, steps: int, after_call: Any = None) -> None:
    history = History()
    events: list[SessionEvent] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect_events, rt, events)
        watch = resident_watch(rt)

        async def hooks(call: Any, result: Any) -> None:
            await watch(call, result)
            if after_call is not None:
                await after_call(call, result)

        sessions = await run_workload(rt, data, history, tasks=tasks, steps=steps, timeouts=TIMEOUTS,
                                      pauses=PAUSES, after_call=hooks)
        await check_runtime(rt, history, store, sessions, events)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def _open_retrying(store: Any) -> AsyncIterator[SessionRuntime]:
    """open_runtime, trying again while the store fails at start (as a service would)."""
    for _ in range(20):
        stack = AsyncExitStack()
        try:
            rt = await stack.enter_async_context(open_runtime(CONFIG, store=store))
        except StoreUnavailable:
            await trio.sleep(1.0)
            continue
        async with stack:
            yield rt
        return
    raise AssertionError("the store never let the runtime start")


@given(data=st.data(), scheduling=st.random_module())
def test_concurrent_calls_match_the_model(data: DataObject, scheduling: Any) -> None:
    # A store that takes time (no faults): flushes and loads span virtual time,
    # so an actor can be busy when a deadline passes.
    store = MemoryStore()

    async def scenario(rt: SessionRuntime) -> None:
        await _workload_and_check(rt, data, store, tasks=4, steps=12)

    run_on_virtual_time(scenario, config=CONFIG, store=FaultyStore(store, latency=(0.0, 0.05)))


@given(data=st.data(), scheduling=st.random_module(), seed=st.integers(0, 2**32 - 1))
def test_faults_lose_no_acknowledged_write(data: DataObject, scheduling: Any, seed: int) -> None:
    store = FaultyStore(MemoryStore(), seed=seed, failure_rate=0.2, unknown_commit_rate=0.1,
                        latency=(0.0, 0.05), outages=[(3.0, 6.0), (20.0, 21.0)])

    # Sessions some task has asked to delete. Another task's delete may commit
    # between a durable call's return and the check below (found by Hypothesis:
    # the check's own store read is a checkpoint), and only a delete removes a
    # stored row; lost writes of those sessions are still caught at the end,
    # where the store is compared with the model.
    deleting: set[Any] = set()

    async def durable_is_committed(call: Any, result: Any) -> None:  # noqa: ASYNC910  a hook after a call
        # durable=True returns only after the commit: the store already has it.
        from trio_sessions import Session

        if getattr(call, "durable", False) is True and isinstance(result, Session):
            stored = await store.inner.load(result.id, messages=0)
            if stored is None and result.id in deleting:
                return
            assert stored is not None and stored[0].version >= result.version, (call, result)

    async def main() -> None:
        async with _open_retrying(store) as rt:
            delete = rt.delete

            async def recording_delete(session_id: Any) -> None:
                deleting.add(session_id)
                await delete(session_id)

            rt.delete = recording_delete  # type: ignore[method-assign]
            await _workload_and_check(rt, data, store.inner, tasks=3, steps=10,
                                      after_call=durable_is_committed)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@given(data=st.data(), scheduling=st.random_module(),
       stop_after=st.floats(0.0, 12.0), faulty=st.booleans())
def test_restart_at_a_random_point_keeps_every_acknowledged_change(
        data: DataObject, scheduling: Any, stop_after: float, faulty: bool) -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, seed=7, failure_rate=0.2, unknown_commit_rate=0.1) if faulty else inner

    async def main() -> None:
        history = History()  # one history across both runtimes, in one trio.run
        async with _open_retrying(store) as rt:
            with trio.move_on_after(stop_after):  # calls in flight are cancelled mid-way
                await run_workload(rt, data, history, tasks=3, steps=10, timeouts=TIMEOUTS,
                                   pauses=PAUSES)
        # In the order they were first seen (ids are random: sorting them would
        # change the workload between replays of one example).
        sessions = list(dict.fromkeys(op.session_id for op in history.operations if op.session_id))
        # The first runtime has closed and flushed; a new one starts on the same store.
        async with _open_retrying(store) as rt, trio.open_nursery() as nursery:
            events: list[SessionEvent] = []
            await nursery.start(collect_events, rt, events)
            sessions = await run_workload(rt, data, history, tasks=2, steps=6, timeouts=TIMEOUTS,
                                          pauses=PAUSES, sessions=sessions)
            await check_runtime(rt, history, inner, sessions, [])
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# A write-behind of two changes, flushed one at a time, so that callers often
# find it full, wait and queue while others arrive; mailboxes large enough that
# no caller waits to post (the order among waiting posters is the scheduler's).
ORDER_CONFIG = RuntimeConfig(max_pending=2, flush_batch=1, mailbox_size=64, max_resident=8,
                             passivate_after=1e6, flush_interval=0.5, session_timeout=1e6)


# A run costs about 15 ms and an overtaking needs two calls within one
# scheduling round, so this property gets five times the profile's examples.
@settings(max_examples=5 * settings.default.max_examples)
@given(data=st.data(), scheduling=st.random_module())
def test_calls_on_one_session_apply_in_arrival_order(data: DataObject, scheduling: Any) -> None:
    """Appends, touches and notes apply in the order they reached the runtime.

    Linearizability allows any order of overlapping calls, so it cannot see
    a caller overtaking commands already queued for the actor (the caller
    fast path applying ahead of them). `run_workload` numbers each call as
    it reaches the runtime (queued, or applied by its own caller on an idle
    actor), and `check_arrival_order` checks the versions they answered
    follow those numbers. The tasks work on one or two sessions, with the
    buffer mostly full, so callers queue behind each other, and their
    `Crowd` steps start several calls on one session at once.
    """
    store = MemoryStore()

    async def scenario(rt: SessionRuntime) -> None:
        history = History()
        sessions = await run_workload(rt, data, history, tasks=4, steps=6, hostility=0,
                                      max_deadline_wait=0, setup=2)
        check_arrival_order(history)
        await check_runtime(rt, history, store, sessions, [])

    run_on_virtual_time(scenario, config=ORDER_CONFIG, store=store)


@given(data=st.data(), scheduling=st.random_module())
def test_two_runtimes_on_one_store_match_the_model(data: DataObject, scheduling: Any) -> None:
    """The workload's calls go to either of two runtimes sharing a store, so sessions move between them.

    Each step names the runtime that makes it, as a load balancer would send
    a chat's webhooks to any worker: a call on a session the other runtime
    owns waits for its hand-off. The whole history, served by both, must be
    linearizable against the model, and the store must end as the model says.
    """
    store = MemoryStore()

    async def main() -> None:
        streams: list[list[SessionEvent]] = [[], []]
        async with trio.open_nursery() as nursery, open_runtime(CONFIG, store=store) as a, \
                open_runtime(CONFIG, store=store) as b:
            for rt, events in zip((a, b), streams, strict=True):
                await nursery.start(collect_events, rt, events)
            history = History()
            watch_a, watch_b = resident_watch(a), resident_watch(b)

            async def both(call: Any, result: Any) -> None:
                await watch_a(call, result)
                await watch_b(call, result)

            sessions = await run_workload(a, data, history, tasks=4, steps=10, timeouts=TIMEOUTS,
                                          pauses=PAUSES, after_call=both, others=[b])
            await b.cleanup_old_sessions()
            await b.flush()  # what b holds reaches the store; check_runtime flushes a
            await check_runtime(a, history, store, sessions, [])
        check_shared_events(streams)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
