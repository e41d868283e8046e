"""Subscriptions: the in-process, best-effort stream of `SessionEvent`s.

Publishing never blocks: each subscriber has a bounded buffer, and an event
that does not fit is dropped for that subscriber and counted.
"""

from __future__ import annotations

import trio

from ._metrics import Counters
from ._model import EventKind, Session, SessionEvent


class Subscription:
    """A stream of `SessionEvent`s from `SessionRuntime.subscribe()`.

    Iterate it with `async for`. Its buffer is bounded: when it is full, new
    events are dropped for this subscriber and counted in `dropped`, so a
    slow subscriber never stalls the runtime. The stream ends when the
    runtime closes.
    """

    def __init__(self, buffer: int) -> None:
        self._send, self._receive = trio.open_memory_channel[SessionEvent](buffer)
        #: Events this subscriber missed because its buffer was full.
        self.dropped = 0

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SessionEvent:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> SessionEvent:
        """The next event; raises `trio.EndOfChannel` once the runtime has closed."""
        return await self._receive.receive()


class EventHub:
    """The runtime's subscribers, and `publish`, which offers each event to all of them."""

    __slots__ = ("_counters", "_subscribers")

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        # A dict, not a set: events reach subscribers in the order they subscribed.
        self._subscribers: dict[Subscription, None] = {}

    def publish(self, kind: EventKind, session: Session) -> None:
        """Offer an event to every subscriber; never blocks."""
        if not self._subscribers:
            return
        event = SessionEvent(kind, session)
        for subscription in self._subscribers:
            try:
                subscription._send.send_nowait(event)
            except trio.WouldBlock:
                subscription.dropped += 1
                self._counters.events_dropped += 1
            except trio.ClosedResourceError:
                pass

    def add(self, buffer: int) -> Subscription:
        subscription = Subscription(buffer)
        self._subscribers[subscription] = None
        return subscription

    def remove(self, subscription: Subscription) -> None:
        self._subscribers.pop(subscription, None)
        subscription._send.close()
        subscription._receive.close()

    def close(self) -> None:
        """End every stream (the runtime has closed)."""
        for subscription in self._subscribers:
            subscription._send.close()
