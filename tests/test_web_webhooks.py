"""Provider webhooks against the app in-process, each request signed the way the service
signs it with keys made for the test; forged, stale and replayed requests are refused or
change nothing. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import threading
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
from newsletter.store.schema import deliveries, events, suppressions, webhook_tokens
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
    return {"sendgrid": SendgridSigner(), "mailgun": MailgunSigner(), "mailgun_primary": MailgunSigner(),
            "svix": SvixSigner(), "sns": SnsSigner(), "other_sns": SnsSigner()}


@pytest.fixture
def hooks(tmp_path, db_url, monkeypatch, keys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    sendgrid, mailgun, svix, sns = keys["sendgrid"], keys["mailgun"], keys["svix"], keys["sns"]
    env = (
        "POSTMARK_WEBHOOK_USER=postmark-hook\nPOSTMARK_WEBHOOK_PASSWORD=pm-5ecret-pass\n"
        f"SENDGRID_WEBHOOK_PUBLIC_KEY={sendgrid.public_key}\n"
        f"MAILGUN_WEBHOOK_SIGNING_KEY={mailgun.key}\nRESEND_WEBHOOK_SECRET={svix.secret}\n"
        f"MAILGUN_PRIMARY_WEBHOOK_SIGNING_KEY={keys['mailgun_primary'].key}\n"
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
    for hook in app.webhooks.values():
        if isinstance(hook, wh.Webhook):
            hook.close()
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
    replay = hooks.post("mailgun", body, {"Content-Type": "application/json"})
    assert replay.status_code == 401 and len(hooks.events()) == 1  # its token was used


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
    assert used_tokens(hooks) == []  # a refused request uses up no token
    assert hooks.post("mailgun", json.dumps(swapped).encode()).status_code == 200  # Mailgun signs only the token
    assert hooks.suppression("cat@example.com") == "complained"


def used_tokens(hooks: Hooks) -> list[str]:
    with hooks.store.read() as conn:
        return list(conn.scalars(select(webhook_tokens.c.token).order_by(webhook_tokens.c.signed_at)))


def with_event(body: bytes, event: dict) -> bytes:
    """The same signature block with other event data, as an attacker who captured it would send."""
    return json.dumps({**json.loads(body), "event-data": event}).encode()


def test_a_mailgun_signature_is_good_once(hooks):
    genuine = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", "mg-ok"))
    assert hooks.post("mailgun", genuine).status_code == 200
    token = json.loads(genuine)["signature"]["token"]
    assert used_tokens(hooks) == [token]
    # Within the tolerance, the captured block with other event data: refused.
    for n, reader in enumerate(("bob@example.com", "cat@example.com")):
        forged = with_event(genuine, mailgun_event(reader, "complained", f"mg-forged-{n}"))
        assert hooks.post("mailgun", forged).status_code == 401
        assert hooks.suppression(reader) is None
    assert hooks.post("mailgun", genuine).status_code == 401
    assert [e["provider_event_id"] for e in hooks.events()] == ["mg-ok"]


def test_a_used_mailgun_token_stays_used_after_a_restart_and_in_another_process(hooks):
    genuine = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", "mg-ok"))
    assert hooks.post("mailgun", genuine).status_code == 200
    hooks.app.webhooks["mailgun"].close()
    # Another server on the same database: its own connections, nothing in memory shared.
    other_store = open_store(hooks.config)
    other = PublicApp(hooks.config, other_store, clock=hooks.clock)
    try:
        forged = with_event(genuine, mailgun_event("bob@example.com", "complained", "mg-forged"))
        assert Client(other).post("/webhooks/mailgun", data=forged).status_code == 401
        assert hooks.post("mailgun", forged).status_code == 401  # and the first one, reconnected
    finally:
        other.close()
        other.webhooks["mailgun"].close()
        other_store.close()
    assert hooks.suppression("bob@example.com") is None
    assert len(hooks.events()) == 1


def test_one_mailgun_token_in_several_processes_at_the_same_moment_is_accepted_once(hooks):
    servers = 4
    stores = [open_store(hooks.config) for _ in range(servers)]
    apps = [PublicApp(hooks.config, s, clock=hooks.clock) for s in stores]
    try:
        for n, app in enumerate(apps):  # each has its connections open before the race
            warm = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", f"warm-{n}"))
            assert Client(app).post("/webhooks/mailgun", data=warm).status_code == 200
        genuine = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", "mg-race"))
        bodies = [with_event(genuine, mailgun_event(reader, "complained", f"race-{n}"))
                  for n, reader in enumerate([*READERS, "ann@example.com"][:servers])]
        start = threading.Barrier(servers)
        codes: list[int] = []

        def post(app: PublicApp, body: bytes) -> None:
            client = Client(app)
            start.wait(10)
            codes.append(client.post("/webhooks/mailgun", data=body).status_code)

        threads = [threading.Thread(target=post, args=pair) for pair in zip(apps, bodies, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(codes) == [200] + [401] * (servers - 1)
        assert sum(e["provider_event_id"].startswith("race-") for e in hooks.events()) == 1
    finally:
        for app, store in zip(apps, stores, strict=True):
            app.close()
            app.webhooks["mailgun"].close()
            store.close()


def test_used_mailgun_tokens_are_pruned_once_the_timestamp_check_refuses_them(hooks):
    tolerance = hooks.config.web.webhook_tolerance.total_seconds()

    def post_at(offset: float, event_id: str) -> bytes:
        hooks.clock.offset = offset
        body = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", event_id),
                                  timestamp=int(time.time() + offset))
        assert hooks.post("mailgun", body).status_code == 200
        return body

    first = post_at(0, "t0")
    second = post_at(1.5 * tolerance, "t1")
    assert len(used_tokens(hooks)) == 2  # the first could still pass a clock that lags
    third = post_at(3 * tolerance, "t2")
    tokens = [json.loads(b)["signature"]["token"] for b in (first, second, third)]
    assert used_tokens(hooks) == tokens[1:]
    # What was pruned is refused by its timestamp alone.
    assert hooks.post("mailgun", with_event(first, mailgun_event("bob@example.com", "complained", "x"))
                      ).status_code == 401
    assert hooks.suppression("bob@example.com") is None


def test_a_subaccount_event_verifies_by_its_parent_signature(hooks, keys):
    primary = keys["mailgun_primary"]
    subaccount = MailgunSigner()  # its own key, which this newsletter does not hold
    event = mailgun_event("bob@example.com", "complained", "mg-sub")
    assert hooks.post("mailgun", subaccount.body(event, parent=primary)).status_code == 200
    assert hooks.suppression("bob@example.com") == "complained"
    # A parent-signature made with another key, or none, proves nothing.
    other = mailgun_event("cat@example.com", "complained", "mg-sub-2")
    assert hooks.post("mailgun", subaccount.body(other, parent=MailgunSigner())).status_code == 401
    assert hooks.post("mailgun", subaccount.body(other)).status_code == 401
    # The account's own key still verifies `signature` beside a parent-signature.
    own = hooks.mailgun.body(mailgun_event("ann@example.com", "delivered", "mg-own"), parent=primary)
    assert hooks.post("mailgun", own).status_code == 200
    assert hooks.suppression("cat@example.com") is None
    # And a token is good once whichever signature verified it.
    fresh = subaccount.body(mailgun_event("ann@example.com", "delivered", "mg-sub-3"), parent=primary)
    assert hooks.post("mailgun", fresh).status_code == 200
    assert hooks.post("mailgun", with_event(fresh, other)).status_code == 401
    assert hooks.suppression("cat@example.com") is None


def test_the_primary_mailgun_key_is_optional_and_may_stand_alone(hooks, keys):
    primary, subaccount = keys["mailgun_primary"], MailgunSigner()
    event = mailgun_event("bob@example.com", "complained", "mg-sub")
    ledger = wh.TokenLedger(hooks.store)
    without = wh.MailgunWebhook(hooks.mailgun.key, None, ledger=ledger)
    with pytest.raises(wh.WebhookRefused, match="MAILGUN_PRIMARY_WEBHOOK_SIGNING_KEY"):
        without.parse({}, subaccount.body(event, parent=primary))
    alone = wh.MailgunWebhook(None, primary.key, ledger=ledger)
    assert [e.address for e in alone.parse({}, subaccount.body(event, parent=primary))] == ["bob@example.com"]
    with pytest.raises(wh.WebhookRefused):
        alone.parse({}, hooks.mailgun.body(event))  # only a parent-signature can verify here

    (hooks.root / ".env").write_text(f"NEWSLETTER_SECRET=x\nMAILGUN_PRIMARY_WEBHOOK_SIGNING_KEY={primary.key}\n")
    assert isinstance(wh.webhook_for(load(hooks.root), "mailgun", store=hooks.store), wh.MailgunWebhook)
    (hooks.root / ".env").write_text("NEWSLETTER_SECRET=x\n")
    missing = wh.webhook_for(load(hooks.root), "mailgun")
    assert "MAILGUN_WEBHOOK_SIGNING_KEY" in missing and "MAILGUN_PRIMARY_WEBHOOK_SIGNING_KEY" in missing


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


def test_resend_standard_webhooks_header_names_verify_like_svix(hooks):
    body = resend_event("email.bounced", ["ann@example.com"], "Permanent")
    headers = hooks.svix.headers(body, prefix="webhook")
    assert "svix-id" not in headers and "webhook-signature" in headers
    assert hooks.post("resend", body, headers).status_code == 200
    [event] = hooks.events()
    assert event["provider_event_id"] == headers["webhook-id"]
    assert hooks.suppression("ann@example.com") == "bounced"
    assert hooks.post("resend", body, headers).get_json()["new"] == 0  # a retry keeps the id

    other = resend_event("email.complained", ["bob@example.com"])
    refused = [
        (other, {**headers, "webhook-id": "msg_other"}),  # its signature is for another message
        (other, SvixSigner().headers(other, prefix="webhook")),
        (other, hooks.svix.headers(other, prefix="webhook", timestamp=int(time.time()) - 600)),
        (other, {k: v for k, v in hooks.svix.headers(other, prefix="webhook").items()
                 if k != "webhook-timestamp"}),
    ]
    for data, h in refused:
        assert hooks.post("resend", data, h).status_code == 401
    assert hooks.suppression("bob@example.com") is None and len(hooks.events()) == 1


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
