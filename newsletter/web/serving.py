"""waitress, with a time limit on each request and no way for slow clients to fill it up.

waitress reads requests in its event loop and gives a worker thread only a request that
has arrived whole, so a slow client never holds a thread. But its one time limit,
``channel_timeout``, counts from the last byte received: a client that sends one byte every
few seconds keeps its connection for as long as it likes, and ``connection_limit`` such
clients (100 by default) shut everyone else out, because at the limit waitress stops
accepting. Two additions close that:

* Each request must arrive whole (headers and body) within ``request_timeout`` seconds of
  its first byte; a client that is slower gets ``408 Request Timeout`` and is disconnected.
  A connection that sends nothing for that long (before its first request or between
  requests) is closed too. The time is the total, not the gap between bytes.
* At the connection limit the server makes room instead of refusing: it closes the
  connections that have waited longest with no request being served (idle ones, or the
  slowest to send theirs), so a new client always gets in.

Both run in the event loop, in the channels' and the server's ``readable()``, which waitress
calls on every turn of the loop (at least once a second).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("newsletter.web")

REQUEST_TIMEOUT = 10  # seconds from a request's first byte to its last
CONNECTION_LIMIT = 500  # connections open at once (fewer if the process may open fewer files)
FILES_SPARE = 64  # file descriptors kept for the database, files being sent, logs
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n"
             b"Server: newsletter\r\n\r\n")
WARN_EVERY = 60.0  # seconds between warnings that the connection limit was reached


class GuardedChannel(HTTPChannel):
    """A connection that notes when the request it is reading began, and gives up on a
    request (or an idle connection) after the server's ``request_timeout``."""

    reading_since: float | None = None  # when the first byte of the request being read came

    def received(self, data: bytes) -> bool:
        partial = self.request
        taken = super().received(data)
        if self.request is None:  # every request in ``data`` arrived whole
            self.reading_since = None
        elif self.request is not partial or self.reading_since is None:
            self.reading_since = time.time()  # a new request began in ``data``
        return taken

    def waiting_since(self) -> float:
        """Since when this connection has been waiting for the client."""
        return self.reading_since if self.reading_since is not None else self.last_activity

    def in_service(self) -> bool:
        return bool(self.requests)  # a request is queued or a worker is answering it

    def readable(self) -> bool:
        if self.socket is None:  # closed earlier in this turn of the loop
            return False
        if not self.in_service() and time.time() - self.waiting_since() > self.server.request_timeout:
            self.cut(TIMED_OUT if self.reading_since is not None else b"")
            return False
        return super().readable()

    def writable(self) -> bool:
        return self.socket is not None and super().writable()

    def cut(self, answer: bytes = b"") -> None:
        """Close the connection now, after ``answer`` if the socket takes it at once."""
        with contextlib.suppress(OSError):  # BlockingIOError: nothing unread
            self.socket.recv(self.adj.recv_bytes)  # unread input would turn the close into a reset
        if answer:
            with contextlib.suppress(OSError):
                self.socket.send(answer)
        self.handle_close()


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with :class:`GuardedChannel` connections, making room at the
    connection limit."""

    channel_class = GuardedChannel
    warned_at = 0.0

    def __init__(self, *args: Any, request_timeout: float, **kwargs: Any) -> None:
        self.request_timeout = request_timeout
        super().__init__(*args, **kwargs)

    def readable(self) -> bool:
        if self.accepting and len(self._map) >= self.adj.connection_limit:
            self.make_room()
        return super().readable()

    def make_room(self) -> None:
        """Close the connections that have waited longest for their client, enough to
        accept a tenth of the limit anew."""
        limit = self.adj.connection_limit
        waiting = sorted(
            (c for c in self.active_channels.values() if not c.in_service() and c.socket is not None),
            key=lambda c: c.waiting_since(),
        )
        chosen = waiting[: len(self._map) - limit + max(1, limit // 10)]
        for channel in chosen:
            channel.cut()
        now = time.time()
        if chosen and now - self.warned_at > WARN_EVERY:
            self.warned_at = now
            log.warning("%d connections open, the limit: closed the %d that had waited longest "
                        "for their client", limit, len(chosen))


def connection_limit(wanted: int = CONNECTION_LIMIT) -> int:
    """``wanted``, or fewer when the process may not open that many files."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(10, min(wanted, soft - FILES_SPARE))


def create(app: Any, *, request_timeout: float = REQUEST_TIMEOUT,
           connections: int = CONNECTION_LIMIT, **options: Any) -> Any:
    """A waitress server for ``app`` built as ``waitress.create_server`` builds one for
    TCP, with :class:`GuardedServer` listening. ``options`` are waitress adjustments."""
    adj = Adjustments(connection_limit=connection_limit(connections), asyncore_use_poll=True, **options)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    servers: list[GuardedServer] = []
    try:
        for sockinfo in adj.listen:
            servers.append(GuardedServer(app, socket_map, dispatcher=dispatcher, adj=adj,
                                         sockinfo=sockinfo, request_timeout=request_timeout))
    except BaseException:
        for server in servers:
            server.close()
        dispatcher.shutdown()
        raise
    if len(servers) == 1:
        return servers[0]
    listening = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(socket_map, adj, listening, dispatcher, servers[0].log_info)
