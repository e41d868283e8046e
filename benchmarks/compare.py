"""`python -m benchmarks.compare --old DIR`: this tree against another checkout, alternating.

For a change that must not cost speed: runs each scenario of `--only` in
the other checkout (say a `git worktree add` of the commit before the
change) and in this one, one after the other, `--rounds` times, each with
its own `python -m benchmarks` and its own code on `PYTHONPATH`. Every
target figure is already a ratio against a baseline measured in the same
run; this prints, per figure, the median over rounds for old and new and
new / old. Alternating spreads the machine's other load over both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent


def run(tree: Path, scenario: str, quick: bool, out: Path) -> dict[str, float]:
    """Run one scenario with `tree`'s code and benchmarks; its target figures by name."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    command = [sys.executable, "-m", "benchmarks", "--only", scenario, "--out", str(out)]
    if quick:
        command.append("--quick")
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    return {check["figure"]: float(check["value"]) for check in summary["checks"]}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--old", type=Path, required=True, help="the other checkout (repository root)")
    parser.add_argument("--only", default="s1,s2,s3,s5", help="scenarios (default: s1,s2,s3,s5)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations per scenario (default: 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the tool, not the code)")
    args = parser.parse_args()
    figures: dict[tuple[str, str], list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as scratch:
        for scenario in args.only.split(","):
            for round_ in range(args.rounds):
                # Old first in even rounds, new first in odd ones: neither side always goes first.
                sides = [("old", args.old), ("new", ROOT)]
                for side, tree in sides if round_ % 2 == 0 else reversed(sides):
                    out = Path(scratch) / f"{scenario}-{side}-{round_}"
                    for figure, value in run(tree.resolve(), scenario, args.quick, out).items():
                        figures[side, figure].append(value)
                    print(f"{scenario} round {round_ + 1} {side} done", flush=True)
    print(f"\n{'figure':<72} {'old':>10} {'new':>10} {'new/old':>8}")
    for (side, figure), values in sorted(figures.items(), key=lambda item: item[0][1]):
        if side != "new" or ("old", figure) not in figures:
            continue
        old = statistics.median(figures["old", figure])
        new = statistics.median(values)
        print(f"{figure:<72} {old:>10.4g} {new:>10.4g} {new / old:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
