"""Running a scenario on virtual time: a `MockClock` and a `MemoryStore`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio
import trio.testing

from .._config import RuntimeConfig
from .._memory import MemoryStore
from .._runtime import SessionRuntime, open_runtime
from .._store import Store

T = TypeVar("T")


def run_on_virtual_time(scenario: Callable[[SessionRuntime], Awaitable[T]], *,
                        config: RuntimeConfig | None = None, store: Store | None = None) -> T:
    """Run `scenario(rt)` in a new `trio.run` on virtual time, and return its result.

    Time jumps ahead whenever every task is blocked (`MockClock(autojump_threshold=0)`),
    so a scenario that sleeps for hours, or waits for sessions to expire,
    finishes in milliseconds and behaves the same on every run. The runtime
    is opened on `store` (a new `MemoryStore` by default: PostgreSQL cannot
    run on virtual time, its driver's timeouts would fire at once) and closed,
    flushed, when the scenario returns.

    Call it from a plain (not async) test, for example one decorated with
    Hypothesis's `@given`: each example then gets a fresh run and clock.
    """

    async def main() -> T:
        async with open_runtime(config, store=MemoryStore() if store is None else store) as rt:
            return await scenario(rt)

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
