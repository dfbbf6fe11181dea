"""Mailgun: ``POST /v3/<domain>/messages`` with up to 1,000 recipients per call.

The rendered issue travels once per call, as multipart form data. Its ``[[nl:field]]``
placeholders become recipient variables, one per part (``%recipient.nl_name_h%`` in the
HTML, ``%recipient.nl_name_t%`` in the text), and ``recipient-variables`` carries each
recipient's values: HTML-escaped for the HTML part, raw for the text. With
``recipient-variables`` present Mailgun sends every ``to`` address its own message, so no
recipient sees another.

Per-recipient headers: Mailgun fills recipient variables in ``h:`` header parameters and ``v:``
custom variables as well as in the body, so ``h:List-Unsubscribe`` is
``%recipient.nl_unsubscribe%`` and each message carries its recipient's own one-click link;
``v:nl-delivery`` names the journal row in Mailgun's events.

Mailgun replaces ``%recipient.key%`` and its own variables (``%recipient%``,
``%unsubscribe_url%``, ...) wherever they appear, so a value or an issue that contains such
text has its ``%`` neutralised: ``&#37;`` in HTML (shows as ``%``), and a zero-width word
joiner after the ``%`` in the text part.

One call gets one message id from Mailgun, recorded for every recipient of the call. What
each of Mailgun's answers proves is in the table below.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import threading
import weakref
from collections import deque
from email.utils import formataddr

from ..errors import ConfigError
from ..message import HeaderInjection, MessageTemplate, ascii_address, field_values, list_id
from ..placeholders import FIELDS, PLACEHOLDER_RE
from . import (
    Batch,
    BatchError,
    Envelope,
    FatalError,
    Outcome,
    Provider,
    UnknownOutcome,
    UnsubscribeHeaders,
    retag,
)
from .http import HttpClient, describe_body, json_object, one_line

# What Mailgun's answers to ``POST /v3/<domain>/messages`` prove, from its API Response Codes
# page and the Messages API reference (documentation.mailgun.com). Mailgun keeps no
# idempotency key, so nothing unknown is sent again unless the user asks.
#
# | answer | what it proves | raised as |
# |---|---|---|
# | connection refused, connect timeout | the request never reached Mailgun | TransientError |
# | 200 with {"id", "message"} | the call is queued: every recipient gets its own message, one id for all | all sent |
# | 200 without an id (another shape, not JSON), any other 2xx | not the documented answer | UnknownOutcome |
# | 400 with {"message"} about a recipient address | that call was refused whole, without saying who | halved until the address stands alone, which fails |
# | 400 about anything else | the request is malformed | FatalError |
# | 401, 403 | the key is refused, or the domain may not send (sandbox, unverified) | FatalError |
# | 404 | the domain is unknown in this region (a 404 without JSON: a wrong endpoint) | FatalError |
# | 413 | the call is too large; nothing was sent | halved until it fits; one recipient alone: FatalError |
# | 429 | over a rate limit; try again as the answer says (Retry-After) | TransientError |
# | 500 (any 5xx but 502/504) with Mailgun's JSON {"message"} body | an internal error on Mailgun's side, which it asks callers to retry with backoff | TransientError |
# | 502, 504 (any body) | a gateway answered; Mailgun may have queued the call | UnknownOutcome |
# | any other 5xx without Mailgun's JSON message (an HTML page, empty, a proxy's text) | not known to come from Mailgun | UnknownOutcome |
# | read timeout, connection reset or closed after the request went out | the call may have been queued | UnknownOutcome |
#
# Mailgun's documentation lists 500 only; a 503 carrying its JSON message is read the same way.

REGIONS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
CONSTANT_FIELDS = ("web_url",)
# Text Mailgun would take for one of its variables: %recipient...%, %unsubscribe_url%, ...
MAILGUN_VARIABLE = re.compile(r"%(?=[a-z_]*(?:recipient|unsubscribe)[A-Za-z0-9_.]*%)")
WORD_JOINER = "\u2060"
# Mailgun's 400 for a recipient address it refuses, which does not say which one it was.
BAD_RECIPIENT = re.compile(r"\b(?:to|cc|bcc)'? parameter is not a valid address", re.IGNORECASE)


def defuse_html(text: str) -> str:
    return MAILGUN_VARIABLE.sub("&#37;", text)


def defuse_text(text: str) -> str:
    return MAILGUN_VARIABLE.sub("%" + WORD_JOINER, text)


class MailgunProvider(Provider):
    name = "mailgun"
    max_batch = 1000
    default_concurrency = 4

    def setup(self) -> None:
        key = self.require_secret("MAILGUN_API_KEY")
        self.domain = self.option("domain", self.config.newsletter.sender.domain)
        if not re.fullmatch(r"[A-Za-z0-9.-]+", self.domain):
            raise ConfigError(f"[provider] domain: {self.domain!r} is not a domain name, e.g. mg.example.com")
        self.region = self.option("region", "us")
        if self.region not in REGIONS:
            raise ConfigError(f"[provider] region: {self.region!r} is not a Mailgun region; use \"us\" or \"eu\"")
        self.client = HttpClient(
            "mailgun",
            self.config.provider.base_url or REGIONS[self.region],
            timeout=self.http_timeout(),
            auth=("api", key),
            headers={"Accept": "application/json"},
            error_body=is_mailgun_error,
        )
        self._bodies: weakref.WeakKeyDictionary[MessageTemplate, tuple] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.region.upper()} region, {self.client.base_url}"

    # -- checking --------------------------------------------------------------------------

    def check(self) -> str:
        response = self.client.request("GET", f"/v3/domains/{self.domain}")
        if response.status_code in (401, 403):
            raise FatalError(
                f"mailgun: the API refused MAILGUN_API_KEY ({response.status_code}: {_message(response)}); "
                "use a private API key of the account that owns the domain"
            )
        if response.status_code == 404:
            raise FatalError(self._not_found())
        if response.status_code != 200:
            raise FatalError(f"mailgun: GET /v3/domains/{self.domain} answered {response.status_code}: {_message(response)}")
        domain = json_object(response).get("domain") or {}
        state = domain.get("state", "?")
        if state != "active":
            raise FatalError(
                f"mailgun: domain {self.domain} is {state}, not active; finish its DNS set-up "
                "(SPF, DKIM) in Mailgun's Sending > Domains"
            )
        kind = " (a sandbox domain: it only sends to authorised recipients)" if domain.get("type") == "sandbox" else ""
        return f"mailgun: API key accepted; domain {self.domain} is active{kind} ({self.where})"

    def _not_found(self) -> str:
        other = "eu" if self.region == "us" else "us"
        return (
            f"mailgun: domain {self.domain} was not found ({self.where}); check [provider] domain, "
            f"or set region = \"{other}\" if the domain was created in Mailgun's {other.upper()} region"
        )

    # -- sending ---------------------------------------------------------------------------

    def send_batch(self, batch: Batch) -> list[Outcome]:
        t = batch.template
        html, text, html_fields, text_fields, unsubscribe = self._bodies_for(t)
        outcomes: list[Outcome] = []
        recipients: list[tuple[Envelope, str, str, dict[str, str]]] = []
        seen: set[str] = set()
        for env in batch.envelopes:
            try:
                address = ascii_address(env.recipient.email)
                header = unsubscribe.for_url(env.unsubscribe_url)
            except HeaderInjection as exc:
                outcomes.append(Outcome(env.key, "failed", reason=f"mailgun: not sent: {exc}"))
                continue
            if address.lower() in seen:  # one set of variables per address in a call
                outcomes.append(Outcome(env.key, "failed", reason="mailgun: not sent: the address is twice in the batch"))
                continue
            seen.add(address.lower())
            values = field_values(env.recipient, env.unsubscribe_url, t.web_url)
            variables = {f"nl_{f}_h": defuse_html(html_lib.escape(values[f], quote=True)) for f in html_fields}
            variables.update({f"nl_{f}_t": defuse_text(values[f]) for f in text_fields})
            variables["nl_unsubscribe"] = header
            variables["nl_key"] = str(env.key)
            mailbox = formataddr((env.recipient.name, address)) if env.recipient.name else address
            recipients.append((env, address, mailbox, variables))
        if recipients:
            common = [
                ("from", str(t.sender)),
                ("subject", defuse_text(t.subject)),
                ("text", text),
                ("html", html),
                ("h:Reply-To", self.config.newsletter.reply_to),
                ("h:List-Id", list_id(self.config, t.list_name)),
                ("h:List-Unsubscribe", "%recipient.nl_unsubscribe%"),
                ("h:List-Unsubscribe-Post", unsubscribe.post),
                ("v:nl-delivery", "%recipient.nl_key%"),
                ("v:nl-campaign", batch.label),
            ]
            try:
                outcomes += self._deliver(common, recipients)
            except BatchError as exc:
                exc.partial = outcomes + exc.partial
                raise
        order = {env.key: i for i, env in enumerate(batch.envelopes)}
        return sorted(outcomes, key=lambda o: order[o.key])

    def _deliver(self, common: list[tuple[str, str]], recipients: list) -> list[Outcome]:
        """Send the recipients; a 400 about an invalid address or a 413 halves the call until
        the culprit stands alone (nothing of a refused call was sent, so this is safe)."""
        outcomes: list[Outcome] = []
        queue = deque([recipients])
        path = f"/v3/{self.domain}/messages"
        while queue:
            group = queue.popleft()
            fields = list(common)
            fields += [("to", mailbox) for _, _, mailbox, _ in group]
            variables = {address: values for _, address, _, values in group}
            fields.append(("recipient-variables", json.dumps(variables, ensure_ascii=False, separators=(",", ":"))))
            try:
                response = self.client.request("POST", path, files=[(k, (None, v)) for k, v in fields])
            except BatchError as exc:
                exc.partial = outcomes + list(exc.partial)
                raise
            status = response.status_code
            answer = json_object(response)
            if status == 200 and isinstance(answer.get("id"), str) and answer["id"].strip("<>"):
                message_id = answer["id"].strip("<>")
                outcomes.extend(Outcome(env.key, "sent", provider_id=message_id) for env, *_ in group)
                continue
            if 200 <= status < 300:
                raise UnknownOutcome(
                    f"mailgun: answer {status} without a message id ({describe_body(response)}); "
                    "the call may have been queued", partial=outcomes,
                )
            message = _message(response)
            if status == 413 or (status == 400 and BAD_RECIPIENT.search(message)):
                if len(group) > 1:
                    half = len(group) // 2
                    queue.appendleft(group[half:])
                    queue.appendleft(group[:half])
                    continue
                if status == 400:
                    outcomes.append(Outcome(group[0][0].key, "failed", reason=f"mailgun: {message}"))
                    continue
                raise FatalError("mailgun: the message is larger than Mailgun accepts (413, 25 MB); make the issue smaller", partial=outcomes)
            if status in (401, 403):
                raise FatalError(
                    f"mailgun: the API refused the request ({status}: {message}); check MAILGUN_API_KEY "
                    f"and that domain {self.domain} may send", partial=outcomes,
                )
            if status == 404:
                raise FatalError(self._not_found(), partial=outcomes)
            if status == 400:
                raise FatalError(f"mailgun: the request was refused (400): {message}", partial=outcomes)
            raise FatalError(f"mailgun: unexpected answer {status}: {message}", partial=outcomes)
        return outcomes

    def _bodies_for(self, template: MessageTemplate) -> tuple[str, str, list[str], list[str], UnsubscribeHeaders]:
        """The HTML and text as a Mailgun template, the fields each uses and the shape of the
        unsubscribe headers; once per issue."""
        with self._lock:
            cached = self._bodies.get(template)
            if cached is None:
                rendered = template.rendered
                web = template.web_url
                html_tags = {f: f"%recipient.nl_{f}_h%" for f in FIELDS}
                text_tags = {f: f"%recipient.nl_{f}_t%" for f in FIELDS}
                html_tags["web_url"] = defuse_html(html_lib.escape(web, quote=True))
                text_tags["web_url"] = defuse_text(web)
                cached = (
                    retag(defuse_html(rendered.html), html_tags),
                    retag(defuse_text(rendered.text), text_tags),
                    sorted(set(PLACEHOLDER_RE.findall(rendered.html)) - set(CONSTANT_FIELDS)),
                    sorted(set(PLACEHOLDER_RE.findall(rendered.text)) - set(CONSTANT_FIELDS)),
                    UnsubscribeHeaders(template),
                )
                self._bodies[template] = cached
            return cached

    def close(self) -> None:
        self.client.close()



def is_mailgun_error(response) -> bool:
    """Mailgun's own error body: a JSON object with a ``message`` and no message id."""
    body = json_object(response)
    return isinstance(body.get("message"), str) and "id" not in body


def _message(response) -> str:
    message = json_object(response).get("message")
    return one_line(message, 300) if message else describe_body(response)
