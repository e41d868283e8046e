"""A TCP proxy in front of the test PostgreSQL whose connections a test can cut.

A process given `Proxy.url` reaches the database only through this proxy,
which runs in the test's own Trio run. `cut()` closes every connection it
carries at once, in both directions (the client sees its socket closed in
the middle of whatever it was doing, a commit included) and refuses new
ones for a while, as a network partition or a restarted load balancer
would. The server itself stays up, so other processes go on.

It forwards to the server's Unix socket (the embedded server listens on
one only) or TCP address, as the URL says; the server sees the proxy's
connections as its own local ones.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import trio

CHUNK = 65536


class Proxy:
    """Forwards TCP connections on 127.0.0.1 to the server of `url`; `cut()` breaks them."""

    def __init__(self, url: str) -> None:
        self._url = urlsplit(url)
        query = dict(parse_qsl(self._url.query))
        self._socket_dir = query.get("host", "") if not self._url.hostname else ""
        self._port = self._url.port or int(query.get("port", 5432))
        self._carried: set[trio.CancelScope] = set()
        self._refuse_until = -float("inf")
        self.port = 0
        #: Connections accepted, and how many `cut()` broke.
        self.accepted = 0
        self.broken = 0

    @property
    def url(self) -> str:
        """The database URL through the proxy (same user, password and database)."""
        query = [(k, v) for k, v in parse_qsl(self._url.query) if k not in ("host", "port")]
        user = self._url.username or ""
        if self._url.password is not None:
            user += ":" + self._url.password
        netloc = f"{user}@127.0.0.1:{self.port}"
        return urlunsplit((self._url.scheme, netloc, self._url.path, urlencode(query), ""))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._carry, listeners)

    def cut(self, *, refuse_for: float) -> int:
        """Break every connection now, and refuse new ones for `refuse_for` seconds; how many broke."""
        self._refuse_until = trio.current_time() + refuse_for
        broken = len(self._carried)
        for scope in list(self._carried):
            scope.cancel()
        self.broken += broken
        return broken

    async def _carry(self, client: trio.SocketStream) -> None:
        async with client:
            if trio.current_time() < self._refuse_until:
                return  # closed at once: the connection attempt fails
            if self._socket_dir:
                upstream: trio.abc.Stream = await trio.open_unix_socket(
                    os.path.join(self._socket_dir, f".s.PGSQL.{self._port}"))
            else:
                upstream = await trio.open_tcp_stream(self._url.hostname or "localhost", self._port)
            self.accepted += 1
            with trio.CancelScope() as scope:
                self._carried.add(scope)
                try:
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
                finally:
                    self._carried.discard(scope)


async def _pump(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, both: trio.CancelScope) -> None:
    """Copy `source` to `sink` until either side closes; then stop the other direction too."""
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await trio.lowlevel.checkpoint()  # the other side closed: so be it
    both.cancel()
