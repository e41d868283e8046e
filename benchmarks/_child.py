"""One scenario in a process of its own: `python -m benchmarks._child NAME --out DIR [--quick]`.

The suite (`benchmarks/__main__.py`) starts one such process per scenario, so
that each starts from a fresh heap (scenario 4 measures resident memory) and
none inherits another's tasks or loops. The PostgreSQL server comes in the
`TRIO_SESSIONS_BENCH_SERVER` environment variable. The process prints the
scenario's tables and writes `DIR/NAME.json`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from pathlib import Path

import trio

from ._harness import SCENARIOS, SERVER_ENV, Context, print_result, result_to_json, write_json


async def run_scenario(name: str, *, quick: bool, out: Path) -> None:
    module = importlib.import_module(SCENARIOS[name])
    server = os.environ.get(SERVER_ENV) if module.NEEDS_POSTGRES else None
    if module.NEEDS_POSTGRES and not server:
        raise SystemExit(f"{name} needs PostgreSQL: run it through `python -m benchmarks`")
    started = time.perf_counter()
    result = await module.run(Context(quick=quick, out=out, server_url=server))
    elapsed = time.perf_counter() - started
    print_result(result, quick=quick)
    write_json(out / f"{name}.json", result_to_json(result, quick=quick, elapsed=elapsed))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._child")
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trio.run(lambda: run_scenario(args.name, quick=args.quick, out=args.out))


if __name__ == "__main__":
    main()
