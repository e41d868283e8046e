"""Hypothesis strategies for the arguments of the session API.

Two kinds. The *valid* ones (`valid_text`, `user_ids`, `agents`, `chat_ids`,
`message_contents`, `json_values`, and `roles`, `metadata`, `timeouts`,
`limits` with `valid_only=True`) only generate values the runtime accepts;
they are still unfriendly (right at the length limits, zero-width and RTL
marks, emoji, SQL and JSON metacharacters), because valid input is where a
store's encoding bugs hide. The *hostile* ones (`hostile_text`, and `roles`,
`metadata`, `timeouts`, `limits` by default) mix in what must be refused:
NUL, lone surrogates, too long or too deep, NaN, wrong types, integers too
large to convert. The runtime must answer those with `InvalidArgument`
naming the field, never with another exception or a failed flush.

Every strategy shrinks towards a short, ordinary value: alternatives are
listed from the simplest, so a failing example usually shrinks to the one
fragment that causes it (`"\\x00"`, `"\\ud800"`, a run of "a" one past a
length limit).

This module imports Hypothesis; the library (`import trio_sessions`) never
imports it.
"""

from __future__ import annotations

import datetime
import decimal
import math
import string
import uuid
from typing import Any, Final, Literal, overload

from hypothesis import strategies as st

from .._config import RuntimeConfig
from .._model import (
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_NAME_CHARS,
    MAX_NOTE_CHARS,
    MAX_TIMEOUT,
    MAX_TITLE_CHARS,
    ROLES,
)

_CONTENT_BYTES: Final = RuntimeConfig().max_content_bytes
# Hypothesis warns (an error under `-W error`) when it prints an example whose
# repr passes 30,000 characters, which it does when reporting a failure. Long
# strings here stay below that: the content limit in bytes is passed with
# three- and four-byte characters rather than with 64 Ki "a"s.
_REPR_BUDGET: Final = 25_000


class _Huge:
    """Stands for 10**5000 in a `sampled_from`, whose repr could not print the int itself."""

    def __repr__(self) -> str:
        return "10**5000"


# An integer no float can hold and whose `str()` exceeds Python's 4300-digit
# limit. Listed as `_HUGE` and swapped in by `_materialize`, so it shrinks like
# any other sample (a constant strategy would make no choice and so be
# "simpler" than every alternative).
_HUGE: Final = _Huge()
_HUGE_INT: Final = 10**5000


def _materialize(value: Any) -> Any:
    return _HUGE_INT if value is _HUGE else value


# ------------------------------------------------------------------ fragments
# Storable: PostgreSQL `text` takes these; naive code (length in bytes, case
# folding, terminal output, string-built SQL or JSON) trips on them. In themed
# groups, each drawn as often as the others, so that no theme is rare.
_FRAGMENT_GROUPS: Final = (
    # injection attempts
    ("'; DROP TABLE sessions; --", "' OR '1'='1", "Robert'); DROP TABLE students;--",
     "<script>alert(1)</script>", "${jndi:ldap://x/a}", "../../etc/passwd", "{{7*7}}"),
    # SQL metacharacters and placeholders
    ("'", '"', "\\", "%", "_", ";", "--", "/*", "*/", "$1", "$$", "%s", "%(id)s", "?", "E'\\\\x00'",
     "$tag$ select 1 $tag$"),
    # JSON-ish text: escapes as text, keywords, operators
    ("\\u0000", "\\ud800", '{"$where": "1"}', "null", "NaN", "Infinity", "[]", "{}", '\\"', "%00", "\\x00"),
    # ordinary Portuguese, and letters whose case mapping changes their length
    ("a", "olá", "ação", "R$ 1.234,56", "São Paulo", "İ", "ß", "ﬃ", "Ω", "Å"),
    # control characters (not NUL) and unusual whitespace
    ("\r\n", "\t", "\x0b", "\x0c", "\x1b[31m", "\x1b[2J", "\x07", "\x08", "\x7f", "\x85", "\x9b",
     "\u00a0", "\u2028", "\u2029", "\u3000", "\u1680"),
    # zero-width, bidi and other format characters, noncharacters
    ("\u200b", "\u00ad", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202e", "\u2066",
     "\u2069", "\u2060", "\ufeff", "\ufffd", "\ufffe", "\uffff"),
    # combining marks
    ("e\u0301", "\u0301", "Z\u0336\u0335\u0334\u0337\u0338\u0321\u0322", "\u0e47\u0e47\u0e47"),
    # emoji and other astral characters
    ("😀", "👩\u200d👩\u200d👧\u200d👦", "🇧🇷", "🏳️\u200d🌈", "𝕳𝖊𝖑𝖑𝖔", "\U00010000", "\U000e0041",
     "\U0010ffff"),
)
_STORABLE_FRAGMENT: Final = st.one_of(*(st.sampled_from(group) for group in _FRAGMENT_GROUPS))
# Not storable: PostgreSQL `text` and UTF-8 refuse them.
_UNSTORABLE_FRAGMENTS: Final = (
    "\x00", "a\x00b", "\ud800", "\udfff", "\udc80", "\ud83d\ude00",  # a surrogate *pair*, as two code points
)
_WHITESPACE: Final = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u00a0\u1680\u2000\u2007\u2028\u2029\u202f\u3000"
# Units for strings at a length limit: one to four bytes of UTF-8, a zero-width
# space, a letter with a combining mark.
_AT_LIMIT_UNITS: Final = ("a", "é", "€", "😀", "\u200b", "e\u0301")
# (unit, count): empty (so that a long string with a bad tail shrinks to the
# tail alone), then at and one past each limit, shortest first. The last ones
# reach the default content limit in bytes.
_LONG: Final = (
    ("a", 0),
    ("a", MAX_NAME_CHARS), ("a", MAX_NAME_CHARS + 1), ("a", MAX_ID_CHARS), ("a", MAX_ID_CHARS + 1),
    ("é", MAX_ID_CHARS + 1), ("😀", MAX_ID_CHARS + 1), (" ", MAX_ID_CHARS + 1),
    ("a", MAX_TITLE_CHARS), ("a", MAX_TITLE_CHARS + 1), ("€", MAX_TITLE_CHARS + 1),
    ("a", MAX_NOTE_CHARS), ("a", MAX_NOTE_CHARS + 1),
    ("😀", _CONTENT_BYTES // 4), ("😀", _CONTENT_BYTES // 4 + 1), ("€", _CONTENT_BYTES // 3 + 1),
)
_STORABLE_CHARS: Final = st.characters(exclude_categories=["Cs"], exclude_characters=["\x00"])


def _fit(text: str, min_size: int, max_size: int) -> str:
    """Cut to `max_size` characters, pad with "x" to `min_size`."""
    text = text[:max_size]
    return text + "x" * (min_size - len(text))


def _fit_bytes(text: str, max_bytes: int) -> str:
    """Cut to at most `max_bytes` bytes of UTF-8 on a character boundary; never empty."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore") or "x"


def _repeat(spec: tuple[str, int]) -> str:
    unit, count = spec
    return unit * count


def _at_limit(count: int) -> tuple[str, ...]:
    """The units whose `count`-fold repetition prints within the repr budget (at least one)."""
    fitting = tuple(u for u in _AT_LIMIT_UNITS if (len(repr(u)) - 2) * count <= _REPR_BUDGET)
    return fitting or ("😀",)


def _filling(max_bytes: int) -> tuple[str, ...]:
    """Units that fill `max_bytes` of UTF-8 within the repr budget (at least one)."""
    units = ("😀", "€", "é", "a", " ")
    fitting = tuple(u for u in units if max_bytes // len(u.encode()) <= _REPR_BUDGET)
    return fitting or units[:1]


def _mostly(usual: st.SearchStrategy[Any], rarely: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` about four times in five, else `rarely`; shrinks to `usual`."""
    return st.tuples(st.integers(0, 4), usual, rarely).map(lambda t: t[2] if t[0] == 4 else t[1])


# ----------------------------------------------------------------------- text


def hostile_text(*, min_size: int = 0, max_size: int = _CONTENT_BYTES + 1) -> st.SearchStrategy[str]:
    """Strings that break naive code: the runtime must store them or refuse them cleanly.

    Generates, in order of simplicity: `st.text()`; concatenations of
    ordinary text with targeted fragments (NUL, lone surrogates, other control
    characters, zero-width, BOM and RTL marks, combining marks, emoji and other
    astral characters, SQL metacharacters and injection attempts such as
    `'; DROP TABLE sessions; --`, JSON-ish text such as a literal `\\u0000`);
    whitespace-only strings; and strings at and one past each limit of the
    model (100, 200, 500 and 10,000 characters, and the default content limit
    of 64 KiB of UTF-8), built from one- to four-byte characters.

    Results are cut to `max_size` characters and padded with "x" to
    `min_size`; long strings longer than `max_size` are left out. The default
    `max_size` leaves room for all of them. Long strings are built from
    multi-byte characters where that keeps their repr short enough for
    Hypothesis to print without a warning.

    Shrinks towards "", then to the single fragment that matters
    (`"\\x00"`, `"\\ud800"`), or to a run of "a" just past the limit that
    matters (`"a" * 201`, or `"a" * 200 + "\\x00"`).
    """
    if not 0 <= min_size <= max_size:
        raise ValueError(f"need 0 <= min_size <= max_size, got {min_size} and {max_size}")
    piece = st.one_of(
        st.text(max_size=16),
        _STORABLE_FRAGMENT,
        st.sampled_from(_UNSTORABLE_FRAGMENTS),
        st.characters(categories=["Cs"]),  # st.text() never generates a lone surrogate
        st.characters(categories=["Cc", "Cf", "Zl", "Zp"]),
        st.characters(categories=["Mn", "Me"]),
        st.characters(min_codepoint=0x10000),
    )
    branches = [
        st.text(max_size=min(max_size, 50)),
        st.lists(piece, min_size=1, max_size=8).map("".join),
        st.text(st.sampled_from(_WHITESPACE), min_size=1, max_size=12),
    ]
    long = [(unit, count) for unit, count in _LONG if count <= max_size]
    if long:
        # A long string, sometimes unstorable at its very end, where a check of a
        # prefix misses it.
        tails = st.sampled_from(("", *_UNSTORABLE_FRAGMENTS))
        branches.append(st.tuples(st.sampled_from(long).map(_repeat), tails).map("".join))
    return st.one_of(branches).map(lambda text: _fit(text, min_size, max_size))


def valid_text(max_chars: int) -> st.SearchStrategy[str]:
    """Strings `check_text` accepts with this `max_chars`.

    Non-empty, not whitespace-only, no NUL, no lone surrogate, at most
    `max_chars` characters; otherwise as hostile as `hostile_text`: storable
    fragments (SQL, RTL and zero-width marks, combining marks, emoji, control
    characters other than NUL) and strings of exactly `max_chars` characters
    of one- to four-byte UTF-8.

    Shrinks towards "0" (Hypothesis's simplest character).
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    fragments = st.lists(st.one_of(st.text(_STORABLE_CHARS, max_size=16),
                                   _STORABLE_FRAGMENT), min_size=1, max_size=6)
    # Built valid rather than filtered (a filter's rejected draws slow Hypothesis's
    # shrinking down): an empty or whitespace-only draw gets an "x" in front.
    return st.one_of(
        st.text(_STORABLE_CHARS, min_size=1, max_size=min(max_chars, 50)),
        fragments.map(lambda parts: "".join(parts)[:max_chars]),
        st.sampled_from(_at_limit(max_chars)).map(lambda unit: (unit * max_chars)[:max_chars]),
    ).map(lambda text: text if text and not text.isspace() else ("x" + text)[:max_chars])


def message_contents(max_bytes: int = _CONTENT_BYTES) -> st.SearchStrategy[str]:
    """Message contents `check_content` accepts with this `max_bytes`.

    Non-empty, no NUL, no lone surrogate, at most `max_bytes` bytes of UTF-8
    (whitespace-only is allowed, as for the runtime): chat-like text, storable
    fragments, and contents of exactly `max_bytes` bytes (or as close as a
    multi-byte character allows; with a large `max_bytes`, only multi-byte
    characters, to keep the repr printable).

    Shrinks towards "0".
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    chat = st.sampled_from(("Olá! Qual é o saldo da minha conta?", "Obrigado 😀", "ok",
                            "Segue o boleto:\n\nR$ 1.234,56\nVencimento: 10/12", "  ", "\n"))
    fragments = st.lists(st.one_of(st.text(_STORABLE_CHARS, max_size=32), chat,
                                   _STORABLE_FRAGMENT), min_size=1, max_size=8)
    return st.one_of(
        st.text(_STORABLE_CHARS, min_size=1, max_size=min(max_bytes, 200)),
        fragments.map("".join),
        st.sampled_from(_filling(max_bytes)).map(lambda unit: unit * (max_bytes // len(unit.encode()))),
    ).map(lambda text: _fit_bytes(text, max_bytes))


# --------------------------------------------------------------- domain values


def user_ids() -> st.SearchStrategy[str]:
    """Valid user ids: a few short ones that collide often, phone numbers, UUIDs, e-mails, odd text.

    Shrinks towards "u1".
    """
    return st.one_of(
        st.sampled_from(("u1", "u2", "u3")),
        st.integers(10**10, 10**13 - 1).map(lambda n: f"55{n}"),
        st.uuids().map(str),
        st.tuples(st.text(string.ascii_lowercase + ".", min_size=1, max_size=20),
                  st.sampled_from(("example.com", "example.com.br"))).map("@".join),
        valid_text(MAX_ID_CHARS),
    )


def agents() -> st.SearchStrategy[str]:
    """Valid agent names: mostly "financeiro", "max" or "geral", sometimes another valid name.

    Shrinks towards "financeiro".
    """
    others = st.one_of(st.sampled_from(("suporte", "vendas", "Max", "FINANCEIRO", " geral", "geral\n")),
                       valid_text(MAX_NAME_CHARS))
    return _mostly(st.sampled_from(("financeiro", "max", "geral")), others)


# Brazilian area codes (DDD), for WhatsApp-like chat ids.
_AREA_CODES: Final = (
    11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 24, 27, 28, 31, 32, 33, 34, 35, 37, 38,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 51, 53, 54, 55, 61, 62, 63, 64, 65, 66, 67, 68, 69,
    71, 73, 74, 75, 77, 79, 81, 82, 83, 84, 85, 86, 87, 88, 89, 91, 92, 93, 94, 95, 96, 97, 98, 99,
)


def chat_ids() -> st.SearchStrategy[str | None]:
    """None, or a WhatsApp-like chat id: "55DD9XXXXXXXX@c.us", sometimes a group "...@g.us".

    Shrinks towards None, then "5511900000000@c.us".
    """
    person = st.builds(lambda area, number: f"55{area}9{number:08d}@c.us",
                       st.sampled_from(_AREA_CODES), st.integers(0, 10**8 - 1))
    group = st.integers(10**17, 10**18 - 1).map(lambda n: f"{n}@g.us")
    return st.one_of(st.none(), person, group)


_ROLES: Final = ("user", *sorted(ROLES - {"user"}))  # "user" first: the simplest


@overload
def roles(*, valid_only: Literal[True]) -> st.SearchStrategy[str]: ...
@overload
def roles(*, valid_only: bool = False) -> st.SearchStrategy[object]: ...


def roles(*, valid_only: bool = False) -> st.SearchStrategy[object]:
    """Message roles: "user", "assistant", "system", "tool"; unless `valid_only`, also near misses.

    Near misses: other case or surrounding space ("User", " user"), roles of
    other APIs ("function", "developer", "bot"), "", NUL, non-strings (None,
    bytes, 1) and `hostile_text`.

    Shrinks towards "user".
    """
    valid = st.sampled_from(_ROLES)
    if valid_only:
        return valid
    invalid = st.one_of(
        st.sampled_from(("User", "USER", " user", "user ", "function", "developer", "bot", "", "user\x00")),
        st.sampled_from((None, b"user", 1, True, ["user"])),
        hostile_text(max_size=20),
    )
    return st.one_of(valid, invalid)


# ------------------------------------------------------------------- metadata


def _json_strings() -> st.SearchStrategy[str]:
    return st.one_of(st.text(_STORABLE_CHARS, max_size=30), _STORABLE_FRAGMENT)


def json_values() -> st.SearchStrategy[Any]:
    """Plain JSON that `check_metadata` accepts inside a mapping.

    None, booleans, 64-bit integers, finite floats, storable strings (SQL and
    JSON metacharacters, a literal `\\u0000`, emoji, RTL marks), and lists
    and string-keyed dicts of those, at most 10 leaves (so never deeper than
    the metadata limit).

    Shrinks towards None, then flatter and shorter values.
    """
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False), _json_strings(),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(_json_strings(), children, max_size=4)),
        max_leaves=10,
    )


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


def _with_entry(base: dict[Any, Any], key: Any, value: Any) -> dict[Any, Any]:
    return {**base, key: value}


@overload
def metadata(*, valid_only: Literal[True]) -> st.SearchStrategy[dict[str, Any]]: ...
@overload
def metadata(*, valid_only: bool = False) -> st.SearchStrategy[Any]: ...


def metadata(*, valid_only: bool = False) -> st.SearchStrategy[Any]:
    """Session metadata: string-keyed dicts of `json_values()`; unless `valid_only`, also poisoned ones.

    Poisoned: a valid dict with one bad entry added (NaN, Infinity, a set,
    bytes, a datetime, a Decimal, an object, NUL or a lone surrogate in a
    string, an integer too large for `str()`, a non-string key), nesting
    deeper than the limit, JSON larger than the limit, or not a mapping at
    all (a list, a string, a number). None, which the API also accepts, is
    left to the caller.

    Shrinks towards {}, then a dict holding only the poison.
    """
    valid = st.dictionaries(_json_strings(), json_values(), max_size=4)
    if valid_only:
        return valid
    bad_values = st.sampled_from((
        math.nan, math.inf, -math.inf, [1.0, math.nan], {"x": -math.inf}, {1, 2}, frozenset(), b"bytes",
        bytearray(b"x"), 1j, decimal.Decimal("1.5"), datetime.datetime(2025, 1, 1),
        uuid.UUID(int=0), object(), "a\x00b", "\ud800", ["ok", "\udfff"],
        _HUGE,
    )).map(_materialize)
    bad_keys = st.sampled_from((1, None, True, 1.5, (1, 2), "\x00", "k\ud800", _HUGE)).map(_materialize)
    # Built when drawn; the big ones in four-byte characters, to print short (see _REPR_BUDGET).
    beyond = st.one_of(
        st.sampled_from((MAX_METADATA_DEPTH + 1, MAX_METADATA_DEPTH + 10)).map(_nested),
        st.just(MAX_METADATA_BYTES // 4 + 1).map(lambda n: "😀" * n),
        st.just(MAX_METADATA_BYTES // 4000 + 1).map(lambda n: ["😀" * 1000] * n),
    )
    not_a_mapping = st.sampled_from(([1, 2], "{}", 42, (("a", 1),), b"{}", True, {"a"}))
    return st.one_of(
        valid,
        st.builds(_with_entry, valid, st.just("bad"), bad_values),
        st.builds(_with_entry, valid, bad_keys, st.just(1)),
        st.builds(_with_entry, valid, st.just("big"), beyond),
        not_a_mapping,
    )


# --------------------------------------------------------------------- numbers


@overload
def timeouts(*, valid_only: Literal[True]) -> st.SearchStrategy[float]: ...
@overload
def timeouts(*, valid_only: bool = False) -> st.SearchStrategy[object]: ...


def timeouts(*, valid_only: bool = False) -> st.SearchStrategy[object]:
    """Session timeouts in seconds: positive numbers from 1 ms to a week, and the limit itself.

    Unless `valid_only`, also: 0, -0.0, negative, NaN, ±infinity, beyond the
    366-day limit, numeric strings, bools, bytes, a list, and an integer too
    large for a float. (None, meaning "the default", is left to the caller.)

    Shrinks towards 60.0.
    """
    valid = st.one_of(
        st.sampled_from((60.0, 1.0, 300.0, 1800.0, 3600.0, MAX_TIMEOUT)),
        st.floats(min_value=0.001, max_value=7 * 86_400.0),
        st.integers(1, 7 * 86_400),
    )
    if valid_only:
        return valid
    invalid = st.sampled_from((
        0, 0.0, -0.0, -1, -1e-9, math.nan, math.inf, -math.inf, MAX_TIMEOUT * 2, 10**20,
        "60", "1800", True, False, b"60", [60.0], _HUGE,
    )).map(_materialize)
    return st.one_of(valid, invalid)


@overload
def limits(*, high: int = ..., valid_only: Literal[True]) -> st.SearchStrategy[int]: ...
@overload
def limits(*, high: int = ..., valid_only: bool = False) -> st.SearchStrategy[object]: ...


def limits(*, high: int = 50, valid_only: bool = False) -> st.SearchStrategy[object]:
    """Page and context limits: integers 1 to `high` (`max_messages` for `context`, 1000 for `list`).

    Unless `valid_only`, also: 0, negative, `high + 1`, 2**63, floats (1.0,
    NaN), bools, numeric strings, and an integer too large for `str()`.
    (None, the default of `context`, is left to the caller.)

    Shrinks towards 1.
    """
    if high < 1:
        raise ValueError(f"high must be at least 1, got {high}")
    valid = st.integers(1, high)  # Hypothesis tries both bounds by itself
    if valid_only:
        return valid
    invalid = st.sampled_from((0, -1, high + 1, 2**63, 1.0, math.nan, True, "10", b"1", _HUGE))
    return st.one_of(valid, invalid.map(_materialize))


# ------------------------------------------------------------------ impostors


class _ImpostorStr(str):
    """Holds its text, but says it is a NUL and equal to anything."""

    __slots__ = ()

    def __str__(self) -> str:
        return "\x00"

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class _ImpostorInt(int):
    """Holds its number, but converts to another one."""

    def __index__(self) -> int:
        return -1

    def __int__(self) -> int:
        return -1

    def __float__(self) -> float:
        return math.nan


class _ImpostorFloat(float):
    def __float__(self) -> float:
        return math.nan


class _ImpostorDict(dict[Any, Any]):
    """Holds its entries, but its items(), keys() and iteration say otherwise."""

    def items(self) -> Any:
        return [("\x00", "\x00")]

    def keys(self) -> Any:
        return ["\x00"]

    def __iter__(self) -> Any:
        return iter(["\x00"])


class _ImpostorList(list[Any]):
    def __iter__(self) -> Any:
        return iter(["\x00"])


def _impostor(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _ImpostorStr(value)
    if kind is int:
        return _ImpostorInt(value)
    if kind is float:
        return _ImpostorFloat(value)
    if kind is dict:
        return _ImpostorDict({_impostor(k): _impostor(v) for k, v in value.items()})
    if kind is list:
        return _ImpostorList(_impostor(v) for v in value)
    return value


def impostors(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`values`, each rebuilt from subclasses whose methods lie about the data they hold.

    Strings whose `__str__` says NUL and that compare equal to anything,
    ints and floats whose conversions give -1 or NaN, dicts whose `items()`,
    `keys()` and iteration name other entries, lists whose iteration yields
    a NUL, nested all the way down. The runtime must check and store the
    data they hold (or refuse it with `InvalidArgument`), never what their
    methods say. Compare what is stored with `values`' own draw, not with
    the impostor (which equals anything).

    Draws `(plain, impostor)` pairs. Shrinks as `values` does.
    """
    return values.map(lambda value: (value, _impostor(value)))
