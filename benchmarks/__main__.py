"""`python -m benchmarks [--quick] [--only s1,s5] [--out DIR]` (also `trio-sessions bench`).

Runs the scenarios in order, each in a process of its own (`_child.py`), on
one PostgreSQL server: `DATABASE_URL` when set (it must allow CREATE
DATABASE; every scenario makes a fresh database and drops it), else an
embedded server in a temporary folder, deleted at the end. Prints each
scenario's tables, writes `NAME.json` per scenario, `summary.json` and
`report.md` (with PNG plots when matplotlib is installed:
`pip install ".[bench]"`) into the output folder.

Exit code 0 when every scenario ran (whether or not it met its target: this
is a measurement, not a test), 1 when one failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

import trio_sessions

from ._harness import SCENARIOS, SERVER_ENV, Check, environment, fmt, write_json

#: The folder holding `benchmarks/`: the repository.
ROOT: Final = Path(__file__).resolve().parent.parent
#: Where results go unless --out says otherwise (gitignored).
RESULTS: Final = ROOT / "benchmarks" / "results"


def parse_args(argv: Sequence[str] | None, prog: str = "python -m benchmarks") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure trio-sessions against its baselines, side by side in one run, and "
        "compare each figure with its target. A full run takes about twenty minutes on two cores.")
    parser.add_argument("--quick", action="store_true",
                        help="every scenario at tiny sizes, in seconds (for CI: it keeps the suite "
                        "running; the figures mean nothing)")
    parser.add_argument("--only", metavar="S1,S5", default=None,
                        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})")
    parser.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help=f"output folder (default: {_shown(RESULTS)}, or its quick/ "
                        "subfolder with --quick)")
    args = parser.parse_args(argv)
    if args.only is None:
        args.names = list(SCENARIOS)
    else:
        args.names = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in args.names if name not in SCENARIOS]
        if unknown or not args.names:
            parser.error(f"--only: unknown scenario {', '.join(unknown) or '(none)'}; "
                         f"choose from {','.join(SCENARIOS)}")
        args.names = [name for name in SCENARIOS if name in args.names]  # suite order
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    return args


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks") -> int:
    """Run the suite; `trio-sessions bench` calls this with its own `prog` for messages."""
    args = parse_args(argv, prog)
    args.out.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("matplotlib") is None:
        print("note: matplotlib is not installed, so report.md will have no plots "
              "(pip install \".[bench]\")", file=sys.stderr)
    try:
        return trio.run(run_suite, args.names, args.quick, args.out)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


async def run_suite(names: list[str], quick: bool, out: Path) -> int:
    needs_postgres = any(importlib.import_module(SCENARIOS[n]).NEEDS_POSTGRES for n in names)
    started = time.perf_counter()
    if not needs_postgres:
        failed = await _run_all(names, quick, out, None)
    elif url := os.environ.get("DATABASE_URL"):
        print("PostgreSQL: DATABASE_URL (a fresh database per scenario)")
        failed = await _run_all(names, quick, out, url)
    else:
        from trio_sessions import StoreUnavailable
        from trio_sessions._embedded import open_embedded_postgres

        folder = Path(tempfile.mkdtemp(prefix="trio-sessions-bench-"))
        try:
            async with open_embedded_postgres(folder / "data") as url:
                print(f"PostgreSQL: embedded, in {folder} (deleted at the end)")
                failed = await _run_all(names, quick, out, url)
        except StoreUnavailable as exc:  # e.g. embedded-postgres is not installed
            print(f"benchmarks: {exc}", file=sys.stderr)
            return 2  # noqa: ASYNC910  a usage error: nothing to wait for
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    results = []
    for name in names:
        path = out / f"{name}.json"
        if name not in failed and path.exists():
            results.append(json.loads(path.read_text()))
    summary = _summary(results, failed, quick, time.perf_counter() - started)
    write_json(out / "summary.json", summary)
    from .report import write_report

    report = write_report(results, summary, out)
    _print_summary(summary)
    print(f"\nresults: {_shown(out)} (report: {_shown(report)})")
    return 1 if failed else 0


async def _run_all(names: list[str], quick: bool, out: Path, server: str | None) -> list[str]:
    """Run each scenario in a child process; return the names of those that failed."""
    env = dict(os.environ)
    if server is not None:
        env[SERVER_ENV] = server
    # The child imports this same `benchmarks` and `trio_sessions`, wherever they came from.
    paths = [str(ROOT), os.path.dirname(os.path.dirname(trio_sessions.__file__))]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    failed = []
    for name in names:
        module = importlib.import_module(SCENARIOS[name])
        print(f"\n=== {name}: {module.TITLE} ===", flush=True)
        (out / f"{name}.json").unlink(missing_ok=True)
        command = [sys.executable, "-m", "benchmarks._child", name, "--out", str(out)]
        if quick:
            command.append("--quick")
        started = time.perf_counter()
        process = await trio.run_process(command, env=env, check=False)
        print(f"({name} took {time.perf_counter() - started:.1f} s)", flush=True)
        if process.returncode != 0:
            print(f"{name} FAILED with exit code {process.returncode}", flush=True)
            failed.append(name)
    return failed  # noqa: ASYNC910  loops over a non-empty list whose body awaits


def _summary(results: list[dict[str, Any]], failed: list[str], quick: bool, elapsed: float) -> dict[str, Any]:
    return {"quick": quick, "elapsed_s": elapsed, "failed": failed, "environment": environment(),
            "checks": [dict(check, scenario=r["name"]) for r in results for check in r["checks"]],
            "scenarios": {r["name"]: {"title": r["title"], "elapsed_s": r["elapsed_s"]} for r in results}}


def _print_summary(summary: dict[str, Any]) -> None:
    print("\n=== targets ===")
    for item in summary["checks"]:
        check = Check(item["figure"], item["value"], item["target"], item["op"], item["unit"])
        print("  " + check.describe(quick=summary["quick"]))
    if summary["failed"]:
        print(f"  scenarios that failed: {', '.join(summary['failed'])}")
    print(f"total {fmt(summary['elapsed_s'])} s")


if __name__ == "__main__":
    sys.exit(main())
