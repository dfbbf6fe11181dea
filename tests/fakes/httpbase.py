"""A small threaded HTTP server on 127.0.0.1 for imitating an email service's API.

Each fake subclasses :class:`FakeService`, implements ``dispatch(request) -> Reply`` and gets
a random free port, a record of what it accepted, and ``faults``: a script of answers to
play, one per request, before normal answers resume. The entries come in two kinds.

Not processed (the fake accepts and records nothing):

- an int status: the service's own error body for that status, from ``error_reply`` (each
  fake gives its service's shape; 429 carries Retry-After or the service's reset headers);
- a :class:`Reply`: exactly that status, headers and body, e.g.
  ``text_reply(503, "<html><body>Service Unavailable</body></html>")`` for a proxy's page,
  ``Reply(500)`` for an empty body, or JSON in any shape;
- "hang" (no answer until the client gives up) and "drop" (the connection closes unanswered).

Processed (the fake takes the request as usual, records what it accepted, and then):

- ``("after", Reply(...))`` or ``("after", status)``: answers with that reply, or with the
  service's own error body for that status, instead of the normal one, e.g.
  ``("after", text_reply(502, "<html>Bad Gateway</html>"))`` for a gateway that lost the answer;
- "hang-after" / "drop-after": the answer never arrives (hangs, or the connection closes);
- "cut-after": the answer's head promises a body that breaks off as the connection closes;
- ``("delay", seconds)``: the normal answer, late.

None lets a request through untouched. Only requests whose path starts with one of
``fault_paths`` consume entries (all requests when it is empty).

Two more knobs, for soaks and benchmarks run against a fake in a process of its own:
``chaos``, a function that draws an entry (of the kinds above, or None) for each matching
request once the script is used up, and ``latency``, seconds added before every answer.
Paths starting with ``/_`` belong to no service's API: ``inspect`` answers them with JSON
(``/_stats`` gives the counters).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    notes: dict[str, Any] = field(default_factory=dict)  # left by a chaos draw for dispatch

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; str/bytes as is
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, body: Any, **headers: str) -> Reply:
    return Reply(status, body, {"Content-Type": "application/json", **headers})


def text_reply(status: int, body: str, content_type: str = "text/html; charset=utf-8", **headers: str) -> Reply:
    """An answer that is not JSON: a proxy's HTML page, a load balancer's plain text."""
    return Reply(status, body, {"Content-Type": content_type, **headers})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service: FakeService

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command, parts.path, parse_qs(parts.query),
            {k.lower(): v for k, v in self.headers.items()}, body,
        )
        # Not any service's API: how benchmarks read the counts.
        inspected = self.service.inspect(request.path) if request.path.startswith("/_") else None
        if inspected is not None:
            self.send_response(200)
            data = json.dumps(inspected).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        with self.service.lock:
            self.service.request_count += 1
            self.service.bytes_received += len(body)
        fault = self.service.next_fault(request)
        delay = 0.0
        after: Reply | None = None
        if isinstance(fault, tuple) and fault[0] == "delay":  # accept, then answer late
            delay, fault = fault[1], None
        elif isinstance(fault, tuple) and fault[0] == "after":  # accept, then answer this instead
            after, fault = fault[1], None
        if fault == "hang":
            time.sleep(self.service.hang_seconds)
            self.close_connection = True
            return
        if fault == "drop":
            self.service.dropped += 1
            self.close_connection = True
            self.connection.close()
            return
        reply = fault if isinstance(fault, Reply) else self.service.dispatch(request)
        if after is not None:
            reply = after
        if delay or self.service.latency:
            time.sleep(delay + self.service.latency)
        if fault == "cut-after":  # processed; the answer breaks off after its head
            self.service.dropped += 1
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(b'{"partial":')
            self.wfile.flush()
            self.close_connection = True
            self.connection.close()
            return
        if fault in ("hang-after", "drop-after"):  # processed, but the answer never arrives
            if fault == "hang-after":
                time.sleep(self.service.hang_seconds)
            else:
                self.service.dropped += 1
                self.connection.close()
            self.close_connection = True
            return
        data = reply.body
        if isinstance(data, dict | list):
            data = json.dumps(data).encode()
        elif isinstance(data, str):
            data = data.encode()
        elif data is None:
            data = b""
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class FakeService:
    """Base of the fakes. ``faults`` is played in order, one entry per matching request, as
    the module's docstring describes."""

    fault_paths: tuple[str, ...] = ()  # requests that consume faults (all when empty)

    def __init__(self) -> None:
        self.faults: list[Any] = []
        self.hang_seconds = 3.0
        self.retry_after = "1"
        self.requests: list[Request] = []
        self.record_requests = True  # benchmarks turn this off to keep memory flat
        self.request_count = 0
        self.bytes_received = 0  # request bodies, for "bytes sent per recipient"
        self.dropped = 0
        self.chaos: Callable[[Request], Any] | None = None  # draws a fault once the script is done
        self.latency = 0.0  # seconds before every answer
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"service": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def next_fault(self, request: Request) -> Any:
        with self.lock:
            if self.record_requests:
                self.requests.append(request)
            if self.fault_paths and not request.path.startswith(self.fault_paths):
                return None
            draw = not self.faults and self.chaos is not None
            fault = self.faults.pop(0) if self.faults else None
        if draw:
            fault = self.chaos(request)
        if fault is None:
            return None
        if isinstance(fault, int) and not isinstance(fault, bool):
            return self.error_reply(fault)
        if isinstance(fault, tuple) and fault[0] == "after" and isinstance(fault[1], int):
            return ("after", self.error_reply(fault[1]))
        return fault

    def error_reply(self, status: int) -> Reply:
        """The service's own error answer for a scripted status; fakes give their service's
        shape (this default is Postmark's)."""
        headers = {"Retry-After": self.retry_after} if status == 429 else {}
        return json_reply(status, {"ErrorCode": status, "Message": f"fault {status}"}, **headers)

    def dispatch(self, request: Request) -> Reply:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"requests": self.request_count, "bytes": self.bytes_received}

    def inspect(self, path: str) -> Any:
        """JSON for a path outside the service's API (``/_stats``), or None for a 404."""
        return self.stats() if path == "/_stats" else None

    def start(self) -> FakeService:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
