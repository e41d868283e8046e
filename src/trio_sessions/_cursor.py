"""Cursors, made and checked strictly: `list()`'s keysets, and the event feed's positions.

A `list()` cursor is the page's last `(created_at, id)`, as URL-safe base64
text; a feed cursor is an event's position `(xid, id)` (see `_feed`), the
same way. Neither is signed: each names only a position the caller was
shown, and `list()`'s filters still apply; what matters is that any cursor
that passes decodes into values every store accepts.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from uuid import UUID

from . import _model as model
from ._errors import InvalidArgument
from ._model import Session


def encode_cursor(session: Session) -> str:
    return _cursor_text(session.created_at.astimezone(UTC), session.id)


def _cursor_text(at: datetime, session_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{session_id}".encode()).decode("ascii")


def decode_cursor(value: object) -> tuple[datetime, UUID]:
    """The keyset a cursor names; InvalidArgument for any text `encode_cursor` did not make.

    Not authenticated, but checked strictly: a cursor carries only the
    position of a session the caller was shown, and forging one grants
    nothing (filters still apply), so what matters is that every cursor that
    passes decodes into values any store accepts. The timestamp must be UTC
    (a forged offset once pushed it out of PostgreSQL's range and came back
    as asyncpg's DataError) and the text must be exactly what encoding the
    decoded values gives back. A key-signed cursor would break across
    restarts and across the processes that will share one database.
    """
    cursor = model.plain_str("after", value)
    refused = InvalidArgument("after", "must be a cursor from Page.next_cursor")
    if len(cursor) > 200:
        raise refused
    try:
        created, _, session_id = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition("|")
        at = datetime.fromisoformat(created)
        key = UUID(session_id)
    except (ValueError, UnicodeError, binascii.Error):
        raise refused from None
    if at.utcoffset() != timedelta(0):
        raise refused
    at = at.replace(tzinfo=UTC)
    if _cursor_text(at, key) != cursor:
        raise refused
    return at, key


#: Largest transaction id a feed position holds (PostgreSQL's xid8 is 64 bits), and largest event id.
MAX_FEED_XID = 2**64 - 1
MAX_FEED_ID = 2**63 - 1


def encode_feed_cursor(position: tuple[int, int]) -> str:
    """The cursor of a feed position `(xid, id)` (see `Store.read_events`)."""
    xid, event_id = position
    return base64.urlsafe_b64encode(f"e{xid}.{event_id}".encode()).decode("ascii")


def decode_feed_cursor(value: object) -> tuple[int, int] | None:
    """The feed position a cursor names (None for None: the start); InvalidArgument for any text
    `encode_feed_cursor` did not make.

    Checked as strictly as `decode_cursor`, for the same reason: both numbers
    must be in range for every store, and the text must be exactly what
    encoding them gives back.
    """
    if value is None:
        return None
    cursor = model.plain_str("after", value)
    refused = InvalidArgument("after", "must be a cursor from FeedEvent.cursor or EventPage.next_cursor")
    if len(cursor) > 60:
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
        xid_text, dot, id_text = text.removeprefix("e").partition(".")
        if not (text.startswith("e") and dot and xid_text.isdigit() and id_text.isdigit()):
            raise refused
        position = int(xid_text), int(id_text)
    except (ValueError, UnicodeError, binascii.Error):
        raise refused from None
    if position[0] > MAX_FEED_XID or position[1] > MAX_FEED_ID or encode_feed_cursor(position) != cursor:
        raise refused
    return position
