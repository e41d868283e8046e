"""The actor's generated snapshot copiers, against `dataclasses.replace`."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from trio_sessions._model import Note
from trio_sessions._transitions import _appended, _expired, _touched
from trio_sessions._transitions import expired as expired_snapshot

from .test_store_contract import T0, make_session


def test_copiers_equal_dataclasses_replace() -> None:
    # Every field differs from its default, so a slot copied from the wrong
    # field, or left unset, shows.
    session = make_session(user_id="u9", agent="vendas", chat_id="chat", title="t", state="waiting",
                           metadata={"k": 1}, notes=(Note("n", T0),), message_count=3, version=7,
                           timeout=90.5)
    later = T0 + timedelta(seconds=5)
    expires = later + timedelta(seconds=90.5)
    assert _touched(session, later, expires, later, 8) == dataclasses.replace(
        session, last_activity=later, expires_at=expires, updated_at=later, version=8)
    assert _appended(session, later, expires, later, 8, 4) == dataclasses.replace(
        session, last_activity=later, expires_at=expires, updated_at=later, version=8, message_count=4)
    assert _expired(session, False, later, "expired", later, 8) == dataclasses.replace(
        session, is_active=False, ended_at=later, end_reason="expired", updated_at=later, version=8)
    assert expired_snapshot(session) == dataclasses.replace(
        session, is_active=False, ended_at=session.expires_at, end_reason="expired",
        updated_at=session.expires_at, version=8)
