"""A local Mailgun: ``POST /v3/<domain>/messages`` and ``GET /v3/domains/<domain>``.

It checks basic auth ``api:<key>`` (401 "Forbidden"), the domain (404 when unknown, 403 when
it may not send, sandbox domains only to ``authorized`` addresses), the payload size (413
over ``max_bytes``) and the form (multipart or urlencoded), answering 400 with a JSON
``message`` as Mailgun does for: a missing from, to, subject or body, more than 1,000
recipients, an invalid address (Mailgun's message does not say which), recipient-variables
that are not a JSON object, and (this server's own rule) a message without
``h:List-Unsubscribe`` and ``h:List-Unsubscribe-Post``.

Accepted calls answer 200 with one id for the call. With ``recipient-variables`` each ``to``
becomes its own message; without them one message goes to all ``to`` addresses at once,
every one of them visible in its To header, as Mailgun documents. ``%recipient.key%`` (and
``%recipient%``, ``%recipient_email%``) are filled in the subject, bodies, ``h:`` headers and
``v:`` variables, one variable after another, so a value containing another variable would
be expanded again. ``messages`` records what each recipient would get.

Run it alone with ``python -m tests.fakes.mailgun`` (prints its URL).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import time

from werkzeug.formparser import parse_form_data

from .httpbase import FakeService, Reply, Request, json_reply

KEY = "key-mailgun-test-0123456789"
DOMAIN = "mg.example.com"
MAX_RECIPIENTS = 1000
MAX_BYTES = 25 * 1024 * 1024
ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
SEND_PATH = re.compile(r"^/v3/([^/]+)/messages$")
DOMAIN_PATH = re.compile(r"^/v3/domains/([^/]+)$")
MAILBOX = re.compile(r'^\s*(?:"?(?P<name>.*?)"?\s*<(?P<inner>[^<>]*)>|(?P<bare>[^<>\s]*))\s*$')


def mailbox(text: str) -> tuple[str, str]:
    """(name, address) of one ``to`` value: ``a@example.com`` or ``Name <a@example.com>``."""
    match = MAILBOX.match(text)
    if not match:
        return "", ""
    return (match["name"] or "").strip(), match["inner"] if match["inner"] is not None else match["bare"]


class FakeMailgun(FakeService):
    fault_paths = ("/v3/",)

    def __init__(self, key: str = KEY, domains: dict[str, dict] | None = None, keep_bodies: bool = True) -> None:
        super().__init__()
        self.key = key
        self.domains = domains if domains is not None else {DOMAIN: {"state": "active", "type": "custom"}}
        self.authorized: set[str] = set()  # recipients a sandbox domain may send to
        self.invalid: set[str] = set()  # addresses refused as "not a valid address"
        self.keep_bodies = keep_bodies
        self.max_bytes = MAX_BYTES
        self.record = True  # False: count accepted messages only (long benchmark runs)
        self.delivered = 0
        self.messages: list[dict] = []
        self.calls = 0

    def error_reply(self, status: int) -> Reply:
        if status == 429:
            return json_reply(429, {"message": "Too many requests"}, **{"Retry-After": self.retry_after})
        return json_reply(status, {"message": "Internal Server Error"})

    def dispatch(self, request: Request) -> Reply:
        expected = "Basic " + base64.b64encode(f"api:{self.key}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return Reply(401, "Forbidden", {"Content-Type": "text/plain"})
        match = DOMAIN_PATH.match(request.path)
        if match and request.method == "GET":
            info = self.domains.get(match.group(1))
            if info is None:
                return json_reply(404, {"message": "Domain not found"})
            return json_reply(200, {"domain": {"name": match.group(1), "created_at": "Tue, 01 Dec 2026 07:00:00 GMT", **info},
                                    "receiving_dns_records": [], "sending_dns_records": []})
        match = SEND_PATH.match(request.path)
        if not match or request.method != "POST":
            return json_reply(404, {"message": "not found"})
        domain = match.group(1)
        info = self.domains.get(domain)
        if info is None:
            return json_reply(404, {"message": f"Domain not found: {domain}"})
        if len(request.body) > self.max_bytes:
            return json_reply(413, {"message": "request entity too large"})
        form = self._form(request)
        if form is None:
            return json_reply(400, {"message": "could not parse the form"})
        problem = self._problem(form)
        if problem:
            return json_reply(400, {"message": problem})
        if info["state"] != "active":
            return json_reply(403, {"message": f"Domain {domain} is not allowed to send: it is {info['state']}"})
        tos = form.getlist("to")
        if info.get("type") == "sandbox":
            outsiders = [a for _, a in map(mailbox, tos) if a.lower() not in self.authorized]
            if outsiders:
                return json_reply(403, {"message": "Sandbox subdomains are for test purposes only. Please add your own domain or add the address to authorized recipients in Account Settings."})
        with self.lock:
            self.calls += 1
            message_id = f"<{time.strftime('%Y%m%d%H%M%S')}.{self.calls}.{abs(hash(request.body)) % 10**8}@{domain}>"
        delivered = self._deliver(form, message_id) if self.record else []
        with self.lock:
            self.delivered += len(tos) if form.get("recipient-variables") is not None else 1
            self.messages.extend(delivered)
        return json_reply(200, {"id": message_id, "message": "Queued. Thank you."})

    @staticmethod
    def _form(request: Request):
        environ = {
            "REQUEST_METHOD": "POST",
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(request.body)),
            "wsgi.input": io.BytesIO(request.body),
        }
        try:
            _, form, _ = parse_form_data(environ, max_form_memory_size=None)
        except ValueError:
            return None
        return form

    def _problem(self, form) -> str | None:
        if not form.get("from"):
            return "from parameter is missing"
        tos = form.getlist("to")
        if not tos:
            return "to parameter is missing"
        if len(tos) > MAX_RECIPIENTS:
            return f"'to' parameter can not have more than {MAX_RECIPIENTS} recipients"
        if not form.get("subject"):
            return "subject parameter is missing"
        if not (form.get("text") or form.get("html")):
            return "Need at least one of 'text', 'html', 'amp-html' or 'template' parameters specified"
        for _, address in map(mailbox, tos):
            if not ADDRESS.match(address) or address.lower() in self.invalid:
                return "'to' parameter is not a valid address. please check documentation"
        raw = form.get("recipient-variables")
        if raw is not None:
            try:
                variables = json.loads(raw)
            except ValueError:
                return "'recipient-variables' parameter is not a valid JSON"
            if not isinstance(variables, dict):
                return "'recipient-variables' parameter is not a valid JSON"
        if not (form.get("h:List-Unsubscribe") and form.get("h:List-Unsubscribe-Post")):
            return "bulk mail needs h:List-Unsubscribe and h:List-Unsubscribe-Post (this server's rule)"
        return None

    def _deliver(self, form, message_id: str) -> list[dict]:
        raw = form.get("recipient-variables")
        headers = {k[2:]: v for k, v in form.items(multi=True) if k.startswith("h:")}
        custom = {k[2:]: v for k, v in form.items(multi=True) if k.startswith("v:")}
        base = {"from": form["from"], "subject": form["subject"], "text": form.get("text", ""), "html": form.get("html", "")}
        tos = form.getlist("to")
        if raw is None:  # no batch mode: one message, every recipient in its To header
            return [self._message({**base, "to": ", ".join(tos), "headers": headers, "variables": custom, "id": message_id})]
        variables = json.loads(raw)
        out = []
        for to, (name, address) in zip(tos, map(mailbox, tos), strict=True):
            values = variables.get(address) or {}

            def fill(text: str, values=values, address=address, name=name) -> str:
                for key, value in values.items():  # one variable after another
                    text = text.replace(f"%recipient.{key}%", str(value))
                text = text.replace("%recipient_email%", address).replace("%recipient_name%", name)
                return text.replace("%recipient%", address)

            out.append(self._message({
                "to": to,
                "address": address,
                "from": base["from"],
                "subject": fill(base["subject"]),
                "text": fill(base["text"]) if self.keep_bodies else "",
                "html": fill(base["html"]) if self.keep_bodies else "",
                "headers": {k: fill(v) for k, v in headers.items()},
                "variables": {k: fill(v) for k, v in custom.items()},
                "id": message_id,
            }))
        return out

    def _message(self, message: dict) -> dict:
        if not self.keep_bodies:
            message.pop("text", None)
            message.pop("html", None)
        return message


def main() -> None:
    argparse.ArgumentParser(description="Serve a local Mailgun on a free port.").parse_args()
    service = FakeMailgun(keep_bodies=False)
    service.record = False
    service.record_requests = False
    print(service.url, flush=True)
    service.server.serve_forever()


if __name__ == "__main__":
    main()
