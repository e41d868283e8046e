"""The module map's rules: imports point downwards, and only the bridge imports asyncio.

The layers, top to bottom: the public facade, the supervisor with its
expiry engine, the actor with its commands and session transitions, reads
through the write-behind, the write-behind, the stores. See docs/architecture.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trio_sessions

PACKAGE = Path(trio_sessions.__file__).parent

#: Rank of each private module: a module may import only modules of a lower rank.
#: Modules not listed (the CLI, the demo, the testing kit, __init__) sit on top.
RANKS = {
    "_errors": 0, "_clock": 0, "_secrets": 0,
    "_model": 1, "_metrics": 1, "_migrations": 1, "_health": 1,
    "_cursor": 2, "_config": 2,
    "_store": 3,
    "_postgres": 4, "_embedded": 4, "_memory": 4,
    "_retry": 5,
    "_feed": 6,
    "_writebehind": 6,
    "_readthrough": 7,
    "_commands": 8,
    "_transitions": 9, "_deadlines": 9,
    "_chats": 10,
    "_actor": 11, "_subscriptions": 11,
    "_ownership": 12,
    "_expiry": 13,
    "_supervisor": 14,
    "_runtime": 15,
}
TOP = 100
#: The bridge's modules: the only ones that may import asyncio, asyncpg or trio_asyncio.
BRIDGES = {"_postgres._bridge", "_postgres._bridge._calls", "_postgres._bridge._errors"}
ASYNCIO = {"asyncio", "asyncpg", "trio_asyncio"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(p for p in parts if p != "__init__") or "__init__"] = path
    return found


def rank(module: str) -> int:
    return RANKS.get(module.split(".")[0], TOP)


def imports(name: str, path: Path) -> list[str]:
    """The package's own modules and the asyncio family `name` imports, as dotted names."""
    tree = ast.parse(path.read_text())
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = (node.module or "").split(".")
                if base[0] == "trio_sessions":
                    base = base[1:]
                elif base[0] not in ASYNCIO:
                    continue
            else:
                base = package[: len(package) - (node.level - 1)] + (node.module or "").split(".")
            base = [part for part in base if part]
            if node.module is None or not base:
                found += [".".join([*base, alias.name]) for alias in node.names]
            else:
                found.append(".".join(base))
    return found


def test_imports_point_downwards() -> None:
    upward = []
    for name, path in modules().items():
        if name == "__init__" or rank(name) == TOP:
            continue
        for target in imports(name, path):
            if target.split(".")[0] in ASYNCIO:
                continue
            top = target.split(".")[0]
            if top.startswith("_") and top != name.split(".")[0] and rank(target) >= rank(name):
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_every_module_has_a_place_in_the_layers() -> None:
    unplaced = {name.split(".")[0] for name in modules()} - set(RANKS)
    assert unplaced <= {"__init__", "__main__", "_cli", "_demo", "_demo_ledger", "_demo_processes", "testing",
                        "prometheus"}


def test_only_the_bridge_imports_asyncio() -> None:
    importers = {name for name, path in modules().items()
                 if any(target.split(".")[0] in ASYNCIO for target in imports(name, path))}
    assert importers <= BRIDGES


def test_importing_the_package_loads_neither_pytest_nor_the_driver() -> None:
    code = ("import sys, trio_sessions; "
            "print(sorted(m for m in ('pytest', 'trio.testing', 'asyncpg', 'trio_asyncio', 'hypothesis', "
            "'prometheus_client') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
