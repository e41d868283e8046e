"""The strategies of trio_sessions.testing: valid ones are valid, hostile ones reach what they promise.

And the property they exist for: a hostile value is either accepted (and
storable) or refused with `InvalidArgument` naming the field, never another
exception, whether it meets the `check_*` functions directly or the runtime.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import Phase, event, find, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from trio_sessions import InvalidArgument, MemoryStore, RuntimeConfig, SessionRuntime, open_runtime
from trio_sessions import _model as model
from trio_sessions.testing import (
    agents,
    chat_ids,
    hostile_text,
    json_values,
    limits,
    message_contents,
    metadata,
    roles,
    timeouts,
    user_ids,
    valid_text,
)

LIGHT = settings(max_examples=60, deadline=None)
RUNTIME = settings(max_examples=25, deadline=None)
# find(): fixed seeds (a search that passes once always passes), no explain phase (slow, unused).
SEARCH = settings(max_examples=1000, database=None, derandomize=True, phases=[Phase.generate, Phase.shrink])
REACH = settings(SEARCH, phases=[Phase.generate])  # is it generated at all? (no shrinking: fast)
CONTENT_BYTES = RuntimeConfig().max_content_bytes


def _is_surrogate(char: str) -> bool:
    return 0xD800 <= ord(char) <= 0xDFFF


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _text_bytes(value: object) -> int:
    """Bytes of UTF-8 in every string of a value (repr() would fail on a huge int)."""
    if isinstance(value, str):
        return _utf8_size(value)
    if isinstance(value, dict):
        return sum(_text_bytes(k) + _text_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(map(_text_bytes, value))
    return 0


def _names(exc: InvalidArgument, field: str) -> bool:
    """The error names `field`, or a place inside it ("metadata['a'][0]", "metadata key")."""
    return exc.field == field or exc.field.startswith((f"{field}[", f"{field} "))


def _accepted_or_invalid(check: Callable[[], object], value: object, field: str) -> object | None:
    """Run a check: return what it accepted, or None if it raised InvalidArgument naming `field`."""
    try:
        return check()
    except InvalidArgument as exc:
        assert _names(exc, field), exc
        return None


# ------------------------------------------------------------------- valid ones


VALID: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], object]]] = [
    ("valid_text(1)", valid_text(1), lambda v: model.check_text("f", v, max_chars=1)),
    ("valid_text(5)", valid_text(5), lambda v: model.check_text("f", v, max_chars=5)),
    ("valid_text(name)", valid_text(model.MAX_NAME_CHARS),
     lambda v: model.check_text("f", v, max_chars=model.MAX_NAME_CHARS)),
    ("valid_text(title)", valid_text(model.MAX_TITLE_CHARS),
     lambda v: model.check_text("f", v, max_chars=model.MAX_TITLE_CHARS)),
    ("valid_text(note)", valid_text(model.MAX_NOTE_CHARS),
     lambda v: model.check_text("f", v, max_chars=model.MAX_NOTE_CHARS)),
    ("user_ids", user_ids(), lambda v: model.check_text("user_id", v, max_chars=model.MAX_ID_CHARS)),
    ("agents", agents(), lambda v: model.check_text("agent", v, max_chars=model.MAX_NAME_CHARS)),
    ("chat_ids", chat_ids(), lambda v: model.check_optional_text("chat_id", v, max_chars=model.MAX_ID_CHARS)),
    ("roles", roles(valid_only=True), model.check_role),
    ("message_contents(7)", message_contents(7), lambda v: model.check_content(v, max_bytes=7)),
    ("message_contents()", message_contents(), lambda v: model.check_content(v, max_bytes=CONTENT_BYTES)),
    ("metadata", metadata(valid_only=True), model.check_metadata),
    ("json_values", json_values(), lambda v: model.check_metadata({"v": v})["v"]),
    ("timeouts", timeouts(valid_only=True),
     lambda v: model.check_seconds("timeout", v, high=model.MAX_TIMEOUT)),
    ("limits", limits(valid_only=True), lambda v: model.check_int("limit", v, low=1, high=50)),
    ("limits(1000)", limits(high=1000, valid_only=True),
     lambda v: model.check_int("limit", v, low=1, high=1000)),
]


@pytest.mark.parametrize(("strategy", "check"), [(s, c) for _, s, c in VALID], ids=[n for n, _, _ in VALID])
@LIGHT
@given(data=st.data())
def test_valid_strategies_pass_the_validators(strategy: st.SearchStrategy[Any],
                                              check: Callable[[Any], object], data: st.DataObject) -> None:
    value = data.draw(strategy)
    assert check(value) == value


def test_chat_ids_look_like_whatsapp() -> None:
    chat = find(chat_ids(), lambda c: c is not None and c.endswith("@c.us"), settings=SEARCH)
    assert chat == "5511900000000@c.us"  # 55, area code, 9, eight digits
    assert find(chat_ids(), lambda c: True, settings=SEARCH) is None


def test_agents_are_mostly_the_usual_three() -> None:
    drawn: list[str] = []

    @settings(max_examples=200, database=None)
    @given(agents())
    def draw(agent: str) -> None:
        drawn.append(agent)

    draw()
    usual = sum(agent in {"financeiro", "max", "geral"} for agent in drawn)
    assert usual / len(drawn) > 0.6
    assert find(agents(), lambda a: True, settings=SEARCH) == "financeiro"


# ------------------------------------------------------------- hostile reach


def _category(text: str, *categories: str) -> bool:
    return any(unicodedata.category(c) in categories for c in text if not _is_surrogate(c))


REACHABLE: list[tuple[str, Callable[[str], bool]]] = [
    ("NUL", lambda s: "\x00" in s),
    ("lone surrogate", lambda s: any(map(_is_surrogate, s))),
    ("other control character", lambda s: any(c != "\x00" and unicodedata.category(c) == "Cc" for c in s)),
    ("zero-width or bidi mark", lambda s: _category(s, "Cf")),
    ("combining mark", lambda s: _category(s, "Mn", "Me")),
    ("astral plane", lambda s: any(ord(c) > 0xFFFF for c in s)),
    ("whitespace only", lambda s: s != "" and s.isspace()),
    ("SQL injection", lambda s: "'; DROP TABLE sessions; --" in s),
    ("JSON escape as text", lambda s: "\\u0000" in s),
    ("longer than an agent", lambda s: len(s) > model.MAX_NAME_CHARS),
    ("longer than an id", lambda s: len(s) > model.MAX_ID_CHARS),
    ("longer than a title", lambda s: len(s) > model.MAX_TITLE_CHARS),
    ("longer than a note", lambda s: len(s) > model.MAX_NOTE_CHARS),
    ("over the content bytes", lambda s: _utf8_size(s) > CONTENT_BYTES),
    ("bytes over, characters under", lambda s: len(s) <= CONTENT_BYTES < _utf8_size(s)),
    ("long with NUL at the end", lambda s: len(s) > model.MAX_ID_CHARS and s.endswith("\x00")),
]


@pytest.mark.parametrize("predicate", [p for _, p in REACHABLE], ids=[n for n, _ in REACHABLE])
def test_hostile_text_reaches(predicate: Callable[[str], bool]) -> None:
    assert predicate(find(hostile_text(), predicate, settings=REACH))


def test_hostile_text_shrinks_to_the_fragment_that_matters() -> None:
    assert find(hostile_text(), lambda s: "\x00" in s, settings=SEARCH) == "\x00"
    assert len(find(hostile_text(), lambda s: any(map(_is_surrogate, s)), settings=SEARCH)) == 1
    assert find(hostile_text(), lambda s: True, settings=SEARCH) == ""


@LIGHT
@given(st.data(), st.integers(0, 300), st.integers(0, 300))
def test_hostile_text_respects_its_size_bounds(data: st.DataObject, low: int, extra: int) -> None:
    text = data.draw(hostile_text(min_size=low, max_size=low + extra))
    assert low <= len(text) <= low + extra


METADATA_REACHABLE: list[tuple[str, Callable[[Any], bool]]] = [
    ("NaN", lambda m: isinstance(m, dict) and any(isinstance(v, float) and v != v for v in m.values())),
    ("Infinity", lambda m: isinstance(m, dict) and math.inf in m.values()),
    ("non-string key", lambda m: isinstance(m, dict) and any(not isinstance(k, str) for k in m)),
    ("a set", lambda m: isinstance(m, dict) and any(isinstance(v, (set, frozenset)) for v in m.values())),
    ("bytes", lambda m: isinstance(m, dict) and any(isinstance(v, bytes) for v in m.values())),
    ("too deep", lambda m: isinstance(m, dict) and _depth(m) > model.MAX_METADATA_DEPTH + 1),
    ("too big", lambda m: isinstance(m, dict) and _text_bytes(m) > model.MAX_METADATA_BYTES),
    ("not a mapping", lambda m: not isinstance(m, dict)),
    ("nested plain JSON", lambda m: isinstance(m, dict) and _depth(m) >= 3),
]


@pytest.mark.parametrize("predicate", [p for _, p in METADATA_REACHABLE],
                         ids=[n for n, _ in METADATA_REACHABLE])
def test_metadata_reaches(predicate: Callable[[Any], bool]) -> None:
    assert predicate(find(metadata(), predicate, settings=REACH))


TIMEOUT_REACHABLE: list[tuple[str, Callable[[Any], bool]]] = [
    ("zero", lambda t: t == 0 and not isinstance(t, bool)),
    ("negative", lambda t: isinstance(t, (int, float)) and t < 0),
    ("NaN", lambda t: isinstance(t, float) and math.isnan(t)),
    ("infinity", lambda t: t == math.inf),
    ("a string", lambda t: isinstance(t, str)),
    ("a bool", lambda t: isinstance(t, bool)),
    ("an int", lambda t: type(t) is int and t > 0),
]


@pytest.mark.parametrize("predicate", [p for _, p in TIMEOUT_REACHABLE],
                         ids=[n for n, _ in TIMEOUT_REACHABLE])
def test_timeouts_reach(predicate: Callable[[Any], bool]) -> None:
    assert predicate(find(timeouts(), predicate, settings=REACH))


def test_valid_only_strategies_shrink_to_the_simplest() -> None:
    assert find(roles(), lambda r: True, settings=SEARCH) == "user"
    assert find(timeouts(), lambda t: True, settings=SEARCH) == 60.0
    assert find(limits(), lambda n: True, settings=SEARCH) == 1
    assert find(metadata(), lambda m: True, settings=SEARCH) == {}
    assert find(user_ids(), lambda u: True, settings=SEARCH) == "u1"


# ------------------------------------------- hostile values meet the validators


def _text_checks(value: str) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("user_id", lambda: model.check_text("user_id", value, max_chars=model.MAX_ID_CHARS)),
        ("agent", lambda: model.check_text("agent", value, max_chars=model.MAX_NAME_CHARS)),
        ("title", lambda: model.check_optional_text("title", value, max_chars=model.MAX_TITLE_CHARS)),
        ("text", lambda: model.check_text("text", value, max_chars=model.MAX_NOTE_CHARS)),
        ("content", lambda: model.check_content(value, max_bytes=CONTENT_BYTES)),
        ("role", lambda: model.check_role(value)),
        ("session_id", lambda: model.check_session_id(value)),
        ("metadata", lambda: model.check_metadata({"k": value})),
        ("metadata", lambda: model.check_metadata({value: 1})),
    ]


@LIGHT
@given(hostile_text())
def test_hostile_text_is_accepted_storable_or_refused(value: str) -> None:
    for field, check in _text_checks(value):
        accepted = _accepted_or_invalid(check, value, field)
        if isinstance(accepted, str):
            assert "\x00" not in accepted
            accepted.encode("utf-8")  # no lone surrogate: PostgreSQL can store it


@LIGHT
@given(metadata())
def test_hostile_metadata_is_accepted_as_plain_json_or_refused(value: Any) -> None:
    accepted = _accepted_or_invalid(lambda: model.check_metadata(value), value, "metadata")
    if accepted is not None:
        assert accepted == value
        assert len(json.dumps(accepted, allow_nan=False).encode()) > 0


@LIGHT
@given(timeouts(), limits(), roles())
def test_hostile_numbers_and_roles_are_accepted_or_refused(timeout: Any, limit: Any, role: Any) -> None:
    _accepted_or_invalid(lambda: model.check_seconds("timeout", timeout, high=model.MAX_TIMEOUT),
                         timeout, "timeout")
    _accepted_or_invalid(lambda: model.check_int("limit", limit, low=1, high=50), limit, "limit")
    _accepted_or_invalid(lambda: model.check_role(role), role, "role")


# ------------------------------------------------------------ huge integers
# An int too large for float() or str() once escaped the validators as
# OverflowError or ValueError instead of InvalidArgument.

HUGE = 10**5000


def test_a_huge_integer_timeout_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        model.check_seconds("timeout", HUGE, high=model.MAX_TIMEOUT)


def test_a_huge_integer_in_metadata_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        model.check_metadata({"n": HUGE})


def test_a_huge_integer_key_in_metadata_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        model.check_metadata({HUGE: 1})


def test_a_huge_integer_limit_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        model.check_int("limit", HUGE, low=1, high=50)


def test_a_huge_integer_timeout_through_the_runtime() -> None:
    async def scenario() -> None:
        async with open_runtime(store=MemoryStore()) as rt:
            with pytest.raises(InvalidArgument):
                await rt.create("u1", "max", timeout=HUGE)

    trio.run(scenario)


# ------------------------------------------------------ through a runtime


def _on_frozen_time(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run on virtual time that stands still: no session expires while an example runs."""
    trio.run(scenario, clock=MockClock())


HOSTILE_CREATE: dict[str, st.SearchStrategy[Any]] = {
    "user_id": hostile_text(), "agent": hostile_text(), "chat_id": hostile_text(),
    "title": hostile_text(), "state": hostile_text(), "metadata": metadata(), "timeout": timeouts(),
}


@RUNTIME
@given(st.sampled_from(sorted(HOSTILE_CREATE)), st.data())
def test_create_takes_or_names_each_hostile_argument(field: str, data: st.DataObject) -> None:
    value = data.draw(HOSTILE_CREATE[field], label=field)
    arguments: dict[str, Any] = {"user_id": "u1", "agent": "max", field: value}

    async def scenario() -> None:
        store = MemoryStore()
        async with open_runtime(store=store) as rt:
            try:
                session = await rt.create(**arguments)
            except InvalidArgument as exc:
                assert _names(exc, field), exc
                assert rt.metrics().live_sessions == 0  # nothing was created
                event(f"{field} refused")
                return
            got = await rt.get(session.id)
        event(f"{field} accepted")
        assert got == session
        if field != "timeout":
            assert getattr(got, field) == value
        assert (await store.load(session.id, messages=0)) == (session, ())

    _on_frozen_time(scenario)


HostileCall = Callable[[SessionRuntime, Any, Any], Awaitable[Any]]
HOSTILE_CALLS: dict[str, tuple[st.SearchStrategy[Any], HostileCall]] = {
    "role": (roles(), lambda rt, sid, v: rt.append_message(sid, v, "ok")),
    "content": (hostile_text(), lambda rt, sid, v: rt.append_message(sid, "user", v)),
    "text": (hostile_text(), lambda rt, sid, v: rt.add_note(sid, v)),
    "title": (hostile_text(), lambda rt, sid, v: rt.update(sid, title=v)),
    "metadata": (metadata(), lambda rt, sid, v: rt.update(sid, metadata=v)),
    "reason": (hostile_text(), lambda rt, sid, v: rt.end(sid, reason=v)),
    "limit": (limits(), lambda rt, sid, v: rt.context(sid, limit=v)),
    "session_id": (hostile_text(), lambda rt, sid, v: rt.get(v)),
}


@RUNTIME
@given(st.sampled_from(sorted(HOSTILE_CALLS)), st.data())
def test_calls_take_or_name_each_hostile_argument(field: str, data: st.DataObject) -> None:
    strategy, call = HOSTILE_CALLS[field]
    value = data.draw(strategy, label=field)

    async def scenario() -> None:
        async with open_runtime(store=MemoryStore()) as rt:
            session = await rt.create("u1", "max")
            try:
                await call(rt, session.id, value)
                event(f"{field} accepted")
            except InvalidArgument as exc:
                assert _names(exc, field), exc
                assert await rt.get(session.id) == session  # a refused call leaves no trace
                event(f"{field} refused")
            except LookupError:  # SessionNotFound: a well-formed id of no session
                assert field == "session_id"

    _on_frozen_time(scenario)


@RUNTIME
@given(user_ids(), agents(), chat_ids(), st.none() | valid_text(model.MAX_TITLE_CHARS),
       metadata(valid_only=True), timeouts(valid_only=True), roles(valid_only=True),
       message_contents(), valid_text(model.MAX_NOTE_CHARS))
def test_valid_values_round_trip_through_a_runtime_and_memory_store(
        user_id: str, agent: str, chat_id: str | None, title: str | None, meta: dict[str, Any],
        timeout: float, role: str, content: str, note: str) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with open_runtime(store=store) as rt:
            created = await rt.create(user_id, agent, chat_id=chat_id, title=title, metadata=meta,
                                      timeout=timeout)
            await rt.append_message(created.id, role, content)
            last = await rt.add_note(created.id, note)
        async with open_runtime(store=store) as rt:  # a restart: everything comes from the store
            assert await rt.get(created.id, user_id=user_id) == last
            (message,) = await rt.context(created.id)
        assert (last.user_id, last.agent, last.chat_id, last.title) == (user_id, agent, chat_id, title)
        assert last.metadata == meta and last.notes[0].text == note
        assert (message.seq, message.role, message.content) == (1, role, content)

    _on_frozen_time(scenario)


def test_importing_the_library_does_not_import_hypothesis() -> None:
    code = "import sys, trio_sessions; assert 'hypothesis' not in sys.modules, sorted(sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
