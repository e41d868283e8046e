"""The immutable records the runtime hands out, and validation of input.

Every value a caller passes in goes through one of the `check_*` functions
here before anything is changed, so a rejected call leaves no trace.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, NoReturn, cast
from uuid import UUID

from ._errors import InvalidArgument

ROLES: Final = frozenset({"user", "assistant", "system", "tool"})
#: What a `SessionEvent` reports: "rejected" is a change the database refused for good
#: (the session then reads as stored again, under a new version: an "updated" event).
EventKind = Literal["created", "updated", "expired", "ended", "deleted", "rejected"]

MAX_ID_CHARS: Final = 200
MAX_NAME_CHARS: Final = 100
MAX_TITLE_CHARS: Final = 500
MAX_NOTE_CHARS: Final = 10_000
MAX_METADATA_BYTES: Final = 64 * 1024
MAX_METADATA_DEPTH: Final = 32
MAX_TIMEOUT: Final = 366 * 24 * 3600.0
MIN_SECONDS: Final = 1e-6
#: Integers in metadata must fit 64 bits (JSON consumers lose precision beyond).
MAX_JSON_INT: Final = 2**63 - 1

_COMPACT_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class JsonObject(dict[str, Any]):
    """A read-only JSON object: a `dict` (so `json.dumps` takes it) that refuses changes.

    Being immutable, and shared by every version of a session until its
    metadata changes, it keeps its JSON text once computed (`json_text`), so
    flushing a session over and over encodes its metadata once.
    """

    __slots__ = ("_json",)
    _json: str

    def json_text(self) -> str:
        """Compact JSON (`ensure_ascii=False`, no NaN), computed on the first call only."""
        try:
            return self._json
        except AttributeError:
            self._json = _COMPACT_JSON.encode(self)
            return self._json

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("session metadata is read-only; pass new metadata to update()")

    __setitem__ = __delitem__ = __ior__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        raise TypeError("unhashable type: 'JsonObject'")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JsonObject, (dict(self),))


class JsonArray(list[Any]):
    """A read-only JSON array: a `list` that refuses changes."""

    __slots__ = ()

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("session metadata is read-only; pass new metadata to update()")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _readonly
    append = extend = insert = pop = remove = clear = sort = reverse = _readonly

    def __reduce__(self) -> tuple[Any, ...]:
        return (JsonArray, (list(self),))


EMPTY_METADATA: Final = JsonObject()


@dataclass(frozen=True, slots=True)
class Note:
    """A free-text note attached to a session by `SessionRuntime.add_note`."""

    text: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation; `seq` counts from 1 within its session."""

    seq: int
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    """An immutable snapshot of one session at one `version`.

    Timestamps are timezone-aware UTC datetimes. `timeout` is the sliding
    expiration in seconds: every activity sets `expires_at` to
    `last_activity + timeout`.
    """

    id: UUID
    user_id: str
    agent: str
    chat_id: str | None
    title: str | None
    state: str
    metadata: Mapping[str, Any]
    notes: tuple[Note, ...]
    is_active: bool
    message_count: int
    created_at: datetime
    updated_at: datetime
    last_activity: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    version: int
    timeout: float

    def __hash__(self) -> int:
        # The metadata mapping is unhashable; (id, version) identifies a snapshot.
        return hash((self.id, self.version))

    # ------------------------------------------------ JSON-ready form, and back

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON values: the id a string, datetimes ISO 8601 with offset,
        metadata a plain dict, notes a list of {"text", "created_at"}. `json.dumps` takes it."""
        def iso(at: datetime | None) -> str | None:
            return None if at is None else at.isoformat()

        return {
            "id": str(self.id), "user_id": self.user_id, "agent": self.agent, "chat_id": self.chat_id,
            "title": self.title, "state": self.state, "metadata": json.loads(json.dumps(self.metadata)),
            "notes": [{"text": n.text, "created_at": n.created_at.isoformat()} for n in self.notes],
            "is_active": self.is_active, "message_count": self.message_count,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "last_activity": iso(self.last_activity), "expires_at": iso(self.expires_at),
            "ended_at": iso(self.ended_at), "end_reason": self.end_reason, "version": self.version,
            "timeout": self.timeout,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Session:
        """The snapshot `to_dict` made (metadata read-only again).

        Raises:
            InvalidArgument: a field is missing or not of its kind.
        """
        def at(name: str) -> datetime:
            value = data.get(name)
            try:
                parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
            except ValueError:
                parsed = None
            if parsed is None or parsed.tzinfo is None:
                _fail(name, f"must be an ISO 8601 time with its offset, got {_show(value)}")
            return parsed

        try:
            notes = tuple(Note(str(n["text"]), datetime.fromisoformat(n["created_at"]))
                          for n in data.get("notes", ()))
            return cls(
                id=check_session_id(data.get("id"), "id"), user_id=data["user_id"], agent=data["agent"],
                chat_id=data.get("chat_id"), title=data.get("title"), state=data["state"],
                metadata=check_metadata(data.get("metadata")), notes=notes,
                is_active=check_bool("is_active", data.get("is_active")),
                message_count=int(data["message_count"]), created_at=at("created_at"),
                updated_at=at("updated_at"), last_activity=at("last_activity"),
                expires_at=at("expires_at"),
                ended_at=None if data.get("ended_at") is None else at("ended_at"),
                end_reason=data.get("end_reason"), version=int(data["version"]),
                timeout=float(data["timeout"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidArgument):
                raise
            _fail("data", f"is not a Session.to_dict() mapping: {_show(exc)}")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of `SessionRuntime.list`; pass `next_cursor` as `after` for the next."""

    items: tuple[Session, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A change published to subscribers, with the session's snapshot after it.

    For "rejected", `session` is the snapshot the database refused.
    """

    kind: EventKind
    session: Session


#: The kinds the durable feed records (`SessionRuntime.read_events`): every
#: committed change. "rejected" is not one (nothing was committed).
FeedKind = Literal["created", "updated", "expired", "ended", "deleted"]


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One committed change of a session, read from the durable feed (`SessionRuntime.read_events`).

    The snapshot fields are the session's after the change ("deleted": as it
    was when deleted). An "updated" event stands for every change of the
    session since its previous event in the feed (see the README, "Events
    nothing can lose").
    """

    #: Pass as `after` to read the events that follow this one.
    cursor: str
    kind: FeedKind
    session_id: UUID
    user_id: str
    agent: str
    chat_id: str | None
    state: str
    is_active: bool
    end_reason: str | None
    #: The session's version after the change; grows along a session's events.
    version: int
    #: When the change was committed, in the database's time (UTC).
    at: datetime


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of the durable feed; pass `next_cursor` as `after` for the next.

    `next_cursor` is the cursor of the page's last event; for a page with no
    events, the `after` it was read with (None: the start of the feed), so
    that a consumer always asks again with `next_cursor`.
    """

    events: tuple[FeedEvent, ...]
    next_cursor: str | None


# --------------------------------------------------------------------- checks


def _fail(field: str, problem: str) -> NoReturn:
    raise InvalidArgument(field, problem)


# Input is normalised before it is checked: each check first turns the value
# into a plain object of the exact built-in type (`str`, `int`, `float`,
# `UUID`, `dict`, `list`), read through the built-in type's own methods, so a
# subclass whose `__str__`, `__eq__`, `__hash__`, `__index__`, `items()` or
# `__iter__` tells another story than the data it holds is checked and stored
# as that data, never as what its methods say. The type is taken from
# `type(value)`, not `isinstance` (which believes a `__class__` property).
# What is returned is what was checked, and only that is ever stored.
# tests/test_lying_input.py pins this for every public call.

def _type_name(value: object) -> str:
    return type.__dict__["__name__"].__get__(type(value))  # type: ignore[no-any-return]


def _show(value: object, width: int = 80) -> str:
    """A bounded repr that never fails, and never asks a hostile object for its own repr."""
    kind = type(value)
    if issubclass(kind, bool) or value is None:
        text = repr(value)
    elif issubclass(kind, int):
        number = int.__index__(cast(int, value))
        if number.bit_length() > 64:  # Python refuses to print ints of over 4300 digits
            return f"<an integer of {number.bit_length()} bits>"
        text = int.__repr__(number)
    elif issubclass(kind, float):
        text = float.__repr__(value)
    elif issubclass(kind, str):
        text = str.__repr__(value)
    elif issubclass(kind, bytes):
        text = bytes.__repr__(value)
    else:
        text = f"<a {_type_name(value)}>"
    return text if len(text) <= width else text[: width - 3] + "..."


def plain_str(field: str, value: object) -> str:
    """`value` as an exact `str` holding the characters it holds; InvalidArgument if not a string."""
    if not issubclass(type(value), str):
        _fail(field, f"must be a string, not {_type_name(value)}")
    return str.__str__(value)  # an exact copy for a subclass


def plain_int(field: str, value: object) -> int:
    """`value` as an exact `int`; InvalidArgument for a bool or a non-integer."""
    kind = type(value)
    if kind is bool or not issubclass(kind, int):
        _fail(field, f"must be an integer, not {_type_name(value)}")
    return int.__index__(cast(int, value))  # an exact copy for a subclass


def check_text(field: str, value: object, *, max_chars: int) -> str:
    """A non-empty string PostgreSQL can store: no NUL, valid UTF-8, bounded."""
    text = plain_str(field, value)
    if not text or text.isspace():
        _fail(field, "must not be empty")
    if len(text) > max_chars:
        _fail(field, f"must be at most {max_chars} characters, got {len(text)}")
    _check_storable(field, text)
    return text


def check_optional_text(field: str, value: object, *, max_chars: int) -> str | None:
    return None if value is None else check_text(field, value, max_chars=max_chars)


def _check_storable(field: str, value: str) -> None:
    if "\x00" in value:
        _fail(field, "must not contain the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(field, "must be valid Unicode (it contains a lone surrogate)")


def check_session_id(value: object, field: str = "session_id") -> UUID:
    kind = type(value)
    if kind is UUID:
        return value  # type: ignore[return-value]
    if issubclass(kind, UUID):
        # A subclass (asyncpg's own, a caller's): asked once for its number,
        # from which an exact UUID is built, so the id used is the id checked.
        try:
            number = value.int  # type: ignore[attr-defined]
        except Exception:
            number = None
        if issubclass(type(number), int) and type(number) is not bool:
            number = int.__index__(number)
            if 0 <= number < 1 << 128:
                return UUID(int=number)
    elif issubclass(kind, str):
        try:
            return UUID(plain_str(field, value))
        except ValueError:
            pass
    _fail(field, f"must be a UUID, got {_show(value)}")


def check_role(value: object) -> str:
    role = plain_str("role", value) if issubclass(type(value), str) else None
    if role not in ROLES:
        _fail("role", f"must be one of {sorted(ROLES)}, got {_show(value)}")
    return role


def check_content(value: object, *, max_bytes: int) -> str:
    content = plain_str("content", value)
    if not content:
        _fail("content", "must not be empty")
    _check_storable("content", content)
    size = len(content.encode("utf-8"))
    if size > max_bytes:
        _fail("content", f"must be at most {max_bytes} bytes of UTF-8, got {size}")
    return content


def check_int(field: str, value: object, *, low: int, high: int) -> int:
    number = plain_int(field, value)
    if not low <= number <= high:
        _fail(field, f"must be between {low} and {high}, got {_show(number)}")
    return number


def check_optional_int(field: str, value: object, *, low: int, high: int) -> int | None:
    return None if value is None else check_int(field, value, low=low, high=high)


def check_seconds(field: str, value: object, *, high: float = math.inf, zero_ok: bool = False) -> float:
    """A duration in seconds: a finite real number, positive (or zero when allowed)."""
    kind = type(value)
    if kind is bool or not issubclass(kind, (int, float)):
        _fail(field, f"must be a number of seconds, not {_type_name(value)}")
    if issubclass(kind, float):
        seconds = float.__float__(cast(float, value))  # an exact copy for a subclass
    else:
        try:
            seconds = float(int.__index__(cast(int, value)))
        except OverflowError:
            _fail(field, f"must be at most {high} seconds, got {_show(value)}")
    if not math.isfinite(seconds):
        _fail(field, f"must be finite, got {seconds}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        _fail(field, f"must be {'at least 0' if zero_ok else 'greater than 0'}, got {_show(value)}")
    if 0 < seconds < MIN_SECONDS:
        # Timestamps hold microseconds: a shorter duration would round to nothing.
        _fail(field, f"must be at least {MIN_SECONDS} seconds (one microsecond), got {seconds}")
    if seconds > high:
        _fail(field, f"must be at most {high} seconds, got {_show(value)}")
    return seconds


def check_bool(field: str, value: object) -> bool:
    if type(value) is not bool:
        _fail(field, f"must be True or False, not {_show(value, 40)}")
    return value is True


def check_metadata(value: object, field: str = "metadata") -> JsonObject:
    """Plain JSON: string keys, finite numbers, no NUL; returned deep-frozen, as plain copies."""
    if value is None:
        return EMPTY_METADATA
    if not isinstance(value, Mapping):
        _fail(field, f"must be a mapping, not {_type_name(value)}")
    frozen = _freeze(value, field, depth=0)
    if type(frozen) is not JsonObject:  # a lying __class__ got past isinstance(Mapping)
        _fail(field, f"must be a mapping, not {_type_name(value)}")
    size = _json_size(frozen)
    if size > MAX_METADATA_BYTES:
        _fail(field, f"must encode to at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
    return frozen


#: No JSON object within the size limit has more entries (each takes at least `"":0,`);
#: reading stops there, so an endless `items()` is refused rather than read for ever.
_MAX_ENTRIES: Final = MAX_METADATA_BYTES // 5


def _freeze(value: object, path: str, depth: int) -> Any:
    if depth > MAX_METADATA_DEPTH:
        _fail(path, f"nests deeper than {MAX_METADATA_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool:
        return value
    if issubclass(kind, int):
        number = int.__index__(cast(int, value))
        if not -MAX_JSON_INT - 1 <= number <= MAX_JSON_INT:
            _fail(path, f"integers must fit in 64 bits, got {_show(number)}")
        return number
    if issubclass(kind, float):
        real = float.__float__(cast(float, value))
        if not math.isfinite(real):
            _fail(path, f"must be a finite number, got {real}")
        return real
    if issubclass(kind, str):
        text = str.__str__(value)
        _check_storable(path, text)
        return text
    if issubclass(kind, (list, tuple)):
        items: list[object] = list(list.__iter__(cast(list[object], value)) if issubclass(kind, list)
                                   else tuple.__iter__(cast(tuple[object, ...], value)))
        return JsonArray(_freeze(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items))
    if isinstance(value, Mapping):
        entries: dict[str, Any] = {}
        for key, item in _entries(value, path):
            if not issubclass(type(key), str):
                _fail(path, f"keys must be strings, got {_show(key, 40)}")
            name = str.__str__(key)
            _check_storable(f"{path} key", name)
            if name in entries:
                _fail(path, f"has the key {name!r:.40} twice")
            entries[name] = _freeze(item, f"{path}[{name!r:.40}]", depth + 1)
        return JsonObject(entries)
    _fail(path, f"must be plain JSON (null, bool, number, string, list, object), not {_type_name(value)}")


def _entries(mapping: Mapping[Any, Any], path: str) -> list[tuple[object, object]]:
    """One snapshot of a mapping's (key, value) pairs: a dict's own, another mapping's `items()`.

    What the snapshot holds is all that is checked and stored; `keys()`,
    `__iter__` and `__getitem__` are never asked again.
    """
    pairs: list[tuple[object, object]] = []
    try:
        source = (dict.items(cast(dict[object, object], mapping)) if issubclass(type(mapping), dict)
                  else mapping.items())
        for pair in source:
            if type(pair) is not tuple or len(pair) != 2:
                _fail(path, "items() must give (key, value) pairs")
            if len(pairs) == _MAX_ENTRIES:
                _fail(path, f"has more than {_MAX_ENTRIES} entries")
            pairs.append(pair)
    except InvalidArgument:
        raise
    except Exception as exc:  # a mapping whose items() fails: the caller's value is bad
        raise InvalidArgument(path, f"could not be read ({_type_name(exc)} from its items())") from exc
    return pairs


def _json_size(value: JsonObject) -> int:
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
