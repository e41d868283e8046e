"""Which server, database and user a URL names, for error messages, and what to do when one fails.

`Target.of(url)` reads host, port, database and user the way the driver
does (query parameters over the URL's parts, then the `PG*` variables, then
the defaults), but never fails and never keeps the password, so a message
built from it can be printed whatever the URL holds. The bridge classifies
the driver's errors (it alone knows asyncpg's types) and calls the
functions below for the words.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, unquote

from .._errors import ConfigurationError, StoreUnavailable
from .._secrets import SecretUrl

#: The schemes asyncpg accepts.
SCHEMES: Final = ("postgresql", "postgres")

#: Characters that must be percent-encoded in the user or password of a URL.
RESERVED: Final = "/@:?#%"


@dataclass(frozen=True, slots=True)
class Target:
    """The server, database and user of a URL: never its password."""

    scheme: str
    host: str
    port: str
    database: str
    user: str

    @classmethod
    def of(cls, url: SecretUrl) -> Target:
        """The target of `url`, however malformed (unknown parts take the driver's defaults).

        Read from the redacted URL: the password is the one part not needed.
        """
        text = str(url)
        scheme, separator, rest = text.partition("://")
        if not separator:
            scheme, rest = "", text
        # The host starts after the last "@": a password may hold any
        # character, "/" and "@" included, when its writer forgot to encode it.
        userinfo, at, hostpart = rest.rpartition("@")
        if not at:
            userinfo, hostpart = "", rest
        user = unquote(userinfo.split(":", 1)[0])
        base, _, query = hostpart.partition("?")
        hostport, _, database = base.partition("/")
        host, port = hostport, ""
        if hostport.startswith("["):  # an IPv6 address
            host, _, after = hostport[1:].partition("]")
            port = after.removeprefix(":")
        elif ":" in hostport:
            host, _, port = hostport.partition(":")
        params = dict(parse_qsl(query))
        user = params.get("user") or user or os.environ.get("PGUSER") or _os_user()
        return cls(
            scheme=scheme,
            host=unquote(params.get("host") or host) or os.environ.get("PGHOST") or "localhost",
            port=params.get("port") or port or os.environ.get("PGPORT") or "5432",
            database=unquote(params.get("dbname") or params.get("database") or database)
            or os.environ.get("PGDATABASE") or user,
            user=user,
        )

    def __str__(self) -> str:
        return f"host {self.host}, port {self.port}, database {self.database!r}, user {self.user!r}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name for this uid: the driver would fail too
        return "?"


def malformed_url(url: SecretUrl) -> ConfigurationError:
    """The driver cannot parse `url` (its message may quote part of the password: not used)."""
    target = Target.of(url)
    if not target.scheme:
        return ConfigurationError(
            "the database URL does not start with postgresql://: set database_url (or DATABASE_URL) "
            "to postgresql://user:password@host:port/database")
    if target.scheme not in SCHEMES:
        return ConfigurationError(
            f"the database URL has the scheme {target.scheme!r}; trio-sessions needs PostgreSQL: set "
            "database_url (or DATABASE_URL) to postgresql://user:password@host:port/database")
    return ConfigurationError(
        f"the database URL cannot be parsed (it names {target}): set database_url (or DATABASE_URL) "
        "to postgresql://user:password@host:port/database, with the port a number and every "
        f"{' '.join(RESERVED)} in the user or password percent-encoded (for example / as %2F)")


def rejected(url: SecretUrl, sqlstate: str, server_message: str, *, migrating: bool
             ) -> ConfigurationError | None:
    """The error for a refusal the configuration causes, or None when `sqlstate` is no such refusal.

    `server_message` is PostgreSQL's own text, its first line (it never holds the password).
    """
    target = Target.of(url)
    if sqlstate == "28P01":
        return ConfigurationError(
            f"PostgreSQL refused the password of user {target.user!r} ({target}): check the password "
            "in database_url (or DATABASE_URL)")
    if sqlstate == "3D000":
        return ConfigurationError(
            f"the database {target.database!r} does not exist ({target}): create it "
            f"(createdb {target.database}) or name an existing one in database_url")
    if sqlstate.startswith("28"):
        return ConfigurationError(
            f"PostgreSQL refused the login ({target}): {server_message}; check the user in "
            "database_url and that pg_hba.conf lets it connect")
    if sqlstate == "42501":
        if migrating:
            advice = ("run `trio-sessions migrate` as the database's owner, then start the runtime with "
                      "auto_migrate=False, or grant this user the privilege")
        else:
            advice = "grant the privilege to this user (see `trio-sessions migrate` for the schema)"
        return ConfigurationError(
            f"user {target.user!r} lacks a privilege ({target}): {server_message}; {advice}")
    return None


def unreachable(url: SecretUrl, problem: str, connect_timeout: float, *, timed_out: bool) -> StoreUnavailable:
    """The error for a server that cannot be reached or did not answer in time."""
    target = Target.of(url)
    if timed_out:
        return StoreUnavailable(
            f"PostgreSQL did not answer within connect_timeout={connect_timeout:g} s ({target}): check "
            "that host and port are a PostgreSQL server's, or raise connect_timeout")
    return StoreUnavailable(
        f"cannot connect to PostgreSQL ({target}): {problem}; check that the server is running and "
        "that host and port in database_url are right")


def refused_at_start(url: SecretUrl, step: str, sqlstate: str, server_message: str) -> ConfigurationError:
    """The error for a refusal at start that names no known cause: the database is not what it should be.

    For example a relation of the schema's name that is not the schema's
    (a view called `sessions`): retrying cannot help, the database must change.
    """
    target = Target.of(url)
    doing = "applying the schema" if step == "migrate" else "connecting"
    return ConfigurationError(
        f"PostgreSQL refused {doing} ({target}): {server_message} (SQLSTATE {sqlstate}); check that "
        "database_url names a database whose tables trio-sessions made (`trio-sessions migrate`), "
        "or an empty one")


def failed_at_start(url: SecretUrl, step: str, kind: str) -> StoreUnavailable:
    """The error for any other failure at start, the driver's own error chained to it."""
    doing = "applying the schema" if step == "migrate" else "connecting"
    return StoreUnavailable(f"{doing} failed ({Target.of(url)}) with {kind} (see the chained exception)")


def schema_behind(url: SecretUrl, missing: list[str]) -> ConfigurationError:
    """The error for a database whose schema lacks migrations, when the runtime may not apply them."""
    target = Target.of(url)
    return ConfigurationError(
        f"the schema of database {target.database!r} is not current ({target}): "
        f"{len(missing)} migrations are not applied ({', '.join(missing)}) and auto_migrate is off: "
        "run `trio-sessions migrate` with DATABASE_URL set to this database (as a user that may "
        "create tables), or turn auto_migrate on")
