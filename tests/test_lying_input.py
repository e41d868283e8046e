"""Objects whose methods lie about their data are checked, and stored, as the data they hold.

A `str` subclass whose `__str__` returns a NUL once passed validation and was
stored as that NUL, which PostgreSQL refused; one whose `__ne__` lied read
another user's session. Every check now normalises to a plain built-in value
first; what is stored is exactly what was checked.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from trio.testing import MockClock

from trio_sessions import InvalidArgument, MemoryStore, RuntimeConfig, SessionNotFound, Store, open_runtime
from trio_sessions import _model as model
from trio_sessions.testing import impostors, metadata, timeouts, user_ids, valid_text


class LyingStr(str):
    """Holds its text; says it is a NUL, equal to everything, hashes like "user"."""

    def __str__(self) -> str:
        return "bad\x00"

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return hash("user")

    def isspace(self) -> bool:
        return False


class LyingInt(int):
    def __index__(self) -> int:
        return 10**30

    def __int__(self) -> int:
        return 10**30

    def __float__(self) -> float:
        return float("nan")

    def __le__(self, other: object) -> bool:
        return True


class LyingFloat(float):
    def __float__(self) -> float:
        return float("nan")


class LyingDict(dict[str, Any]):
    def items(self) -> Any:
        return [("x", "bad\x00")]

    def keys(self) -> Any:
        return ["y"]

    def __iter__(self) -> Iterator[str]:
        return iter(["z"])


class LyingList(list[Any]):
    def __iter__(self) -> Iterator[Any]:
        return iter(["bad\x00"])


class OtherMapping(Mapping[str, Any]):
    """A Mapping whose items() disagree with keys() and __getitem__: items() is what counts."""

    def __getitem__(self, key: str) -> Any:
        return "bad\x00"

    def __iter__(self) -> Iterator[str]:
        return iter(["k"])

    def __len__(self) -> int:
        return 1

    def items(self) -> Any:
        return [("k", "v")]


class Endless(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter(["k"])

    def __len__(self) -> int:
        return 1

    def items(self) -> Any:
        return ((f"k{i}", 1) for i in range(10**12))


class LyingUUID(uuid.UUID):
    def __str__(self) -> str:
        return "not-a-uuid"


class PretendStr:
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return str


def test_checks_return_plain_values_of_what_is_held() -> None:
    text = model.check_text("title", LyingStr("ok"), max_chars=10)
    assert type(text) is str and text == "ok"
    assert type(model.check_role(LyingStr("user"))) is str
    with pytest.raises(InvalidArgument):
        model.check_role(LyingStr("robot"))  # hashes and compares like "user", holds "robot"
    number = model.check_int("limit", LyingInt(5), low=1, high=50)
    assert type(number) is int and number == 5
    assert model.check_seconds("timeout", LyingFloat(2.5)) == 2.5
    assert model.check_seconds("timeout", LyingInt(3)) == 3.0
    sid = uuid.uuid4()
    got = model.check_session_id(LyingUUID(int=sid.int))
    assert type(got) is uuid.UUID and got == sid
    with pytest.raises(InvalidArgument) as info:
        model.check_text("title", PretendStr(), max_chars=10)
    assert info.value.field == "title"


def test_metadata_is_rebuilt_from_one_snapshot_of_plain_values() -> None:
    frozen = model.check_metadata({LyingStr("k"): LyingStr("v"), "n": LyingInt(7), "f": LyingFloat(0.5),
                                   "l": LyingList(["ok"]), "d": LyingDict(a=1)})
    assert frozen == {"k": "v", "n": 7, "f": 0.5, "l": ["ok"], "d": {"a": 1}}
    assert [type(k) for k in frozen] == [str] * 5 and type(frozen["k"]) is str
    assert type(frozen["n"]) is int and type(frozen["f"]) is float
    assert model.check_metadata(OtherMapping()) == {"k": "v"}
    with pytest.raises(InvalidArgument, match="entries"):
        model.check_metadata(Endless())
    with pytest.raises(InvalidArgument, match="twice"):
        model.check_metadata({LyingStr("a"): 1, "a": 2})  # the same text twice after normalising


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


FORGED = [
    _cursor(f"0001-01-01T00:00:00+14:00|{uuid.UUID(int=1)}"),
    _cursor(f"9999-12-31T23:59:59-14:00|{uuid.UUID(int=1)}"),
    _cursor(f"2025-01-01T00:00:00|{uuid.UUID(int=1)}"),
    _cursor(f"2025-01-01 00:00:00+00:00|{uuid.UUID(int=1)}"),
    _cursor(f"2025-01-01T00:00:00+00:00|{uuid.UUID(int=1).hex}"),
]


@pytest.mark.parametrize("cursor", FORGED)
async def test_a_forged_cursor_is_invalid_argument(store_factory: Callable[[], Store], cursor: str) -> None:
    async with open_runtime(store=store_factory()) as rt:
        with pytest.raises(InvalidArgument) as info:
            await rt.list(after=cursor)
        assert info.value.field == "after"


async def test_cursors_made_by_the_runtime_still_page(store_factory: Callable[[], Store]) -> None:
    async with open_runtime(store=store_factory()) as rt:
        made = [await rt.create("u1", "max") for _ in range(3)]
        first = await rt.list(limit=2)
        assert first.next_cursor is not None
        second = await rt.list(limit=2, after=LyingStr(first.next_cursor))
        assert {s.id for s in first.items + second.items} == {s.id for s in made}


async def test_every_call_stores_what_it_checked(store_factory: Callable[[], Store]) -> None:
    store = store_factory()
    async with open_runtime(RuntimeConfig(), store=store) as rt:
        s = await rt.create(LyingStr("u1"), LyingStr("max"), chat_id=LyingStr("c"), title=LyingStr("t"),
                            state=LyingStr("active"), metadata=LyingDict(a=LyingStr("b")),
                            timeout=LyingFloat(60.0), durable=True)
        assert s.metadata == {"a": "b"} and s.timeout == 60.0
        s = await rt.update(LyingUUID(int=s.id.int), expected_version=LyingInt(1), title=LyingStr("t2"),
                            metadata={"k": LyingList([LyingStr("x")])})
        await rt.append_message(s.id, LyingStr("user"), LyingStr("hello"))
        await rt.add_note(str(s.id), LyingStr("note"))
        assert len(await rt.context(s.id, limit=LyingInt(1))) == 1
        page = await rt.list(user_id=LyingStr("u1"), limit=LyingInt(1))
        assert len(page.items) == 1
        last = await rt.end(s.id, reason=LyingStr("done"), durable=True)
        chat = await rt.session_for_chat(LyingStr("u1"), LyingStr("max"), LyingStr("c"), title=LyingStr("t"),
                                         metadata=LyingDict(a=LyingStr("b")), timeout=LyingFloat(60.0))
        assert (chat.user_id, chat.agent, chat.chat_id, chat.title) == ("u1", "max", "c", "t")
        assert await rt.session_for_chat("u1", "max", "c") == chat
        async with rt.turn(LyingUUID(int=chat.id.int), user_id=LyingStr("u1")) as held:
            assert held == chat
    async with open_runtime(store=store) as rt:  # what PostgreSQL (or memory) holds
        got = await rt.get(s.id)
        assert got == last
        assert (got.user_id, got.agent, got.chat_id, got.title) == ("u1", "max", "c", "t2")
        assert got.state == "active"
        assert got.metadata == {"k": ["x"]} and got.notes[0].text == "note" and got.end_reason == "done"
        (message,) = await rt.context(s.id)
        assert (message.role, message.content) == ("user", "hello")


async def test_a_lying_owner_does_not_read_another_users_session(store_factory: Callable[[], Store]) -> None:
    async with open_runtime(store=store_factory()) as rt:
        s = await rt.create("alice", "max")
        with pytest.raises(SessionNotFound):
            await rt.get(s.id, user_id=LyingStr("mallory"))


async def test_expected_version_is_compared_as_the_plain_number(store_factory: Callable[[], Store]) -> None:
    async with open_runtime(store=store_factory()) as rt:
        s = await rt.create("u1", "max")
        with pytest.raises(InvalidArgument) as info:
            await rt.update(s.id, expected_version=LyingInt(10**30), title="x")
        assert info.value.field == "expected_version"
        assert (await rt.update(s.id, expected_version=LyingInt(1), title="x")).version == 2


@settings(max_examples=25, deadline=None)
@given(impostors(user_ids()), impostors(valid_text(model.MAX_TITLE_CHARS)),
       impostors(metadata(valid_only=True)), impostors(timeouts(valid_only=True)))
def test_impostors_are_stored_as_the_data_they_hold(user: Any, title: Any, meta: Any, timeout: Any) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        async with open_runtime(store=store) as rt:
            s = await rt.create(user[1], "max", title=title[1], metadata=meta[1], timeout=timeout[1])
        async with open_runtime(store=store) as rt:
            got = await rt.get(s.id)
        assert (type(got.user_id), type(got.title)) == (str, str)
        assert (got.user_id, got.title, got.timeout) == (user[0], title[0], float(timeout[0]))
        assert json.dumps(dict(got.metadata)) == json.dumps(meta[0])

    trio.run(scenario, clock=MockClock())
