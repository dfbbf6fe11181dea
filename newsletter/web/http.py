"""Small HTTP helpers shared by the web apps: responses with security headers, escaping,
path containment, Host and Origin checks, and Server-Sent Events framing.

Everything here is generic: it knows nothing about issues or subscribers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from markupsafe import escape
from werkzeug.wrappers import Request, Response

__all__ = [
    "LOOPBACK_HOSTS",
    "contained",
    "escape",
    "host_allowed",
    "html_response",
    "json_response",
    "same_origin",
    "secure",
    "sse_message",
    "text_response",
]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# Sent with every response; a page's Content-Security-Policy is chosen per response.
BASE_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
DEFAULT_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"


def secure(response: Response, csp: str | None = DEFAULT_CSP, *, frame: str = "DENY") -> Response:
    """Add the security headers; ``frame`` is X-Frame-Options (DENY or SAMEORIGIN)."""
    for name, value in BASE_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["X-Frame-Options"] = frame
    if csp:
        response.headers["Content-Security-Policy"] = csp
    return response


def html_response(body: str, status: int = 200, *, csp: str | None = DEFAULT_CSP,
                  frame: str = "DENY", cache: bool = False) -> Response:
    response = Response(body, status=status, mimetype="text/html")
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return secure(response, csp, frame=frame)


def text_response(body: str | bytes, status: int = 200, *, mimetype: str = "text/plain",
                  cache: bool = False) -> Response:
    response = Response(body, status=status, mimetype=mimetype)
    if not cache:
        response.headers["Cache-Control"] = "no-store"
    return secure(response, "default-src 'none'; frame-ancestors 'self'", frame="SAMEORIGIN")


def json_response(data: Any, status: int = 200) -> Response:
    response = Response(json.dumps(data, ensure_ascii=False, indent=1), status=status,
                        mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return secure(response, "default-src 'none'; frame-ancestors 'none'")


def sse_message(data: Any, event: str | None = None, id: str | int | None = None) -> bytes:
    """One Server-Sent Events message; ``data`` that is not a string is sent as JSON."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {line}" for line in text.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def contained(root: Path, candidate: Path) -> Path | None:
    """``candidate`` resolved (symlinks followed), or None when that lies outside ``root``."""
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_relative_to(root.resolve()) else None


def _host_name(host: str) -> str:
    """The name in a Host header without its port: ``[::1]:8025`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request's Host names this server (refuses DNS-rebinding tricks)."""
    if not host_header:
        return False
    return _host_name(host_header) in {h.lower().strip("[]") for h in allowed}


def same_origin(request: Request) -> bool:
    """A state-changing request came from our own pages: Origin (or Referer) matches Host."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    return bool(parts.netloc) and parts.netloc.lower() == (request.host or "").lower()
