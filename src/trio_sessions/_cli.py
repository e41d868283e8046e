"""The `trio-sessions` command: `demo` (a simulated orchestrator, checked), `migrate` and `bench`.

`demo` is the project's main job (`_demo.py`): a simulated orchestrator,
checked against PostgreSQL at the end.

`bench` runs the benchmark suite of the repository's `benchmarks/` folder
(`python -m benchmarks`), which is not part of the installed package: it
works from a checkout of the repository.

This is an application, not the library: it is the one place that turns
trio-sessions' logging on (`_configure_logging`).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import trio
from loguru import logger

from ._config import RuntimeConfig, configured_url
from ._demo import DemoOptions, demo
from ._demo_ledger import OK
from ._errors import ConfigurationError, InvalidArgument, SessionError, StoreUnavailable
from ._postgres import apply_migrations_to
from ._postgres._target import Target
from ._secrets import SecretUrl

#: Exit codes besides the demo's own (`OK`, `CHECK_FAILED`): a usage or configuration error.
USAGE: Final = 2
#: The database could not be reached (retrying later may work).
UNAVAILABLE: Final = 3
#: Any other error of trio-sessions (`SessionError`).
FAILED: Final = 1


# ------------------------------------------------------------------ migrate


async def run_migrate(url: SecretUrl) -> int:
    """Apply pending migrations to the database at `url`; print which database and what was applied."""
    applied = await apply_migrations_to(url, RuntimeConfig.from_env())
    where = Target.of(url)  # no password
    if applied:
        print(f"migrated {where}: applied {len(applied)} migrations: {', '.join(applied)}")
    else:
        print(f"the schema of {where} is up to date; nothing to apply")
    return OK


def migrate(environ: dict[str, str] | None = None) -> int:
    """`trio-sessions migrate`: exit code 2 when `DATABASE_URL` is not set."""
    url = configured_url(RuntimeConfig.from_env(environ))
    if url is None:
        print("trio-sessions migrate: DATABASE_URL is not set; set it to the database to migrate, "
              "e.g. DATABASE_URL=postgresql://user@localhost/app trio-sessions migrate",
              file=sys.stderr)
        return USAGE
    return trio.run(run_migrate, url)


def bench(argv: Sequence[str], cwd: Path | None = None) -> int:
    """`trio-sessions bench ARGS`: `python -m benchmarks ARGS` in the repository at `cwd`.

    Returns the suite's exit code, or 2 when `cwd` (the current directory by
    default) is not a checkout of the trio-sessions repository.
    """
    root = (Path.cwd() if cwd is None else cwd).resolve()
    if not (root / "benchmarks" / "__main__.py").is_file() or not (root / "src" / "trio_sessions").is_dir():
        print(f"trio-sessions bench: {root} is not the trio-sessions repository; the benchmarks are not "
              "installed with the package: run this command (or `python -m benchmarks`) in a checkout of "
              "the repository", file=sys.stderr)
        return USAGE
    sys.path.insert(0, str(root))
    suite = importlib.import_module("benchmarks.__main__")
    if Path(suite.__file__ or "").resolve().parent.parent != root:
        print(f"trio-sessions bench: imported another `benchmarks` package ({suite.__file__}), not the "
              f"one in {root}", file=sys.stderr)
        return USAGE
    code: int = suite.main(list(argv), prog="trio-sessions bench")
    return code


# ------------------------------------------------------------ command line


def _positive_float(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a `trio-sessions` command line (exits with code 2 on a usage error)."""
    parser = argparse.ArgumentParser(
        prog="trio-sessions", description="Session manager for Trio orchestrators, written behind "
        "to PostgreSQL (DATABASE_URL, or an embedded server when unset).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, print its traceback too (by default: one line)")
    demo_parser = commands.add_parser(
        "demo", parents=[common],
        help="simulate an orchestrator, then check PostgreSQL against what it was told",
        description="Simulate many users chatting with three agents, print progress and a summary, "
        "then check that PostgreSQL holds exactly what the runtime acknowledged (exit code 1 if not).")
    demo_parser.add_argument("--duration", type=_positive_float, default=60.0, metavar="SECONDS",
                             help="how long the simulation runs (default: 60)")
    demo_parser.add_argument("--users", type=_positive_int, default=200, metavar="N",
                             help="simulated users, each one conversation at a time (default: 200)")
    demo_parser.add_argument("--timeout", type=_positive_float, default=8.0, metavar="SECONDS",
                             help="session timeout: idle sessions expire after it (default: 8)")
    demo_parser.add_argument("--seed", type=int, default=None, metavar="N",
                             help="seed of the users' choices (default: random, printed)")
    demo_parser.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                             help="worker processes on the one database, each serving every user "
                             "(any of them may get a user's next message); default: 1")
    commands.add_parser("migrate", parents=[common], help="apply the schema migrations to DATABASE_URL",
                        description="Apply pending schema migrations to the database of DATABASE_URL.")
    # Only listed here: main() hands `bench` and everything after it to the suite's own parser.
    commands.add_parser("bench", help="run the benchmark suite of the repository in the current "
                        "directory (trio-sessions bench --help)", add_help=False)
    return parser.parse_args(argv)


def _configure_logging() -> None:
    """Send trio-sessions' warnings and errors to stderr (the library is silent by default)."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("trio_sessions")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `trio-sessions` command; return its exit code.

    Exit codes: 0 success; 1 the demo's check failed (or a benchmark
    scenario), or another error; 2 usage or configuration error (a bad
    setting, URL, password, database, role or privilege); 3 the database
    could not be reached (retrying later may work); 130 interrupted. An
    error is printed as one line; `--debug` prints its traceback first.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["bench"]:
        return bench(arguments[1:])
    args = parse_args(arguments)
    _configure_logging()
    try:
        if args.command == "migrate":
            return migrate()
        return trio.run(demo, DemoOptions.from_args(args))
    except (SessionError, KeyboardInterrupt, BaseExceptionGroup) as exc:
        if _is_interrupt(exc):
            print(f"trio-sessions {args.command}: interrupted", file=sys.stderr)
            return 130
        error = _session_error(exc)
        if error is None:
            raise
        if args.debug:
            traceback.print_exception(exc)
        print(f"trio-sessions {args.command}: {error}", file=sys.stderr)
        return _exit_code(error)


def _session_error(exc: BaseException) -> SessionError | None:
    """The `SessionError` that `exc` is, or that is all an exception group holds
    (the first, when nurseries gathered several); None when anything else is in it."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(SessionError)
        if matched is None or rest is not None:
            return None
        exc = matched
        while isinstance(exc, BaseExceptionGroup):
            exc = exc.exceptions[0]
    return exc if isinstance(exc, SessionError) else None


def _exit_code(error: SessionError) -> int:
    if isinstance(error, ConfigurationError | InvalidArgument):
        return USAGE
    if isinstance(error, StoreUnavailable):
        return UNAVAILABLE
    return FAILED


def _is_interrupt(exc: BaseException) -> bool:
    """A Ctrl-C, possibly wrapped in exception groups by the nurseries it crossed."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[1] is None
    return isinstance(exc, KeyboardInterrupt)
