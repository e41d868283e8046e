"""Rows of `PostgresStore`: `Session`s and `Message`s to column arrays, and back.

Pure functions, no I/O: what a batch sends as the arrays of the `unnest`
statements in `_sql`, and the records PostgreSQL returns as frozen
snapshots. Metadata and notes travel as JSON text, cast to jsonb in SQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol
from uuid import UUID

from .._cursor import encode_feed_cursor
from .._model import (
    EMPTY_METADATA,
    FeedEvent,
    JsonObject,
    Message,
    Note,
    Session,
    SessionEvent,
    check_metadata,
)
from .._store import WriteBatch, fenced_sessions


class Row(Protocol):
    """A record as the driver returns it: its columns by position."""

    def __getitem__(self, index: Any, /) -> Any: ...

_MICROSECOND: Final = timedelta(microseconds=1)

# A JSON string (skipped) or a number json.dumps wrote with a positive exponent.
_STRING_OR_EXPONENT_NUMBER: Final = re.compile(r'("(?:[^"\\]|\\.)*")|(-?[0-9.]+e\+[0-9]+)')


#: One encoder for every row (json.dumps with options builds a new one per call).
_COMPACT_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

#: `json.dumps(text, ensure_ascii=False)` of a str, in C.
_json_string: Final[Callable[[str], str]] = json.encoder.encode_basestring


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """JSON text for a jsonb column that reads back as the same Python values.

    jsonb keeps a number as an exact decimal and prints it without exponent,
    so a float that json.dumps writes as `1.5e+300` (any float of 1e16 or
    more) would read back as an int. Written positionally with a `.0`, it
    reads back as the same float (test_round_trip_of_every_field).

    Most sessions have no metadata; the others share one immutable
    `JsonObject` across their versions, which encodes itself once.
    """
    if not metadata:
        return "{}"
    text = metadata.json_text() if type(metadata) is JsonObject else _COMPACT_JSON.encode(metadata)
    if "e+" not in text:
        return text
    return _STRING_OR_EXPONENT_NUMBER.sub(_positional, text)


def _positional(match: re.Match[str]) -> str:
    string, number = match.groups()
    return string if number is None else format(float(number), ".1f")


def encode_notes(notes: tuple[Note, ...]) -> str:
    """`[{"text": ..., "created_at": "<ISO-8601 UTC>"}, ...]`, as compact JSON.

    The same text as json.dumps of that list, built directly: an ISO
    timestamp needs no escaping, and most sessions have no notes at all.
    """
    if not notes:
        return "[]"
    return "[" + ",".join(
        f'{{"text":{_json_string(note.text)},"created_at":"{note.created_at.astimezone(UTC).isoformat()}"}}'
        for note in notes) + "]"


def decode_notes(text: str) -> tuple[Note, ...]:
    return tuple(Note(item["text"], _as_utc(datetime.fromisoformat(item["created_at"])))
                 for item in json.loads(text))


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def session_columns(sessions: Sequence[Session]) -> list[Sequence[Any]]:
    """The 18 column arrays of `UPSERT_SESSIONS`, rows in the order given."""
    rows = [
        (s.id, s.user_id, s.agent, s.chat_id, s.title, s.state, encode_metadata(s.metadata),
         encode_notes(s.notes), s.is_active, s.message_count, s.created_at, s.updated_at,
         s.last_activity, s.expires_at, s.ended_at, s.end_reason, s.version, s.timeout)
        for s in sessions
    ]
    return list(zip(*rows, strict=True))


def touched_columns(sessions: Sequence[Session]) -> list[Sequence[Any]]:
    """The 5 column arrays of `TOUCH_SESSIONS`, rows in the order given."""
    rows = [(s.id, s.last_activity, (s.expires_at - s.last_activity) // _MICROSECOND, s.version,
             s.message_count)
            for s in sessions]
    return list(zip(*rows, strict=True))


def by_id(sessions: Sequence[Session]) -> list[Session]:
    """Sessions in id order: sorted by `id.int`, the same order as by `id`
    (UUIDs compare by it), but compared in C rather than by `UUID.__lt__`,
    ten times faster."""
    return sorted(sessions, key=_id_int)


def _id_int(session: Session) -> int:
    return session.id.int


def message_columns(messages: Sequence[tuple[UUID, Message]]) -> list[Sequence[Any]]:
    """The 5 column arrays of `INSERT_MESSAGES`, in batch order (first copy wins)."""
    rows = [(session_id, m.seq, m.role, m.content, m.created_at) for session_id, m in messages]
    return list(zip(*rows, strict=True))


def event_columns(events: Sequence[SessionEvent]) -> list[Sequence[Any]]:
    """The 9 column arrays of `INSERT_EVENTS`, in the order given."""
    rows = [(e.kind, s.id, s.version, s.user_id, s.agent, s.chat_id, s.state, s.is_active, s.end_reason)
            for e in events for s in (e.session,)]
    return list(zip(*rows, strict=True))


def event_from_row(row: Row) -> FeedEvent:
    """The `FeedEvent` of a `READ_EVENTS` row (its position first, the xid as text)."""
    position = (int(row[0]), row[1])
    return FeedEvent(encode_feed_cursor(position), row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                     row[9], row[10], row[11])


def fenced(batch: WriteBatch, locked: Sequence[Row], among: Iterable[UUID] | None = None) -> list[UUID]:
    """The sessions of `batch` (`among` them; see `fenced_sessions`) that fail the fence, given
    its locked `(id, owner, owner_epoch)` rows."""
    return fenced_sessions(batch, {row[0]: (row[1], row[2]) for row in locked}, among)


def session_from_row(row: Row) -> Session:
    """The `Session` of a row's first 18 columns (`SESSION_COLUMNS`; `load` adds more)."""
    (id_, user_id, agent, chat_id, title, state, metadata, notes, is_active, message_count,
     created_at, updated_at, last_activity, expires_at, ended_at, end_reason, version, timeout) = row[:18]
    return Session(
        id=id_, user_id=user_id, agent=agent, chat_id=chat_id, title=title, state=state,
        # jsonb prints an empty object or array so: most sessions skip decoding.
        metadata=EMPTY_METADATA if metadata == "{}" else check_metadata(json.loads(metadata)),
        notes=() if notes == "[]" else decode_notes(notes),
        is_active=is_active, message_count=message_count, created_at=created_at,
        updated_at=updated_at, last_activity=last_activity, expires_at=expires_at,
        ended_at=ended_at, end_reason=end_reason, version=version, timeout=timeout,
    )


def messages_from_rows(rows: Sequence[Row]) -> tuple[Message, ...]:
    """Messages from rows fetched newest first, returned oldest first."""
    return tuple(Message(row[0], row[1], row[2], row[3]) for row in reversed(rows))
