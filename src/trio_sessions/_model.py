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
from typing import Any, Final, Literal, NoReturn
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


# --------------------------------------------------------------------- checks


def _fail(field: str, problem: str) -> NoReturn:
    raise InvalidArgument(field, problem)


def _show(value: object, width: int = 80) -> str:
    """A bounded repr that never fails (Python refuses to print ints of over 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_text(field: str, value: object, *, max_chars: int) -> str:
    """A non-empty string PostgreSQL can store: no NUL, valid UTF-8, bounded."""
    if not isinstance(value, str):
        _fail(field, f"must be a string, not {type(value).__name__}")
    if not value or value.isspace():
        _fail(field, "must not be empty")
    if len(value) > max_chars:
        _fail(field, f"must be at most {max_chars} characters, got {len(value)}")
    _check_storable(field, value)
    return value


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
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    _fail(field, f"must be a UUID, got {_show(value)}")


def check_role(value: object) -> str:
    if not isinstance(value, str) or value not in ROLES:
        _fail("role", f"must be one of {sorted(ROLES)}, got {_show(value)}")
    return value


def check_content(value: object, *, max_bytes: int) -> str:
    if not isinstance(value, str):
        _fail("content", f"must be a string, not {type(value).__name__}")
    if not value:
        _fail("content", "must not be empty")
    _check_storable("content", value)
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        _fail("content", f"must be at most {max_bytes} bytes of UTF-8, got {size}")
    return value


def check_int(field: str, value: object, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        _fail(field, f"must be between {low} and {high}, got {_show(value)}")
    return value


def check_optional_int(field: str, value: object, *, low: int, high: int) -> int | None:
    return None if value is None else check_int(field, value, low=low, high=high)


def check_seconds(field: str, value: object, *, high: float = math.inf, zero_ok: bool = False) -> float:
    """A duration in seconds: a finite real number, positive (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, f"must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        _fail(field, f"must be at most {high} seconds, got {_show(value)}")
    if not math.isfinite(seconds):
        _fail(field, f"must be finite, got {value}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        _fail(field, f"must be {'at least 0' if zero_ok else 'greater than 0'}, got {value}")
    if 0 < seconds < MIN_SECONDS:
        # Timestamps hold microseconds: a shorter duration would round to nothing.
        _fail(field, f"must be at least {MIN_SECONDS} seconds (one microsecond), got {value}")
    if seconds > high:
        _fail(field, f"must be at most {high} seconds, got {_show(value)}")
    return seconds


def check_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        _fail(field, f"must be True or False, not {_show(value, 40)}")
    return value


def check_metadata(value: object, field: str = "metadata") -> JsonObject:
    """Plain JSON: string keys, finite numbers, no NUL; returned deep-frozen."""
    if value is None:
        return EMPTY_METADATA
    if not isinstance(value, Mapping):
        _fail(field, f"must be a mapping, not {type(value).__name__}")
    frozen = _freeze(value, field, depth=0)
    assert isinstance(frozen, JsonObject)
    size = _json_size(frozen)
    if size > MAX_METADATA_BYTES:
        _fail(field, f"must encode to at most {MAX_METADATA_BYTES} bytes of JSON, got {size}")
    return frozen


def _freeze(value: object, path: str, depth: int) -> Any:
    if depth > MAX_METADATA_DEPTH:
        _fail(path, f"nests deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_JSON_INT - 1 <= value <= MAX_JSON_INT:
            _fail(path, f"integers must fit in 64 bits, got {_show(value)}")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(path, f"must be a finite number, got {value}")
        return float(value)
    if isinstance(value, str):
        _check_storable(path, value)
        return str(value)
    if isinstance(value, Mapping):
        items = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(path, f"keys must be strings, got {_show(key, 40)}")
            _check_storable(f"{path} key", key)
            items[str(key)] = _freeze(item, f"{path}[{key!r:.40}]", depth + 1)
        return JsonObject(items)
    if isinstance(value, (list, tuple)):
        return JsonArray(_freeze(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
    _fail(path, f"must be plain JSON (null, bool, number, string, list, object), not {type(value).__name__}")


def _json_size(value: JsonObject) -> int:
    return len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8"))
