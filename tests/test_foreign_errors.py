"""Only SessionError subclasses leave a public call, whatever the store raises on a read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest

from trio_sessions import MemoryStore, RuntimeConfig, StoreUnavailable, open_runtime
from trio_sessions._store import ListQuery


class ForeignStore(MemoryStore):
    """A MemoryStore whose reads raise `error` once `failing` is set (as a driver's bug would)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.failing = False

    def _maybe_fail(self) -> None:
        if self.failing:
            raise self.error

    async def load(self, session_id: UUID, *, messages: int) -> Any:
        self._maybe_fail()
        return await super().load(session_id, messages=messages)

    async def load_sessions(self, session_ids: Sequence[UUID]) -> Any:
        self._maybe_fail()
        return await super().load_sessions(session_ids)

    async def list(self, query: ListQuery) -> Any:
        self._maybe_fail()
        return await super().list(query)

    async def health_check(self) -> None:
        self._maybe_fail()
        await super().health_check()


CONFIG = RuntimeConfig(max_resident=1)


async def test_a_foreign_exception_on_a_read_is_store_unavailable_with_the_cause() -> None:
    store = ForeignStore(ValueError("date value out of range"))
    async with open_runtime(CONFIG, store=store) as rt:
        first = await rt.create("u1", "max", durable=True)
        await rt.create("u1", "max", durable=True)  # passivates the first: the next get loads it
        store.failing = True
        for call in (lambda: rt.get(first.id), lambda: rt.list()):
            with pytest.raises(StoreUnavailable) as info:
                await call()
            assert isinstance(info.value.__cause__, ValueError)
        health = await rt.health()
        assert not health.store_reachable and "ValueError" in (health.last_error or "")
        store.failing = False


async def test_an_assertion_error_is_not_disguised() -> None:
    store = ForeignStore(AssertionError("broken invariant"))
    async with open_runtime(store=store) as rt:
        store.failing = True
        with pytest.raises(AssertionError):
            await rt.list()
        store.failing = False
