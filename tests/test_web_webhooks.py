"""Provider webhooks against the app in-process, each request signed the way the service
signs it with keys made for the test; forged, stale and replayed requests are refused or
change nothing. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update
from werkzeug.test import Client

from newsletter import subscribers as subs
from newsletter.addresses import address_hash
from newsletter.config import Config
from newsletter.store import Store, open_store
from newsletter.store.schema import deliveries, events, suppressions
from newsletter.web import webhooks as wh
from newsletter.web.app import PublicApp

from .fakes.webhooks import (
    SNS_CERT_URL,
    TOPIC_ARN,
    CertificateHost,
    MailgunSigner,
    SendgridSigner,
    SnsSigner,
    SvixSigner,
    postmark_auth,
)
from .webutil import add_reader, load, outbox, send_issue, write_letter

READERS = ("ann@example.com", "bob@example.com", "cat@example.com")


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Hooks:
    root: Path
    config: Config
    store: Store
    app: PublicApp
    client: Client
    clock: Clock
    campaign: Any
    message_ids: dict[str, str]  # reader -> our Message-ID
    sendgrid: SendgridSigner
    mailgun: MailgunSigner
    svix: SvixSigner
    sns: SnsSigner
    certs: CertificateHost
    cache: wh.CertificateCache
    confirmed: list[str]

    def post(self, provider: str, body: bytes, headers: dict[str, str] | None = None):
        return self.client.post(f"/webhooks/{provider}", data=body, headers=headers or {})

    def events(self) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(events).order_by(events.c.id))]

    def suppression(self, address: str) -> str | None:
        found = subs.get_suppression(self.store, address)
        return found.reason if found else None

    def status(self, address: str) -> str | None:
        return {m.email: m.status for m in subs.iter_members(self.store, "main")}.get(address)

    def set_provider_id(self, address: str, provider_id: str) -> None:
        """As if the campaign had gone through that service, which returned this id."""
        delivery = int(self.message_ids[address].strip("<>").split("@")[0].split(".")[1])
        with self.store.write() as conn:
            conn.execute(update(deliveries).where(deliveries.c.id == delivery).values(provider_id=provider_id))


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Key pairs and secrets made once for this module (RSA keys take a moment to make)."""
    return {"sendgrid": SendgridSigner(), "mailgun": MailgunSigner(), "svix": SvixSigner(),
            "sns": SnsSigner(), "other_sns": SnsSigner()}


@pytest.fixture
def hooks(tmp_path, db_url, monkeypatch, keys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    sendgrid, mailgun, svix, sns = keys["sendgrid"], keys["mailgun"], keys["svix"], keys["sns"]
    env = (
        "POSTMARK_WEBHOOK_USER=postmark-hook\nPOSTMARK_WEBHOOK_PASSWORD=pm-5ecret-pass\n"
        f"SENDGRID_WEBHOOK_PUBLIC_KEY={sendgrid.public_key}\n"
        f"MAILGUN_WEBHOOK_SIGNING_KEY={mailgun.key}\nRESEND_WEBHOOK_SECRET={svix.secret}\n"
    )
    write_letter(tmp_path, web=f'ses_topic_arn = "{TOPIC_ARN}"\nsoft_bounce_limit = 3\n', env=env)
    config = load(tmp_path)
    store = open_store(config)
    for reader in READERS:
        add_reader(store, reader)
    campaign = send_issue(config, store)
    ids = {m["To"]: m["Message-ID"] for m in outbox(tmp_path, f"{campaign.id}-{campaign.issue}")}
    certs = CertificateHost().start()
    certs.files[urlsplit(SNS_CERT_URL).path] = sns.pem
    cache = wh.CertificateCache(fetch=certs.fetch)
    clock = Clock()
    confirmed: list[str] = []
    app = PublicApp(config, store, clock=clock, certificates=cache, confirm_sns=confirmed.append)
    yield Hooks(tmp_path, config, store, app, Client(app), clock, campaign, ids, sendgrid, mailgun, svix,
                sns, certs, cache, confirmed)
    app.close()
    certs.stop()
    store.close()


def no_addresses_stored(hooks: Hooks) -> None:
    with hooks.store.read() as conn:
        rows = [*conn.execute(select(events)).all(), *conn.execute(select(suppressions)).all()]
    assert rows
    assert not any("@" in str(value) for row in rows for value in row)


# ---------------------------------------------------------------------------------------------
# Postmark


def postmark_bounce(address: str, message_id: str, bounce_id: int = 4323372036, kind: str = "HardBounce",
                    inactive: bool = True) -> bytes:
    return json.dumps({
        "RecordType": "Bounce", "ID": bounce_id, "Type": kind, "TypeCode": 1, "Name": "Hard bounce",
        "MessageID": message_id, "Email": address, "From": "ann@example.com",
        "BouncedAt": "2026-12-01T07:31:12.1234567Z", "Inactive": inactive, "CanActivate": True,
        "Description": "The server was unable to deliver your message",
        "Details": f"smtp;550 5.1.1 <{address}>: Recipient address rejected", "MessageStream": "broadcast",
    }).encode()


def test_postmark_hard_bounce_suppresses_and_is_linked_to_the_campaign(hooks):
    hooks.set_provider_id("ann@example.com", "883953f4-6105-42a2-a16a-77a8eac79483")
    body = postmark_bounce("ann@example.com", "883953f4-6105-42a2-a16a-77a8eac79483")
    response = hooks.post("postmark", body, postmark_auth("postmark-hook", "pm-5ecret-pass"))
    assert response.status_code == 200 and response.get_json() == {"ok": True, "received": 1, "new": 1}
    [event] = hooks.events()
    assert event["provider"] == "postmark" and event["kind"] == "bounce"
    assert event["campaign_id"] == hooks.campaign.id
    assert event["email_hash"] == address_hash("ann@example.com")
    assert event["provider_event_id"] == "bounce:4323372036"
    assert event["occurred_at"] == dt.datetime(2026, 12, 1, 7, 31, 12, 123456, tzinfo=dt.UTC)
    assert hooks.suppression("ann@example.com") == "bounced"
    assert hooks.suppression("bob@example.com") is None
    no_addresses_stored(hooks)

    again = hooks.post("postmark", body, postmark_auth("postmark-hook", "pm-5ecret-pass"))
    assert again.status_code == 200 and again.get_json()["new"] == 0
    assert len(hooks.events()) == 1


@pytest.mark.parametrize("headers", [
    {}, postmark_auth("postmark-hook", "wrong"), postmark_auth("wrong", "pm-5ecret-pass"),
    {"Authorization": "Basic !!!not-base64"}, {"Authorization": "Bearer pm-5ecret-pass"},
    postmark_auth("postmark-hook", "pm-5ecret-pass" + "x"),
])
def test_postmark_without_the_right_credentials_gets_401_and_changes_nothing(hooks, headers):
    response = hooks.post("postmark", postmark_bounce("ann@example.com", "x"), headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert hooks.events() == [] and hooks.suppression("ann@example.com") is None


def test_postmark_complaint_soft_bounce_and_subscription_change(hooks):
    auth = postmark_auth("postmark-hook", "pm-5ecret-pass")
    complaint = json.loads(postmark_bounce("bob@example.com", "m2", 77, "SpamComplaint"))
    complaint["RecordType"] = "SpamComplaint"
    assert hooks.post("postmark", json.dumps(complaint).encode(), auth).status_code == 200
    soft = postmark_bounce("cat@example.com", "m3", 78, "SoftBounce", inactive=False)
    assert hooks.post("postmark", soft, auth).status_code == 200
    change = {"RecordType": "SubscriptionChange", "MessageID": "m4", "ServerID": 1, "Recipient": "ann@example.com",
              "ChangedAt": "2026-12-01T08:00:00Z", "Origin": "Recipient", "SuppressSending": True,
              "SuppressionReason": "ManualSuppression", "MessageStream": "broadcast"}
    assert hooks.post("postmark", json.dumps(change).encode(), auth).status_code == 200
    delivery = {"RecordType": "Delivery", "MessageID": "m5", "Recipient": "cat@example.com",
                "DeliveredAt": "2026-12-01T08:01:00Z", "Details": "Test delivery", "ServerID": 1}
    assert hooks.post("postmark", json.dumps(delivery).encode(), auth).status_code == 200

    assert [e["kind"] for e in hooks.events()] == ["complaint", "soft_bounce", "unsubscribe", "delivered"]
    assert hooks.suppression("bob@example.com") == "complained"
    assert hooks.suppression("cat@example.com") is None
    assert hooks.status("ann@example.com") == "unsubscribed"


# ---------------------------------------------------------------------------------------------
# SendGrid


def sendgrid_events(ts: int | None = None) -> bytes:
    ts = ts or int(time.time())
    return json.dumps([
        {"email": "ann@example.com", "timestamp": ts, "event": "bounce", "type": "bounce",
         "sg_event_id": "sg-ev-1", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
         "reason": "500 unknown recipient ann@example.com", "status": "5.0.0", "smtp-id": "<x@example.com>"},
        {"email": "bob@example.com", "timestamp": ts, "event": "spamreport", "sg_event_id": "sg-ev-2",
         "sg_message_id": "other.filter0001"},
        {"email": "cat@example.com", "timestamp": ts, "event": "delivered", "sg_event_id": "sg-ev-3",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.1", "response": "250 OK"},
    ]).encode()


def test_sendgrid_signed_batch(hooks):
    hooks.set_provider_id("ann@example.com", "14c5d75ce93")  # SendGrid's X-Message-Id
    body = sendgrid_events()
    response = hooks.post("sendgrid", body, hooks.sendgrid.headers(body))
    assert response.status_code == 200 and response.get_json()["new"] == 3
    kinds = {e["provider_event_id"]: (e["kind"], e["campaign_id"]) for e in hooks.events()}
    assert kinds == {"sg-ev-1": ("bounce", hooks.campaign.id), "sg-ev-2": ("complaint", None),
                     "sg-ev-3": ("delivered", hooks.campaign.id)}
    assert hooks.suppression("ann@example.com") == "bounced"
    assert hooks.suppression("bob@example.com") == "complained"
    assert hooks.suppression("cat@example.com") is None
    no_addresses_stored(hooks)

    replay = hooks.post("sendgrid", body, hooks.sendgrid.headers(body))
    assert replay.status_code == 200 and replay.get_json()["new"] == 0 and len(hooks.events()) == 3


def test_sendgrid_forged_and_stale_requests_are_refused(hooks):
    body = sendgrid_events()
    headers = hooks.sendgrid.headers(body)
    tampered = body.replace(b'"spamreport"', b'"delivered"')
    other_key = SendgridSigner().headers(body)
    stale = hooks.sendgrid.headers(body, timestamp=int(time.time()) - 3600)
    refused = [
        hooks.post("sendgrid", tampered, headers),
        hooks.post("sendgrid", body, other_key),
        hooks.post("sendgrid", body, stale),
        hooks.post("sendgrid", body, {"Content-Type": "application/json"}),
        hooks.post("sendgrid", body, {**headers, "X-Twilio-Email-Event-Webhook-Timestamp": "1"}),
    ]
    assert [r.status_code for r in refused] == [401] * 5
    hooks.clock.offset = 3600  # the same, valid request, an hour later: a replay
    assert hooks.post("sendgrid", body, headers).status_code == 401
    assert hooks.events() == [] and hooks.suppression("ann@example.com") is None


def test_sendgrid_unsubscribe_and_dropped(hooks):
    body = json.dumps([
        {"email": "ann@example.com", "timestamp": 1, "event": "unsubscribe", "sg_event_id": "u1"},
        {"email": "bob@example.com", "timestamp": 1, "event": "dropped", "reason": "Bounced Address",
         "sg_event_id": "d1"},
        {"email": "cat@example.com", "timestamp": 1, "event": "bounce", "type": "blocked", "sg_event_id": "b1"},
    ]).encode()
    assert hooks.post("sendgrid", body, hooks.sendgrid.headers(body)).status_code == 200
    assert hooks.status("ann@example.com") == "unsubscribed"
    assert hooks.suppression("bob@example.com") == "bounced"
    assert [e["kind"] for e in hooks.events()][-1] == "soft_bounce"
    assert hooks.suppression("cat@example.com") is None


# ---------------------------------------------------------------------------------------------
# Mailgun


def mailgun_event(address: str, event: str, event_id: str, message_id: str = "", **extra: Any) -> dict:
    return {"event": event, "id": event_id, "timestamp": time.time(), "recipient": address,
            "message": {"headers": {"message-id": message_id.strip("<>")}}, **extra}


def test_mailgun_permanent_failure_linked_by_our_message_id(hooks):
    ours = hooks.message_ids["ann@example.com"]
    body = hooks.mailgun.body(mailgun_event("ann@example.com", "failed", "mg-1", ours, severity="permanent",
                                            reason="bounce", **{"delivery-status": {"code": 550, "description": "No such user ann@example.com"}}))
    response = hooks.post("mailgun", body, {"Content-Type": "application/json"})
    assert response.status_code == 200
    [event] = hooks.events()
    assert event["kind"] == "bounce" and event["campaign_id"] == hooks.campaign.id
    assert "[address]" in event["detail"] and "ann@" not in event["detail"]
    assert hooks.suppression("ann@example.com") == "bounced"
    assert hooks.post("mailgun", body, {"Content-Type": "application/json"}).get_json()["new"] == 0


def test_mailgun_forged_and_stale_signatures_are_refused(hooks):
    event = mailgun_event("bob@example.com", "complained", "mg-2")
    good = json.loads(hooks.mailgun.body(event))
    forged = {**good, "signature": {**good["signature"], "signature": "0" * 64}}
    swapped = {**good, "event-data": {**event, "recipient": "cat@example.com"}}  # not signed: still passes
    wrong_key = json.loads(MailgunSigner().body(event))
    stale = json.loads(hooks.mailgun.body(event, timestamp=int(time.time()) - 3600))
    for payload in (forged, wrong_key, stale, {"event-data": event}):
        assert hooks.post("mailgun", json.dumps(payload).encode()).status_code == 401
    assert hooks.post("mailgun", b"timestamp=1&token=x&signature=y").status_code == 401
    assert hooks.events() == [] and hooks.suppression("bob@example.com") is None
    assert hooks.post("mailgun", json.dumps(swapped).encode()).status_code == 200  # Mailgun signs only the token
    assert hooks.suppression("cat@example.com") == "complained"


def test_soft_bounces_suppress_after_the_limit_in_a_row(hooks):
    def soft(address: str, n: int, message_id: str = "") -> None:
        body = hooks.mailgun.body(mailgun_event(address, "failed", f"soft-{address}-{n}", message_id,
                                                severity="temporary"))
        assert hooks.post("mailgun", body).status_code == 200

    soft("ann@example.com", 1)
    soft("ann@example.com", 2)
    assert hooks.suppression("ann@example.com") is None
    delivered = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", "ok-ann"))
    hooks.post("mailgun", delivered)
    soft("ann@example.com", 3)
    soft("ann@example.com", 4)
    assert hooks.suppression("ann@example.com") is None  # a delivery came between
    soft("ann@example.com", 5)
    assert hooks.suppression("ann@example.com") == "bounced"

    # Retries of one message (one campaign) count once.
    ours = hooks.message_ids["bob@example.com"]
    for n in range(5):
        soft("bob@example.com", n, ours)
    assert hooks.suppression("bob@example.com") is None
    with hooks.store.read() as conn:
        detail = conn.execute(select(suppressions.c.detail)).scalar_one()
    assert detail == "mailgun: 3 soft bounces in a row"


# ---------------------------------------------------------------------------------------------
# Resend (Svix)


def resend_event(kind: str, to: list[str], bounce_type: str | None = None) -> bytes:
    data: dict[str, Any] = {"email_id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c", "to": to,
                            "from": "Ann <ann@example.com>", "subject": "Hi", "created_at": "2026-12-01T07:30:00.000Z"}
    if bounce_type:
        data["bounce"] = {"type": bounce_type, "subType": "General", "message": "The recipient's mail server rejected it"}
    return json.dumps({"type": kind, "created_at": "2026-12-01T07:31:00.000Z", "data": data}).encode()


def test_resend_bounce_and_complaint(hooks):
    hooks.set_provider_id("ann@example.com", "4ef9a417-02e9-4d39-ad75-9611e0fcc33c")
    bounce = resend_event("email.bounced", ["ann@example.com"], "Permanent")
    headers = hooks.svix.headers(bounce)
    assert hooks.post("resend", bounce, headers).status_code == 200
    complaint = resend_event("email.complained", ["bob@example.com", "cat@example.com"])
    assert hooks.post("resend", complaint, hooks.svix.headers(complaint)).status_code == 200
    found = hooks.events()
    assert [(e["kind"], e["campaign_id"]) for e in found] == [
        ("bounce", hooks.campaign.id), ("complaint", hooks.campaign.id), ("complaint", hooks.campaign.id)]
    assert found[0]["provider_event_id"] == headers["svix-id"]
    assert all(hooks.suppression(a) for a in READERS)
    assert hooks.post("resend", bounce, headers).get_json()["new"] == 0  # Svix retries keep the id


def test_resend_forged_and_stale_requests_are_refused(hooks):
    body = resend_event("email.bounced", ["ann@example.com"], "Permanent")
    headers = hooks.svix.headers(body)
    other = SvixSigner().headers(body)
    stale = hooks.svix.headers(body, timestamp=int(time.time()) - 600)
    future = hooks.svix.headers(body, timestamp=int(time.time()) + 600)
    attempts = [
        (body.replace(b"Permanent", b"Transient"), headers), (body, other), (body, stale), (body, future),
        (body, {k: v for k, v in headers.items() if k != "svix-signature"}),
        (body, {**headers, "svix-id": "msg_other"}),
        (body, {**headers, "svix-signature": headers["svix-signature"].replace("v1,", "v2,")}),
    ]
    for data, h in attempts:
        assert hooks.post("resend", data, h).status_code == 401
    assert hooks.events() == [] and hooks.suppression("ann@example.com") is None


def test_resend_transient_bounce_is_soft(hooks):
    body = resend_event("email.bounced", ["cat@example.com"], "Transient")
    assert hooks.post("resend", body, hooks.svix.headers(body)).status_code == 200
    assert [e["kind"] for e in hooks.events()] == ["soft_bounce"]
    assert hooks.suppression("cat@example.com") is None


# ---------------------------------------------------------------------------------------------
# Amazon SES through SNS


def ses_bounce(address: str, message_id: str, bounce_type: str = "Permanent", feedback: str = "fb-1") -> dict:
    return {
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "bounceSubType": "General", "feedbackId": feedback,
                   "timestamp": "2026-12-01T07:31:00.000Z",
                   "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                          "diagnosticCode": f"smtp; 550 5.1.1 {address} unknown"}]},
        "mail": {"timestamp": "2026-12-01T07:30:00.000Z", "messageId": "0102018f-ses-id",
                 "source": "ann@example.com", "destination": [address],
                 "commonHeaders": {"messageId": message_id, "subject": "First"}},
    }


def sns_post(hooks: Hooks, message: dict) -> Any:
    return hooks.post("ses", json.dumps(message).encode(), {"Content-Type": "text/plain; charset=UTF-8",
                                                            "x-amz-sns-message-type": message["Type"]})


def test_ses_bounce_and_complaint_through_sns(hooks):
    bounce = hooks.sns.message(ses_bounce("ann@example.com", hooks.message_ids["ann@example.com"]))
    response = sns_post(hooks, bounce)
    assert response.status_code == 200, response.get_data(as_text=True)
    complaint = hooks.sns.message({
        "notificationType": "Complaint",
        "complaint": {"feedbackId": "fb-2", "timestamp": "2026-12-01T08:00:00Z", "complaintFeedbackType": "abuse",
                      "complainedRecipients": [{"emailAddress": "bob@example.com"}]},
        "mail": {"messageId": "0102018f-ses-id-2", "destination": ["bob@example.com"]},
    })
    assert sns_post(hooks, complaint).status_code == 200
    found = hooks.events()
    assert [(e["kind"], e["campaign_id"], e["provider_event_id"]) for e in found] == [
        ("bounce", hooks.campaign.id, "fb-1"), ("complaint", None, "fb-2")]
    assert hooks.suppression("ann@example.com") == "bounced"
    assert hooks.suppression("bob@example.com") == "complained"
    assert hooks.certs.requests and len(hooks.certs.requests) == 1  # fetched once, then cached
    assert sns_post(hooks, bounce).get_json()["new"] == 0
    no_addresses_stored(hooks)


def test_ses_refuses_forged_stale_and_foreign_messages(hooks, keys):
    note = ses_bounce("ann@example.com", "<x@example.com>")
    good = hooks.sns.message(note)
    tampered = {**good, "Message": good["Message"].replace("ann@", "cat@")}
    foreign = hooks.sns.message(note, TopicArn="arn:aws:sns:eu-west-1:123456789012:someone-else")
    stale = hooks.sns.message(note, timestamp=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    version_one = hooks.sns.message(note, SignatureVersion="1")
    other_key = keys["other_sns"]  # its certificate is not the one at the URL
    attempts = [tampered, foreign, stale, version_one, other_key.message(note),
                {k: v for k, v in good.items() if k != "Signature"}, {"Type": "Notification"}]
    for message in attempts:
        assert sns_post(hooks, message).status_code == 401
    assert hooks.events() == [] and hooks.suppression("ann@example.com") is None


@pytest.mark.parametrize("url", [
    "https://evil.example.com/SimpleNotificationService-1.pem",
    "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
    "https://user@sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
    "https://s3.amazonaws.com/SimpleNotificationService-1.pem",
])
def test_ses_never_fetches_a_certificate_from_anywhere_but_sns(hooks, url):
    hooks.certs.files[urlsplit(url).path] = hooks.sns.pem
    message = hooks.sns.message(ses_bounce("ann@example.com", "x"), SigningCertURL=url)
    assert sns_post(hooks, message).status_code == 401
    assert hooks.certs.requests == []
    assert not wh.is_sns_url(url)
    with pytest.raises(wh.WebhookRefused):
        wh.https_get(url)  # the production transport refuses it too, before any connection


def test_ses_subscription_confirmation(hooks):
    message = hooks.sns.message(kind="SubscriptionConfirmation")
    response = sns_post(hooks, message)
    assert response.status_code == 200 and response.get_json()["received"] == 0
    assert hooks.confirmed == [message["SubscribeURL"]]
    rogue = hooks.sns.message(kind="SubscriptionConfirmation", SubscribeURL="https://evil.example/confirm")
    assert sns_post(hooks, rogue).status_code == 401
    assert hooks.confirmed == [message["SubscribeURL"]]


def test_ses_transient_bounces_count_as_soft(hooks):
    for n in range(3):
        note = ses_bounce("cat@example.com", "", "Transient", feedback=f"fb-soft-{n}")
        assert sns_post(hooks, hooks.sns.message(note)).status_code == 200
    assert [e["kind"] for e in hooks.events()] == ["soft_bounce"] * 3
    assert hooks.suppression("cat@example.com") == "bounced"


# ---------------------------------------------------------------------------------------------
# Everything else


def test_an_unconfigured_or_unknown_provider(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_letter(tmp_path)
    config = load(tmp_path)
    with open_store(config) as store:
        app = PublicApp(config, store)
        client = Client(app)
        for provider in wh.PROVIDERS:
            assert client.post(f"/webhooks/{provider}", json={"RecordType": "Bounce"}).status_code == 401
        assert client.post("/webhooks/elsewhere", json={}).status_code == 404
        assert client.get("/webhooks/postmark").status_code == 405
        app.close()
    assert "POSTMARK_WEBHOOK_PASSWORD" in wh.webhook_for(config, "postmark")
    assert "ses_topic_arn" in wh.webhook_for(config, "ses")


def test_a_bad_sendgrid_key_stops_the_server_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_letter(tmp_path, env="SENDGRID_WEBHOOK_PUBLIC_KEY=not-a-key\n")
    config = load(tmp_path)
    with open_store(config) as store, pytest.raises(Exception, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        PublicApp(config, store)


def test_status_shows_the_events_of_a_campaign(hooks, cli):
    body = sendgrid_events()
    hooks.set_provider_id("ann@example.com", "14c5d75ce93")
    hooks.post("sendgrid", body, hooks.sendgrid.headers(body))
    result = cli("status", hooks.campaign.issue)
    assert result.exit_code == 0, result.output
    assert "bounce: 1" in result.output and "delivered: 1" in result.output
    assert "complaint" not in result.output  # that one was not tied to the campaign


def test_authentic_but_unreadable_payloads_get_400(hooks):
    body = b"[not json"
    assert hooks.post("sendgrid", body, hooks.sendgrid.headers(body)).status_code == 400
    body = b'{"an": "object"}'
    assert hooks.post("sendgrid", body, hooks.sendgrid.headers(body)).status_code == 400
    assert hooks.events() == []


def test_scrub_keeps_no_address():
    assert wh.scrub("550 <Ann.Berg+x@Example.COM>: no such user\n at mx") == "550 <[address]>: no such user at mx"
    assert len(wh.scrub("x" * 5000)) == wh.DETAIL_LIMIT
