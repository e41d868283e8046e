"""The benchmark harness: timing, percentiles, tables, JSON, RSS and fresh databases.

Every scenario module (`benchmarks/s*_*.py`) has `NAME`, `TITLE`,
`NEEDS_POSTGRES` and `async def run(ctx: Context) -> Result`. A scenario
measures each figure side by side with its baseline in the same process and,
where it can, in alternating rounds, so that a neighbour's load on the
machine hits both sides alike: the ratios are the figures to read, absolute
rates are context.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from uuid import UUID, uuid4

import trio

from trio_sessions import Session
from trio_sessions._model import JsonObject

#: Scenario name -> module, in running order.
SCENARIOS: Final = {
    "s1": "benchmarks.s1_ceiling",
    "s2": "benchmarks.s2_write_through",
    "s3": "benchmarks.s3_flush",
    "s4": "benchmarks.s4_scale",
    "s5": "benchmarks.s5_expiry",
    "s6": "benchmarks.s6_restart",
    "s7": "benchmarks.s7_latency",
    "s8": "benchmarks.s8_handoff",
    "s9": "benchmarks.s9_chat",
    "s10": "benchmarks.s10_processes",
}

#: The environment variable through which the suite hands its PostgreSQL
#: server (an admin URL allowed to CREATE DATABASE) to each scenario process.
SERVER_ENV: Final = "TRIO_SESSIONS_BENCH_SERVER"


# ------------------------------------------------------------------ results


@dataclass(slots=True)
class Table:
    """A titled table of a scenario, printed as text and written as markdown."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def render(self) -> str:
        cells = [[fmt(c) for c in row] for row in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
                  for i, h in enumerate(self.columns)]

        def line(row: list[str]) -> str:  # the first column left-aligned, numbers right-aligned
            return "  ".join(c.rjust(w) if i else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True)))

        return "\n".join([self.title, line(self.columns), line(["-" * w for w in widths]),
                          *(line(row) for row in cells)])

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "",
                 "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(slots=True)
class Check:
    """One figure against its target from the issue, e.g. PostgreSQL/ceiling >= 0.6."""

    figure: str
    value: float
    target: float
    #: ">=" or "<=".
    op: str
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def describe(self, *, quick: bool) -> str:
        verdict = "MET" if self.met else "SHORT"
        if quick:
            verdict = f"{verdict} (quick sizes: not a verdict)"
        return (f"{self.figure}: {fmt(self.value)}{self.unit} "
                f"(target {self.op} {fmt(self.target)}{self.unit}) {verdict}")


@dataclass(slots=True)
class Result:
    """What a scenario found: tables to print, checks against targets, series to plot."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Raw series for report.py's plots (JSON-serialisable).
    series: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, *columns: str) -> Table:
        table = Table(title, list(columns))
        self.tables.append(table)
        return table


def fmt(value: Any) -> str:
    """A cell: thousands separators, three significant decimals for small numbers."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1 or magnitude == 0:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def environment() -> dict[str, Any]:
    """The machine and versions, and how loaded it is (another engineer may be testing)."""
    from importlib.metadata import version

    versions = {}
    for package in ("trio", "trio-asyncio", "asyncpg", "sortedcontainers", "trio-sessions"):
        try:
            versions[package] = version(package)
        except Exception:  # not installed, e.g. trio-sessions run from src/
            versions[package] = "?"
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(), "versions": versions,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (UUID, datetime, Path)):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def result_to_json(result: Result, *, quick: bool, elapsed: float) -> dict[str, Any]:
    return {
        "name": result.name, "title": result.title, "quick": quick, "elapsed_s": elapsed,
        "environment": environment(),
        "tables": [dataclasses.asdict(t) for t in result.tables],
        "checks": [dict(dataclasses.asdict(c), met=c.met) for c in result.checks],
        "notes": result.notes, "series": result.series,
    }


# ------------------------------------------------------------------ numbers


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    ordered = sorted(values)
    out = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * len(ordered))) if ordered else 0
        out[f"p{q:g}"] = ordered[rank - 1] if ordered else math.nan
    out["max"] = ordered[-1] if ordered else math.nan
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def rss_bytes() -> int:
    """This process's resident set size (VmRSS of /proc/self/status)."""
    return _status_kib("VmRSS:") * 1024


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM)."""
    return _status_kib("VmHWM:") * 1024


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    return 0  # pragma: no cover - not Linux


MIB: Final = 1024 * 1024


class GcPauses:
    """Times the cyclic garbage collector's pauses while the `with` block runs.

    With many resident actors, a full (generation 2) collection walks every
    tracked object of the process: these pauses show up as latency.
    """

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started: float | None = None

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)
            self._started = None

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self, generation: int = 2) -> dict[str, float]:
        """Count, total and longest pause (seconds) of one generation's collections."""
        pauses = self.pauses[generation]
        return {"count": len(pauses), "total_s": sum(pauses), "max_s": max(pauses, default=0.0)}


# ------------------------------------------------------------------ timing


@dataclass(slots=True)
class Rate:
    """A closed-loop measurement: `ops` calls completed in `seconds`."""

    ops: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else math.nan


async def closed_loop(callers: int, seconds: float, op: Callable[[int], Awaitable[Any]]) -> Rate:
    """`callers` tasks each call `op(caller_index)` back to back for `seconds`; count the calls.

    Time is `time.perf_counter`, from before the first task starts to after the
    last one finishes its last call (each stops starting calls at the deadline).
    """
    done = 0
    stop = False

    async def caller(index: int) -> None:  # noqa: ASYNC910  loops over a non-empty list whose body awaits
        nonlocal done
        count = 0
        while not stop:
            await op(index)
            count += 1
        done += count

    async def timer() -> None:
        nonlocal stop
        await trio.sleep(seconds)
        stop = True

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer)
        for index in range(callers):
            nursery.start_soon(caller, index)
    return Rate(done, time.perf_counter() - started)


# ---------------------------------------------------------------- the context


@dataclass(slots=True)
class Context:
    """What a scenario runs with: the size mode, the output folder, the PostgreSQL server."""

    quick: bool
    out: Path
    #: An admin URL of the PostgreSQL server (None when the scenario needs none).
    server_url: str | None

    def size(self, full: Any, quick: Any) -> Any:
        """`full` in a full run, `quick` in a --quick run."""
        return quick if self.quick else full

    @asynccontextmanager
    async def fresh_database(self) -> AsyncIterator[str]:
        """A new, empty database on the suite's server, dropped afterwards; yields its URL."""
        from trio_sessions._postgres import create_database, drop_database

        if self.server_url is None:
            raise RuntimeError("this scenario did not declare NEEDS_POSTGRES")
        name = f"bench_{uuid4().hex[:16]}"
        url = await create_database(self.server_url, name)
        try:
            yield url
        finally:
            with trio.CancelScope(shield=True):
                await drop_database(self.server_url, name)


# ------------------------------------------------------------------ payloads

#: Metadata of every benchmark session: small, like an orchestrator's.
METADATA: Final = {"channel": "whatsapp", "tier": "gold"}


def snapshot_like(now: datetime | None = None, *, version: int = 1,
                  session_id: UUID | None = None) -> Session:
    """A frozen `Session` as the runtime returns it (the payload of the bare baselines)."""
    wall = datetime.now(UTC) if now is None else now
    return Session(
        id=uuid4() if session_id is None else session_id, user_id="user-42", agent="financeiro",
        chat_id="5511999990000@c.us", title="Segunda via do boleto", state="active",
        metadata=JsonObject(METADATA), notes=(), is_active=True, message_count=0, created_at=wall,
        updated_at=wall, last_activity=wall, expires_at=wall + timedelta(seconds=1800), ended_at=None,
        end_reason=None, version=version, timeout=1800.0)


def print_result(result: Result, *, quick: bool) -> None:
    print()
    for table in result.tables:
        print(table.render())
        print()
    for check in result.checks:
        print("  " + check.describe(quick=quick))
    for note in result.notes:
        print(f"  note: {note}")
    sys.stdout.flush()
