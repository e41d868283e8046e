"""`RuntimeConfig`: every setting of the runtime, validated when it is made."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ._errors import InvalidArgument
from ._model import check_int, check_optional_text, check_seconds

ENV_PREFIX = "TRIO_SESSIONS_"


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Settings of one runtime. Durations are float seconds, as everywhere in Trio.

    Invalid values raise `InvalidArgument` naming the field when the config is made.
    """

    #: PostgreSQL URL; None means `DATABASE_URL` if set, else an embedded server.
    database_url: str | None = None
    #: Data folder of the embedded server (None: the user's data folder).
    data_dir: str | None = None
    #: Sliding expiration of a session without activity.
    session_timeout: float = 1800.0
    #: Messages an actor keeps for `context()`; the store keeps them all.
    max_messages: int = 50
    #: Largest message content, in bytes of UTF-8.
    max_content_bytes: int = 64 * 1024
    #: At most this many actors run at once; the least recently used stops first.
    max_resident: int = 10_000
    #: An actor without calls for this long stops (its session stays in the store).
    passivate_after: float = 300.0
    #: Commands an actor's mailbox holds before callers wait.
    mailbox_size: int = 64
    #: A change reaches the store at most this long after it was acknowledged.
    flush_interval: float = 0.2
    #: Sessions written per transaction; a full batch is flushed at once.
    flush_batch: int = 2000
    #: Batches written at once, each on a pooled connection of its own, so
    #: that one is encoded while another is in the database.
    flush_concurrency: int = 2
    #: Buffered writes (sessions plus messages) before writers wait.
    max_pending: int = 100_000
    #: Events a subscriber's buffer holds; beyond that events are counted and dropped.
    subscriber_buffer: int = 1000
    #: PostgreSQL pool settings (see asyncpg.create_pool).
    pool_min: int = 2
    pool_max: int = 10
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    max_inactive_connection_lifetime: float = 300.0
    #: First retry delay of a failed store call; doubles up to `retry_max_delay`, with jitter.
    retry_initial_delay: float = 0.05
    retry_max_delay: float = 5.0
    #: Attempts of a store read (activation, list) before `StoreUnavailable`.
    read_attempts: int = 3
    #: Time allowed to flush and close on exit before giving up with `StoreUnavailable`.
    shutdown_timeout: float = 30.0
    #: A call not applied within this time (full mailbox or buffer, slow activation)
    #: is abandoned and raises `Overloaded`; None waits as long as it takes.
    call_timeout: float | None = None
    #: Warn when buffered writes pass this fraction of `max_pending`.
    alert_pending_fraction: float = 0.8
    #: Warn after this many consecutive failed flushes.
    alert_flush_failures: int = 3

    def __post_init__(self) -> None:
        check_optional_text("database_url", self.database_url, max_chars=4096)
        check_optional_text("data_dir", self.data_dir, max_chars=4096)
        if self.call_timeout is not None:
            object.__setattr__(self, "call_timeout", check_seconds("call_timeout", self.call_timeout))
        set_ = object.__setattr__  # normalise ints given for float fields
        for name in ("session_timeout", "passivate_after", "flush_interval", "connect_timeout",
                     "command_timeout", "max_inactive_connection_lifetime", "retry_initial_delay",
                     "retry_max_delay", "shutdown_timeout"):
            set_(self, name, check_seconds(name, getattr(self, name)))
        check_int("max_messages", self.max_messages, low=1, high=100_000)
        check_int("max_content_bytes", self.max_content_bytes, low=1, high=64 * 1024 * 1024)
        check_int("max_resident", self.max_resident, low=1, high=100_000_000)
        check_int("mailbox_size", self.mailbox_size, low=1, high=1_000_000)
        check_int("flush_batch", self.flush_batch, low=1, high=1_000_000)
        check_int("flush_concurrency", self.flush_concurrency, low=1, high=1000)
        check_int("max_pending", self.max_pending, low=1, high=1_000_000_000)
        check_int("subscriber_buffer", self.subscriber_buffer, low=1, high=10_000_000)
        check_int("pool_min", self.pool_min, low=0, high=10_000)
        check_int("pool_max", self.pool_max, low=1, high=10_000)
        check_int("read_attempts", self.read_attempts, low=1, high=1000)
        check_int("alert_flush_failures", self.alert_flush_failures, low=1, high=1_000_000)
        fraction = check_seconds("alert_pending_fraction", self.alert_pending_fraction, high=1.0)
        set_(self, "alert_pending_fraction", fraction)
        if self.pool_min > self.pool_max:
            raise InvalidArgument("pool_min", f"must not exceed pool_max ({self.pool_max})")
        if self.retry_initial_delay > self.retry_max_delay:
            raise InvalidArgument("retry_initial_delay", "must not exceed retry_max_delay")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """Read `DATABASE_URL`, `SESSION_TIMEOUT_MINUTES` and `TRIO_SESSIONS_<FIELD>`.

        Args:
            environ: the variables to read; `os.environ` when None.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("DATABASE_URL"):
            values["database_url"] = env["DATABASE_URL"]
        if "SESSION_TIMEOUT_MINUTES" in env:
            minutes = _parse("SESSION_TIMEOUT_MINUTES", env["SESSION_TIMEOUT_MINUTES"], float)
            values["session_timeout"] = minutes * 60.0
        for field in fields(cls):
            key = ENV_PREFIX + field.name.upper()
            if key in env:
                values[field.name] = _parse(key, env[key], _field_type(field.name))
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RuntimeConfig:
        """Read a TOML file: field names as keys, at top level or under `[trio_sessions]`."""
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument("path", f"cannot read {os.fspath(path)!r}: {exc}") from exc
        table = document.get("trio_sessions", document)
        if not isinstance(table, dict):
            raise InvalidArgument("trio_sessions", "must be a TOML table")
        _check_names(table, os.fspath(path))
        values: dict[str, Any] = table
        return cls(**values)  # validation converts ints given for durations

    def resolved_data_dir(self) -> Path:
        """The embedded server's data folder: `data_dir`, else under XDG_DATA_HOME."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return Path(base) / "trio-sessions" / "postgres"


_FIELD_TYPES = {"str | None": str, "float": float, "float | None": float, "int": int}


def _field_type(name: str) -> type:
    for field in fields(RuntimeConfig):
        if field.name == name:
            return _FIELD_TYPES[str(field.type)]
    raise InvalidArgument(name, "is not a RuntimeConfig field")


def _check_names(values: Mapping[str, Any], where: str) -> None:
    known = {field.name for field in fields(RuntimeConfig)}
    for name in values:
        if name not in known:
            raise InvalidArgument(name, f"unknown setting in {where}; known: {', '.join(sorted(known))}")


def _parse(key: str, text: str, kind: type) -> Any:
    if kind is str:
        return text
    try:
        return kind(text)
    except ValueError:
        article = "an" if kind is int else "a"
        raise InvalidArgument(key, f"must be {article} {kind.__name__}, got {text!r:.80}") from None
