"""`EventFeed`: the durable event feed, read with a cursor the consumer keeps, and pruned.

Writing happens elsewhere: the write-behind puts each flushed change's event
in its `WriteBatch` (and `Chats` asks `Store.place` for it), so the store
writes it in the transaction that writes the change, under the same fence.
This module reads (`read`, `follow`) and prunes (`run`).

Why a reader never skips an event (PostgreSQL; `MemoryStore` writes
atomically, so its positions are in commit order already):

- An event's position is `(xid, id)`: the id of the transaction that wrote
  it, and its number from a sequence. Ids from a sequence are handed out in
  call order, not in commit order, so reading "after id 10" could pass an
  id 9 that commits later; that is why the id alone is not the position.
- `Store.read_events` returns only events whose xid is below the xmin of
  the reading statement's snapshot. Every transaction below xmin has ended,
  and a transaction that starts later gets an xid above it. So the events
  below xmin are a set that no commit can grow: a reader that takes them
  in position order and goes on after the last one it was given misses
  nothing, and sees nothing that may still roll back.
- A session's events are in version order by position: within one
  transaction the ids follow the batch's order (the session's events, in
  version order); across transactions, two writes of one session are never
  concurrent. Within a runtime, batches that share a session are written
  one after the other; across runtimes, a write is fenced by owner and
  epoch under the session row's lock, and the epoch changes only in a
  transaction (acquire, claim, grant) that waits for the old owner's write
  to commit, while the new owner's write starts after that change
  committed. So the later write's transaction starts after the earlier one
  committed, and its xid is higher.

The price: an event is readable only once every transaction that started
before it committed has ended. A transaction left open anywhere on the
server (PostgreSQL's xmin is the whole cluster's) holds the feed back, not
the writers: `idle_transaction_timeout` bounds the runtime's own.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import trio

from . import _model as model
from ._config import RuntimeConfig
from ._cursor import decode_feed_cursor
from ._model import EventPage, FeedEvent
from ._retry import Retry
from ._store import Store

#: Events deleted per prune statement; the runtime prunes until a statement deletes fewer.
PRUNE_BATCH: Final = 1000
#: Longest wait between two prunes; shorter retentions are pruned every `event_retention / 24`.
MAX_PRUNE_INTERVAL: Final = 3600.0
#: Largest page of `read_events`.
MAX_EVENT_PAGE: Final = 10_000


class EventFeed:
    """Reads of the durable feed, and its pruning task."""

    __slots__ = ("_config", "_retry", "_store", "poll_interval", "pruned")

    def __init__(self, store: Store, config: RuntimeConfig, retry: Retry) -> None:
        self._store = store
        self._config = config
        self._retry = retry
        self.poll_interval = config.event_poll_interval
        #: Events this runtime pruned.
        self.pruned = 0

    async def read(self, after: object, limit: object) -> EventPage:
        """One page after the cursor `after`; see `SessionRuntime.read_events`."""
        position = decode_feed_cursor(after)
        size = model.check_int("limit", limit, low=1, high=MAX_EVENT_PAGE)
        events = await self._retry.read(self._store.read_events, position, size)
        if events:
            return EventPage(tuple(events), events[-1].cursor)
        return EventPage((), None if after is None else model.plain_str("after", after))

    def follow(self, after: object, limit: object) -> FollowedEvents:
        """Every event after `after`, waiting for new ones; see `SessionRuntime.follow_events`."""
        decode_feed_cursor(after)  # checked now, not at the first step
        size = model.check_int("limit", limit, low=1, high=MAX_EVENT_PAGE)
        return FollowedEvents(self, None if after is None else model.plain_str("after", after), size)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Prune events older than `event_retention`, now and then every interval, until cancelled.

        Runs only with `event_feed` on. Each round deletes in statements of
        `PRUNE_BATCH` events (the oldest first) until one deletes fewer, so
        no statement holds many locks or runs long. A failed prune is
        retried as a flush is (the feed only grows meanwhile).
        """
        task_status.started()
        retention = self._config.event_retention
        interval = min(MAX_PRUNE_INTERVAL, retention / 24)
        while True:
            await self.prune()
            await trio.sleep(interval)

    async def prune(self) -> int:
        """One round of pruning (see `run`); how many events it deleted."""
        total = 0
        retention = self._config.event_retention
        store = self._store
        while True:
            deleted = await self._retry.write(store.health_check, store.prune_events, retention, PRUNE_BATCH)
            total += deleted
            self.pruned += deleted
            if deleted < PRUNE_BATCH:
                return total


class FollowedEvents:
    """What `SessionRuntime.follow_events` returns: an endless async iterator over the feed.

    Reads a page at a time; when one comes back empty it sleeps
    `event_poll_interval` before reading again. `cursor` is the cursor of
    the last event it has yielded (or where it started): keep it to resume.
    Cancelled while it reads or sleeps, it stays where it was.
    """

    __slots__ = ("_events", "_feed", "_limit", "cursor")

    def __init__(self, feed: EventFeed, after: str | None, limit: int) -> None:
        self._feed = feed
        self._limit = limit
        self._events: deque[FeedEvent] = deque()
        #: The cursor of the last event yielded: pass it as `after` to resume after it.
        self.cursor = after

    def __aiter__(self) -> FollowedEvents:
        return self

    async def __anext__(self) -> FeedEvent:
        if self._events:
            await trio.lowlevel.checkpoint()
        else:
            await self._wait_for_events()
        event = self._events.popleft()
        self.cursor = event.cursor
        return event

    async def _wait_for_events(self) -> None:
        while True:
            page = await self._feed.read(self.cursor, self._limit)
            if page.events:
                self._events.extend(page.events)  # only a whole page: cancelled above, nothing moved
                return
            await trio.sleep(self._feed.poll_interval)
