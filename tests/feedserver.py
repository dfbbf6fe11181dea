"""A small HTTP server on 127.0.0.1 that serves feeds to tests.

Each test sets the routes it needs::

    server.serve("/feed/", body)                   # 200, with ETag and Last-Modified
    server.serve_file("/feed/", "wordpress.xml")   # a file from tests/feeds/
    server.status("/gone/", 410)
    server.redirect("/old/", "/feed/")
    server.hang("/slow/", 5)                       # answers only after 5 seconds
    server.delay("/feed/", 1.5)                    # the route above, answered late

A served body is answered with ``304 Not Modified`` when the request's ``If-None-Match``
matches its ETag or, for a request without ``If-None-Match``, when ``If-Modified-Since`` equals
its Last-Modified value (RFC 9110 ignores If-Modified-Since when If-None-Match is sent). Paths
with no route get a 404. ``server.requests`` records every request received, in order.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

FEEDS = Path(__file__).resolve().parent / "feeds"
RSS = "application/rss+xml; charset=utf-8"
ATOM = "application/atom+xml; charset=utf-8"
HTML = "text/html; charset=utf-8"
LAST_MODIFIED = "Tue, 01 Dec 2026 08:00:00 GMT"


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str  # as sent, query string included
    headers: dict[str, str]  # lower-case names


@dataclass
class Route:
    """What the server answers for one path."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    delay: float = 0.0  # seconds to wait before answering


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


def _path(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison, as If-None-Match uses: W/ is ignored, and * matches anything."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in tags}


def content_type_for(name: str, body: bytes) -> str:
    """The Content-Type for a file in tests/feeds/, chosen by extension (and root element)."""
    suffix = Path(name).suffix.lower()
    if suffix in {".html", ".htm"}:
        return HTML
    if suffix == ".xml":
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            return RSS
        return ATOM if root.tag.rsplit("}", 1)[-1] == "feed" else RSS
    return "application/octet-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FeedServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timeout test) is no error worth printing."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        owner = self.server.owner
        headers = {name.lower(): value for name, value in self.headers.items()}
        with owner.lock:
            owner.requests.append(Request(self.command, self.path, headers))
        route = owner.route(urlsplit(self.path).path)
        if route is None:
            self._send(404, b"Not Found\n", {"Content-Type": "text/plain; charset=utf-8"})
            return
        if route.delay and owner.stopping.wait(route.delay):
            self.close_connection = True  # the server is closing: leave without an answer
            return
        validators = {}
        if route.etag:
            validators["ETag"] = route.etag
        if route.last_modified:
            validators["Last-Modified"] = route.last_modified
        if route.status == 200 and self._not_modified(route, headers):
            self._send(304, None, validators)
            return
        self._send(route.status, route.body, {**route.headers, **validators})

    @staticmethod
    def _not_modified(route: Route, headers: dict[str, str]) -> bool:
        if "if-none-match" in headers:
            return route.etag is not None and _etag_matches(headers["if-none-match"], route.etag)
        since = headers.get("if-modified-since")
        return (
            since is not None and route.last_modified is not None and since == route.last_modified
        )

    def _send(self, status: int, body: bytes | None, headers: dict[str, str]) -> None:
        """Send one answer; body None for a 304, which has none."""
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)
        except ConnectionError:  # the client has gone (it timed out first)
            self.close_connection = True


class FeedServer:
    """An HTTP server on 127.0.0.1 (a free port) in a daemon thread, with routes set per test."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._routes: dict[str, Route] = {}
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"feedserver-{self.port}", daemon=True
        )
        self._thread.start()
        self._closed = False

    def url(self, path: str = "/") -> str:
        """``http://127.0.0.1:PORT/path``."""
        return f"http://127.0.0.1:{self.port}{_path(path)}"

    def route(self, path: str) -> Route | None:
        """The route set for ``path``, if any."""
        with self.lock:
            return self._routes.get(_path(path))

    def _set(self, path: str, route: Route) -> None:
        with self.lock:
            self._routes[_path(path)] = route

    def serve(
        self,
        path: str,
        body: bytes | str,
        content_type: str = RSS,
        etag: bool | str = True,
        last_modified: str | None = LAST_MODIFIED,
    ) -> None:
        """Answer ``path`` with ``body``: 200, or 304 when the request's validators match.

        ``etag`` True sends a quoted sha1 of the body, a string sends that ETag, False none;
        ``last_modified`` None sends no Last-Modified.
        """
        data = _bytes(body)
        if etag is True:
            tag: str | None = '"' + hashlib.sha1(data).hexdigest() + '"'
        else:
            tag = etag or None
        self._set(path, Route(200, data, {"Content-Type": content_type}, tag, last_modified))

    def serve_file(
        self, path: str, name: str, content_type: str | None = None, **options: Any
    ) -> None:
        """Answer ``path`` with tests/feeds/<name>; ``options`` as for :meth:`serve`."""
        data = (FEEDS / name).read_bytes()
        self.serve(path, data, content_type or content_type_for(name, data), **options)

    def status(
        self, path: str, code: int, body: bytes | str = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Answer ``path`` with status ``code`` (404, 410, 500, 503 ...), ``body``, ``headers``."""
        data = _bytes(body)
        sent = dict(headers or {})
        if data and not any(name.lower() == "content-type" for name in sent):
            sent["Content-Type"] = "text/plain; charset=utf-8"
        self._set(path, Route(code, data, sent))

    def redirect(self, path: str, to: str, code: int = 301) -> None:
        """Answer ``path`` with a redirect to ``to`` (a path or a full URL, sent as given)."""
        self._set(path, Route(code, b"", {"Location": to}))

    def hang(
        self, path: str, seconds: float, body: bytes | str = b"", content_type: str = RSS
    ) -> None:
        """Accept requests for ``path`` and answer only after ``seconds`` (200 with ``body``).

        Other requests are answered meanwhile; closing the server ends the wait unanswered.
        """
        route = Route(200, _bytes(body), {"Content-Type": content_type}, delay=seconds)
        self._set(path, route)

    def delay(self, path: str, seconds: float) -> None:
        """Answer the route already set for ``path`` as before, but ``seconds`` late."""
        with self.lock:
            route = self._routes[_path(path)]
            self._routes[_path(path)] = replace(route, delay=seconds)

    def close(self) -> None:
        """Stop serving and free the port; hanging requests are dropped."""
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FeedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
