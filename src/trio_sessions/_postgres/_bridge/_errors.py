"""The driver's errors, told apart and translated into trio-sessions' own.

Part of the bridge: it imports asyncpg to know its exception types. A
transient failure (connection lost or refused, server shutting down, too
many connections, serialization failure, deadlock, a timeout) becomes
`StoreUnavailable`; a data error of a write (SQLSTATE class 22 or 23)
`WriteRejected`; a configuration that cannot work (a wrong password, an
unknown database, a missing privilege, a URL the driver cannot parse)
`ConfigurationError`, whose message `_target` writes without the password.
Anything else propagates unchanged, because it is a bug.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NoReturn, TypeVar

import asyncpg

from ..._errors import StoreUnavailable, WriteRejected
from ..._secrets import SecretUrl
from .. import _target as target

E = TypeVar("E", bound=BaseException)


class StartFailed(Exception):
    """A connection could not be made (`step` "connect") or the schema not
    migrated or checked ("migrate"); the driver's error is the cause.

    Raised on the asyncio side, where the step is known, and translated on
    the Trio side by `start_errors`.
    """

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


# Operator intervention (server shutting down, or a query cancelled by an
# administrator), too many connections, serialization failure, deadlock.
# 55P03: lock_timeout ran out (a frozen process held the row); 25P03: our transaction sat idle too long.
_TRANSIENT_SQLSTATES: Final = frozenset({"57P01", "57P02", "57P03", "57014", "53300", "40001", "40P01",
                                         "55P03", "25P03"})


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later may succeed."""
    if isinstance(exc, OSError):  # includes TimeoutError (asyncio's too) from connect/command timeouts
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate or ""
        return sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg's client-side errors are misuse (bugs) except this one.
        return "connection is closed" in str(exc)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # A connection the server has just terminated (e.g. pg_terminate_backend)
        # can fail its next query this way instead of as "connection is closed"
        # (MagicStack/asyncpg#784, #1069). We never share a connection between
        # calls, so the state clash can only be that dead connection; the pool
        # drops it on release, closed by then (test_lost_connections_are_replaced).
        return str(exc).startswith("cannot switch to state")
    return False


def _is_rejected_data(exc: BaseException) -> bool:
    """A data exception (class 22, including asyncpg's own argument encoding
    errors) or an integrity constraint violation (class 23)."""
    return isinstance(exc, asyncpg.PostgresError) and (exc.sqlstate or "")[:2] in {"22", "23"}


def violated_constraint(exc: BaseException) -> str | None:
    """The unique index a `WriteRejected` of `store_errors` ran into, if that is what it was."""
    cause = exc.__cause__
    if isinstance(cause, asyncpg.UniqueViolationError):
        return cause.constraint_name
    return None


@contextmanager
def store_errors(*, rejectable: bool = False, url: SecretUrl | None = None) -> Iterator[None]:
    """Translate what leaves the block: transient -> StoreUnavailable, data -> WriteRejected,
    a missing privilege or a refused login -> ConfigurationError.

    Args:
        rejectable: translate data errors too (for `write` only: elsewhere a
            data error is a bug of ours).
        url: the database's, to name its host, port, database and user in a
            `ConfigurationError` (nothing is translated so without it).
    """
    try:
        yield
    except Exception as raised:
        exc = sole_leaf(raised)
        error: Exception | None = None
        if url is not None and isinstance(exc, asyncpg.PostgresError):
            # A user that may not read or write the tables (auto_migrate off, rights too narrow).
            error = target.rejected(url, exc.sqlstate or "", _first_line(exc), migrating=False)
        if error is None and rejectable and _is_rejected_data(exc):
            error = WriteRejected(f"PostgreSQL rejected the batch: {describe(exc)}")
        if error is None and is_transient(exc):
            error = StoreUnavailable(f"PostgreSQL is unavailable: {describe(exc)}")
        if error is None:
            raise  # a bug: as the driver raised it
        without_frames(raised)
        raise error from exc


@contextmanager
def start_errors(url: SecretUrl, connect_timeout: float) -> Iterator[None]:
    """Translate a failure to connect or to migrate (`StartFailed`) that leaves the block.

    A configuration that cannot work becomes `ConfigurationError`, an
    unreachable server `StoreUnavailable`; the driver's error is chained,
    except when it failed to parse the URL (its message may quote part of the
    password). Any other refusal of PostgreSQL's is `ConfigurationError`
    too, and any other failure `StoreUnavailable`, the driver's error chained.
    """
    try:
        yield
        return
    except Exception as raised:
        failed = sole_leaf(raised)
        if not isinstance(failed, StartFailed) or not isinstance(failed.__cause__, Exception):
            raise
        cause = failed.__cause__
        error, chained = _start_error(url, connect_timeout, failed.step, without_frames(cause))
    # Raised here, outside the `except`, so that nothing of the driver's
    # error is attached to it but what `chained` says.
    raise error from chained


def _start_error(url: SecretUrl, connect_timeout: float, step: str, exc: Exception
                 ) -> tuple[Exception, Exception | None]:
    """The error to raise for `exc`, raised while `step` ran, and what to chain to it."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate or ""
        refused = target.rejected(url, sqlstate, _first_line(exc), migrating=step == "migrate")
        if refused is not None:
            return refused, exc
    elif isinstance(exc, ValueError) and step == "connect":
        # asyncpg's ClientConfigurationError is a ValueError too: the URL (or
        # an option in it) cannot be parsed. Not chained: "invalid literal for
        # int() with base 10: '<the password's second half>'".
        return target.malformed_url(url), None
    if isinstance(exc, TimeoutError) and step == "connect":
        return target.unreachable(url, "", connect_timeout, timed_out=True), exc
    if is_transient(exc):
        return target.unreachable(url, describe(exc), connect_timeout, timed_out=False), exc
    # Only SessionErrors leave a public call: an unforeseen refusal is the
    # database's (it must change), anything else the driver's, chained.
    if isinstance(exc, asyncpg.PostgresError):
        return target.refused_at_start(url, step, exc.sqlstate or "", _first_line(exc)), exc
    return target.failed_at_start(url, step, type(exc).__name__), exc


def without_frames(exc: E) -> E:
    """`exc`, with no traceback on it or on anything chained to it (cause, context, group members).

    For the driver's errors chained to ours: asyncpg's frames hold the
    password as plain text (its `ConnectionParameters`, the DSN), and a
    traceback that prints local values (loguru's `diagnose`) would show it
    (`test_a_wrong_password_never_shows_in_a_diagnosing_log`). The driver's
    type and message stay.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        each = pending.pop()
        if id(each) in seen:
            continue
        seen.add(id(each))
        each.__traceback__ = None
        pending.extend(chained for chained in (each.__cause__, each.__context__) if chained is not None)
        if isinstance(each, BaseExceptionGroup):
            pending.extend(each.exceptions)
    return exc


def _first_line(exc: BaseException) -> str:
    """PostgreSQL's message, without its DETAIL and HINT lines."""
    return str(getattr(exc, "message", None) or exc).partition("\n")[0]


def sole_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def only_wraps(group: BaseException, target: BaseException) -> bool:
    """Whether `group` is a chain of one-member groups ending at `target`."""
    while group is not target and isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group is target


def reraise(exc: BaseException) -> NoReturn:
    """`raise exc`, keeping its own `__context__` (not the group being handled)."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def describe(exc: BaseException) -> str:
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' [{sqlstate}]' if sqlstate else ''}: {exc}"
