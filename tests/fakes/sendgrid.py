"""A local SendGrid: ``POST /v3/mail/send`` and ``GET /v3/scopes`` as SendGrid documents them.

It checks the Bearer key (401) and its scopes (403 without ``mail.send``), the payload size
(413 over ``max_bytes``, 30 MB by default), and the request shape, answering 400 with an
``errors`` array whose ``field`` names the culprit (``personalizations.3.to.0.email``) for:
no or more than 1,000 personalizations, more than 1,000 recipients, an invalid or repeated
address, ``;`` or ``,`` in a recipient's name, a missing subject, content that is empty or
not text/plain first, reserved headers, custom args of 10,000 bytes or more, substitutions
over 10,000 bytes per personalization, and (this server's own rule, as a bulk sender's
safety net) a message without List-Unsubscribe and List-Unsubscribe-Post. A sender outside
``verified`` gets SendGrid's 403 about Sender Identity. Scripted 429s carry
``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch seconds).

An accepted request answers 202 with an ``X-Message-Id`` header, and every personalization
becomes one entry in ``messages``: its recipient, merged headers and custom args, and the
subject and bodies after substitution. Substitution replaces one tag after another over the
whole text, so a value containing a later tag would be expanded again.

Run it alone with ``python -m tests.fakes.sendgrid`` (prints its URL).
"""

from __future__ import annotations

import argparse
import re
import secrets
import time

from .httpbase import FakeService, Reply, Request, json_reply

KEY = "SG.test-key.for-the-local-server"
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_BYTES = 30 * 1024 * 1024
MAX_CUSTOM_ARGS = 10_000
MAX_SUBSTITUTIONS = 10_000
RESERVED = {
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
}
ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def errors(status: int, *items: tuple[str | None, str], **headers: str) -> Reply:
    return json_reply(status, {"errors": [{"field": f, "message": m, "help": None} for f, m in items]}, **headers)


class FakeSendgrid(FakeService):
    fault_paths = ("/v3/mail/send",)

    def __init__(self, key: str = KEY, scopes: tuple[str, ...] = ("mail.send", "scopes.read"),
                 verified: tuple[str, ...] = ("example.com",), keep_bodies: bool = True) -> None:
        super().__init__()
        self.key = key
        self.scopes = list(scopes)
        self.verified = set(verified)  # sender domains or addresses
        self.invalid: set[str] = set()  # addresses to refuse as "not a valid address"
        self.keep_bodies = keep_bodies
        self.max_bytes = MAX_BYTES
        self.reset_in = 30  # seconds until a scripted 429's rate window resets
        self.record = True  # False: count accepted messages only (long benchmark runs)
        self.delivered = 0
        self.messages: list[dict] = []
        self.accepted: list[int] = []  # body size of each accepted request

    def error_reply(self, status: int) -> Reply:
        if status == 429:
            return errors(
                429, (None, "too many requests"),
                **{"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(int(time.time()) + self.reset_in)},
            )
        return errors(status, (None, "internal error"))

    def dispatch(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return errors(401, (None, "The provided authorization grant is invalid, expired, or revoked"))
        if request.path == "/v3/scopes" and request.method == "GET":
            return json_reply(200, {"scopes": self.scopes})
        if request.path != "/v3/mail/send" or request.method != "POST":
            return errors(404, (None, "not found"))
        if "mail.send" not in self.scopes:
            return errors(403, (None, "access forbidden"))
        if len(request.body) > self.max_bytes:
            return errors(413, (None, "Payload Too Large"))
        if "application/json" not in request.headers.get("content-type", ""):
            return errors(415, (None, "Content-Type should be application/json."))
        try:
            mail = request.json()
        except ValueError:
            return errors(400, (None, "Bad Request"))
        if not isinstance(mail, dict):
            return errors(400, (None, "Bad Request"))
        problems = self._problems(mail)
        if problems:
            return errors(400, *problems)
        sender = mail["from"]["email"].lower()
        if sender not in self.verified and sender.rpartition("@")[2] not in self.verified:
            return errors(403, ("from", "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved."))
        message_id = secrets.token_urlsafe(16)
        delivered = [self._deliver(mail, p, message_id) for p in mail["personalizations"]] if self.record else []
        with self.lock:
            self.delivered += len(mail["personalizations"])
            self.messages.extend(delivered)
            self.accepted.append(len(request.body))
        return Reply(202, None, {"X-Message-Id": message_id})

    # -- validation ------------------------------------------------------------------------

    def _problems(self, mail: dict) -> list[tuple[str | None, str]]:
        found: list[tuple[str | None, str]] = []
        sender = mail.get("from")
        if not isinstance(sender, dict) or not ADDRESS.match(str(sender.get("email", ""))):
            found.append(("from.email", "The from email does not contain a valid address."))
        people = mail.get("personalizations")
        if not isinstance(people, list) or not people:
            found.append(("personalizations", "You must have at least one personalization."))
            return found
        if len(people) > MAX_PERSONALIZATIONS:
            found.append(("personalizations", f"The personalization block is limited to 1000 personalizations per API request. You have provided {len(people)} personalizations. Please consider splitting this into multiple requests and resending your request."))
            return found
        total = sum(len(p.get(k) or []) for p in people if isinstance(p, dict) for k in ("to", "cc", "bcc"))
        if total > MAX_RECIPIENTS:
            found.append(("personalizations", "There is a limit of 1000 total recipients (to + cc + bcc) per request."))
        if not mail.get("subject") and not all(isinstance(p, dict) and p.get("subject") for p in people):
            found.append(("subject", "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined."))
        found += self._content_problems(mail.get("content"))
        found += self._header_problems("headers", mail.get("headers") or {})
        seen: set[str] = set()
        top_args = mail.get("custom_args") or {}
        top_headers = mail.get("headers") or {}
        for i, p in enumerate(people):
            where = f"personalizations.{i}"
            if not isinstance(p, dict) or not p.get("to"):
                found.append((f"{where}.to", "The to parameter is required for all personalization objects, and must have at least one email object with a valid email address."))
                continue
            for j, to in enumerate(p["to"]):
                email = str(to.get("email", "")) if isinstance(to, dict) else ""
                if not ADDRESS.match(email) or email.lower() in self.invalid:
                    found.append((f"{where}.to.{j}.email", "Does not contain a valid address."))
                elif email.lower() in seen:
                    found.append((where, f"Each email address in the personalization block should be unique between to, cc, and bcc. We found the first duplicate instance of [{email}] in the {where}.to field."))
                seen.add(email.lower())
                name = to.get("name", "") if isinstance(to, dict) else ""
                if any(ch in str(name) for ch in ";,"):
                    found.append((f"{where}.to.{j}.name", "The to.name cannot contain the ';' or ',' characters."))
            found += self._header_problems(f"{where}.headers", p.get("headers") or {})
            headers = {k.lower() for k in {**top_headers, **(p.get("headers") or {})}}
            if not {"list-unsubscribe", "list-unsubscribe-post"} <= headers:
                found.append((f"{where}.headers", "Bulk mail needs List-Unsubscribe and List-Unsubscribe-Post headers (this server's rule)."))
            subs = p.get("substitutions") or {}
            if not isinstance(subs, dict) or not all(isinstance(v, str) for v in subs.values()):
                found.append((f"{where}.substitutions", "Substitutions must be an object of strings."))
            elif _size(subs) > MAX_SUBSTITUTIONS:
                found.append((f"{where}.substitutions", "The total collective size of your substitutions may not exceed 10,000 bytes per personalization object."))
            args = {**top_args, **(p.get("custom_args") or {})}
            if _size(args) >= MAX_CUSTOM_ARGS:
                found.append((f"{where}.custom_args", "The total size of custom arguments must be less than 10000 bytes."))
        return found

    @staticmethod
    def _content_problems(content) -> list[tuple[str | None, str]]:
        if not isinstance(content, list) or not content:
            return [("content", "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.")]
        found: list[tuple[str | None, str]] = []
        types = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("value"), str) or not block["value"]:
                found.append((f"content.{i}.value", "The content value must be a string at least one character in length."))
            types.append(block.get("type") if isinstance(block, dict) else None)
        if "text/plain" in types and types.index("text/plain") != 0:
            found.append(("content", "If present, text/plain and text/html may only be provided in order, and text/plain must be first."))
        if "text/html" in types and "text/plain" in types and types.index("text/html") < types.index("text/plain"):
            found.append(("content", "If present, text/plain and text/html may only be provided in order, and text/plain must be first."))
        return found

    @staticmethod
    def _header_problems(where: str, headers) -> list[tuple[str | None, str]]:
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            return [(where, "The headers parameter must be an object of strings.")]
        reserved = sorted(k for k in headers if k.lower() in RESERVED)
        if reserved:
            return [(where, f"The following headers are reserved and cannot be set: {', '.join(reserved)}.")]
        return []

    # -- delivery --------------------------------------------------------------------------

    def _deliver(self, mail: dict, p: dict, message_id: str) -> dict:
        subs = p.get("substitutions") or {}

        def fill(text: str) -> str:
            for tag, value in subs.items():  # one tag after another, as a naive engine would
                text = text.replace(tag, value)
            return text

        content = {block["type"]: block["value"] for block in mail["content"]}
        message = {
            "to": p["to"],
            "message_id": message_id,
            "headers": {**(mail.get("headers") or {}), **(p.get("headers") or {})},
            "custom_args": {**(mail.get("custom_args") or {}), **(p.get("custom_args") or {})},
            "subject": fill(p.get("subject") or mail.get("subject", "")),
        }
        if self.keep_bodies:
            message["text"] = fill(content.get("text/plain", ""))
            message["html"] = fill(content.get("text/html", ""))
        return message


def _size(mapping: dict) -> int:
    """Bytes of the keys and values, the measure SendGrid's limits are given in."""
    return sum(len(str(k).encode()) + len(str(v).encode()) for k, v in mapping.items())


def main() -> None:
    argparse.ArgumentParser(description="Serve a local SendGrid on a free port.").parse_args()
    service = FakeSendgrid(keep_bodies=False, verified=("example.com", "letter.example.com"))
    service.record = False
    service.record_requests = False
    print(service.url, flush=True)
    service.server.serve_forever()


if __name__ == "__main__":
    main()
