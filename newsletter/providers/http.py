"""HTTP plumbing shared by the API providers: one session per thread, timeouts, and the
mapping of transport failures and status codes onto retry, unknown and fatal.

What an answer proves decides its exception (see :mod:`newsletter.providers`):

| answer | proves | raised as |
|---|---|---|
| connection refused, connect timeout, a failure before the request was written | nothing reached the service | TransientError |
| 429 | refused for now, nothing taken | TransientError (with the wait it asks for) |
| a 5xx other than 502/504 whose body is the service's own error body | the service's application refused it | TransientError |
| read timeout, connection reset or closed after the request went out, an answer cut short | the service may have taken it | UnknownOutcome |
| 502, 504 | a gateway answered; it may have forwarded the request | UnknownOutcome |
| any other 5xx (an HTML page, an empty body, a proxy's text) | unknown who answered | UnknownOutcome |

Every other status is returned for the adapter to read. Whether a body is the service's own
error body is each adapter's test (``error_body``), written from its service's documentation:
a gateway in front of the service never writes it, so it proves the service itself answered.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

import requests

from . import FatalError, TransientError, UnknownOutcome

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read
# A gateway's answers: it may have passed the request on before the service failed or hung.
GATEWAY_STATUSES = frozenset({502, 504})
# Raised while reading the answer, so after the whole request was written.
_AFTER_SENDING = (
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.TooManyRedirects,
)

ErrorBodyTest = Callable[[requests.Response], bool]


def retry_after(response: requests.Response, header: str = "Retry-After") -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    value = response.headers.get(header)
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def reset_after(response: requests.Response, header: str) -> float | None:
    """Seconds to wait from a header holding the epoch second when a rate window resets
    (SendGrid's ``X-RateLimit-Reset``)."""
    value = response.headers.get(header)
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()) - time.time())
    except ValueError:
        return None


def json_body(response: requests.Response) -> Any:
    """The response's JSON, or {} when it carries none."""
    try:
        return response.json()
    except ValueError:
        return {}


def json_object(response: requests.Response) -> dict[str, Any]:
    """The response's JSON when it is an object, else {}."""
    body = json_body(response)
    return body if isinstance(body, dict) else {}


def one_line(text: str, limit: int = 120) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def describe_body(response: requests.Response) -> str:
    """A few words on what an answer carried, fit for a one-line message: markup is named,
    never shown; other text is collapsed and capped."""
    text = response.text if response.content else ""
    if not text.strip():
        return "an empty body"
    kind = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    start = text.lstrip()[:1]
    if "html" in kind or "xml" in kind or start == "<":
        return "an HTML page"
    if "json" in kind or start in ("{", "["):
        return "JSON in another shape"
    return one_line(text, 80)


class HttpClient:
    """Requests to one service; errors name the service and host, never the credentials.

    ``error_body`` tells whether a response carries the service's own documented error body;
    without it no 5xx counts as a refusal."""

    def __init__(self, service: str, base_url: str, headers: dict[str, str] | None = None,
                 auth: tuple[str, str] | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 error_body: ErrorBodyTest | None = None) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.headers = headers or {}
        self.auth = auth
        self.timeout = timeout
        self.error_body = error_body
        self._local = threading.local()

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc or self.base_url

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self.headers)
            if self.auth:
                session.auth = self.auth
            self._local.session = session
        return session

    def request(self, method: str, path: str, passthrough: Collection[int] = (),
                **kwargs: Any) -> requests.Response:
        """The response, for any status below 500 but 429. Transport problems and 429/5xx
        answers are raised as TransientError (proven refusal) or UnknownOutcome (it may
        have been taken), as the module's table says. Statuses in ``passthrough`` are
        returned instead, for services whose 429 or 5xx answers say more than the status
        (a reset time in another header, a quota that will not come back)."""
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise TransientError(f"{self.service}: could not connect to {self.base_url} within {self.timeout[0]:.0f} s") from None
        except requests.exceptions.ReadTimeout:
            raise UnknownOutcome(
                f"{self.service}: {self.base_url} took more than {self.timeout[1]:.0f} s to answer"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            if _request_was_sent(exc):
                raise UnknownOutcome(f"{self.service}: the connection to {self.base_url} dropped before an answer") from None
            raise TransientError(f"{self.service}: cannot connect to {self.base_url}") from None
        except _AFTER_SENDING as exc:
            raise UnknownOutcome(
                f"{self.service}: the answer from {self.base_url} broke off ({type(exc).__name__})"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"{self.service}: request to {self.base_url} failed: {type(exc).__name__}") from None
        status = response.status_code
        if status in passthrough:
            return response
        if status == 429:
            raise TransientError(f"{self.service}: rate limited (429)", retry_after(response))
        if status < 500:
            return response
        own = self.error_body is not None and self.error_body(response)
        if status in GATEWAY_STATUSES:
            body = f"{self.service}'s error body" if own else describe_body(response)
            raise UnknownOutcome(
                f"{self.service}: gateway error {status} ({body}) on the way to {self.host}; "
                "the request may have been passed on and accepted"
            )
        if own:
            raise TransientError(f"{self.service}: server error {status}", retry_after(response))
        raise UnknownOutcome(
            f"{self.service}: server error {status} without {self.service}'s error body "
            f"({describe_body(response)}); the request may have been accepted"
        )

    def refuse_auth(self, response: requests.Response, variable: str) -> None:
        if response.status_code in (401, 403):
            raise FatalError(
                f"{self.service}: the API refused the credentials ({response.status_code}); "
                f"check {variable}"
            )

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


def _request_was_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """A connection error after the request went out (the peer reset or closed the
    connection mid-answer) leaves the outcome unknown; one before it does not."""
    text = repr(exc)
    return any(
        marker in text
        for marker in ("RemoteDisconnected", "ConnectionResetError", "BrokenPipe", "IncompleteRead", "ProtocolError")
    )
