"""HTTP plumbing shared by the API providers: one session per thread, timeouts, and the
mapping of transport failures and status codes onto retry, unknown and fatal."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Collection
from typing import Any

import requests

from . import FatalError, TransientError, UnknownOutcome

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read


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


class HttpClient:
    """Requests to one service; errors name the service and host, never the credentials."""

    def __init__(self, service: str, base_url: str, headers: dict[str, str] | None = None,
                 auth: tuple[str, str] | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.headers = headers or {}
        self.auth = auth
        self.timeout = timeout
        self._local = threading.local()

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
        """The response, for any status below 500 but 429; transport problems raised as
        TransientError (nothing sent) or UnknownOutcome (sent, no answer). Statuses in
        ``passthrough`` are returned too, for services whose 429 or 5xx answers say more
        than the status (a reset time in another header, a quota that will not come back)."""
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
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"{self.service}: request to {self.base_url} failed: {type(exc).__name__}") from None
        if response.status_code in passthrough:
            return response
        if response.status_code == 429:
            raise TransientError(f"{self.service}: rate limited (429)", retry_after(response))
        if response.status_code >= 500:
            raise TransientError(
                f"{self.service}: server error {response.status_code}", retry_after(response)
            )
        return response

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
