"""Resend: ``POST /emails/batch`` with up to 100 emails per call, each with its full body.

Every call carries an ``Idempotency-Key`` equal to the batch's key, which stays the same for
every attempt at that batch, across resumes. Resend remembers a key for 24 hours: the same
key with the same body returns the first answer without sending again, so a batch whose
outcome was unknown (the answer was lost) is simply sent again. The body of a batch is
built the same way every time, so a resend matches it byte for byte.

A resumed batch that lost readers since its first attempt (they unsubscribed meanwhile)
no longer matches the body its key was first used with; Resend then refuses it (409), which
also tells that the first attempt was accepted, so its recipients are reported as unknown
(most likely delivered) rather than sent again.

Calls use permissive batch validation: an email Resend refuses is listed in ``errors`` (by
index) and fails alone while the rest go out; ``data`` lists the ids of the emails created,
in request order.

Resend allows 2 requests per second by default (``[provider] requests_per_second`` when
yours is higher); calls are paced at 90% of that across all workers, so bursts do not run
into 429s.

What each of Resend's answers proves is in the table below.
"""

from __future__ import annotations

import hashlib
import json
import re

from ..message import HeaderInjection, ascii_address, list_id
from . import (
    Batch,
    BatchError,
    FatalError,
    Outcome,
    Pacer,
    Provider,
    TransientError,
    UnknownOutcome,
)
from .http import HttpClient, describe_body, json_object, one_line, retry_after

# What Resend's answers to ``POST /emails/batch`` prove, from its API reference (the
# introduction's status codes, the Errors page, Rate Limit, and the batch endpoint;
# resend.com/docs/api-reference). Resend honours Idempotency-Key for 24 hours (the provider
# is ``idempotent``), so the engine sends a batch whose outcome is unknown again at once,
# under the same key: if Resend took it the first time, it replays that answer and sends
# nothing twice.
#
# | answer | what it proves | raised as |
# |---|---|---|
# | connection refused, connect timeout | the request never reached Resend | TransientError |
# | 200 with {"data": [{"id"}], "errors": [{"index", "message"}]} (permissive validation) | the emails listed in errors were refused, the others created, ids in request order | per email: sent or failed |
# | 200 whose ids and errors do not add up to the batch, any other 2xx | not the documented answer | UnknownOutcome (sent again under the key) |
# | 400 validation_error or invalid_idempotency_key, 422 | the batch is malformed | FatalError |
# | 401 missing_api_key, 403 invalid_api_key or an unverified domain | the key or the sender is refused | FatalError |
# | 409 concurrent_idempotent_requests | an earlier attempt under this key is still being handled | TransientError (1 s) |
# | 409 invalid_idempotent_request | this key was used with another body: an earlier version of the batch was taken | recipients "unknown" |
# | 429 rate_limit_exceeded | too many calls; nothing taken; wait retry-after (or ratelimit-reset) | TransientError |
# | 429 daily_quota_exceeded, monthly_quota_exceeded | no sending until the quota resets | FatalError |
# | 500 (any 5xx but 502/504) with Resend's {"statusCode", "name", "message"} body | Resend's servers failed to handle the call | TransientError |
# | 502, 504 (any body) | a gateway answered; Resend may have sent the batch | UnknownOutcome (sent again under the key) |
# | any other 5xx without Resend's error body | not known to come from Resend | UnknownOutcome (sent again under the key) |
# | read timeout, connection reset or closed after the request went out | the batch may have been sent | UnknownOutcome (sent again under the key) |

API = "https://api.resend.com"
DEFAULT_RATE = 2.0  # requests per second, Resend's default limit
MAX_KEY = 256
QUOTA_ERRORS = {"daily_quota_exceeded", "monthly_quota_exceeded"}


class ResendProvider(Provider):
    name = "resend"
    max_batch = 100
    default_concurrency = 1
    idempotent = True

    def setup(self) -> None:
        key = self.require_secret("RESEND_API_KEY")
        rate = float(self.option("requests_per_second", DEFAULT_RATE, (int, float)))
        if rate <= 0:
            from ..errors import ConfigError

            raise ConfigError(f"[provider] requests_per_second: {rate!r} must be positive")
        self.pacer = Pacer(rate * 0.9)
        self.client = HttpClient(
            "resend",
            self.config.provider.base_url or API,
            timeout=self.http_timeout(),
            headers={
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            error_body=is_resend_error,
        )

    # -- checking --------------------------------------------------------------------------

    def check(self) -> str:
        self.pacer.wait()
        response = self.client.request("GET", "/domains", passthrough=(429,))
        domain = self.config.newsletter.sender.domain
        body = json_object(response)
        if response.status_code == 401 and body.get("name") == "restricted_api_key":
            return (
                "resend: API key accepted (a sending-only key, so Resend will not list domains; "
                f"make sure {domain} is verified at resend.com/domains)"
            )
        if response.status_code in (401, 403):
            raise FatalError(f"resend: the API refused RESEND_API_KEY ({response.status_code}: {_describe(response)})")
        if response.status_code == 429:
            raise TransientError(f"resend: rate limited (429): {_describe(response)}", _wait(response))
        if response.status_code != 200:
            raise FatalError(f"resend: GET /domains answered {response.status_code}: {_describe(response)}")
        domains = {str(d.get("name", "")).lower(): d for d in body.get("data") or [] if isinstance(d, dict)}
        found = domains.get(domain.lower())
        if found is None:
            known = ", ".join(sorted(domains)) or "none"
            raise FatalError(
                f"resend: the sender's domain {domain} is not among this account's domains ({known}); "
                "add and verify it at resend.com/domains"
            )
        if found.get("status") != "verified":
            raise FatalError(
                f"resend: domain {domain} is {found.get('status', 'not verified')}; finish its DNS "
                "records at resend.com/domains"
            )
        region = f" in {found['region']}" if found.get("region") else ""
        return f"resend: API key accepted; sending domain {domain} is verified{region}"

    # -- sending ---------------------------------------------------------------------------

    def send_batch(self, batch: Batch) -> list[Outcome]:
        t = batch.template
        refused: list[Outcome] = []
        emails: list[dict] = []
        sent_envelopes = []
        campaign = _tag_value(batch.label)
        list_header = list_id(self.config, t.list_name)
        for env in batch.envelopes:
            try:
                address = ascii_address(env.recipient.email)
                headers = t.headers_for(env.unsubscribe_url)
            except HeaderInjection as exc:
                refused.append(Outcome(env.key, "failed", reason=f"resend: not sent: {exc}"))
                continue
            html, text = t.parts_for(env.recipient, env.unsubscribe_url)
            mailbox = _mailbox(env.recipient.name, address)
            emails.append({
                "from": str(t.sender),
                "to": [mailbox],
                "subject": t.subject,
                "html": html,
                "text": text,
                "reply_to": self.config.newsletter.reply_to,
                "headers": {
                    "List-Id": list_header,
                    "List-Unsubscribe": headers["List-Unsubscribe"],
                    "List-Unsubscribe-Post": headers["List-Unsubscribe-Post"],
                },
                "tags": [{"name": "nl_delivery", "value": str(env.key)}, {"name": "nl_campaign", "value": campaign}],
            })
            sent_envelopes.append(env)
        if not emails:
            return refused
        body = json.dumps(emails, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.pacer.wait()
        try:
            response = self.client.request(
                "POST", "/emails/batch", data=body, passthrough=(409, 429),
                headers={"Idempotency-Key": idempotency_key(batch.idempotency_key), "x-batch-validation": "permissive"},
            )
            outcomes = refused + self._outcomes(response, sent_envelopes)
        except BatchError as exc:
            exc.partial = refused + exc.partial
            raise
        order = {env.key: i for i, env in enumerate(batch.envelopes)}
        return sorted(outcomes, key=lambda o: order[o.key])

    def _outcomes(self, response, envelopes) -> list[Outcome]:
        status = response.status_code
        body = json_object(response)
        name = body.get("name")
        if status == 200:
            errors = {e.get("index"): str(e.get("message", "refused")) for e in body.get("errors") or [] if isinstance(e, dict)}
            data = [d for d in body.get("data") or [] if isinstance(d, dict)]
            created = [i for i in range(len(envelopes)) if i not in errors]
            if len(data) != len(created) or any(i not in range(len(envelopes)) for i in errors):
                raise UnknownOutcome(
                    f"resend: the answer listed {len(data)} ids and {len(errors)} errors for {len(envelopes)} emails"
                )
            outcomes = [Outcome(envelopes[i].key, "failed", reason=f"resend: {errors[i]}") for i in errors]
            outcomes += [Outcome(envelopes[i].key, "sent", provider_id=d.get("id")) for i, d in zip(created, data, strict=True)]
            return outcomes
        if 200 <= status < 300:
            raise UnknownOutcome(
                f"resend: answer {status} ({describe_body(response)}) instead of Resend's 200; "
                "the batch may have been sent"
            )
        if status == 429:
            if name in QUOTA_ERRORS:
                raise FatalError(
                    f"resend: {_describe(response)}; resume the campaign once the quota resets, "
                    "or raise the quota in Resend's billing settings"
                )
            raise TransientError(f"resend: rate limited (429): {_describe(response)}", _wait(response))
        if status == 409 and name == "concurrent_idempotent_requests":
            raise TransientError("resend: this batch is still being processed from an earlier attempt", 1.0)
        if status == 409:
            # Resend remembers a key only for a batch it accepted: this batch went out before,
            # as it stood then (a resumed batch loses readers who left since, so its body
            # differs). Its recipients were most likely delivered; sending again could double.
            reason = (
                f"resend: {_describe(response)}: this batch was accepted under its idempotency "
                "key in the last 24 hours, before it changed; most likely delivered then"
            )
            return [Outcome(env.key, "unknown", reason=reason) for env in envelopes]
        if status in (401, 403):
            raise FatalError(
                f"resend: the API refused the batch ({status}: {_describe(response)}); check "
                "RESEND_API_KEY and that the sender's domain is verified at resend.com/domains"
            )
        if status in (400, 422):
            raise FatalError(f"resend: the batch was refused ({status}: {_describe(response)})")
        raise FatalError(f"resend: unexpected answer {status}: {_describe(response)}")

    def close(self) -> None:
        self.client.close()


def idempotency_key(key: str) -> str:
    """The batch's key as Resend takes it (1-256 characters); longer keys are hashed."""
    if 0 < len(key) <= MAX_KEY:
        return key
    return "nl-" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _mailbox(name: str, address: str) -> str:
    if not name:
        return address
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{address}>'


def _tag_value(text: str) -> str:
    """Resend tags take ASCII letters, digits, _ and - only (at most 256)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:256] or "_"



def is_resend_error(response) -> bool:
    """Resend's own error body: a JSON object with the answer's status as ``statusCode``, and
    a ``name`` and a ``message``."""
    body = json_object(response)
    return (body.get("statusCode") == response.status_code
            and isinstance(body.get("name"), str) and isinstance(body.get("message"), str))


def _describe(response) -> str:
    body = json_object(response)
    name, message = body.get("name"), body.get("message")
    if name and message:
        return one_line(f"{name}: {message}", 300)
    if message or name:
        return one_line(str(message or name), 300)
    return describe_body(response)


def _wait(response) -> float | None:
    wait = retry_after(response, "retry-after")
    return wait if wait is not None else retry_after(response, "ratelimit-reset")
