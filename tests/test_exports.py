"""The public surface: exactly the names of the design contract, each exported once."""

from __future__ import annotations

import trio_sessions

PUBLIC = {
    "open_runtime", "SessionRuntime", "RuntimeConfig", "Session", "Message", "Note", "Page",
    "SessionEvent", "MetricsSnapshot", "Store", "MemoryStore", "PostgresStore",
    "SessionError", "SessionNotFound", "SessionInactive", "VersionConflict", "InvalidArgument",
    "RuntimeClosed", "StoreUnavailable", "Overloaded",
    # Beyond the contract's list: the error a durable caller gets for a refused row, the one
    # for a configuration that cannot work (a wrong URL, password or privilege), the
    # per-operation record inside MetricsSnapshot, what subscribe() yields, and
    # what the Store protocol names (so a store can be written from the public API).
    "WriteRejected", "ConfigurationError", "OperationStats", "Subscription", "WriteBatch", "ListQuery",
    "Health",
    # For several runtimes on one store: the error of a durable caller whose session another
    # runtime took over, and what the Store protocol's ownership calls return.
    "SessionMoved", "Acquired", "Busy", "ChatSessionExists", "Joined",
    # The durable event feed: a page of it, its events, and what follow_events() returns.
    "EventPage", "FeedEvent", "FollowedEvents",
    # What RuntimeConfig.database_url holds: a URL that shows itself only redacted.
    "SecretUrl",
}

STORE_METHODS = {"connect", "load", "load_messages", "load_sessions", "live_deadlines", "write", "list",
                 "health_check",
                 # ownership
                 "register", "renew", "leave", "acquire", "claim", "free_deadlines", "request_handoff",
                 "handoff_requests", "grant", "drop_handoff", "wait_for_notice", "unaware",
                 # one active session per chat
                 "place",
                 # the durable event feed
                 "read_events", "prune_events"}
#: The public members of each public class that is not a plain record: the API and nothing else
#: (as Trio's own export test checks). Records are checked by their dataclass fields.
MEMBERS = {
    "SessionRuntime": {
        "create", "get", "update_last_activity", "update", "append_message", "context", "add_note",
        "end", "delete", "list", "cleanup_old_sessions", "flush", "subscribe", "metrics", "config",
        "deadline", "health", "iter_sessions", "session_for_chat", "turn", "chat_turn",
        "read_events", "follow_events"},
    "Subscription": {"receive", "dropped"},
    "FollowedEvents": {"cursor"},
    "SecretUrl": {"of", "reveal"},
    "Store": STORE_METHODS,
    "MemoryStore": STORE_METHODS,
    "PostgresStore": STORE_METHODS,
    "WriteBatch": {"sessions", "messages", "deletes", "touched", "owner", "epochs", "created", "events",
                   "split", "only", "session_ids"},
}
#: Methods of records beyond their fields.
RECORD_METHODS = {"RuntimeConfig": {"from_env", "from_file", "resolved_data_dir"},
                  "Session": {"to_dict", "from_dict"}}


def test_all_is_exactly_the_public_names() -> None:
    assert sorted(trio_sessions.__all__) == sorted(PUBLIC)
    assert len(trio_sessions.__all__) == len(set(trio_sessions.__all__))


def test_every_public_name_is_defined_and_nothing_else_leaks() -> None:
    for name in PUBLIC:
        assert getattr(trio_sessions, name).__name__ == name
    leaked = {name for name in vars(trio_sessions)
              if not name.startswith("_") and name not in PUBLIC}
    leaked -= {"testing", "prometheus"}  # the public submodules, once imported
    assert leaked == set()


async def test_public_classes_show_their_api_and_nothing_else() -> None:
    import dataclasses

    async with trio_sessions.open_runtime(store=trio_sessions.MemoryStore()) as rt:
        async with rt.subscribe() as subscription:
            instances = {"SessionRuntime": rt, "Subscription": subscription}
            for name in PUBLIC:
                cls = getattr(trio_sessions, name)
                if not isinstance(cls, type) or issubclass(cls, BaseException):
                    continue
                # The class and, where one is at hand, an instance (attributes set in __init__).
                members = {m for m in dir(cls) if not m.startswith("_")}
                if name in instances:
                    members |= {m for m in vars(instances[name]) if not m.startswith("_")}
                if name in MEMBERS:
                    assert members == MEMBERS[name], name
                else:
                    assert dataclasses.is_dataclass(cls), f"{name}: a record, or list its members"
                    fields = {f.name for f in dataclasses.fields(cls)}
                    extra = RECORD_METHODS.get(name, set())
                    assert members == fields | extra, name


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



def test_the_prometheus_module_exports_what_it_documents() -> None:
    import trio_sessions.prometheus as prometheus

    assert sorted(prometheus.__all__) == ["RuntimeCollector", "register"]
    assert {m for m in dir(prometheus.RuntimeCollector) if not m.startswith("_")} == {"collect", "describe"}
