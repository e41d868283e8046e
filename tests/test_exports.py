"""The public surface: exactly the names DESIGN.md lists, each exported once."""

from __future__ import annotations

import trio_sessions

PUBLIC = {
    "open_runtime", "SessionRuntime", "RuntimeConfig", "Session", "Message", "Note", "Page",
    "SessionEvent", "MetricsSnapshot", "Store", "MemoryStore", "PostgresStore",
    "SessionError", "SessionNotFound", "SessionInactive", "VersionConflict", "InvalidArgument",
    "RuntimeClosed", "StoreUnavailable", "Overloaded",
    # Beyond DESIGN.md: the error a durable caller gets for a refused row, the
    # per-operation record inside MetricsSnapshot, and what subscribe() yields.
    "WriteRejected", "OperationStats", "Subscription",
}


def test_all_is_exactly_the_public_names() -> None:
    assert sorted(trio_sessions.__all__) == sorted(PUBLIC)
    assert len(trio_sessions.__all__) == len(set(trio_sessions.__all__))


def test_every_public_name_is_defined_and_nothing_else_leaks() -> None:
    for name in PUBLIC:
        assert getattr(trio_sessions, name).__name__ == name
    leaked = {name for name in vars(trio_sessions)
              if not name.startswith("_") and name not in PUBLIC}
    leaked -= {"testing"}  # the subpackage, once imported
    assert leaked == set()


def test_errors_share_one_base() -> None:
    for name in ("SessionNotFound", "SessionInactive", "VersionConflict", "InvalidArgument",
                 "RuntimeClosed", "StoreUnavailable", "Overloaded", "WriteRejected"):
        assert issubclass(getattr(trio_sessions, name), trio_sessions.SessionError)
    assert issubclass(trio_sessions.InvalidArgument, ValueError)


async def test_logging_is_off_until_the_application_enables_it() -> None:
    from loguru import logger

    async def fill_the_buffer() -> None:  # passes alert_pending_fraction: logs a warning
        config = trio_sessions.RuntimeConfig(max_pending=4, alert_pending_fraction=0.5,
                                             flush_interval=60.0)
        async with trio_sessions.open_runtime(config, store=trio_sessions.MemoryStore()) as rt:
            for _ in range(3):
                await rt.create("u", "max")

    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        await fill_the_buffer()
        assert messages == []
        logger.enable("trio_sessions")
        await fill_the_buffer()
        assert any("max_pending" in m for m in messages)
    finally:
        logger.disable("trio_sessions")
        logger.remove(sink)


def test_the_testing_kit_exports_what_it_documents() -> None:
    import trio_sessions.testing as kit

    assert len(kit.__all__) == len(set(kit.__all__))
    for name in kit.__all__:
        assert hasattr(kit, name), name
    leaked = {name for name in vars(kit) if not name.startswith("_") and name not in kit.__all__}
    assert leaked == set()
    for documented in ("SessionModel", "History", "check_linearizable", "assert_linearizable",
                       "FaultyStore", "hostile_text", "session_calls", "run_workload",
                       "run_on_virtual_time"):
        assert documented in kit.__all__

