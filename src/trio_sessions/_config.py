"""`RuntimeConfig`: every setting of the runtime, validated when it is made."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from ._errors import InvalidArgument
from ._model import check_bool, check_int, check_optional_text, check_seconds
from ._secrets import SecretUrl, redact_url

ENV_PREFIX: Final = "TRIO_SESSIONS_"
#: The longest database URL accepted.
MAX_URL_CHARS: Final = 4096
_SCHEMES: Final = ("postgresql", "postgres")
_INT_RANGES: Final = (
    ("max_messages", 1, 100_000),
    ("max_content_bytes", 1, 64 * 1024 * 1024),
    ("max_resident", 1, 100_000_000),
    ("mailbox_size", 1, 1_000_000),
    ("flush_batch", 1, 1_000_000),
    ("flush_concurrency", 1, 1000),
    ("max_pending", 1, 1_000_000_000),
    ("subscriber_buffer", 1, 10_000_000),
    ("pool_min", 0, 10_000),
    ("pool_max", 1, 10_000),
    ("read_attempts", 1, 1000),
    ("alert_flush_failures", 1, 1_000_000),
)


@dataclass(frozen=True, slots=True, repr=False)
class RuntimeConfig:
    """Settings of one runtime. Durations are float seconds, as everywhere in Trio.

    Invalid values raise `InvalidArgument` naming the field when the config is
    made. `repr()` and `str()` show `database_url` with its password redacted.
    """

    #: PostgreSQL URL; None means `DATABASE_URL` if set, else an embedded server.
    #: Given as a `str` (or a `SecretUrl`), kept as a `SecretUrl`, which shows
    #: itself redacted: `config.database_url.reveal()` is the URL.
    database_url: str | SecretUrl | None = None
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
    #: Apply migrations at start; with it off, the runtime only checks the schema is current.
    auto_migrate: bool = True
    #: The lease each runtime holds in the store (several runtimes may share one):
    #: a runtime that has not renewed it for this long stops acknowledging, and
    #: others may take its sessions. Renewed every `lease_renew_interval`.
    lease_duration: float = 10.0
    lease_renew_interval: float = 2.0
    #: A call for a session another runtime owns asks it to hand the session
    #: over; it polls for the answer this often (notifications may be lost) and
    #: gives up with `Overloaded` after `handoff_timeout`.
    handoff_poll_interval: float = 0.5
    handoff_timeout: float = 30.0
    #: PostgreSQL: no statement of the runtime waits longer than this for a row
    #: lock, and a transaction left idle (its process frozen) is ended after
    #: `idle_transaction_timeout`, so a frozen process cannot hold others up.
    lock_timeout: float = 5.0
    idle_transaction_timeout: float = 5.0
    #: The durable event feed (`SessionRuntime.read_events`): each change's
    #: event is written in the transaction that writes the change. Every
    #: runtime sharing a store should set it alike: events are written by
    #: whichever runtime owns the session.
    event_feed: bool = False
    #: Events older than this are pruned from the feed (by every runtime with
    #: the feed on, every `event_retention / 24`, at least hourly).
    event_retention: float = 7 * 24 * 3600.0
    #: How often `SessionRuntime.follow_events` reads the feed when it found nothing new.
    event_poll_interval: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # store the plain values that were checked
        if self.database_url is not None:
            # Held as a SecretUrl from here on: a frame that prints its locals shows it redacted.
            url = secret_url(self.database_url)
            if isinstance(url, str):
                raise InvalidArgument("database_url", url)
            _check_url(url)
            set_(self, "database_url", url)
        set_(self, "data_dir", check_optional_text("data_dir", self.data_dir, max_chars=4096))
        set_(self, "auto_migrate", check_bool("auto_migrate", self.auto_migrate))
        set_(self, "event_feed", check_bool("event_feed", self.event_feed))
        if self.call_timeout is not None:
            object.__setattr__(self, "call_timeout", check_seconds("call_timeout", self.call_timeout))
        for name in ("session_timeout", "passivate_after", "flush_interval", "connect_timeout",
                     "command_timeout", "max_inactive_connection_lifetime", "retry_initial_delay",
                     "retry_max_delay", "shutdown_timeout", "lease_duration", "lease_renew_interval",
                     "handoff_poll_interval", "handoff_timeout", "lock_timeout", "idle_transaction_timeout",
                     "event_retention", "event_poll_interval"):
            set_(self, name, check_seconds(name, getattr(self, name)))
        for name, low, high in _INT_RANGES:
            set_(self, name, check_int(name, getattr(self, name), low=low, high=high))
        fraction = check_seconds("alert_pending_fraction", self.alert_pending_fraction, high=1.0)
        set_(self, "alert_pending_fraction", fraction)
        if self.pool_min > self.pool_max:
            raise InvalidArgument("pool_min", f"must not exceed pool_max ({self.pool_max})")
        if self.retry_initial_delay > self.retry_max_delay:
            raise InvalidArgument("retry_initial_delay", "must not exceed retry_max_delay")
        if self.lease_renew_interval * 3 > self.lease_duration:
            raise InvalidArgument("lease_renew_interval", "must be at most a third of lease_duration "
                                  f"({self.lease_duration}s), so that a late renewal does not lose the lease")

    def __repr__(self) -> str:
        shown = ", ".join(f"{field.name}={_shown(getattr(self, field.name), field.name)!r}"
                          for field in fields(self))
        return f"RuntimeConfig({shown})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """Read `TRIO_SESSIONS_<FIELD>` for every field, and `DATABASE_URL`, `SESSION_TIMEOUT_MINUTES`.

        Only the environment is read; fields it does not set keep their
        defaults. Precedence: `TRIO_SESSIONS_DATABASE_URL` over
        `DATABASE_URL`, `TRIO_SESSIONS_SESSION_TIMEOUT` (seconds) over
        `SESSION_TIMEOUT_MINUTES`. A `TRIO_SESSIONS_` variable that names no
        field is an error listing the known ones. `none` (or an empty value)
        sets an optional field (`call_timeout`, `data_dir`, `database_url`)
        to None; booleans read `true`/`false`, `1`/`0`, `yes`/`no`.

        Args:
            environ: the variables to read; `os.environ` when None.

        Raises:
            InvalidArgument: naming the variable that holds the bad value.
        """
        env = os.environ if environ is None else environ
        known = {ENV_PREFIX + field.name.upper(): field.name for field in fields(cls)}
        unknown = sorted(key for key in env if key.startswith(ENV_PREFIX) and key not in known)
        if unknown:
            raise InvalidArgument(unknown[0], f"is not a setting; known: {', '.join(sorted(known))}")
        # Only the variables read, a URL as a SecretUrl at once: no line below that may raise
        # names the environment or a URL in plain text (loguru's diagnose prints each name).
        read = {key: _hide_url(key, env[key]) for key in (*known, *_ALSO_READ) if key in env}
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        if read.get("DATABASE_URL"):
            values["database_url"], origin["database_url"] = read["DATABASE_URL"], "DATABASE_URL"
        if "SESSION_TIMEOUT_MINUTES" in read:
            text = read["SESSION_TIMEOUT_MINUTES"]
            minutes = _parse("SESSION_TIMEOUT_MINUTES", text, float)
            try:
                values["session_timeout"] = check_seconds("session_timeout", minutes * 60.0)
            except InvalidArgument:
                problem = f"must be a finite number of minutes above 0, got {text!r:.80}"
                raise InvalidArgument("SESSION_TIMEOUT_MINUTES", problem) from None
        for key, name in known.items():
            if key in read:
                values[name], origin[name] = _parse(key, read[key], _field_type(name)), key
        return _made(cls, values, origin)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RuntimeConfig:
        """Read a TOML file: field names as keys, under `[trio_sessions]` or, without it, at top level.

        Only the file is read, not the environment; combine them with
        `dataclasses.replace(RuntimeConfig.from_file(path), **overrides)`.
        When a `[trio_sessions]` table exists, any other top-level key that
        is not a table (a setting written outside the table, say) is an
        error, as is an unknown key.

        Raises:
            InvalidArgument: naming the TOML key that holds the bad value.
        """
        where = os.fspath(path)
        try:
            with open(path, "rb") as file:
                document = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument("path", f"cannot read {where!r}: {exc}") from exc
        table = document.get("trio_sessions", document)
        if not isinstance(table, dict):
            raise InvalidArgument("trio_sessions", "must be a TOML table")
        if type(table.get("database_url")) is str:  # hidden at once, as in from_env
            table["database_url"] = SecretUrl(table["database_url"])
        if table is not document:
            for key, value in document.items():
                if key != "trio_sessions" and not isinstance(value, dict):
                    raise InvalidArgument(key, f"is outside the [trio_sessions] table of {where}")
        _check_names(table, where)
        prefix = "trio_sessions." if table is not document else ""
        return _made(cls, dict(table), {name: f"{prefix}{name}" for name in table})

    def resolved_data_dir(self) -> Path:
        """The embedded server's data folder: `data_dir`, else under XDG_DATA_HOME."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return Path(base) / "trio-sessions" / "postgres"


def _shown(value: object, name: str) -> object:
    """A field's value for `repr`: the URL redacted, a `str` too (while `__post_init__` has not yet run)."""
    if name == "database_url" and isinstance(value, str):
        return redact_url(str.__str__(value))
    return str(value) if isinstance(value, SecretUrl) else value


def secret_url(url: object) -> SecretUrl | str:
    """`url` as a `SecretUrl`, after the checks `check_text` makes; else what is wrong with it.

    Never raises: a traceback shows each frame with the value of every name
    on its line (loguru's `diagnose`), and a frame here holds the plain
    text. The caller raises `InvalidArgument` on a line naming only the problem.
    """
    if isinstance(url, SecretUrl):
        text = url.reveal()
    elif issubclass(type(url), str):
        text = str.__str__(url)  # an exact copy of a subclass's characters
    else:
        return f"must be a string, not {type(url).__name__}"
    if not text or text.isspace():
        return "must not be empty"
    if len(text) > MAX_URL_CHARS:
        return f"must be at most {MAX_URL_CHARS} characters, got {len(text)}"
    if "\x00" in text:
        return "must not contain the NUL character"
    if any("\ud800" <= char <= "\udfff" for char in text):
        return "must be valid Unicode (it contains a lone surrogate)"
    return url if isinstance(url, SecretUrl) else SecretUrl(text)


def configured_url(config: RuntimeConfig) -> SecretUrl | None:
    """`config.database_url`, typed as what it is once the config is made (never a `str`)."""
    url = config.database_url
    assert not isinstance(url, str)  # __post_init__ made it a SecretUrl
    return url


_FIELD_TYPES: Final = {"str | None": str, "str | SecretUrl | None": str,
                        "float": float, "float | None": float, "int": int, "bool": bool}
_OPTIONAL: Final = frozenset({"database_url", "data_dir", "call_timeout"})


def _made(cls: type[RuntimeConfig], values: dict[str, Any], origin: Mapping[str, str]) -> RuntimeConfig:
    """`cls(**values)`, with an error naming the variable or key the bad value came from."""
    try:
        return cls(**values)
    except InvalidArgument as exc:
        source = origin.get(exc.field)
        if source is None or source == exc.field:
            raise
        raise InvalidArgument(source, exc.problem) from None


def environment_url() -> SecretUrl | None:
    """`DATABASE_URL` (None if unset), for a runtime given no `database_url`; checked as that field
    is, an error naming the variable."""
    text = os.environ.get("DATABASE_URL")
    if not text:
        return None
    url = SecretUrl(text)
    try:
        _check_url(url)
    except InvalidArgument as exc:
        raise InvalidArgument("DATABASE_URL", exc.problem) from None
    return url


def _check_url(secret: SecretUrl) -> None:
    """A PostgreSQL URL the driver can parse; the message never shows the password."""
    shown, url = str(secret), secret.reveal()
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in _SCHEMES:
        raise InvalidArgument("database_url", f"must start with postgresql:// (got {shown!r})")
    authority = rest.partition("?")[0]
    if authority.count("@") > 1 or "/" in authority.rpartition("@")[0]:
        raise InvalidArgument("database_url", "the user or password holds an unescaped '@' or '/': "
                              f"percent-encode it (%40, %2F); got {shown!r}")
    try:
        urlsplit(url).port  # noqa: B018  parsing the port is the check
    except ValueError:
        raise InvalidArgument("database_url", f"has a malformed host or port: {shown!r}") from None


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


#: The variables `from_env` reads beside `TRIO_SESSIONS_<FIELD>`, and those that hold a URL.
_ALSO_READ: Final = ("DATABASE_URL", "SESSION_TIMEOUT_MINUTES")
_URL_VARIABLES: Final = frozenset({"DATABASE_URL", ENV_PREFIX + "DATABASE_URL"})


def _hide_url(key: str, text: str) -> str | SecretUrl:
    """`text` as a `SecretUrl` when `key` holds a URL (and `text` does not mean "unset"), else `text`."""
    if key in _URL_VARIABLES and type(text) is str and text.strip().lower() not in {"", "none"}:
        return SecretUrl(text)
    return text


def _parse(key: str, text: str | SecretUrl, kind: type) -> Any:
    if isinstance(text, SecretUrl):
        return text
    if key.removeprefix(ENV_PREFIX).lower() in _OPTIONAL and text.strip().lower() in {"", "none"}:
        return None
    if kind is str:
        return text
    if kind is bool:
        flag = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if text.strip().lower() not in flag:
            raise InvalidArgument(key, f"must be true or false, got {text!r:.80}")
        return flag[text.strip().lower()]
    try:
        return kind(text)
    except ValueError:
        article = "an" if kind is int else "a"
        raise InvalidArgument(key, f"must be {article} {kind.__name__}, got {text!r:.80}") from None
