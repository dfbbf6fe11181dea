"""Signed tokens for links in emails: unsubscribe, confirm.

A token is ``<payload>.<signature>``, both base64url: the payload is compact JSON naming the
purpose, the subject of the link and an optional expiry; the signature is HMAC-SHA256 over
purpose and payload with ``NEWSLETTER_SECRET``, compared in constant time. Tokens carry ids,
never addresses, so a forwarded link reveals nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from .errors import NewsletterError

SIGNATURE_BYTES = 16


class BadToken(NewsletterError):
    """The token is forged, damaged, for another purpose or expired."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, purpose: str, payload: str) -> bytes:
    mac = hmac.new(secret.encode("utf-8"), f"{purpose}\n{payload}".encode(), hashlib.sha256)
    return mac.digest()[:SIGNATURE_BYTES]


def encode(data: dict[str, Any]) -> str:
    """The canonical JSON of a token's data (sorted keys, no spaces)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


class Signer:
    """Signs many tokens for one purpose: the keyed hash is set up once, not per token (a
    campaign signs one unsubscribe link per reader)."""

    def __init__(self, secret: str, purpose: str) -> None:
        self._mac = hmac.new(secret.encode("utf-8"), f"{purpose}\n".encode(), hashlib.sha256)

    def sign_encoded(self, data_json: str) -> str:
        """A token for data already in canonical JSON (see :func:`encode`)."""
        payload = _b64(data_json.encode("utf-8"))
        mac = self._mac.copy()
        mac.update(payload.encode("ascii"))
        return f"{payload}.{_b64(mac.digest()[:SIGNATURE_BYTES])}"

    def sign(self, data: dict[str, Any]) -> str:
        return self.sign_encoded(encode(data))


def sign(secret: str, purpose: str, data: dict[str, Any], ttl: float | None = None) -> str:
    """A token for ``data``; with ``ttl`` (seconds) it expires."""
    body = dict(data)
    if ttl is not None:
        body["exp"] = int(time.time() + ttl)
    return Signer(secret, purpose).sign(body)


def verify(secret: str, purpose: str, token: str, now: float | None = None) -> dict[str, Any]:
    """The data in ``token``; raises BadToken unless it is genuine, for ``purpose`` and fresh."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise BadToken("this link is damaged; copy the whole link from the email")
    try:
        given = _unb64(signature)
    except (ValueError, TypeError):
        raise BadToken("this link is damaged; copy the whole link from the email") from None
    if not hmac.compare_digest(given, _signature(secret, purpose, payload)):
        raise BadToken("this link is not valid; copy the whole link from the email")
    try:
        data = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        raise BadToken("this link is damaged; copy the whole link from the email") from None
    if not isinstance(data, dict):
        raise BadToken("this link is damaged; copy the whole link from the email")
    expires = data.pop("exp", None)
    if expires is not None and (now if now is not None else time.time()) > expires:
        raise BadToken("this link has expired")
    return data
