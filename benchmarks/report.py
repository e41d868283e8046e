"""`report.md` and its PNG plots, from the scenarios' JSON.

Plots need matplotlib (`pip install ".[bench]"`); without it the report is
written without them. Plots: throughput against concurrency (s1), memory
against live sessions (s4), expiry lag against deadline (s5), latency
percentiles (s7).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._harness import Check, Table, fmt


def write_report(results: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> Path:
    """Write `out/report.md` (and its plots when matplotlib is there); return its path."""
    quick = summary["quick"]
    env = summary["environment"]
    lines = ["# trio-sessions benchmarks", ""]
    if quick:
        lines += ["**Quick run: tiny sizes, to keep the suite running. These figures mean nothing.**", ""]
    lines += [
        f"Run at {env['at']} on {env['cpus']} CPUs ({env['platform']}), Python {env['python']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        f"Load average at the end: {', '.join(f'{x:.2f}' for x in env['load_average'])} "
        "(another engineer's tests may share the machine: read ratios, not absolute rates; "
        "every ratio is measured within one run, variants alternating).",
        f"Total time {fmt(summary['elapsed_s'])} s.", "",
        "## Targets", "",
        "| figure | value | target | verdict |", "|---|---:|---:|---|",
    ]
    for item in summary["checks"]:
        check = Check(item["figure"], item["value"], item["target"], item["op"], item["unit"])
        verdict = ("met" if check.met else "**short**") + (" (quick)" if quick else "")
        lines.append(f"| {check.figure} | {fmt(check.value)}{check.unit} "
                     f"| {check.op} {fmt(check.target)}{check.unit} | {verdict} |")
    if summary["failed"]:
        lines += ["", f"Scenarios that failed to run: {', '.join(summary['failed'])}."]
    plotting = importlib.util.find_spec("matplotlib") is not None
    if not plotting:
        lines += ["", "_No plots: matplotlib is not installed (`pip install \".[bench]\"`)._"]
    for result in results:
        lines += ["", f"## {result['name']}: {result['title']}", "",
                  f"_{fmt(result['elapsed_s'])} s_", ""]
        for table in result["tables"]:
            lines += [Table(**table).markdown(), ""]
        for note in result["notes"]:
            lines.append(f"- {note}")
        if plotting:
            for key, series in result["series"].items():
                plot = PLOTS.get((result["name"], key))
                if plot is None:
                    continue
                image = out / f"{result['name']}_{key}.png"
                plot(series, image, result["name"])
                lines += ["", f"![{result['name']} {key}]({image.name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def plot_throughput(series: dict[str, Any], path: Path, scenario: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    callers = series["callers"]
    for name, values in series.items():
        if name != "callers":
            ax.plot(callers, values, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("calls per second")
    ax.set_title(f"{scenario}: update_last_activity throughput against concurrency")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_memory(series: dict[str, Any], path: Path, scenario: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    for store, points in series.items():
        ax.plot(points["live"], points["rss_mib"], marker=".", label=store)
    ax.axhline(1.5 * 1024, color="red", linestyle="--", linewidth=1, label="target: 1.5 GiB")
    ax.set_xlabel("live sessions")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"{scenario}: resident memory against live sessions")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_lag(series: dict[str, Any], path: Path, scenario: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    for name, points in series.items():
        ax.scatter(points["deadline_s"], points["lag_ms"], s=2, alpha=0.5, label=name)
    ax.axhline(50, color="red", linestyle="--", linewidth=1, label="target p99: 50 ms")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("deadline (s into the window)")
    ax.set_ylabel("lag after deadline (ms)")
    ax.set_title(f"{scenario}: lag of each expiry after its deadline")
    ax.grid(True, alpha=0.3)
    ax.legend(markerscale=5)
    _save(fig, path)


def plot_latency(series: dict[str, Any], path: Path, scenario: str) -> None:
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    names = list(series)
    quantiles = ["p50", "p90", "p99", "p99.9", "max"]
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [series[name][q] * 1000 for q in quantiles]
        ax.bar([x + i * width for x in range(len(quantiles))], values, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(quantiles))], quantiles)
    ax.set_yscale("log")
    ax.set_ylabel("latency from scheduled arrival (ms)")
    ax.set_title(f"{scenario}: update_last_activity latency percentiles under load")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    _save(fig, path)


PLOTS: dict[tuple[str, str], Callable[[dict[str, Any], Path, str], None]] = {
    ("s1", "throughput"): plot_throughput,
    ("s4", "memory"): plot_memory,
    ("s5", "lag"): plot_lag,
    ("s7", "latency"): plot_latency,
}
