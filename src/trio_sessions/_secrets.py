"""Secrets kept out of messages: `redact_url`, the one way a database URL is shown, and `SecretUrl`.

Every repr, log line and error message that shows a database URL shows
`redact_url(url)`: the password in the user part and a `password=` query
parameter become `***`; the rest stays, so the message still says which
server and database it means.

Inside trio-sessions a URL travels as a `SecretUrl`, never as a `str`: a
traceback that prints the values of local variables (loguru's
`diagnose=True`, better-exceptions) shows the `repr` of every value on the
lines it prints, in every frame a URL passes through.
"""

from __future__ import annotations

import re
from typing import Final, final

_QUERY_PASSWORD: Final = re.compile(r"(?i)((?:^|&)password=)[^&#]*")


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, e.g. `postgresql://user:***@host:5432/db`.

    Works on malformed URLs too (an unescaped `/` or `@` in the password):
    the user part is everything up to the last `@`, so no
    piece of the password survives. Never raises for a `str`.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    # The user part ends at the last "@" (even past a "?" or "/": a password
    # its writer forgot to percent-encode may hold either).
    userinfo, at, tail = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{':***' if colon else ''}@{tail}"
    base, question, query = rest.partition("?")
    if question:
        query = _QUERY_PASSWORD.sub(r"\1***", query)
    return f"{scheme}{separator}{base}{question}{query}"


@final
class SecretUrl:
    """A database URL that shows itself only with its password redacted.

    `repr()`, `str()` and `format()` show `redact_url(url)`; the URL itself
    comes only from `reveal()`, which trio-sessions calls in the driver's
    connect calls and nowhere else. Two are equal when their URLs are.

    `RuntimeConfig.database_url` is one (made from the `str` it was given);
    pass it back to `RuntimeConfig` or `PostgresStore` as it is, or
    `reveal()` it for another library.
    """

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        if type(url) is not str:  # a str subclass could show one text and hold another
            raise TypeError(f"SecretUrl takes a str, got {type(url).__name__}")
        self._url = url

    @classmethod
    def of(cls, url: str | SecretUrl) -> SecretUrl:
        """`url` itself if it is a `SecretUrl`, else one made from it."""
        return url if isinstance(url, SecretUrl) else cls(url)

    def reveal(self) -> str:
        """The whole URL, password included: for the driver, never for a message."""
        return self._url

    def __repr__(self) -> str:
        return f"SecretUrl({redact_url(self._url)!r})"

    def __str__(self) -> str:
        return redact_url(self._url)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretUrl) and other._url == self._url

    def __hash__(self) -> int:
        return hash((SecretUrl, self._url))
