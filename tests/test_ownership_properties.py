"""Two runtimes on one store, one of them frozen or crashed at a drawn moment: what must survive.

Hypothesis draws the workload (each step sent to either runtime), Trio's
scheduling, and when runtime `b` is cut off from the store and for how
long: shorter than a lease (it rides it out), longer (it lapses, is
fenced and rejoins: a freeze), or for the rest of the run and beyond (a
crash, from the others' point of view, that comes back only after
everything else is over). Meanwhile `a` takes over what `b` owned.

A cut-off runtime may lose what it acknowledged and had not flushed (the
bound of write-behind), so the whole history need not be linearizable.
What must hold is what tests/test_processes.py checks with real
processes: every session's messages are numbered 1..n without a gap; every
message acknowledged with `durable=True` is stored at the seq its answer
gave it, and the stored row is the newest durable answer or a later
version; and when no runtime lapsed, every acknowledged message is (unless
its session was deleted).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from trio_sessions import MemoryStore, Session, SessionError, open_runtime
from trio_sessions.testing import FaultyStore, History, run_workload
from trio_sessions.testing._calls import AppendMessage, Delete

from .test_properties import CONFIG, PAUSES, TIMEOUTS

#: When `b` is cut off (Trio seconds after the start) and for how long: within a lease, past one
#: (a freeze: it lapses and rejoins), or until long after the workload (a crash).
OUTAGES = st.tuples(st.sampled_from([0.5, 1.0, 2.5, 4.0, 8.0]),
                    st.sampled_from([0.5, 3.0, CONFIG.lease_duration * 1.5, 200.0]))


@given(data=st.data(), scheduling=st.random_module(), outage=OUTAGES, seed=st.integers(0, 2**16))
def test_a_frozen_or_crashed_runtime_loses_no_durable_write(data: DataObject, scheduling: Any,
                                                           outage: tuple[float, float], seed: int) -> None:
    start, length = outage
    store = MemoryStore()
    cut = FaultyStore(store, seed=seed, failure_rate=0.05, unknown_commit_rate=0.05,
                      outages=[(start, start + length)])
    acked: list[tuple[UUID, int, str, bool]] = []
    deleted: set[UUID] = set()  # (their messages go with them)

    durable: dict[UUID, Session] = {}  # the newest snapshot each session's durable calls answered

    async def record(call: Any, result: Any) -> None:  # noqa: ASYNC910  a hook that only records
        if isinstance(call, AppendMessage) and isinstance(result, Session):
            acked.append((result.id, result.message_count, call.content, bool(call.durable)))
        if getattr(call, "durable", False) is True and isinstance(result, Session):
            if result.id not in durable or durable[result.id].version < result.version:
                durable[result.id] = result
        elif isinstance(call, Delete) and not isinstance(result, SessionError):
            deleted.add(call.session_id)

    async def main() -> tuple[list[UUID], int]:
        async with open_runtime(CONFIG, store=store) as a, open_runtime(CONFIG, store=cut) as b:
            # Sessions that exist from the start, made by either, so that most calls find one.
            existing = [(await rt.create(f"u{i}", "geral", timeout=600.0, durable=True)).id
                        for i, rt in enumerate((a, b, a))]
            sessions = await run_workload(a, data, History(), tasks=3, steps=8, timeouts=TIMEOUTS,
                                          pauses=PAUSES, after_call=record, others=[b], sessions=existing)
            await trio.sleep_until(max(trio.current_time(), start + length) + 1.0)  # b is back
            await b.flush()
            await a.flush()
            lapses = a.metrics().lease_lapses + b.metrics().lease_lapses
        return sessions, lapses

    sessions, lapses = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    event(f"lapsed: {bool(lapses)}, acknowledged messages: {min(len(acked), 5)}{'+' * (len(acked) >= 5)}")
    stored: dict[tuple[UUID, int], str] = {}

    async def read() -> None:  # noqa: ASYNC910  every store call checkpoints (three sessions at least)
        for session_id in sessions:
            loaded = await store.load(session_id, messages=0)
            messages = await store.load_messages(session_id, limit=10**6, up_to_seq=2**31 - 1)
            assert [m.seq for m in messages] == list(range(1, len(messages) + 1)), session_id
            if loaded is not None:
                assert loaded[0].message_count == len(messages), session_id
                # A durable answer is never undone: what is stored is it, or came after it.
                if (answered := durable.get(session_id)) is not None:
                    row = loaded[0]
                    assert row.version > answered.version or row == answered, (answered, row)
                    # ... and what only grows (notes, messages) or never comes back (an end) holds.
                    assert row.notes[:len(answered.notes)] == answered.notes, (answered, row)
                    assert row.message_count >= answered.message_count, (answered, row)
                    assert answered.is_active or row.end_reason == answered.end_reason, (answered, row)
            stored.update(((session_id, m.seq), m.content) for m in messages)

    trio.run(read)
    for session_id, seq, content, durable in acked:
        if session_id not in deleted and (durable or not lapses):
            assert stored.get((session_id, seq)) == content, (session_id, seq, content, durable, lapses)
