"""`Health`: what a readiness probe needs to know, from `SessionRuntime.health()`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Health:
    """The runtime's health at one moment.

    A runtime is fit to serve while `store_reachable` holds and
    `pending_writes` stays below `max_pending`; `oldest_pending_age` growing
    past a few `flush_interval`s means the store is not keeping up.
    """

    #: The store answered a health check within the probe's time limit.
    store_reachable: bool
    #: Seconds since the oldest change not yet committed was acknowledged (0 when none is).
    oldest_pending_age: float
    #: Writes acknowledged and not yet committed, against the buffer's bound.
    pending_writes: int
    max_pending: int
    #: Flush attempts that failed since the last that succeeded.
    consecutive_flush_failures: int
    #: The latest store error's message (never a password), or None if there was none.
    last_error: str | None
