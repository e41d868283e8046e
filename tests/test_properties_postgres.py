"""The same properties on real PostgreSQL and the real clock: fewer, slower examples."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from trio_sessions import PostgresStore, RuntimeConfig, SessionEvent, open_runtime
from trio_sessions._postgres import create_database, drop_database
from trio_sessions.testing import History, run_workload

from .properties import check_runtime, collect_events, resident_watch

CONFIG = RuntimeConfig(max_resident=3, max_messages=4, max_content_bytes=300, mailbox_size=2,
                       flush_interval=0.05, flush_batch=3, passivate_after=0.5)
# A few sessions expire during a run; the rest outlive it.
TIMEOUTS = st.sampled_from([0.3, 600.0, 600.0])
PAUSES = st.sampled_from([0.0, 0.0, 0.0, 0.0, 0.05, 0.4])


@settings(max_examples=6)
@given(data=st.data(), scheduling=st.random_module())
def test_concurrent_calls_match_the_model_on_postgres(
        postgres_server_url: str, data: DataObject, scheduling: Any) -> None:
    async def main() -> None:
        name = f"p_{uuid4().hex}"
        url = await create_database(postgres_server_url, name)
        try:
            store = PostgresStore(url, CONFIG)
            async with open_runtime(CONFIG, store=store) as rt, trio.open_nursery() as nursery:
                events: list[SessionEvent] = []
                await nursery.start(collect_events, rt, events)
                history = History()
                sessions = await run_workload(rt, data, history, tasks=3, steps=8, timeouts=TIMEOUTS,
                                              pauses=PAUSES, after_call=resident_watch(rt))
                await check_runtime(rt, history, store, sessions, events)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await drop_database(postgres_server_url, name)

    trio.run(main)
