"""SendGrid: ``POST /v3/mail/send`` with up to 1,000 personalizations per request.

The rendered issue travels once per request. Its ``[[nl:field]]`` placeholders become
SendGrid substitution tags, a separate one for each part (``-nl_name_h-`` in the HTML,
``-nl_name_t-`` in the text), and each personalization carries only what is the recipient's
own: the address, the values for those tags (HTML-escaped for the HTML part, raw for the
text), the List-Unsubscribe and List-Unsubscribe-Post headers, and a custom arg naming the
delivery so that event webhooks can be matched to the journal. The web link is the same for
everyone and is filled in once per issue.

A value that contains a tag could be expanded a second time by a substitution engine that
replaces one key after another; the tags of a batch therefore use a prefix (``-nl_``,
``-nl1_``, ...) that occurs neither in the issue nor in any value of that batch.

SendGrid answers 202 (queued) with no per-recipient ids; 200 would mean sandbox mode, which
delivers nothing, and is never asked for; each outcome records the request's
``X-Message-Id`` (the prefix of the ``sg_message_id`` in its events) and the
personalization's position, e.g. ``"Vx2lN9iAT8yIXr8kJ2yGZw#17"``.

What each of SendGrid's answers proves is in the table below.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import threading
import weakref
from collections import deque
from dataclasses import dataclass

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
    TransientError,
    UnknownOutcome,
    UnsubscribeHeaders,
    retag,
)
from .http import HttpClient, describe_body, json_object, one_line, reset_after, retry_after

# What SendGrid's answers to ``POST /v3/mail/send`` prove, from its v3 API documentation (the
# Errors page of the API reference and the Mail Send reference; twilio.com/docs/sendgrid).
# SendGrid keeps no idempotency key, so nothing unknown is sent again unless the user asks.
#
# | answer | what it proves | raised as |
# |---|---|---|
# | connection refused, connect timeout | the request never reached SendGrid | TransientError |
# | 202, no body, an X-Message-Id header | every personalization is queued for delivery | all sent |
# | any other 2xx (200 is sandbox mode, which is never asked for) | not the documented answer to this call | UnknownOutcome |
# | 400 with {"errors": [...]} whose fields all name personalizations | only those were refused; nothing of the call was sent | those fail, the rest are sent again |
# | 400 about the call as a whole | the request is malformed | FatalError |
# | 401, 403 | the key is refused, lacks Mail Send, or the sender is not a verified identity (403 may also be a temporary block after many bad calls) | FatalError |
# | 413 | the call is over 30 MB; nothing was sent | halved until it fits; one recipient alone: FatalError |
# | other 4xx (404, 405, 406, 415, ...) | the request's address, method or type is wrong | FatalError |
# | 429 | over the rate limit; nothing taken until X-RateLimit-Reset (epoch seconds) | TransientError |
# | 500 or 503 (any 5xx but 502/504) with SendGrid's {"errors": [...]} body | SendGrid failed while handling a valid call (500), or the v3 API is unavailable (503) | TransientError |
# | 502, 504 (any body) | a gateway answered; SendGrid may have queued the mail | UnknownOutcome |
# | any other 5xx without SendGrid's errors body | not known to come from SendGrid | UnknownOutcome |
# | read timeout, connection reset or closed after the request went out | the mail may have been queued | UnknownOutcome |

API = "https://api.sendgrid.com"
API_EU = "https://api.eu.sendgrid.com"
REGIONS = {"global": API, "eu": API_EU}
PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)(?:\.|$)")
CONSTANT_FIELDS = ("web_url",)  # the same for every recipient: filled in once per issue


@dataclass
class _Prepared:
    """One issue as SendGrid content: which fields each part uses, and the parts with tags
    for each prefix used so far."""

    html_fields: list[str]
    text_fields: list[str]
    bodies: dict[str, tuple[str, str]]
    unsubscribe: UnsubscribeHeaders


@dataclass(frozen=True, slots=True)
class _Item:
    envelope: Envelope
    personalization: dict


class SendgridProvider(Provider):
    name = "sendgrid"
    max_batch = 1000
    default_concurrency = 4

    def setup(self) -> None:
        key = self.require_secret("SENDGRID_API_KEY")
        region = self.option("region", "global")
        if region not in REGIONS:
            raise ConfigError(f"[provider] region: {region!r} is not a SendGrid region; use \"global\" or \"eu\"")
        self.region = region
        self.client = HttpClient(
            "sendgrid",
            self.config.provider.base_url or REGIONS[region],
            timeout=self.http_timeout(),
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            error_body=is_sendgrid_error,
        )
        self._prepared: weakref.WeakKeyDictionary[MessageTemplate, _Prepared] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -- checking --------------------------------------------------------------------------

    def check(self) -> str:
        response = self.client.request("GET", "/v3/scopes")
        if response.status_code in (401, 403):
            raise FatalError(
                f"sendgrid: the API refused the key in SENDGRID_API_KEY ({response.status_code}: "
                f"{_errors_text(response)}); create a key with Mail Send access"
            )
        if response.status_code != 200:
            raise FatalError(f"sendgrid: GET /v3/scopes answered {response.status_code}: {_errors_text(response)}")
        scopes = json_object(response).get("scopes") or []
        if "mail.send" not in scopes:
            raise FatalError(
                "sendgrid: the key in SENDGRID_API_KEY is valid but lacks the mail.send scope; "
                "give it Mail Send access in Settings > API Keys"
            )
        return f"sendgrid: API key accepted with the mail.send scope ({self.client.base_url})"

    # -- sending ---------------------------------------------------------------------------

    def send_batch(self, batch: Batch) -> list[Outcome]:
        t = batch.template
        prepared_issue = self._prepare(t)
        fields = sorted(set(prepared_issue.html_fields) | set(prepared_issue.text_fields))
        refused: list[Outcome] = []
        unsubscribe = prepared_issue.unsubscribe
        prepared: list[tuple[Envelope, dict[str, str], str, str]] = []
        for env in batch.envelopes:
            try:
                address = ascii_address(env.recipient.email)
                header = unsubscribe.for_url(env.unsubscribe_url)
            except HeaderInjection as exc:
                refused.append(Outcome(env.key, "failed", reason=f"sendgrid: not sent: {exc}"))
                continue
            values = field_values(env.recipient, env.unsubscribe_url, t.web_url)
            prepared.append((env, {f: values[f] for f in fields}, header, address))
        if not prepared:
            return refused
        prefix = self._prefix(t, (v for _, values, _, _ in prepared for v in values.values()))
        html, text = self._bodies_for(t, prefix)
        html_fields, text_fields = prepared_issue.html_fields, prepared_issue.text_fields
        items = []
        for env, values, header, address in prepared:
            to = {"email": address}
            if env.recipient.name:
                # SendGrid refuses ';' and ',' in a recipient's name.
                to["name"] = re.sub(r"[;,]", " ", env.recipient.name).strip()
            substitutions = {}
            for name in html_fields:
                substitutions[f"{prefix}{name}_h-"] = html_lib.escape(values[name], quote=True)
            for name in text_fields:
                substitutions[f"{prefix}{name}_t-"] = values[name]
            personalization = {
                "to": [to],
                "headers": {"List-Unsubscribe": header, "List-Unsubscribe-Post": unsubscribe.post},
                "custom_args": {"nl_delivery": str(env.key)},
            }
            if substitutions:
                personalization["substitutions"] = substitutions
            items.append(_Item(env, personalization))
        common = {
            "from": _address(t.sender.addr_spec, t.sender.display_name),
            "reply_to": {"email": self.config.newsletter.reply_to},
            "subject": t.subject,
            "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": html}],
            "headers": {"List-Id": list_id(self.config, t.list_name)},
            "custom_args": {"nl_campaign": batch.label},
            # our own one-click unsubscribe is the only one: SendGrid's must not replace it
            "tracking_settings": {"subscription_tracking": {"enable": False}},
        }
        try:
            outcomes = refused + self._deliver(common, items)
        except BatchError as exc:
            exc.partial = refused + exc.partial
            raise
        order = {env.key: i for i, env in enumerate(batch.envelopes)}
        return sorted(outcomes, key=lambda o: order[o.key])

    def _deliver(self, common: dict, items: list[_Item]) -> list[Outcome]:
        """Send the items, splitting on 413 and dropping recipients a 400 names, until every
        one has an outcome. A 400 or 413 means nothing of that request was sent, so sending
        the rest again is safe."""
        outcomes: list[Outcome] = []
        queue: deque[list[_Item]] = deque([items])
        while queue:
            group = queue.popleft()
            payload = dict(common, personalizations=[item.personalization for item in group])
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            try:
                response = self.client.request("POST", "/v3/mail/send", data=body, passthrough=(429,))
            except BatchError as exc:
                exc.partial = outcomes + list(exc.partial)
                raise
            status = response.status_code
            if status == 202:
                message_id = response.headers.get("X-Message-Id", "")
                outcomes.extend(
                    Outcome(item.envelope.key, "sent", provider_id=f"{message_id}#{index}" if message_id else None)
                    for index, item in enumerate(group)
                )
            elif 200 <= status < 300:
                raise UnknownOutcome(
                    f"sendgrid: answer {status} ({describe_body(response)}) instead of SendGrid's 202; "
                    "the mail may have been queued", partial=outcomes,
                )
            elif status == 429:
                wait = reset_after(response, "X-RateLimit-Reset")
                if wait is None:
                    wait = retry_after(response)
                raise TransientError(
                    "sendgrid: rate limited (429)" + (f"; the limit resets in {wait:.0f} s" if wait is not None else ""),
                    retry_after=wait, partial=outcomes,
                )
            elif status in (401, 403):
                raise FatalError(
                    f"sendgrid: the API refused the request ({status}: {_errors_text(response)}); "
                    "check SENDGRID_API_KEY and that the sender is a verified Sender Identity",
                    partial=outcomes,
                )
            elif status == 413:
                if len(group) == 1:
                    raise FatalError(
                        "sendgrid: the message is larger than SendGrid accepts (413, 30 MB per "
                        "request); make the issue smaller", partial=outcomes,
                    )
                half = len(group) // 2
                queue.appendleft(group[half:])
                queue.appendleft(group[:half])
            elif status == 400:
                named = _named_personalizations(response, len(group))
                if named is None:
                    raise FatalError(
                        f"sendgrid: the request was refused (400): {_errors_text(response)}",
                        partial=outcomes,
                    )
                for index, reason in named.items():
                    outcomes.append(Outcome(group[index].envelope.key, "failed", reason=f"sendgrid: {reason}"))
                rest = [item for index, item in enumerate(group) if index not in named]
                if rest:
                    queue.appendleft(rest)
            else:
                raise FatalError(
                    f"sendgrid: unexpected answer {status}: {_errors_text(response)}", partial=outcomes
                )
        return outcomes

    # -- the issue as a SendGrid template --------------------------------------------------

    def _prefix(self, template: MessageTemplate, values) -> str:
        """A tag prefix found neither in the issue (SendGrid substitutes in the subject too)
        nor in any of the batch's values."""
        texts = [template.rendered.html, template.rendered.text, template.subject, *values]
        n = 0
        while True:
            prefix = f"-nl{n or ''}_"
            if not any(prefix in text for text in texts):
                return prefix
            n += 1

    def _prepare(self, template: MessageTemplate) -> _Prepared:
        with self._lock:
            prepared = self._prepared.get(template)
            if prepared is None:
                def used(text: str) -> list[str]:
                    found = set(PLACEHOLDER_RE.findall(text)) - set(CONSTANT_FIELDS)
                    return sorted(found)

                prepared = _Prepared(
                    used(template.rendered.html), used(template.rendered.text), {}, UnsubscribeHeaders(template)
                )
                self._prepared[template] = prepared
            return prepared

    def _bodies_for(self, template: MessageTemplate, prefix: str) -> tuple[str, str]:
        """The HTML and text with SendGrid tags, made once per issue and prefix."""
        prepared = self._prepare(template)
        with self._lock:
            if prefix not in prepared.bodies:
                web = template.web_url
                html_tags = {f: f"{prefix}{f}_h-" for f in FIELDS}
                text_tags = {f: f"{prefix}{f}_t-" for f in FIELDS}
                html_tags["web_url"] = html_lib.escape(web, quote=True)
                text_tags["web_url"] = web
                prepared.bodies[prefix] = (
                    retag(template.rendered.html, html_tags),
                    retag(template.rendered.text, text_tags),
                )
            return prepared.bodies[prefix]

    def close(self) -> None:
        self.client.close()


def _address(email: str, name: str = "") -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}



def is_sendgrid_error(response) -> bool:
    """SendGrid's own error body: a JSON object whose ``errors`` is a non-empty list of
    objects, each with a ``message``."""
    errors = json_object(response).get("errors")
    return (isinstance(errors, list) and bool(errors)
            and all(isinstance(e, dict) and isinstance(e.get("message"), str) for e in errors))


def _errors(response) -> list[dict]:
    errors = json_object(response).get("errors")
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _errors_text(response) -> str:
    parts = []
    for error in _errors(response):
        message = str(error.get("message") or "").strip()
        where = error.get("field")
        parts.append(f"{message} ({where})" if where else message)
    return one_line("; ".join(p for p in parts if p), 300) or describe_body(response)


def _named_personalizations(response, size: int) -> dict[int, str] | None:
    """{position: reason} when every error names a personalization of the request, else None
    (the request as a whole is wrong)."""
    errors = _errors(response)
    if not errors:
        return None
    named: dict[int, str] = {}
    for error in errors:
        match = PERSONALIZATION_FIELD.match(str(error.get("field") or ""))
        if not match or int(match.group(1)) >= size:
            return None
        index = int(match.group(1))
        reason = f"{error.get('message', 'refused')} ({error.get('field')})"
        named[index] = f"{named[index]}; {reason}" if index in named else reason
    return named
