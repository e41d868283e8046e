"""Secrets kept out of messages: `redact_url`, the one way a database URL is shown.

Every repr, log line and error message that shows a database URL shows
`redact_url(url)`: the password in the user part and a `password=` query
parameter become `***`; the rest stays, so the message still says which
server and database it means.
"""

from __future__ import annotations

import re
from typing import Final

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
