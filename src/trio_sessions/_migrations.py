"""Finding the schema migrations: ordered SQL files, and the constants of their runner.

The files live in the repository's top-level `migrations/` folder; the wheel
carries them as `trio_sessions/migrations` (pyproject force-includes them).
Applying them needs a connection, so the runner itself lives in
`_postgres._bridge`: this module knows files, not SQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

#: Key of the PostgreSQL advisory lock held while migrations are applied, so that
#: processes starting at once apply each file exactly once. A fixed bigint
#: (the ASCII of "trioSESS"), chosen not to collide with other applications' keys.
MIGRATION_LOCK_KEY: Final = 0x7472696F_53455353

#: A migration file is `NNNN_description.sql`; files apply in name order.
MIGRATION_NAME: Final = re.compile(r"[0-9]{4}_[a-z0-9_]+\.sql")


def migrations_dir() -> Path:
    """The folder holding the SQL migrations.

    Looks first inside the installed package (`trio_sessions/migrations`, where
    the wheel puts them), then in the repository's top-level `migrations/`
    (an editable install does not see the wheel's force-include).

    Raises:
        RuntimeError: neither folder exists: the installation is broken.
    """
    here = Path(__file__).resolve()
    candidates = (here.parent / "migrations", here.parents[2] / "migrations")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RuntimeError(
        "cannot find the trio-sessions SQL migrations (looked in "
        + " and ".join(str(c) for c in candidates)
        + "); reinstall trio-sessions"
    )


def load_migrations(folder: Path | None = None) -> list[tuple[str, str]]:
    """Every migration as `(name, sql)`, in the order they apply (by name).

    Args:
        folder: where to look; `migrations_dir()` when None.

    Raises:
        RuntimeError: a `.sql` file is not named `NNNN_description.sql`, or
            two files share a number (the order would be ambiguous).
    """
    folder = migrations_dir() if folder is None else folder
    migrations: list[tuple[str, str]] = []
    for path in sorted(folder.glob("*.sql")):
        if not MIGRATION_NAME.fullmatch(path.name):
            raise RuntimeError(f"migration {path} is not named NNNN_description.sql")
        migrations.append((path.name, path.read_text(encoding="utf-8")))
    numbers = [name[:4] for name, _ in migrations]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations in {folder} share a number: {numbers}")
    return migrations
