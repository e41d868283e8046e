"""`Retry`: the one backoff policy for store calls, reads and writes alike.

Only `StoreUnavailable` is retried (a store raises it for conditions that may
pass: a lost connection, a server shutting down). Delays grow exponentially
from `retry_initial_delay` to `retry_max_delay`, each slept as a uniform draw
from its upper half ("equal jitter": never shorter than half the delay, so a
store that is down is not hammered, yet callers that failed together spread).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar

import trio
from loguru import logger

from ._config import RuntimeConfig
from ._errors import SessionError, SessionMoved, StoreUnavailable
from ._metrics import Counters

P = ParamSpec("P")
T = TypeVar("T")

#: While a write waits out its backoff, the store is probed this often (`Store.health_check`);
#: after an outage the write is retried as soon as a probe succeeds, so a store that comes back
#: is written to within this time, not after a backoff of up to `retry_max_delay`. One light
#: probe per interval, from one task, is no load on a store that is down.
PROBE_INTERVAL: Final = 0.2


def foreign_failure(exc: Exception) -> StoreUnavailable:
    """What a public call raises for an exception a store should not have raised (not retried).

    Only `SessionError`s leave a public call: a driver's or a third-party
    store's own exception becomes `StoreUnavailable`, the original chained
    as its cause (`raise ... from exc`), so nothing is hidden. Only the type
    is named: a driver's message may quote a URL. `AssertionError` is never
    converted (tests/test_foreign_errors.py).
    """
    return StoreUnavailable(f"the store failed with {type(exc).__name__} (see the chained exception)")


class Retry:
    """Calls a store method until it succeeds, or up to a number of attempts."""

    __slots__ = ("_config", "_counters", "_rng", "last_error", "write_failures")

    def __init__(self, config: RuntimeConfig, counters: Counters, rng: random.Random) -> None:
        self._config = config
        self._counters = counters
        # Jitter comes from a generator of the runtime's own, seeded from the
        # global one: Hypothesis's st.random_module() seeds that, so a test replays.
        self._rng = rng
        #: Write attempts that failed since the last one that succeeded.
        self.write_failures = 0
        #: The message of the latest failure of a store call (None before any).
        self.last_error: str | None = None

    async def read(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a store read, trying up to `read_attempts` times; then raise `StoreUnavailable`."""
        attempts = self._config.read_attempts
        delay = self._config.retry_initial_delay
        for attempt in range(1, attempts + 1):
            try:
                return await fn(*args, **kwargs)
            except SessionMoved:
                raise  # the store's answer (another runtime owns the session), not a failure
            except StoreUnavailable as exc:
                self._counters.store_errors += 1
                self.last_error = str(exc)
                if attempt == attempts:
                    raise
                delay, _ = await self._back_off(delay)
            except (SessionError, AssertionError):
                raise  # the store's own answer, or a broken invariant: as it was raised
            except Exception as exc:
                raise foreign_failure(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def write(self, probe: Callable[[], Awaitable[None]], fn: Callable[P, Awaitable[T]],
                    *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a store write until it succeeds (rows are never dropped for a transient failure).

        Between attempts it backs off, probing the store with `probe` every
        `PROBE_INTERVAL`; the first probe that succeeds ends the wait.
        Warns once when `alert_flush_failures` attempts in a row have failed.
        Anything but `StoreUnavailable` (and `SessionMoved`, an answer) propagates at once.
        """
        delay = self._config.retry_initial_delay
        failures = 0
        # Whether a probe has found the store down since this write last tried (see _back_off).
        down = False
        while True:
            try:
                result = await fn(*args, **kwargs)
            except SessionMoved:
                raise  # the store's answer (another runtime owns the session), not a failure
            except StoreUnavailable as exc:
                failures += 1
                self.write_failures += 1
                self.last_error = str(exc)
                self._counters.store_errors += 1
                if failures == self._config.alert_flush_failures:
                    logger.warning("flush failed {} times in a row, still retrying: {}", failures, exc)
                delay, down = await self._back_off(delay, probe, down)
            else:
                self.write_failures = 0
                return result

    async def _back_off(self, delay: float, probe: Callable[[], Awaitable[None]] | None = None,
                        down: bool = False) -> tuple[float, bool]:
        """Sleep about `delay` (equal jitter); return the next delay, and whether the store is down.

        With a `probe`, the store is probed every `PROBE_INTERVAL` meanwhile.
        Once a probe has failed (the store is down, not just this call), in
        this wait or, as `down` says, in an earlier one of the same call, the
        first probe that succeeds ends the wait, and the backoff starts over.
        Otherwise a store that answers the first probe is up: the failure was
        the call's own, and the wait runs its course.

        `down` must carry over: an outage's last failed attempt often comes
        while the server starts up, and the next wait's first probe then
        finds it back; taken for the call's own failure, that would wait out
        a backoff grown to `retry_max_delay` after the server was back.
        """
        self._counters.retries += 1
        until = trio.current_time() + self._rng.uniform(delay / 2, delay)
        if probe is not None:
            while (left := until - trio.current_time()) > PROBE_INTERVAL:
                await trio.sleep(PROBE_INTERVAL)
                with trio.move_on_after(left - PROBE_INTERVAL):  # noqa: ASYNC912  a probe that hangs is no answer; every store call checkpoints
                    try:
                        await probe()
                    except StoreUnavailable:
                        down = True
                        continue
                    if down:  # back after an outage: retry now (and a failure after is the call's own)
                        return self._config.retry_initial_delay, False
                    break
        await trio.sleep_until(until)
        return min(delay * 2, self._config.retry_max_delay), down
