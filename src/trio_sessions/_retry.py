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
from typing import ParamSpec, TypeVar

import trio
from loguru import logger

from ._config import RuntimeConfig
from ._errors import StoreUnavailable
from ._metrics import Counters

P = ParamSpec("P")
T = TypeVar("T")


class Retry:
    """Calls a store method until it succeeds, or up to a number of attempts."""

    __slots__ = ("_config", "_counters", "_rng")

    def __init__(self, config: RuntimeConfig, counters: Counters, rng: random.Random) -> None:
        self._config = config
        self._counters = counters
        # Jitter comes from a generator of the runtime's own, seeded from the
        # global one: Hypothesis's st.random_module() seeds that, so a test replays.
        self._rng = rng

    async def read(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a store read, trying up to `read_attempts` times; then raise `StoreUnavailable`."""
        attempts = self._config.read_attempts
        delay = self._config.retry_initial_delay
        for attempt in range(1, attempts + 1):
            try:
                return await fn(*args, **kwargs)
            except StoreUnavailable:
                self._counters.store_errors += 1
                if attempt == attempts:
                    raise
                delay = await self._back_off(delay)
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt raises

    async def write(self, fn: Callable[P, Awaitable[None]], *args: P.args, **kwargs: P.kwargs) -> None:
        """Call a store write until it succeeds (rows are never dropped for a transient failure).

        Warns once when `alert_flush_failures` attempts in a row have failed.
        Anything but `StoreUnavailable` propagates at once.
        """
        delay = self._config.retry_initial_delay
        failures = 0
        while True:
            try:
                await fn(*args, **kwargs)
                return
            except StoreUnavailable as exc:
                failures += 1
                self._counters.store_errors += 1
                if failures == self._config.alert_flush_failures:
                    logger.warning("flush failed {} times in a row, still retrying: {}", failures, exc)
                delay = await self._back_off(delay)

    async def _back_off(self, delay: float) -> float:
        """Sleep about `delay` (equal jitter); return the next delay."""
        self._counters.retries += 1
        await trio.sleep(self._rng.uniform(delay / 2, delay))
        return min(delay * 2, self._config.retry_max_delay)
