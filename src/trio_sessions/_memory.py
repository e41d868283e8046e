"""`MemoryStore`: the `Store` protocol in memory, a real backend for embedding and for fast tests.

It passes the same contract tests as `PostgresStore` (tests/test_store_contract.py)
and enforces the same rules: the version guard, the fence of ownership, and
one active session per chat (the unique index of migration 0004).
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from uuid import UUID

import trio

from ._cursor import encode_feed_cursor
from ._errors import SessionMoved
from ._model import FeedEvent, Message, Session, SessionEvent
from ._store import (
    ACTIVITY_FIELDS,
    Acquired,
    Busy,
    ChatKey,
    ChatTaken,
    Joined,
    ListQuery,
    WriteBatch,
    chat_key,
    dated_after,
    fenced_sessions,
)


def _taken(session_id: UUID, holder: UUID) -> ChatTaken:
    return ChatTaken(f"session {session_id} would be a second active session of its chat "
                     f"(sessions_chat_active_idx: {holder} has it)", holder)


class MemoryStore:
    """A complete store in memory, for embedding and for fast tests.

    It keeps its data across runtimes: open a second runtime on the same
    `MemoryStore` to see what the first one wrote. Each call is a Trio
    checkpoint, like a real backend's.
    """

    def __init__(self) -> None:
        self._sessions: dict[UUID, Session] = {}
        self._messages: dict[UUID, list[Message]] = {}
        # Ownership: each session's (owner, epoch); each instance's lease end
        # (Trio time: the store's own clock) or None once it left; requests.
        self._owners: dict[UUID, tuple[UUID | None, int]] = {}
        self._leases: dict[UUID, float | None] = {}
        # When each instance last renewed, and since when it has been shared (None: alone).
        self._renewed: dict[UUID, float] = {}
        self._started: dict[UUID, float] = {}
        self._shared: dict[UUID, float | None] = {}
        self._handoffs: dict[UUID, tuple[UUID, UUID]] = {}
        self._notices: dict[UUID, trio.Event] = {}
        # The unique index over active sessions' chats: chat_key -> session id.
        self._chats: dict[ChatKey, UUID] = {}
        # The event feed, in position order: (position, Trio time written, event).
        # A position is (the write's number, the event's): writes here are
        # atomic, so positions grow in commit order, as PostgreSQL's read do.
        self._events: list[tuple[tuple[int, int], float, FeedEvent]] = []
        self._event_keys: set[tuple[UUID, int, str]] = set()
        self._event_writes = 0
        self._event_count = 0

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[None]:
        await trio.lowlevel.checkpoint()
        yield

    async def load(self, session_id: UUID, *, messages: int) -> tuple[Session, tuple[Message, ...]] | None:
        await trio.lowlevel.checkpoint()
        session = self._sessions.get(session_id)
        if session is None:
            return None
        stored = self._messages.get(session_id, [])
        return session, tuple(stored[-messages:]) if messages else ()

    async def load_messages(self, session_id: UUID, *, limit: int, up_to_seq: int) -> tuple[Message, ...]:
        await trio.lowlevel.checkpoint()
        stored = self._messages.get(session_id, [])
        end = bisect.bisect_right(stored, up_to_seq, key=lambda m: m.seq)
        return tuple(stored[max(0, end - limit):end])

    async def load_sessions(self, session_ids: Sequence[UUID]) -> dict[UUID, Session]:
        await trio.lowlevel.checkpoint()
        stored = self._sessions
        return {session_id: stored[session_id] for session_id in session_ids if session_id in stored}

    async def live_deadlines(self) -> list[tuple[UUID, float]]:
        await trio.lowlevel.checkpoint()
        live = [(s.expires_at, s.id) for s in self._sessions.values() if s.is_active]
        live.sort(key=lambda pair: pair[0])
        return [(session_id, expires_at.timestamp()) for expires_at, session_id in live]

    async def write(self, batch: WriteBatch) -> tuple[UUID, ...]:
        await trio.lowlevel.checkpoint()
        fenced: tuple[UUID, ...] = ()
        if batch.owner is not None:
            fenced = tuple(self._fenced(batch))
            if fenced:
                refused = set(fenced)
                batch = batch.only(lambda session_id: session_id not in refused)
        rows = [session for session in batch.sessions
                if (stored := self._sessions.get(session.id)) is None or stored.version < session.version]
        self._check_chats(rows, batch.deletes)
        if batch.owner is not None:
            owned = (batch.owner, 1)  # the common pair, one tuple for the batch's new sessions
            for session in rows:
                if session.id in batch.created and session.id not in self._sessions:
                    epoch = batch.epochs.get(session.id, 1)
                    self._owners[session.id] = owned if epoch == 1 else (batch.owner, epoch)
        chats = self._chats
        for session in rows:
            stored = self._sessions.get(session.id)
            if stored is not None and (old := chat_key(stored)) is not None and chats.get(old) == session.id:
                del chats[old]
            if (new := chat_key(session)) is not None:
                chats[new] = session.id
            self._sessions[session.id] = session
        written = {session.id: session for session in rows}  # what the version guard let through
        for session in batch.touched:
            stored = self._sessions.get(session.id)
            if stored is not None and stored.version < session.version:
                self._sessions[session.id] = written[session.id] = replace(
                    stored, **{name: getattr(session, name) for name in ACTIVITY_FIELDS})
        for session_id, message in batch.messages:
            stored_messages = self._messages.setdefault(session_id, [])
            if not stored_messages or stored_messages[-1].seq < message.seq:
                stored_messages.append(message)
            else:  # a retried append: keep the first copy, keep seq order
                index = bisect.bisect_left(stored_messages, message.seq, key=lambda m: m.seq)
                if index == len(stored_messages) or stored_messages[index].seq != message.seq:
                    stored_messages.insert(index, message)
        for session_id in batch.deletes:
            stored = self._sessions.pop(session_id, None)
            if stored is not None and (old := chat_key(stored)) is not None and chats.get(old) == session_id:
                del chats[old]
            self._messages.pop(session_id, None)
            self._owners.pop(session_id, None)
        if batch.events:
            self._record_events(batch.events, written)
        return fenced

    def _record_events(self, events: Sequence[SessionEvent], written: Mapping[UUID, Session]) -> None:
        """Append the feed's events of one write, as PostgreSQL does: a lifecycle event unless it is
        stored already (a retry), an "updated" one only with its row as written, if it was."""
        self._event_writes += 1
        now, at = trio.current_time(), datetime.now(UTC)
        for event in sorted(events, key=lambda e: e.kind == "updated"):  # lifecycle first, as PostgreSQL
            s = event.session
            if event.kind == "updated":
                if (row := written.get(s.id)) is None:
                    continue
                s = row
            else:
                key = (s.id, s.version, event.kind)
                if key in self._event_keys:
                    continue
                self._event_keys.add(key)
            self._event_count += 1
            position = (self._event_writes, self._event_count)
            assert event.kind != "rejected"  # never in a batch: nothing is committed
            self._events.append((position, now, FeedEvent(
                encode_feed_cursor(position), event.kind, s.id, s.user_id, s.agent, s.chat_id, s.state,
                s.is_active, s.end_reason, s.version, at)))

    async def read_events(self, after: tuple[int, int] | None, limit: int) -> list[FeedEvent]:
        await trio.lowlevel.checkpoint()
        start = 0 if after is None else bisect.bisect_right(self._events, after, key=lambda e: e[0])
        return [event for _, _, event in self._events[start:start + limit]]

    async def prune_events(self, older_than: float, limit: int) -> int:
        await trio.lowlevel.checkpoint()
        cutoff = trio.current_time() - older_than
        # Of the `limit` first in position order, those older than the cutoff, as PostgreSQL prunes.
        oldest, rest = self._events[:limit], self._events[limit:]
        kept = [entry for entry in oldest if entry[1] > cutoff]
        for _, at, event in oldest:
            if at <= cutoff:
                self._event_keys.discard((event.session_id, event.version, event.kind))
        self._events = kept + rest
        return len(oldest) - len(kept)

    def _check_chats(self, rows: Sequence[Session], deletes: Sequence[UUID]) -> None:
        """Raise `ChatTaken` if writing `rows` and `deletes` would leave a chat two active sessions."""
        claims: dict[ChatKey, UUID] = {}
        for row in rows:
            if (key := chat_key(row)) is not None and (other := claims.setdefault(key, row.id)) != row.id:
                raise _taken(row.id, other)
        if not claims:
            return
        leaving = {*deletes, *(row.id for row in rows)}  # their rows in the batch decide for them
        for key, session_id in claims.items():
            holder = self._chats.get(key)
            if holder is not None and holder != session_id and holder not in leaving:
                raise _taken(session_id, holder)

    async def place(self, row: Session, instance: UUID, epoch: int, *, created: bool,
                    event: bool = False) -> Session | UUID:
        await trio.lowlevel.checkpoint()
        stored = self._sessions.get(row.id)
        if (stored is None and not created) or (
                stored is not None and self._owners.get(row.id, (None, 0)) != (instance, epoch)):
            raise SessionMoved(f"session {row.id} is not this runtime's to write (another one took it)")
        if created and stored is None:
            ended = [s.ended_at for s in self._sessions.values()
                     if s.ended_at is not None and s.ended_at > row.created_at
                     and (s.user_id, s.agent, s.chat_id) == (row.user_id, row.agent, row.chat_id)]
            if ended:
                row = dated_after(row, max(ended))
        events = (SessionEvent("created" if created else "updated", row),) if event else ()
        batch = WriteBatch((row,), (), (), owner=instance, epochs={row.id: epoch},
                           created=frozenset({row.id}) if created else frozenset(), events=events)
        try:
            await self.write(batch)
        except ChatTaken as taken:
            assert taken.holder is not None  # this store always knows it
            return taken.holder
        return self._sessions[row.id]

    def _fenced(self, batch: WriteBatch) -> list[UUID]:
        among = {*batch.session_ids(), *(session_id for session_id, _ in batch.messages)}
        stored = {session_id: self._owners.get(session_id, (None, 0)) for session_id in among
                  if session_id in self._sessions}
        return fenced_sessions(batch, stored, among)

    # -------------------------------------------------------------- ownership

    def _live(self, instance: UUID | None) -> bool:
        if instance is None:
            return False
        until = self._leases.get(instance)
        return until is not None and until > trio.current_time()

    def _wake(self, instance: UUID) -> None:
        event = self._notices.pop(instance, None)
        if event is not None:
            event.set()

    async def register(self, instance: UUID, lease: float) -> Joined:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        shared = any(self._live(other) for other in self._leases)
        self._leases[instance] = now + lease
        self._renewed[instance] = self._started[instance] = now
        self._shared[instance] = now if shared else None
        return Joined(shared=shared, at=now)

    async def renew(self, instance: UUID, lease: float, *, shared: bool = False) -> int | None:
        await trio.lowlevel.checkpoint()
        if not self._live(instance):
            return None
        now = trio.current_time()
        peers = sum(1 for other in self._leases if other != instance and self._live(other))
        self._leases[instance] = now + lease
        self._renewed[instance] = now
        self._shared[instance] = (self._shared.get(instance) or now) if shared and peers else None
        return peers

    async def unaware(self, instance: UUID, since: float) -> int:
        await trio.lowlevel.checkpoint()
        return sum(1 for other in self._leases if other != instance and self._live(other)
                   and not self._aware(other, since))

    def _aware(self, instance: UUID, since: float) -> bool:
        """Shared since its start (never alone), or renewed as shared after `since`."""
        shared = self._shared.get(instance)
        return shared is not None and (shared == self._started[instance] or self._renewed[instance] > since)

    async def leave(self, instance: UUID) -> None:
        await trio.lowlevel.checkpoint()
        self._leases[instance] = None

    def _take(self, session_id: UUID, instance: UUID) -> int | None:
        owner, epoch = self._owners.get(session_id, (None, 0))
        if owner == instance:
            return epoch
        if self._live(owner):
            return None
        self._owners[session_id] = (instance, epoch + 1)
        return epoch + 1

    async def acquire(self, session_id: UUID, instance: UUID, *, messages: int) -> Acquired | Busy | None:
        await trio.lowlevel.checkpoint()
        row = self._sessions.get(session_id)
        if row is None:
            return None
        epoch = self._take(session_id, instance)
        if epoch is None:
            owner = self._owners[session_id][0]
            assert owner is not None
            return Busy(owner)
        stored = self._messages.get(session_id, [])
        return Acquired(epoch, row, tuple(stored[-messages:]) if messages else ())

    async def claim(self, session_ids: Sequence[UUID], instance: UUID) -> dict[UUID, tuple[Session, int]]:
        await trio.lowlevel.checkpoint()
        claimed = {}
        for session_id in session_ids:
            row = self._sessions.get(session_id)
            if row is not None and (epoch := self._take(session_id, instance)) is not None:
                claimed[session_id] = (row, epoch)
        return claimed

    async def free_deadlines(self, before: float | None = None) -> list[tuple[UUID, float]]:
        live = await self.live_deadlines()
        return [(session_id, at) for session_id, at in live
                if not self._live(self._owners.get(session_id, (None, 0))[0])
                and (before is None or at < before)]

    async def request_handoff(self, session_id: UUID, owner: UUID, requester: UUID) -> None:
        await trio.lowlevel.checkpoint()
        self._handoffs[session_id] = (owner, requester)
        self._wake(owner)

    async def handoff_requests(self, instance: UUID) -> list[tuple[UUID, UUID]]:
        await trio.lowlevel.checkpoint()
        return [(session_id, requester) for session_id, (owner, requester) in self._handoffs.items()
                if owner == instance]

    async def grant(self, session_id: UUID, instance: UUID, epoch: int, to: UUID) -> bool:
        await trio.lowlevel.checkpoint()
        if session_id not in self._sessions or self._owners.get(session_id) != (instance, epoch):
            return False
        self._owners[session_id] = (to, epoch + 1)
        self._handoffs.pop(session_id, None)
        self._wake(to)
        return True

    async def drop_handoff(self, session_id: UUID, instance: UUID) -> None:
        await trio.lowlevel.checkpoint()
        if self._handoffs.get(session_id, (None,))[0] == instance:
            del self._handoffs[session_id]

    async def wait_for_notice(self, instance: UUID) -> None:
        event = self._notices.get(instance)
        if event is None:
            event = self._notices[instance] = trio.Event()
        await event.wait()

    async def list(self, query: ListQuery) -> list[Session]:
        await trio.lowlevel.checkpoint()
        matches = [
            s for s in self._sessions.values()
            if (query.user_id is None or s.user_id == query.user_id)
            and (query.agent is None or s.agent == query.agent)
            and (query.chat_id is None or s.chat_id == query.chat_id)
            and (query.active is None or s.is_active == query.active)
            and (query.after is None or (s.created_at, s.id) < query.after)
        ]
        matches.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return matches[: query.limit]

    async def health_check(self) -> None:
        await trio.lowlevel.checkpoint()
