"""Time: Trio's clock for everything that waits, with a wall-clock anchor.

Deadlines are Trio times (floats), so under `trio.testing.MockClock` the
whole runtime runs on virtual time. Persisted timestamps are UTC datetimes:
Trio time plus an offset taken once per `trio.run`, so that every runtime in
one run, including one restarted on the same store, maps virtual time onto
the calendar the same way.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Final

import trio

#: Under `trio.testing.MockClock`, Trio time 0 is this wall time (2024-01-01T00:00:00Z).
VIRTUAL_EPOCH: Final = 1_704_067_200.0

# Per-run, not global: a RunVar lives and dies with its trio.run.
_WALL_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("trio_sessions.wall_offset")


class Clock:
    """Converts between Trio time and UTC datetimes."""

    __slots__ = ("_delta", "_offset", "_seconds")

    def __init__(self) -> None:
        # The last timeout `deadline_after` converted: sessions mostly share one.
        self._seconds = 0.0
        self._delta = timedelta(0)
        try:
            self._offset = _WALL_OFFSET.get()
        except LookupError:
            # trio.testing is not imported here (it imports pytest when present):
            # a MockClock exists only if the application imported it.
            testing = sys.modules.get("trio.testing")
            if testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock):
                # Virtual time gets a fixed calendar, so a test replays exactly,
                # timestamps (and their rounding) included.
                self._offset = VIRTUAL_EPOCH
            else:
                self._offset = time.time() - trio.current_time()
            _WALL_OFFSET.set(self._offset)

    def now(self) -> float:
        """The current Trio time."""
        return trio.current_time()

    def to_wall(self, trio_time: float) -> datetime:
        """The UTC datetime of a Trio time."""
        return datetime.fromtimestamp(trio_time + self._offset, UTC)

    def to_trio(self, wall: datetime) -> float:
        """The Trio time of a UTC datetime."""
        return wall.timestamp() - self._offset

    def timestamp_to_trio(self, timestamp: float) -> float:
        """The Trio time of a POSIX timestamp (equal to `to_trio` of its datetime)."""
        return timestamp - self._offset

    def deadline_after(self, wall: datetime, seconds: float) -> tuple[float, datetime]:
        """The deadline `seconds` after `wall`, as (Trio time, UTC datetime).

        The datetime is exact datetime arithmetic (so `expires_at - last_activity`
        is the timeout), and the Trio time is the one that datetime reads back
        as: a session expires at the same instant whether its deadline came
        from memory or from the store.
        """
        if seconds != self._seconds:
            self._seconds, self._delta = seconds, timedelta(seconds=seconds)
        expires_at = wall + self._delta
        return expires_at.timestamp() - self._offset, expires_at
