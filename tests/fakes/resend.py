"""A local Resend: ``POST /emails/batch`` and ``GET /domains`` as Resend documents them.

It checks the Bearer key (401 ``missing_api_key``, 403 ``invalid_api_key``; a sending-only
key gets 401 ``restricted_api_key`` from ``/domains``), the rate limit (``rate_limit``
requests per second, 2 by default: 429 ``rate_limit_exceeded`` with ``retry-after`` and
``ratelimit-limit``/``-remaining``/``-reset``), a daily quota (429 ``daily_quota_exceeded``),
and the batch: at most 100 emails, each with from, to (at most 50), subject, a body, string
headers, tags of ASCII letters, digits, _ and -, a sender on a verified domain (403
``validation_error`` otherwise) and (this server's own rule) List-Unsubscribe and
List-Unsubscribe-Post headers. In strict mode (the default) one bad email refuses the batch
with 422; with ``x-batch-validation: permissive`` the good ones are sent and the bad ones
listed in ``errors`` by index.

``Idempotency-Key`` (1-256 characters, else 400 ``invalid_idempotency_key``) is remembered
for 24 hours by ``clock``: the same key with the same body replays the first answer and
sends nothing; with another body it is refused with 409 ``invalid_idempotent_request``; while
the first request is still being handled, 409 ``concurrent_idempotent_requests``.

Run it alone with ``python -m tests.fakes.resend`` (prints its URL).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
import time
import uuid
from email.utils import parseaddr

from .httpbase import FakeService, Reply, Request, json_reply

KEY = "re_test_full_access_key"
SENDING_KEY = "re_test_sending_only_key"
MAX_EMAILS = 100
MAX_TO = 50
KEY_MEMORY = 24 * 3600
ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def error(status: int, name: str, message: str, **headers: str) -> Reply:
    return json_reply(status, {"statusCode": status, "name": name, "message": message}, **headers)


class FakeResend(FakeService):
    fault_paths = ("/emails",)

    def __init__(self, keys: tuple[str, ...] = (KEY,), sending_keys: tuple[str, ...] = (SENDING_KEY,),
                 domains: dict[str, str] | None = None, keep_bodies: bool = True) -> None:
        super().__init__()
        self.keys = set(keys)
        self.sending_keys = set(sending_keys)
        self.domains = domains if domains is not None else {"example.com": "verified"}
        self.invalid: set[str] = set()  # addresses refused as invalid
        self.keep_bodies = keep_bodies
        self.rate_limit = 2.0
        self.daily_quota: int | None = None
        self.clock = time.time
        self.messages: list[dict] = []
        self.idempotency: dict[tuple[str, str], dict] = {}
        self.rate_limited = 0
        self._recent: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def error_reply(self, status: int) -> Reply:
        if status == 429:
            return error(429, "rate_limit_exceeded", "Too many requests.", **self._limit_headers())
        return error(status, "internal_server_error", "An unexpected error occurred.")

    def _limit_headers(self) -> dict[str, str]:
        return {"retry-after": self.retry_after, "ratelimit-limit": str(int(self.rate_limit)),
                "ratelimit-remaining": "0", "ratelimit-reset": "1"}

    def dispatch(self, request: Request) -> Reply:
        auth = request.headers.get("authorization", "")
        if not auth:
            return error(401, "missing_api_key", "Missing API key in the authorization header.")
        key = auth.removeprefix("Bearer ")
        if key not in self.keys | self.sending_keys:
            return error(403, "invalid_api_key", "API key is invalid.")
        if not self._within_rate(key):
            self.rate_limited += 1
            return error(429, "rate_limit_exceeded",
                         f"Too many requests. You can only make {self.rate_limit:g} requests per second.",
                         **self._limit_headers())
        if request.path == "/domains" and request.method == "GET":
            if key in self.sending_keys:
                return error(401, "restricted_api_key", "This API key is restricted to only send emails.")
            data = [{"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "name": name, "status": status,
                     "created_at": "2026-11-01T08:00:00.000Z", "region": "us-east-1"}
                    for name, status in self.domains.items()]
            return json_reply(200, {"object": "list", "data": data})
        if request.path != "/emails/batch" or request.method != "POST":
            return error(404, "not_found", "The requested endpoint does not exist.")
        idem = request.headers.get("idempotency-key")
        if idem is None:
            return self._batch(request)
        if not 1 <= len(idem) <= 256:
            return error(400, "invalid_idempotency_key", "The key must be between 1-256 chars.")
        slot = (key, idem)
        digest = hashlib.sha256(request.body).hexdigest()
        with self.lock:
            now = self.clock()
            for old in [k for k, v in self.idempotency.items() if now - v["at"] > KEY_MEMORY]:
                del self.idempotency[old]
            seen = self.idempotency.get(slot)
            if seen is not None:
                if seen["digest"] not in (digest, "*"):
                    return error(409, "invalid_idempotent_request", "Same idempotency key used with a different request payload.")
                if seen["reply"] is None:
                    return error(409, "concurrent_idempotent_requests", "Same idempotency key used while original request is still in progress.")
                return seen["reply"]
            self.idempotency[slot] = {"digest": digest, "at": now, "reply": None}
        reply = self._batch(request)
        with self.lock:
            if reply.status == 200:
                self.idempotency[slot]["reply"] = reply
            else:  # only a batch that was sent is remembered
                del self.idempotency[slot]
        return reply

    def hold(self, key: str, idempotency_key: str) -> None:
        """Pretend a request with this key is still being handled."""
        self.idempotency[(key, idempotency_key)] = {"digest": "*", "at": self.clock(), "reply": None}

    def _within_rate(self, key: str) -> bool:
        with self.lock:
            now = time.monotonic()
            recent = self._recent[key]
            while recent and now - recent[0] >= 1.0:
                recent.popleft()
            if len(recent) >= self.rate_limit:
                return False
            recent.append(now)
            return True

    def _batch(self, request: Request) -> Reply:
        try:
            emails = request.json()
        except ValueError:
            return error(422, "validation_error", "Invalid JSON body.")
        if not isinstance(emails, list) or not emails:
            return error(422, "validation_error", "The batch must be a non-empty array of emails.")
        if len(emails) > MAX_EMAILS:
            return error(422, "validation_error", f"Too many emails: a batch holds at most {MAX_EMAILS}.")
        for email in emails:
            domain = parseaddr(str(email.get("from", "")) if isinstance(email, dict) else "")[1].rpartition("@")[2].lower()
            if domain and self.domains.get(domain) != "verified":
                return error(403, "validation_error", f"The {domain} domain is not verified. Please, add and verify your domain.")
        permissive = request.headers.get("x-batch-validation", "strict") == "permissive"
        problems = {i: p for i, email in enumerate(emails) if (p := self._problem(email))}
        if problems and not permissive:
            index, problem = min(problems.items())
            return error(422, "validation_error", f"emails[{index}]: {problem}")
        good = [email for i, email in enumerate(emails) if i not in problems]
        with self.lock:
            if self.daily_quota is not None:
                day_ago = self.clock() - 24 * 3600
                sent = sum(1 for m in self.messages if m["at"] > day_ago)
                if sent + len(good) > self.daily_quota:
                    return error(429, "daily_quota_exceeded", "You have reached your daily email sending quota.")
            data = []
            for email in good:
                email_id = str(uuid.uuid4())
                data.append({"id": email_id})
                record = {"id": email_id, "at": self.clock(), **email}
                if not self.keep_bodies:
                    record.pop("html", None)
                    record.pop("text", None)
                self.messages.append(record)
        body: dict = {"data": data}
        if permissive:
            body["errors"] = [{"index": i, "message": p} for i, p in sorted(problems.items())]
        return json_reply(200, body)

    def _problem(self, email) -> str | None:
        if not isinstance(email, dict):
            return "Each email must be an object."
        for field in ("from", "to", "subject"):
            if not email.get(field):
                return f"The `{field}` field is missing."
        if not (email.get("html") or email.get("text")):
            return "Provide `html` or `text`."
        to = email["to"] if isinstance(email["to"], list) else [email["to"]]
        if len(to) > MAX_TO:
            return f"The `to` field holds at most {MAX_TO} addresses."
        for item in to:
            address = parseaddr(str(item))[1]
            if not ADDRESS.match(address) or address.lower() in self.invalid:
                return f"Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format: {item}"
        headers = email.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            return "The `headers` field must be an object of strings."
        if not {"list-unsubscribe", "list-unsubscribe-post"} <= {k.lower() for k in headers}:
            return "Bulk mail needs List-Unsubscribe and List-Unsubscribe-Post headers (this server's rule)."
        for tag in email.get("tags") or []:
            if not (isinstance(tag, dict) and TAG.match(str(tag.get("name", ""))) and TAG.match(str(tag.get("value", "")))):
                return "Tags may only contain ASCII letters, numbers, underscores, or dashes."
        return None


def main() -> None:
    argparse.ArgumentParser(description="Serve a local Resend on a free port.").parse_args()
    service = FakeResend(keep_bodies=False, domains={"example.com": "verified", "letter.example.com": "verified"})
    service.record_requests = False
    print(service.url, flush=True)
    service.server.serve_forever()


if __name__ == "__main__":
    main()
