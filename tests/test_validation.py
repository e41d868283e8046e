"""Every bad input raises InvalidArgument naming the field, and leaves no trace."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from trio_sessions import InvalidArgument, MemoryStore, RuntimeConfig, SessionRuntime, Store, open_runtime

StoreFactory = Callable[[], Store]
Call = Callable[[SessionRuntime, uuid.UUID], Awaitable[Any]]

NUL = "bad\x00value"


async def _enter(manager: Any) -> None:
    async with manager:
        pass
SURROGATE = "bad\ud800value"

BAD_CALLS: list[tuple[str, str, Call]] = [
    # create
    ("user_id", "empty", lambda rt, sid: rt.create("", "max")),
    ("user_id", "blank", lambda rt, sid: rt.create("   ", "max")),
    ("user_id", "too long", lambda rt, sid: rt.create("u" * 201, "max")),
    ("user_id", "NUL", lambda rt, sid: rt.create(NUL, "max")),
    ("user_id", "surrogate", lambda rt, sid: rt.create(SURROGATE, "max")),
    ("user_id", "not a string", lambda rt, sid: rt.create(42, "max")),  # type: ignore[arg-type]
    ("agent", "empty", lambda rt, sid: rt.create("u", "")),
    ("agent", "NUL", lambda rt, sid: rt.create("u", NUL)),
    ("chat_id", "empty", lambda rt, sid: rt.create("u", "max", chat_id="")),
    ("chat_id", "NUL", lambda rt, sid: rt.create("u", "max", chat_id=NUL)),
    ("title", "too long", lambda rt, sid: rt.create("u", "max", title="t" * 501)),
    ("state", "NUL", lambda rt, sid: rt.create("u", "max", state=NUL)),
    ("metadata", "not a mapping", lambda rt, sid: rt.create("u", "max", metadata=[1])),  # type: ignore[arg-type]
    ("metadata", "NaN", lambda rt, sid: rt.create("u", "max", metadata={"x": math.nan})),
    ("metadata", "Infinity", lambda rt, sid: rt.create("u", "max", metadata={"x": [math.inf]})),
    ("metadata", "int key", lambda rt, sid: rt.create("u", "max", metadata={1: "x"})),  # type: ignore[dict-item]
    ("metadata", "NUL in value", lambda rt, sid: rt.create("u", "max", metadata={"x": {"y": NUL}})),
    ("metadata", "NUL in key", lambda rt, sid: rt.create("u", "max", metadata={NUL: 1})),
    ("metadata", "a set", lambda rt, sid: rt.create("u", "max", metadata={"x": {1, 2}})),
    ("metadata", "too deep", lambda rt, sid: rt.create("u", "max", metadata=_deep(40))),
    ("metadata", "too big", lambda rt, sid: rt.create("u", "max", metadata={"x": "y" * 70_000})),
    ("timeout", "zero", lambda rt, sid: rt.create("u", "max", timeout=0)),
    ("timeout", "negative", lambda rt, sid: rt.create("u", "max", timeout=-5.0)),
    ("timeout", "NaN", lambda rt, sid: rt.create("u", "max", timeout=math.nan)),
    ("timeout", "a string", lambda rt, sid: rt.create("u", "max", timeout="60")),  # type: ignore[arg-type]
    ("durable", "not a bool", lambda rt, sid: rt.create("u", "max", durable=1)),  # type: ignore[arg-type]
    # a chat's session
    ("chat_id", "None for a chat", lambda rt, sid: rt.session_for_chat("u", "max", None)),  # type: ignore[arg-type]
    ("chat_id", "NUL chat", lambda rt, sid: rt.session_for_chat("u", "max", NUL)),
    ("user_id", "chat of nobody", lambda rt, sid: rt.session_for_chat("", "max", "c")),
    ("agent", "chat of no agent", lambda rt, sid: rt.session_for_chat("u", 7, "c")),  # type: ignore[arg-type]
    ("metadata", "chat NaN", lambda rt, sid: rt.session_for_chat("u", "max", "c", metadata={"x": math.nan})),
    ("timeout", "chat timeout", lambda rt, sid: rt.session_for_chat("u", "max", "c", timeout=0)),
    ("session_id", "turn of no UUID", lambda rt, sid: _enter(rt.turn("nope"))),
    ("user_id", "turn of NUL owner", lambda rt, sid: _enter(rt.turn(sid, user_id=NUL))),
    # session ids
    ("session_id", "not a UUID", lambda rt, sid: rt.get("not-a-uuid")),
    ("session_id", "an int", lambda rt, sid: rt.update_last_activity(12)),  # type: ignore[arg-type]
    ("session_id", "empty", lambda rt, sid: rt.append_message("", "user", "x")),
    ("user_id", "NUL owner", lambda rt, sid: rt.get(sid, user_id=NUL)),
    # messages
    ("role", "unknown role", lambda rt, sid: rt.append_message(sid, "robot", "x")),
    ("role", "not a string", lambda rt, sid: rt.append_message(sid, None, "x")),  # type: ignore[arg-type]
    ("content", "empty", lambda rt, sid: rt.append_message(sid, "user", "")),
    ("content", "NUL", lambda rt, sid: rt.append_message(sid, "user", NUL)),
    ("content", "surrogate", lambda rt, sid: rt.append_message(sid, "user", SURROGATE)),
    ("content", "too big", lambda rt, sid: rt.append_message(sid, "user", "é" * 40)),
    ("content", "bytes", lambda rt, sid: rt.append_message(sid, "user", b"x")),  # type: ignore[arg-type]
    # update, notes, end
    ("expected_version", "zero", lambda rt, sid: rt.update(sid, expected_version=0, title="x")),
    ("expected_version", "float", lambda rt, sid: rt.update(sid, expected_version=1.0, title="x")),  # type: ignore[arg-type]
    ("state", "None", lambda rt, sid: rt.update(sid, state=None)),  # type: ignore[arg-type]
    ("agent", "empty", lambda rt, sid: rt.update(sid, agent="")),
    ("metadata", "NaN", lambda rt, sid: rt.update(sid, metadata={"x": math.nan})),
    ("text", "empty note", lambda rt, sid: rt.add_note(sid, "")),
    ("text", "NUL note", lambda rt, sid: rt.add_note(sid, NUL)),
    ("reason", "empty", lambda rt, sid: rt.end(sid, reason="")),
    ("durable", "a string", lambda rt, sid: rt.end(sid, durable="yes")),  # type: ignore[arg-type]
    # reads
    ("limit", "zero", lambda rt, sid: rt.context(sid, limit=0)),
    ("limit", "over max_messages", lambda rt, sid: rt.context(sid, limit=51)),
    ("limit", "bool", lambda rt, sid: rt.context(sid, limit=True)),
    ("limit", "list zero", lambda rt, sid: rt.list(limit=0)),
    ("limit", "list too big", lambda rt, sid: rt.list(limit=1001)),
    ("limit", "list float", lambda rt, sid: rt.list(limit=2.5)),  # type: ignore[arg-type]
    ("after", "garbage cursor", lambda rt, sid: rt.list(after="%%%")),
    ("after", "forged cursor", lambda rt, sid: rt.list(after="bm90LWEtY3Vyc29y")),
    ("active", "a string", lambda rt, sid: rt.list(active="yes")),  # type: ignore[arg-type]
    ("user_id", "list NUL", lambda rt, sid: rt.list(user_id=NUL)),
    ("buffer", "zero", lambda rt, sid: _subscribe(rt, 0)),
]


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"x": value}
    return value


async def _subscribe(rt: SessionRuntime, buffer: int) -> None:
    async with rt.subscribe(buffer=buffer):
        pass


@pytest.mark.parametrize(("field", "why", "call"), BAD_CALLS, ids=[f"{f}-{w}" for f, w, _ in BAD_CALLS])
async def test_bad_input_is_rejected_before_anything_changes(
        store_factory: StoreFactory, field: str, why: str, call: Call) -> None:
    store = store_factory()
    config = RuntimeConfig(max_content_bytes=64)
    async with open_runtime(config, store=store) as rt:
        session = await rt.create("owner", "max", durable=True)
        before = rt.metrics()
        with pytest.raises(InvalidArgument) as info:
            await call(rt, session.id)
        assert info.value.field.startswith(field), info.value
        assert isinstance(info.value, ValueError)
        assert await rt.get(session.id) == session
        after = rt.metrics()
        assert (after.pending_writes, after.live_sessions) == (before.pending_writes, before.live_sessions)
        await rt.flush()
        page = await rt.list(active=None)
        assert page.items == (session,)
        assert await rt.context(session.id) == ()


async def test_deadline_of_anything_but_a_dated_snapshot_is_invalid_argument() -> None:
    # It once raised AttributeError for a non-Session, and read a naive expires_at as local time.
    async with open_runtime(store=MemoryStore()) as rt:
        session = await rt.create("u", "max")
        naive = dataclasses.replace(session, expires_at=session.expires_at.replace(tzinfo=None))
        for odd in (None, "session", str(session.id), naive, dataclasses.replace(session, expires_at="soon")):
            with pytest.raises(InvalidArgument) as info:
                rt.deadline(odd)  # type: ignore[arg-type]
            assert info.value.field == "session"
        assert rt.deadline(session) == rt.deadline(dataclasses.replace(session, title="t"))
