"""Provider webhooks: one verifier and parser per email service, and what an event does.

Each service authenticates its webhook requests its own way, and each is checked exactly as
the service documents it before a byte of the payload is believed:

========  =================================================================================
postmark  HTTP basic auth: the user name and password written into the webhook URL
sendgrid  ECDSA (P-256, SHA-256) over ``timestamp + raw body``, verified with the public key
          SendGrid shows; ``X-Twilio-Email-Event-Webhook-Signature`` / ``-Timestamp``
mailgun   HMAC-SHA256 with the webhook signing key over ``timestamp + token`` (in the body);
          for a subaccount's domain also ``parent-signature``, made with the primary
          account's key. Each token is accepted once (:class:`TokenLedger`)
resend    Svix / Standard Webhooks: HMAC-SHA256 with the ``whsec_`` secret over
          ``id.timestamp.body``, headers ``svix-*`` or ``webhook-*``
ses       Amazon SNS message signature, SignatureVersion 2 (RSA with SHA-256), with the
          signing certificate fetched over HTTPS from an SNS host of amazonaws.com only;
          the topic must be the configured ``[web] ses_topic_arn``
========  =================================================================================

A signed timestamp older (or newer) than ``[web] webhook_tolerance`` is a replay and refused.
Mailgun's signature does not cover the event, so within that window a captured signature
could be sent again with other event data: its token is recorded in the database and a
token seen before is refused. Postmark signs nothing, so its requests carry no timestamp to
check; for every service a replay of an event already recorded changes nothing (events are
unique per provider id).

Parsing maps a service's payload to :class:`WebhookEvent`: a kind from one vocabulary
(``bounce``, ``soft_bounce``, ``complaint``, ``unsubscribe``, ``delivered``, ``opened``,
``clicked``, ...), the address, the message ids that can tie it to a campaign, the event's
own id and time, and for a click the link (:func:`link_detail`).
:func:`record_events` then stores them (the address only as its hash) and acts: a permanent
bounce or a complaint suppresses the address, soft bounces in a row suppress it once there
are ``[web] soft_bounce_limit`` of them, an unsubscribe leaves the list.

Opens and clicks are counted per issue and per link, never per reader: their rows keep no
address hash, and their ids are the service's own opaque ones (or, for Postmark, which gives
none, a digest keyed with the webhook password), so that nothing in the database ties a
click to the person who made it. The address is used only to attribute the event to a
campaign before it is dropped.

An event is attributed to a campaign by a message id (:func:`campaign_for`). One that
carries no message id at all is attributed to the last campaign sent to its address before
it happened (:func:`last_campaign_mailed`); one whose message ids are none of ours is left
unattributed, for it is another message (a test send, a confirmation email).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from sqlalchemy import Connection, and_, delete, func, select, update

from ..addresses import hash_key, parse_address
from ..config import Config
from ..errors import InvalidAddress, NewsletterError, StoreError
from ..store import Store, open_store, upsert
from ..store.schema import campaigns, deliveries, events, memberships, subscribers, webhook_tokens
from ..subscribers import suppress_hash

log = logging.getLogger("newsletter.web")

BOUNCE = "bounce"
SOFT_BOUNCE = "soft_bounce"
COMPLAINT = "complaint"
UNSUBSCRIBE = "unsubscribe"
DELIVERED = "delivered"
OPENED = "opened"
CLICKED = "clicked"
ANONYMOUS = frozenset({OPENED, CLICKED})  # stored without the reader's address hash

PROVIDERS = ("postmark", "sendgrid", "mailgun", "resend", "ses")
DETAIL_LIMIT = 500
MAX_EVENTS = 1000  # per request; SendGrid batches are far smaller


class WebhookRefused(NewsletterError):
    """The request is not authentic (or is a replay): answer 401 and change nothing."""


class WebhookInvalid(NewsletterError):
    """The request is authentic but its payload cannot be read: answer 400."""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    kind: str
    address: str | None
    message_ids: tuple[str, ...]  # the service's message id(s), our Message-ID when known
    event_id: str  # unique per provider; a replay carries the same one
    occurred_at: dt.datetime | None
    detail: str = ""
    # The delivery journal row the service says the message was (SendGrid's custom arg): a
    # hint only, believed when that row's provider id matches one of ``message_ids``.
    delivery: int | None = None


# ---------------------------------------------------------------------------------------------
# Helpers

_ADDRESS = re.compile(r"[^\s<>\"'(),;:@\[\]]+@[^\s<>\"'(),;:@\[\]]+")


def scrub(text: Any) -> str:
    """A detail fit for the database: addresses replaced, one line, bounded."""
    flat = " ".join(str(text or "").split())
    return _ADDRESS.sub("[address]", flat)[:DETAIL_LIMIT]


_TOKEN_PATH = re.compile(r"(/(?:unsubscribe|confirm)/)[^/?#]+")


def _has_address(piece: str) -> bool:
    """An address in a piece of a URL, also when percent-encoded (once or twice)."""
    once = unquote_plus(piece)
    return any(_ADDRESS.search(text) for text in (piece, once, unquote_plus(once)))


def link_detail(url: Any) -> str:
    """A clicked link fit for the database: the URL only, the same for every reader who
    clicked it. An address anywhere in it (raw or percent-encoded: a query value, a path
    segment, the fragment, user info) becomes ``[address]``, and the reader's own token in
    an unsubscribe or confirm link ``[token]``; it is bounded as :func:`scrub` bounds text.
    (Not :func:`scrub` itself on the whole URL: it would take ``https://x/?via=@ann`` for
    an address and keep nothing of the link.) Applied twice it changes nothing more."""
    text = " ".join(str(url or "").split())
    try:
        parts = urlsplit(text)
    except ValueError:
        return scrub(text)

    def clean(component: str, sep: str) -> str:
        pieces = []
        for piece in component.split(sep):
            name, eq, value = piece.partition("=")
            if sep == "&" and eq and not _has_address(name):
                pieces.append(f"{name}=[address]" if _has_address(value) else piece)
            else:
                pieces.append("[address]" if _has_address(piece) else piece)
        return sep.join(pieces)

    netloc = parts.netloc.rpartition("@")[2]  # user info is never the link's identity
    path = _TOKEN_PATH.sub(r"\1[token]", clean(parts.path, "/"))
    query, fragment = clean(parts.query, "&"), clean(parts.fragment, "&")
    return urlunsplit((parts.scheme, netloc, path, query, fragment))[:DETAIL_LIMIT]


def _digest(*parts: Any) -> str:
    """An event id for services that give none: the same payload gives the same id."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return "h:" + hashlib.sha256(data.encode("utf-8")).hexdigest()[:40]


def _keyed_digest(key: bytes, *parts: Any) -> str:
    """Like :func:`_digest` for an event stored without its reader: keyed, so that nobody
    holding only the database can recompute it from an address and so find who it was."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return "k:" + hmac.new(key, data.encode("utf-8"), hashlib.sha256).hexdigest()[:40]


def _delivery_hint(value: Any) -> int | None:
    """A delivery row id the service echoes back (a custom argument), when it is one."""
    text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def _when(value: Any) -> dt.datetime | None:
    """A timestamp as services write them: epoch seconds or ISO 8601."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
        text = str(value).strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return dt.datetime.fromtimestamp(float(text), dt.UTC)
        parsed = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text))
    except (ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WebhookInvalid("the body is not JSON") from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRefused("a signature or key is not valid base64") from None


def _ids(*values: Any) -> tuple[str, ...]:
    found = []
    for value in values:
        if isinstance(value, str) and value.strip() and value.strip() not in found:
            found.append(value.strip())
    return tuple(found)


def _per_recipient(event_id: str, address: str | None, many: bool) -> str:
    """One notification naming several recipients becomes one event per recipient."""
    if not many or not address:
        return event_id
    return f"{event_id}#{hash_key(address.strip().lower())[:16]}"


class Webhook:
    """One service's verifier and parser. ``parse`` raises WebhookRefused unless the
    request is authentic and fresh, then returns the events it carries."""

    name: ClassVar[str] = ""

    def __init__(self, tolerance: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.tolerance = tolerance
        self.clock = clock

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        raise NotImplementedError

    def check_time(self, stamp: float) -> None:
        if abs(self.clock() - stamp) > self.tolerance:
            raise WebhookRefused(f"{self.name}: the signed timestamp is outside the allowed window")

    def close(self) -> None:
        """Let go of anything the verifier opened (a database connection, for Mailgun)."""


# ---------------------------------------------------------------------------------------------
# Postmark


class PostmarkWebhook(Webhook):
    """Basic auth from the webhook URL; one record per request."""

    name = "postmark"
    PERMANENT: ClassVar[set[str]] = {"HardBounce", "BadEmailAddress"}
    SOFT: ClassVar[set[str]] = {"SoftBounce", "Transient", "DnsError", "Blocked", "Unknown"}

    def __init__(self, user: str, password: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.user = user.encode("utf-8")
        self.password = password.encode("utf-8")

    def verify(self, headers: Mapping[str, str]) -> None:
        scheme, _, value = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            raise WebhookRefused("postmark: no basic-auth credentials")
        try:
            user, colon, password = _b64(value).decode("utf-8").partition(":")
        except UnicodeDecodeError:
            raise WebhookRefused("postmark: the credentials are not readable") from None
        good_user = hmac.compare_digest(user.encode("utf-8"), self.user)
        good_password = hmac.compare_digest(password.encode("utf-8"), self.password)
        if not (colon and good_user and good_password):
            raise WebhookRefused("postmark: wrong user name or password")

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        self.verify(headers)
        record = _json(body)
        if not isinstance(record, dict):
            raise WebhookInvalid("postmark: expected one JSON object")
        return [self.event(record)]

    def event(self, r: dict[str, Any]) -> WebhookEvent:
        record_type = str(r.get("RecordType", ""))
        message = _ids(r.get("MessageID"))
        if record_type in ("Bounce", "SpamComplaint"):
            kind_name = str(r.get("Type", ""))
            if record_type == "SpamComplaint" or kind_name == "SpamComplaint":
                kind = COMPLAINT
            elif kind_name in self.PERMANENT or r.get("Inactive") is True:
                kind = BOUNCE
            elif kind_name in self.SOFT:
                kind = SOFT_BOUNCE
            elif kind_name == "Unsubscribe":
                kind = UNSUBSCRIBE
            else:
                kind = kind_name.lower()[:32] or "bounce_other"
            event_id = f"bounce:{r['ID']}" if r.get("ID") is not None else _digest(r)
            return WebhookEvent(kind, r.get("Email"), message, event_id, _when(r.get("BouncedAt")),
                                scrub(f"{kind_name}: {r.get('Description') or ''} {r.get('Details') or ''}"))
        if record_type == "SubscriptionChange":
            reason = str(r.get("SuppressionReason") or "")
            if r.get("SuppressSending") is True:
                kind = {"HardBounce": BOUNCE, "SpamComplaint": COMPLAINT}.get(reason, UNSUBSCRIBE)
            else:
                kind = "reactivated"
            event_id = _digest(record_type, r.get("MessageID"), r.get("Recipient"), r.get("ChangedAt"),
                               r.get("SuppressSending"))
            return WebhookEvent(kind, r.get("Recipient"), message, event_id, _when(r.get("ChangedAt")),
                                scrub(f"{reason} by {r.get('Origin') or '?'}"))
        simple = {"Delivery": (DELIVERED, "DeliveredAt"), "Open": (OPENED, "ReceivedAt"),
                  "Click": (CLICKED, "ReceivedAt")}
        kind, stamp = simple.get(record_type, (record_type.lower()[:32] or "unknown", "ReceivedAt"))
        address = r.get("Recipient") or r.get("Email")
        if kind in ANONYMOUS:
            # Postmark gives opens and clicks no id: one keyed with the webhook password.
            event_id = _keyed_digest(self.password, record_type, r.get("MessageID"), address,
                                     r.get(stamp), r.get("OriginalLink"))
            detail = link_detail(r.get("OriginalLink")) if kind == CLICKED else ""
        else:
            event_id = _digest(record_type, r.get("MessageID"), address, r.get(stamp), r.get("ID"))
            detail = scrub(r.get("Details") or "")
        return WebhookEvent(kind, address, message, event_id, _when(r.get(stamp)), detail)


# ---------------------------------------------------------------------------------------------
# SendGrid


class SendgridWebhook(Webhook):
    """The Signed Event Webhook: an ECDSA signature over timestamp + raw body."""

    name = "sendgrid"
    SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
    TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
    DROPPED: ClassVar[dict[str, str]] = {
        "bounced address": BOUNCE, "invalid": BOUNCE, "spam reporting address": COMPLAINT,
        "unsubscribed address": UNSUBSCRIBE,
    }

    def __init__(self, public_key: str, **kw: Any) -> None:
        super().__init__(**kw)
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import (
            load_der_public_key,
            load_pem_public_key,
        )

        text = public_key.strip()
        try:
            key = (load_pem_public_key(text.encode("ascii")) if text.startswith("-----")
                   else load_der_public_key(base64.b64decode(text)))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise NewsletterError(
                "SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key; copy the verification key "
                "from SendGrid's Mail Settings > Event Webhook"
            ) from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise NewsletterError("SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA public key")
        self.key = key

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature = headers.get(self.SIGNATURE) or ""
        stamp = (headers.get(self.TIMESTAMP) or "").strip()
        if not signature or not stamp.isdigit():
            raise WebhookRefused("sendgrid: the signature headers are missing")
        try:
            self.key.verify(_b64(signature), stamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise WebhookRefused("sendgrid: the signature does not match") from None
        self.check_time(int(stamp))

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        self.verify(headers, body)
        items = _json(body)
        if not isinstance(items, list):
            raise WebhookInvalid("sendgrid: expected a JSON array of events")
        return [self.event(item) for item in items[:MAX_EVENTS] if isinstance(item, dict)]

    def event(self, e: dict[str, Any]) -> WebhookEvent:
        name = str(e.get("event", ""))
        reason = str(e.get("reason") or "")
        if name == "bounce":
            kind = SOFT_BOUNCE if e.get("type") == "blocked" else BOUNCE
        elif name == "dropped":
            kind = self.DROPPED.get(reason.strip().lower(), "dropped")
        elif name == "spamreport":
            kind = COMPLAINT
        elif name in ("unsubscribe", "group_unsubscribe"):
            kind = UNSUBSCRIBE
        else:
            kind = {"delivered": DELIVERED, "open": OPENED, "click": CLICKED}.get(name, name[:32] or "unknown")
        # sg_message_id begins with the request's X-Message-Id, which the journal records
        # with the personalization's position ("<X-Message-Id>#<n>"); smtp-id, SendGrid's
        # Message-ID, begins with it too, and is there when sg_message_id is not.
        sg_id, smtp_id = e.get("sg_message_id"), e.get("smtp-id")
        prefix = sg_id.split(".", 1)[0] if isinstance(sg_id, str) else None
        smtp_prefix = (smtp_id.strip().strip("<>").split("@", 1)[0].split(".", 1)[0]
                       if isinstance(smtp_id, str) else None)
        event_id = str(e.get("sg_event_id") or _digest(e))
        status = e.get("status") or ""
        detail = (link_detail(e.get("url")) if kind == CLICKED
                  else scrub(f"{name} {status} {reason}".strip()))
        return WebhookEvent(kind, e.get("email"), _ids(sg_id, prefix, smtp_id, smtp_prefix), event_id,
                            _when(e.get("timestamp")), detail, _delivery_hint(e.get("nl_delivery")))


# ---------------------------------------------------------------------------------------------
# Mailgun


class TokenLedger:
    """Signature tokens already used, in the database, so that a token is good once across
    restarts and across every process that serves the webhooks.

    ``store`` is the store, or a function that opens one on first use (then this ledger owns
    it and :meth:`close` closes it). A row is kept while its signed timestamp could still pass
    the tolerance check, with as much again for clocks that differ between machines, and is
    pruned after that: by then the timestamp check refuses the token on its own."""

    def __init__(self, store: Store | Callable[[], Store]) -> None:
        self._store = store if isinstance(store, Store) else None
        self._open = None if isinstance(store, Store) else store
        self._owned = False
        self._lock = threading.Lock()
        self._next_prune = float("-inf")

    @property
    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                assert self._open is not None
                self._store = self._open()
                self._owned = True
            return self._store

    def claim(self, provider: str, token: str, signed_at: float, *, now: float, tolerance: float) -> bool:
        """Record ``token`` as used; False when it was used before. Two requests with one
        token at the same moment, in any processes: the primary key lets one row in, and the
        other request finds it there."""
        store = self.store
        with store.write() as conn:
            inserted = conn.execute(
                upsert(conn, webhook_tokens)
                .values(provider=provider, token=token, signed_at=dt.datetime.fromtimestamp(signed_at, dt.UTC))
                .on_conflict_do_nothing(index_elements=["provider", "token"])
                .returning(webhook_tokens.c.token)
            ).first()
        if now >= self._next_prune:
            self._next_prune = now + tolerance
            self.prune(provider, before=now - 2 * tolerance)
        return inserted is not None

    def prune(self, provider: str, *, before: float) -> None:
        """Forget tokens signed before ``before``: housekeeping, in a transaction of its own,
        whose failure (another process pruning at the same moment) is only logged."""
        cutoff = dt.datetime.fromtimestamp(before, dt.UTC)
        try:
            with self.store.write() as conn:
                conn.execute(delete(webhook_tokens).where(
                    webhook_tokens.c.provider == provider, webhook_tokens.c.signed_at < cutoff))
        except StoreError as exc:
            log.warning("webhook %s: old signature tokens not pruned this time: %s", provider, exc)

    def close(self) -> None:
        with self._lock:
            if self._owned and self._store is not None:
                self._store.close()
                self._store = None


def _hmac_matches(key: bytes | None, signed: bytes, given: Any) -> bool:
    if not key or not isinstance(given, str) or not given.strip():
        return False
    expected = hmac.new(key, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), given.strip().lower().encode("utf-8"))


class MailgunWebhook(Webhook):
    """HMAC-SHA256 of timestamp + token with the webhook signing key; JSON body.

    Events of a subaccount's domain also carry ``parent-signature``, the same HMAC made with
    the primary account's signing key: it is accepted when ``signature`` does not verify and
    the primary key is configured. Either signature covers only the timestamp and the token,
    so each token is accepted once (``ledger``)."""

    name = "mailgun"
    MAX_TOKEN = 200  # Mailgun's are 50 characters

    def __init__(self, signing_key: str | None, primary_key: str | None = None, *, ledger: TokenLedger,
                 **kw: Any) -> None:
        super().__init__(**kw)
        if not signing_key and not primary_key:
            raise NewsletterError(f"mailgun webhooks need {ENV_MAILGUN_KEY} or {ENV_MAILGUN_PRIMARY_KEY}")
        self.key = signing_key.encode("utf-8") if signing_key else None
        self.primary_key = primary_key.encode("utf-8") if primary_key else None
        self.ledger = ledger

    def verify(self, sig: dict[str, Any]) -> tuple[str, str]:
        """The signed timestamp and token, once a signature matches and the time is fresh."""
        stamp, token = (str(sig.get(k) or "") for k in ("timestamp", "token"))
        given, parent = sig.get("signature"), sig.get("parent-signature")
        if not stamp.isdigit() or not token or not (given or parent):
            raise WebhookRefused("mailgun: the signature is incomplete")
        if len(token) > self.MAX_TOKEN:
            raise WebhookRefused("mailgun: the token is longer than Mailgun's")
        signed = (stamp + token).encode("utf-8")
        if not (_hmac_matches(self.key, signed, given) or _hmac_matches(self.primary_key, signed, parent)):
            hint = ""
            if parent and not self.primary_key:
                hint = (f" (the event is from a subaccount: set {ENV_MAILGUN_PRIMARY_KEY} to the primary "
                        "account's HTTP webhook signing key to check its parent-signature)")
            raise WebhookRefused(f"mailgun: the signature does not match{hint}")
        self.check_time(int(stamp))
        return stamp, token

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WebhookRefused("mailgun: no signature (the body is not JSON)") from None
        sig = payload.get("signature") if isinstance(payload, dict) else None
        if not isinstance(sig, dict):
            raise WebhookRefused("mailgun: no signature in the body")
        stamp, token = self.verify(sig)
        data = payload.get("event-data")
        if not isinstance(data, dict):
            raise WebhookInvalid("mailgun: no event-data")
        found = [self.event(data)]
        if not self.ledger.claim(self.name, token, int(stamp), now=self.clock(), tolerance=self.tolerance):
            raise WebhookRefused("mailgun: this signature's token was used before; a replay is refused")
        return found

    def close(self) -> None:
        self.ledger.close()

    def event(self, d: dict[str, Any]) -> WebhookEvent:
        name = str(d.get("event", ""))
        if name == "failed":
            kind = BOUNCE if d.get("severity") == "permanent" else SOFT_BOUNCE
        else:
            kind = {"complained": COMPLAINT, "unsubscribed": UNSUBSCRIBE, "delivered": DELIVERED,
                    "opened": OPENED, "clicked": CLICKED}.get(name, name[:32] or "unknown")
        message = d.get("message") if isinstance(d.get("message"), dict) else {}
        headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
        status = d.get("delivery-status") if isinstance(d.get("delivery-status"), dict) else {}
        if kind == CLICKED:
            detail = link_detail(d.get("url"))
        else:
            detail = scrub(f"{name} {d.get('severity') or ''} {d.get('reason') or ''} {status.get('code') or ''} "
                           f"{status.get('description') or status.get('message') or ''}")
        event_id = str(d.get("id") or _digest(d))
        return WebhookEvent(kind, d.get("recipient"), _ids(headers.get("message-id")), event_id,
                            _when(d.get("timestamp")), detail)


# ---------------------------------------------------------------------------------------------
# Resend (Svix)


class ResendWebhook(Webhook):
    """Svix signatures: ``v1,<base64 HMAC>`` entries over ``id.timestamp.body``. The same
    scheme comes under Svix's header names and under the Standard Webhooks ones; either set
    is accepted, each whole (an id, timestamp and signature from one set)."""

    name = "resend"
    HEADERS: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("svix-id", "svix-timestamp", "svix-signature"),
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
    )

    def __init__(self, secret: str, **kw: Any) -> None:
        super().__init__(**kw)
        text = secret.strip()
        try:
            self.key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise NewsletterError(
                "RESEND_WEBHOOK_SECRET is not a signing secret; copy the whsec_... value from "
                "Resend's webhook page"
            ) from None

    def signed(self, msg_id: str, stamp: str, given: str, body: bytes) -> bool:
        """One of the space-separated ``v1,`` signatures is ours over ``id.timestamp.body``."""
        expected = base64.b64encode(hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + body,
                                             hashlib.sha256).digest())
        matched = False
        for entry in given.split():
            version, _, value = entry.partition(",")
            if version == "v1" and hmac.compare_digest(expected, value.encode("utf-8")):
                matched = True
        return matched

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        found = [(headers.get(i) or "", (headers.get(t) or "").strip(), headers.get(s) or "")
                 for i, t, s in self.HEADERS]
        complete = [(i, t, s) for i, t, s in found if i and t.isdigit() and s]
        if not complete:
            raise WebhookRefused("resend: the svix-* (or webhook-*) signature headers are missing")
        for msg_id, stamp, given in complete:
            if self.signed(msg_id, stamp, given, body):
                self.check_time(int(stamp))
                return msg_id
        raise WebhookRefused("resend: the signature does not match")

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        msg_id = self.verify(headers, body)
        payload = _json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            raise WebhookInvalid("resend: expected an object with type and data")
        name = str(payload.get("type", ""))
        data = payload["data"]
        bounce = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
        if name == "email.bounced":
            kind = SOFT_BOUNCE if bounce.get("type") in ("Transient", "Undetermined") else BOUNCE
        else:
            kind = {"email.complained": COMPLAINT, "email.delivered": DELIVERED,
                    "email.delivery_delayed": "deferred", "email.opened": OPENED,
                    "email.clicked": CLICKED, "email.sent": "sent"}.get(
                name, name.removeprefix("email.")[:32] or "unknown")
        to = data.get("to")
        recipients = [to] if isinstance(to, str) else [a for a in to or [] if isinstance(a, str)]
        click = data.get("click") if isinstance(data.get("click"), dict) else {}
        if kind == CLICKED:
            detail = link_detail(click.get("link"))
        else:
            detail = scrub(f"{name} {bounce.get('type') or ''} {bounce.get('subType') or ''} "
                           f"{bounce.get('message') or ''}")
        when = _when(payload.get("created_at") or data.get("created_at"))
        if kind in ANONYMOUS:
            # One open or click, by one of the recipients (Resend does not say which): one
            # event, tied to the address only when there is just one.
            recipients = recipients if len(recipients) == 1 else []
        many = len(recipients) > 1
        return [
            WebhookEvent(kind, address, _ids(data.get("email_id")), _per_recipient(msg_id, address, many),
                         when, detail)
            for address in (recipients or [None])
        ]


# ---------------------------------------------------------------------------------------------
# Amazon SES through SNS

_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
# The fields SNS signs, in this order, for each kind of message (a field absent from the
# message is left out; Subject is often absent).
_SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
MAX_CERTIFICATE_BYTES = 64 * 1024


def is_sns_url(url: str) -> bool:
    """An HTTPS URL on an SNS host of amazonaws.com: the only place certificates and
    subscription confirmations are fetched from."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme == "https" and port in (None, 443) and not parts.username
            and not parts.password and bool(_SNS_HOST.fullmatch(parts.hostname or "")))


def https_get(url: str) -> bytes:
    """GET an SNS URL over HTTPS (certificate checked), no redirects, size capped."""
    import requests

    if not is_sns_url(url):
        raise WebhookRefused(f"ses: {url!r} is not an SNS address on amazonaws.com")
    try:
        response = requests.get(url, timeout=(5, 10), allow_redirects=False, stream=True)
        data = response.raw.read(MAX_CERTIFICATE_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise WebhookRefused(f"ses: cannot fetch {url}: {exc}") from None
    if response.status_code != 200 or len(data) > MAX_CERTIFICATE_BYTES:
        raise WebhookRefused(f"ses: {url} answered {response.status_code}")
    return data


class CertificateCache:
    """Signing certificates by URL: checked to be an SNS URL before any fetch, fetched once,
    kept (a handful, least recently used dropped). ``fetch`` is the transport only."""

    def __init__(self, fetch: Callable[[str], bytes] = https_get, size: int = 16) -> None:
        self.fetch = fetch
        self.size = size
        self._certs: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self, url: str) -> Any:
        from cryptography import x509

        if not is_sns_url(url):
            raise WebhookRefused("ses: the signing certificate is not on an SNS host of amazonaws.com")
        with self._lock:
            if url in self._certs:
                self._certs.move_to_end(url)
                return self._certs[url]
        data = self.fetch(url)
        self.fetches += 1
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise WebhookRefused("ses: the signing certificate is not a PEM certificate") from None
        with self._lock:
            self._certs[url] = cert
            while len(self._certs) > self.size:
                self._certs.popitem(last=False)
        return cert


class SesWebhook(Webhook):
    """SNS notifications carrying SES bounce, complaint and delivery notifications."""

    name = "ses"

    def __init__(self, topic_arn: str, certificates: CertificateCache | None = None,
                 confirm: Callable[[str], Any] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.topic_arn = topic_arn
        self.certificates = certificates or CertificateCache()
        self.confirm = confirm or https_get

    def verify(self, m: dict[str, Any]) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        kind = m.get("Type")
        if not isinstance(kind, str) or kind not in _SNS_SIGNED:
            raise WebhookRefused("ses: not an SNS message")
        if not hmac.compare_digest(str(m.get("TopicArn", "")).encode(), self.topic_arn.encode()):
            raise WebhookRefused("ses: the message is from another SNS topic than [web] ses_topic_arn")
        if str(m.get("SignatureVersion")) != "2":
            raise WebhookRefused("ses: only SignatureVersion 2 (SHA256) is accepted; set it on the SNS topic")
        fields = _SNS_SIGNED[kind]
        if any(not isinstance(m.get(f), str) for f in fields if f != "Subject"):
            raise WebhookRefused("ses: the SNS message lacks signed fields")
        signed = "".join(f"{f}\n{m[f]}\n" for f in fields if isinstance(m.get(f), str))
        cert = self.certificates.get(str(m.get("SigningCertURL", "")))
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise WebhookRefused("ses: the signing certificate is not valid now")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRefused("ses: the signing certificate has no RSA key")
        try:
            key.verify(_b64(str(m.get("Signature", ""))), signed.encode("utf-8"),
                       padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise WebhookRefused("ses: the signature does not match") from None
        stamp = _when(m.get("Timestamp"))
        if stamp is None:
            raise WebhookRefused("ses: the message has no timestamp")
        self.check_time(stamp.timestamp())

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[WebhookEvent]:
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise WebhookRefused("ses: the body is not an SNS message") from None
        if not isinstance(message, dict):
            raise WebhookRefused("ses: the body is not an SNS message")
        self.verify(message)
        if message["Type"] == "SubscriptionConfirmation":
            # Authentic and for our topic: confirm it, as SNS asks, from its own host only.
            url = message.get("SubscribeURL", "")
            if not is_sns_url(url):
                raise WebhookRefused("ses: the SubscribeURL is not an SNS address")
            self.confirm(url)
            return []
        if message["Type"] != "Notification":
            return []
        try:
            notification = json.loads(message["Message"])
        except ValueError:
            raise WebhookInvalid("ses: the notification is not JSON") from None
        if not isinstance(notification, dict):
            raise WebhookInvalid("ses: the notification is not an object")
        return self.events(notification, str(message.get("MessageId", "")))

    def events(self, n: dict[str, Any], sns_id: str) -> list[WebhookEvent]:
        name = str(n.get("notificationType") or n.get("eventType") or "")
        mail = n.get("mail") if isinstance(n.get("mail"), dict) else {}
        common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
        header_ids = [h.get("value") for h in mail.get("headers") or []
                      if isinstance(h, dict) and str(h.get("name", "")).lower() == "message-id"]
        ids = _ids(mail.get("messageId"), common.get("messageId"), *header_ids)
        part = n.get(name[:1].lower() + name[1:]) if name else None
        part = part if isinstance(part, dict) else {}
        if name == "Bounce":
            bounce_type = part.get("bounceType")
            kind = BOUNCE if bounce_type == "Permanent" else SOFT_BOUNCE
            people = [r.get("emailAddress") for r in part.get("bouncedRecipients") or [] if isinstance(r, dict)]
            codes = " ".join(str(r.get("status") or "") for r in part.get("bouncedRecipients") or []
                             if isinstance(r, dict))
            detail = f"{bounce_type} {part.get('bounceSubType') or ''} {codes}"
        elif name == "Complaint":
            kind = COMPLAINT
            people = [r.get("emailAddress") for r in part.get("complainedRecipients") or [] if isinstance(r, dict)]
            detail = f"complaint {part.get('complaintFeedbackType') or ''}"
        elif name == "Delivery":
            kind = DELIVERED
            people = list(part.get("recipients") or [])
            detail = f"delivered {part.get('smtpResponse') or ''}"
        elif name in ("Open", "Click"):
            # One open or click of the message (SES does not say by which recipient): one
            # event, tied to the address only when the message had just one.
            kind = OPENED if name == "Open" else CLICKED
            people = list(mail.get("destination") or [])
            people = people if len(people) == 1 else []
            detail = link_detail(part.get("link")) if kind == CLICKED else name
        else:
            kind = {"DeliveryDelay": "deferred", "Send": "sent", "Reject": "rejected"}.get(
                name, name.lower()[:32] or "unknown")
            people = list(mail.get("destination") or [])
            detail = name
        people = [p for p in people if isinstance(p, str)]
        base = str(part.get("feedbackId") or sns_id or _digest(n))
        when = _when(part.get("timestamp") or mail.get("timestamp"))
        many = len(people) > 1
        return [WebhookEvent(kind, address, ids, _per_recipient(base, address, many), when, scrub(detail))
                for address in (people or [None])]


# ---------------------------------------------------------------------------------------------
# From the configuration

ENV_MAILGUN_KEY = "MAILGUN_WEBHOOK_SIGNING_KEY"
ENV_MAILGUN_PRIMARY_KEY = "MAILGUN_PRIMARY_WEBHOOK_SIGNING_KEY"  # a subaccount's primary account
ENV = {
    "postmark": ("POSTMARK_WEBHOOK_USER", "POSTMARK_WEBHOOK_PASSWORD"),
    "sendgrid": ("SENDGRID_WEBHOOK_PUBLIC_KEY",),
    "resend": ("RESEND_WEBHOOK_SECRET",),
}


def webhook_for(config: Config, provider: str, *, clock: Callable[[], float] = time.time,
                certificates: CertificateCache | None = None,
                confirm: Callable[[str], Any] | None = None,
                store: Store | None = None) -> Webhook | str:
    """The verifier for ``provider``, or a sentence saying what is missing to enable it.

    Mailgun's records the tokens it has seen in ``store``; without one it opens the
    configured database itself when the first Mailgun request comes."""
    kw: dict[str, Any] = {"tolerance": config.web.webhook_tolerance.total_seconds(), "clock": clock}
    if provider == "ses":
        if not config.web.ses_topic_arn:
            return "set [web] ses_topic_arn to the SNS topic of your SES notifications"
        return SesWebhook(config.web.ses_topic_arn, certificates, confirm, **kw)
    if provider == "mailgun":
        key, primary = config.secret(ENV_MAILGUN_KEY), config.secret(ENV_MAILGUN_PRIMARY_KEY)
        if not key and not primary:
            return (f"set {ENV_MAILGUN_KEY} in the environment or .env (for a subaccount's domain, "
                    f"{ENV_MAILGUN_PRIMARY_KEY} may stand in for it)")
        ledger = TokenLedger(store if store is not None else (lambda: open_store(config)))
        return MailgunWebhook(key, primary, ledger=ledger, **kw)
    names = ENV.get(provider)
    if names is None:
        return f"{provider!r} is not a provider with webhooks ({', '.join(PROVIDERS)})"
    values = [config.secret(name) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        return f"set {' and '.join(missing)} in the environment or .env"
    factory: dict[str, Callable[..., Webhook]] = {
        "postmark": PostmarkWebhook, "sendgrid": SendgridWebhook, "resend": ResendWebhook,
    }
    return factory[provider](*values, **kw)


# ---------------------------------------------------------------------------------------------
# Recording and acting

_OUR_MESSAGE_ID = re.compile(r"([0-9a-f]{16})\.(\d+)@.+")


@dataclass
class Recorded:
    received: int = 0
    new: int = 0
    suppressed: int = 0
    unsubscribed: int = 0


def email_hash(address: str | None) -> str | None:
    if not address or not address.strip():
        return None
    try:
        return parse_address(address).hash
    except InvalidAddress:
        return hash_key(address.strip().lower())


def campaign_for(conn: Connection, message_ids: Iterable[str], delivery: int | None = None) -> int | None:
    """The campaign a message belongs to: by our own Message-ID (campaign uid and delivery
    row), else by the service's message id recorded in the delivery journal, else by the
    ``delivery`` row the service names when its recorded id is one of ``message_ids`` up to
    the ``#<n>`` SendGrid's are recorded with (a test send's rows are in no journal)."""
    candidates = []
    for raw in message_ids:
        bare = raw.strip().strip("<>").strip()
        if not bare:
            continue
        candidates.append(bare)
        ours = _OUR_MESSAGE_ID.fullmatch(bare)
        if ours:
            found = conn.execute(
                select(campaigns.c.id)
                .join(deliveries, deliveries.c.campaign_id == campaigns.c.id)
                .where(campaigns.c.uid == ours[1], deliveries.c.id == int(ours[2]))
            ).scalar_one_or_none()
            if found is not None:
                return found
        found = conn.execute(
            select(deliveries.c.campaign_id)
            .where(deliveries.c.provider_id.in_([bare, f"<{bare}>"]))
            .limit(1)
        ).scalar_one_or_none()
        if found is not None:
            return found
    if delivery is not None and candidates:
        row = conn.execute(
            select(deliveries.c.campaign_id, deliveries.c.provider_id).where(deliveries.c.id == delivery)
        ).first()
        if row is not None and row.provider_id and row.provider_id.partition("#")[0] in candidates:
            return row.campaign_id
    return None


def last_campaign_mailed(conn: Connection, hashed: str, at: dt.datetime) -> int | None:
    """The campaign an event that names no message most likely concerns: the latest one,
    created at or before ``at`` (when the event happened), whose journal has the address
    (by its hash) as sent. None when no campaign had been sent to it by then."""
    return conn.execute(
        select(campaigns.c.id)
        .join(deliveries, deliveries.c.campaign_id == campaigns.c.id)
        .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(subscribers.c.email_hash == hashed, deliveries.c.status == "sent",
               campaigns.c.created_at <= at)
        .order_by(campaigns.c.created_at.desc(), campaigns.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _insert_event(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert unless the provider's event id is recorded already; True when inserted."""
    inserted = conn.execute(
        upsert(conn, events).values(**values)
        .on_conflict_do_nothing(index_elements=["provider", "provider_event_id"])
        .returning(events.c.id)
    ).first()
    return inserted is not None


def soft_bounces_in_a_row(conn: Connection, hashed: str) -> int:
    """Soft bounces since the address's last delivery: one per campaign (a service may
    report each retry of one message), and each one not tied to a campaign."""
    last_delivery = conn.execute(
        select(func.max(events.c.id)).where(events.c.email_hash == hashed, events.c.kind == DELIVERED)
    ).scalar_one() or 0
    since = and_(events.c.email_hash == hashed, events.c.kind == SOFT_BOUNCE, events.c.id > last_delivery)
    campaigns_hit = conn.execute(
        select(func.count(func.distinct(events.c.campaign_id))).where(since, events.c.campaign_id.is_not(None))
    ).scalar_one()
    loose = conn.execute(select(func.count()).where(since, events.c.campaign_id.is_(None))).scalar_one()
    return campaigns_hit + loose


def _unsubscribe_hash(conn: Connection, hashed: str, campaign_id: int | None, now: dt.datetime) -> int:
    sub_id = conn.execute(select(subscribers.c.id).where(subscribers.c.email_hash == hashed)).scalar_one_or_none()
    if sub_id is None:
        return 0
    where = [memberships.c.subscriber_id == sub_id, memberships.c.status != "unsubscribed"]
    if campaign_id is not None:
        list_id = conn.execute(select(campaigns.c.list_id).where(campaigns.c.id == campaign_id)).scalar_one()
        where.append(memberships.c.list_id == list_id)
    return conn.execute(
        update(memberships).where(*where).values(status="unsubscribed", unsubscribed_at=now)
    ).rowcount


def record_events(store: Store, provider: str, found: list[WebhookEvent], soft_bounce_limit: int) -> Recorded:
    """Store every event (address as its hash, none for opens and clicks) and act on the
    new ones, in one transaction; an event id seen before changes nothing.

    An event is tied to a campaign by its message ids; one that has none, to the last
    campaign sent to its address (:func:`last_campaign_mailed`), except a soft bounce:
    soft bounces count once per campaign towards the limit, and a guessed campaign would
    merge bounces of different messages. What an event does is decided by the message ids
    alone (an unsubscribe of no known message leaves every list)."""
    result = Recorded(received=len(found))
    now = dt.datetime.now(dt.UTC)
    with store.write() as conn:
        for e in found:
            hashed = email_hash(e.address)
            by_message = campaign_for(conn, e.message_ids, e.delivery)
            campaign_id = by_message
            if campaign_id is None and hashed is not None and not e.message_ids and e.kind != SOFT_BOUNCE:
                campaign_id = last_campaign_mailed(conn, hashed, e.occurred_at or now)
            if e.kind in ANONYMOUS:
                hashed = None  # attributed; who it was is not kept
            inserted = _insert_event(conn, {
                "provider": provider, "kind": e.kind[:32], "email_hash": hashed,
                "campaign_id": campaign_id, "provider_event_id": e.event_id[:200],
                "detail": link_detail(e.detail) if e.kind == CLICKED else scrub(e.detail),
                "occurred_at": e.occurred_at, "created_at": now,
            })
            if not inserted:
                continue
            result.new += 1
            if hashed is None:
                continue
            if e.kind == BOUNCE:
                result.suppressed += suppress_hash(conn, hashed, "bounced", f"{provider}: {scrub(e.detail)}")
            elif e.kind == COMPLAINT:
                result.suppressed += suppress_hash(conn, hashed, "complained", f"{provider}: {scrub(e.detail)}")
            elif e.kind == SOFT_BOUNCE:
                count = soft_bounces_in_a_row(conn, hashed)
                if count >= soft_bounce_limit:
                    result.suppressed += suppress_hash(
                        conn, hashed, "bounced", f"{provider}: {count} soft bounces in a row"
                    )
            elif e.kind == UNSUBSCRIBE:
                result.unsubscribed += _unsubscribe_hash(conn, hashed, by_message, now)
    return result


__all__ = [
    "ANONYMOUS",
    "BOUNCE",
    "CLICKED",
    "COMPLAINT",
    "DELIVERED",
    "OPENED",
    "PROVIDERS",
    "SOFT_BOUNCE",
    "UNSUBSCRIBE",
    "CertificateCache",
    "MailgunWebhook",
    "PostmarkWebhook",
    "Recorded",
    "ResendWebhook",
    "SendgridWebhook",
    "SesWebhook",
    "TokenLedger",
    "Webhook",
    "WebhookEvent",
    "WebhookInvalid",
    "WebhookRefused",
    "campaign_for",
    "email_hash",
    "is_sns_url",
    "last_campaign_mailed",
    "link_detail",
    "record_events",
    "scrub",
    "webhook_for",
]
