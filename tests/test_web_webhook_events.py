"""Deliveries, opens and clicks from every provider's webhook, as the per-issue report counts
them: each signed as the service signs it and posted to the app in-process (the `hooks`
fixture of test_web_webhooks), then read back from the events table. Clicks and opens keep
no reader; a click keeps its link without any address; an event is tied to its campaign by
message id, else (when it names no message) to the last campaign sent to the address; a
replay stores nothing new. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from newsletter import subscribers as subs
from newsletter.addresses import address_hash, hash_key
from newsletter.store.schema import campaigns, deliveries, subscribers
from newsletter.web import webhooks as wh

from . import test_web_webhooks as base
from .fakes.webhooks import postmark_auth
from .test_web_webhooks import READERS, Hooks, no_addresses_stored, sns_post
from .webutil import send_issue

hooks, keys = base.hooks, base.keys  # that module's fixtures (a sent issue, signing keys)

ANN, BOB, CAT = READERS
PM_AUTH = postmark_auth("postmark-hook", "pm-5ecret-pass")
# A link as a newsletter writes it, with the reader's address filled in: the report must
# count it as one link, and the database must never hold the address.
PERSONAL_LINK = "https://shop.example.net/spring?utm_source=letter&who=ann%40example.com&to=ann@example.com"
STORED_LINK = "https://shop.example.net/spring?utm_source=letter&who=[address]&to=[address]"
OTHER_LINK = "https://blog.example.org/2026/quotas?utm_source=letter#part-2"


def iso(seconds_from_now: float = 0.0, digits: int = 3) -> str:
    """A timestamp as the services write them (Postmark with 7 fraction digits)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_from_now)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}0"[:digits] + "Z"


def delivery_id(hooks: Hooks, address: str) -> int:
    return int(hooks.message_ids[address].strip("<>").split("@")[0].split(".")[1])


def rows(hooks: Hooks) -> list[dict[str, Any]]:
    return hooks.events()


def by_kind(found: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in found:
        out.setdefault(row["kind"], []).append(row)
    return out


def assert_anonymous(row: dict[str, Any]) -> None:
    """A click or open row: no hash of any reader, in any column."""
    assert row["email_hash"] is None
    marks = [address_hash(a) for a in READERS] + [hash_key(a)[:16] for a in READERS]
    assert not any(mark in str(value) for value in row.values() for mark in marks), row


def post_all(hooks: Hooks, provider: str, requests: list[tuple[bytes, dict[str, str]]]) -> int:
    """Post each request; all must be accepted. The number of new events."""
    new = 0
    for body, headers in requests:
        response = hooks.post(provider, body, headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        new += response.get_json()["new"]
    return new


def assert_replay_stores_nothing(hooks: Hooks, provider: str, requests: list[tuple[bytes, dict[str, str]]]) -> None:
    before = rows(hooks)
    assert post_all(hooks, provider, requests) == 0
    assert rows(hooks) == before


# ---------------------------------------------------------------------------------------------
# The link kept for a click


@pytest.mark.parametrize(("clicked", "stored"), [
    (PERSONAL_LINK, STORED_LINK),
    ("https://x.example/a?e=ann@example.com&b=2", "https://x.example/a?e=[address]&b=2"),
    ("https://x.example/?e=ann%2540example.com", "https://x.example/?e=[address]"),  # encoded twice
    ("https://x.example/u/Ann.Berg%2Bx%40Example.COM/edit", "https://x.example/u/[address]/edit"),
    ("https://user:pw@x.example/p", "https://x.example/p"),
    ("https://x.example/#/s?to=ann@example.com", "https://x.example/#/s?to=[address]"),
    ("mailto:ann@example.com?subject=Hi", "mailto:[address]?subject=Hi"),
    ("https://letter.example.com/unsubscribe/AbC.dEf-123", "https://letter.example.com/unsubscribe/[token]"),
    ("https://letter.example.com/confirm/AbC?x=1", "https://letter.example.com/confirm/[token]?x=1"),
    ("https://medium.example/@ann/post?via=@ann", "https://medium.example/@ann/post?via=@ann"),  # no address
    ("  https://x.example/a\n", "https://x.example/a"),
    (None, ""),
])
def test_a_clicked_link_keeps_the_link_and_no_address(clicked, stored):
    assert wh.link_detail(clicked) == stored
    assert wh.link_detail(stored) == stored  # applied again it changes nothing
    assert len(wh.link_detail("https://x.example/" + "a" * 2000)) == wh.DETAIL_LIMIT


# ---------------------------------------------------------------------------------------------
# Postmark


def postmark(record_type: str, recipient: str, message_id: str | None, **fields: Any) -> tuple[bytes, dict]:
    record: dict[str, Any] = {"RecordType": record_type, "Recipient": recipient, "MessageStream": "broadcast",
                              "Tag": "", "Metadata": {}, **fields}
    if message_id is not None:
        record["MessageID"] = message_id
    return json.dumps(record).encode(), PM_AUTH


def test_postmark_delivery_open_click_and_complaint(hooks):
    ann_id, cat_id = "0a1b2c3d-0000-4000-8000-00000000000a", "0a1b2c3d-0000-4000-8000-00000000000c"
    hooks.set_provider_id(ANN, ann_id)  # Postmark's MessageID, as its API answered
    hooks.set_provider_id(CAT, cat_id)
    client = {"Name": "Apple Mail", "Company": "Apple", "Family": "Apple Mail"}
    clicked_at = iso(3, 7)
    requests = [
        postmark("Delivery", ANN, ann_id, DeliveredAt=iso(1, 7), Details="smtp;250 2.0.0 OK", ServerID=23),
        postmark("Open", ANN, ann_id, FirstOpen=True, ReceivedAt=iso(2, 7), Client=client, ReadSeconds=5,
                 UserAgent="Mozilla/5.0", Platform="Desktop", Geo={"IP": "192.0.2.1"}),
        postmark("Click", ANN, ann_id, ClickLocation="HTML", OriginalLink=PERSONAL_LINK, ReceivedAt=clicked_at,
                 Client=client, Platform="Desktop", UserAgent="Mozilla/5.0", Geo={"IP": "192.0.2.1"}),
        # The other link at the same moment (a mail scanner follows every link at once): another click.
        postmark("Click", ANN, ann_id, ClickLocation="HTML", OriginalLink=OTHER_LINK, ReceivedAt=clicked_at),
        # Bob's click names no message: the last campaign sent to him.
        postmark("Click", BOB, None, ClickLocation="Text", OriginalLink=OTHER_LINK, ReceivedAt=iso(5, 7)),
        (json.dumps({"RecordType": "SpamComplaint", "ID": 9001, "Type": "SpamComplaint", "MessageID": cat_id,
                     "Email": CAT, "BouncedAt": iso(6, 7), "Description": "spam", "Details": "",
                     "MessageStream": "broadcast"}).encode(), PM_AUTH),
    ]
    assert post_all(hooks, "postmark", requests) == 6
    found = by_kind(rows(hooks))
    assert {k: len(v) for k, v in found.items()} == {"delivered": 1, "opened": 1, "clicked": 3, "complaint": 1}
    assert all(r["campaign_id"] == hooks.campaign.id for r in rows(hooks))
    assert [r["detail"] for r in found["clicked"]] == [STORED_LINK, OTHER_LINK, OTHER_LINK]
    for row in found["clicked"] + found["opened"]:
        assert_anonymous(row)
    assert found["delivered"][0]["email_hash"] == address_hash(ANN)
    assert found["delivered"][0]["occurred_at"] is not None
    assert found["complaint"][0]["email_hash"] == address_hash(CAT)
    assert hooks.suppression(CAT) == "complained"
    no_addresses_stored(hooks)
    assert_replay_stores_nothing(hooks, "postmark", requests)


# ---------------------------------------------------------------------------------------------
# SendGrid

SG_REQUEST = "Vx2lN9iAT8yIXr8kJ2yGZw"  # the X-Message-Id of the request that sent the issue


def sg(event: str, email: str, event_id: str, index: int | None, hooks: Hooks, **fields: Any) -> dict:
    """One SendGrid event; ``index`` is the personalization's position in the request that
    sent it (None: an event that names no message)."""
    item: dict[str, Any] = {"email": email, "timestamp": int(time.time()) + 5, "event": event,
                            "sg_event_id": event_id, "category": [], **fields}
    if index is not None:
        item["sg_message_id"] = f"{SG_REQUEST}.filterdrecv-5645d9c87f-6r2ch-1-5FE3A1C6-{index}.0"
        item["smtp-id"] = f"<{SG_REQUEST}@geopod-ismtpd-4-0>"
        item["nl_delivery"] = str(delivery_id(hooks, email))
        item["nl_campaign"] = f"{hooks.campaign.id}-{hooks.campaign.issue}"
    return item


def test_sendgrid_delivery_open_click_and_complaint(hooks):
    # The journal records SendGrid's X-Message-Id with the personalization's position.
    for index, address in enumerate(READERS):
        hooks.set_provider_id(address, f"{SG_REQUEST}#{index}")
    batch = [
        sg("delivered", ANN, "sg-d-1", 0, hooks, response="250 OK", ip="168.1.1.1", tls=1),
        sg("open", ANN, "sg-o-1", 0, hooks, useragent="Mozilla/5.0", ip="192.0.2.1", sg_machine_open=False),
        sg("click", ANN, "sg-c-1", 0, hooks, url=PERSONAL_LINK, url_offset={"index": 0, "type": "html"},
           useragent="Mozilla/5.0", ip="192.0.2.1"),
        sg("click", BOB, "sg-c-2", None, hooks, url=OTHER_LINK, url_offset={"index": 1, "type": "html"}),
        sg("spamreport", CAT, "sg-s-1", 2, hooks),
    ]
    body = json.dumps(batch).encode()
    requests = [(body, hooks.sendgrid.headers(body))]
    assert post_all(hooks, "sendgrid", requests) == 5
    found = {r["provider_event_id"]: r for r in rows(hooks)}
    assert {k: (r["kind"], r["campaign_id"]) for k, r in found.items()} == {
        "sg-d-1": ("delivered", hooks.campaign.id), "sg-o-1": ("opened", hooks.campaign.id),
        "sg-c-1": ("clicked", hooks.campaign.id), "sg-c-2": ("clicked", hooks.campaign.id),
        "sg-s-1": ("complaint", hooks.campaign.id)}
    assert found["sg-c-1"]["detail"] == STORED_LINK and found["sg-c-2"]["detail"] == OTHER_LINK
    for key in ("sg-o-1", "sg-c-1", "sg-c-2"):
        assert_anonymous(found[key])
    assert found["sg-d-1"]["email_hash"] == address_hash(ANN)
    assert found["sg-s-1"]["email_hash"] == address_hash(CAT)
    no_addresses_stored(hooks)
    # The same batch again (SendGrid retries a batch whole), newly signed: nothing new.
    assert_replay_stores_nothing(hooks, "sendgrid", [(body, hooks.sendgrid.headers(body))])


def test_sendgrid_events_are_tied_by_the_delivery_they_name_only_when_its_id_matches(hooks):
    hooks.set_provider_id(ANN, f"{SG_REQUEST}#0")
    hooks.set_provider_id(BOB, f"{SG_REQUEST}#1")
    # No sg_message_id (an asynchronous bounce has none): smtp-id's X-Message-Id will do.
    late = sg("delivered", ANN, "sg-late", 0, hooks)
    del late["sg_message_id"]
    # A test send: its own request, and a counter that happens to be Bob's journal row.
    test_send = sg("click", BOB, "sg-test", 0, hooks, url=OTHER_LINK)
    test_send.update(sg_message_id="OtherRequest0000000000.filter-1.0", **{"smtp-id": "<OtherRequest0000000000@x>"})
    body = json.dumps([late, test_send]).encode()
    assert post_all(hooks, "sendgrid", [(body, hooks.sendgrid.headers(body))]) == 2
    found = {r["provider_event_id"]: r["campaign_id"] for r in rows(hooks)}
    assert found == {"sg-late": hooks.campaign.id, "sg-test": None}


# ---------------------------------------------------------------------------------------------
# Mailgun

MG_ID = "20261202183000.8a9c7d6e5f4b3a21@mg.letter.example.com"


def mg(address: str, event: str, event_id: str, message_id: str | None, **extra: Any) -> dict:
    data: dict[str, Any] = {"event": event, "id": event_id, "timestamp": time.time() + 5, "recipient": address,
                            "log-level": "info", "tags": [], "user-variables": {}, **extra}
    if message_id is not None:
        data["message"] = {"headers": {"message-id": message_id}}
    return data


def test_mailgun_delivery_open_click_and_complaint(hooks):
    hooks.set_provider_id(ANN, MG_ID)  # the id Mailgun's API answered, without the brackets
    client = {"client-info": {"client-name": "Firefox", "user-agent": "Mozilla/5.0"},
              "geolocation": {"country": "NO"}, "ip": "192.0.2.1"}
    data = [
        mg(ANN, "delivered", "mg-d-1", MG_ID, **{"delivery-status": {"code": 250, "message": "OK"}}),
        mg(ANN, "opened", "mg-o-1", MG_ID, **client),
        mg(ANN, "clicked", "mg-c-1", MG_ID, url=PERSONAL_LINK, **client),
        mg(BOB, "clicked", "mg-c-2", None, url=OTHER_LINK, **client),
        # Cat's complaint, by our own Message-ID (as Mailgun reports a message sent over SMTP).
        mg(CAT, "complained", "mg-s-1", hooks.message_ids[CAT].strip("<>")),
    ]
    requests = [(hooks.mailgun.body(d), {"Content-Type": "application/json"}) for d in data]
    assert post_all(hooks, "mailgun", requests) == 5
    found = {r["provider_event_id"]: r for r in rows(hooks)}
    assert {k: (r["kind"], r["campaign_id"]) for k, r in found.items()} == {
        "mg-d-1": ("delivered", hooks.campaign.id), "mg-o-1": ("opened", hooks.campaign.id),
        "mg-c-1": ("clicked", hooks.campaign.id), "mg-c-2": ("clicked", hooks.campaign.id),
        "mg-s-1": ("complaint", hooks.campaign.id)}
    assert found["mg-c-1"]["detail"] == STORED_LINK and found["mg-c-2"]["detail"] == OTHER_LINK
    for key in ("mg-o-1", "mg-c-1", "mg-c-2"):
        assert_anonymous(found[key])
    assert found["mg-d-1"]["email_hash"] == address_hash(ANN)
    assert found["mg-s-1"]["email_hash"] == address_hash(CAT)
    no_addresses_stored(hooks)
    # The very same request again is refused (its token is used) and stores nothing ...
    before = rows(hooks)
    for body, headers in requests:
        assert hooks.post("mailgun", body, headers).status_code == 401
    # ... and Mailgun's own retry, the same event under a new signature, stores nothing new.
    assert_replay_stores_nothing(hooks, "mailgun", [(hooks.mailgun.body(d), {}) for d in data])
    assert rows(hooks) == before


# ---------------------------------------------------------------------------------------------
# Resend

RS_ANN = "4ef9a417-02e9-4d39-ad75-9611e0fcc33a"
RS_CAT = "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"


def resend(hooks: Hooks, kind: str, to: list[str], email_id: str | None, **data: Any) -> tuple[bytes, dict]:
    """A Resend event, signed once: a retry carries the same svix-id, so the same headers."""
    payload_data: dict[str, Any] = {"created_at": iso(-60), "from": "Ann Berg <ann@example.com>", "to": to,
                                    "subject": "First issue", "tags": {"issue": "first"}, **data}
    if email_id is not None:
        payload_data["email_id"] = email_id
    body = json.dumps({"type": kind, "created_at": iso(5), "data": payload_data}).encode()
    return body, hooks.svix.headers(body)


def test_resend_delivery_open_click_and_complaint(hooks):
    hooks.set_provider_id(ANN, RS_ANN)
    hooks.set_provider_id(CAT, RS_CAT)
    click = {"ipAddress": "192.0.2.1", "timestamp": iso(4), "userAgent": "Mozilla/5.0"}
    requests = [
        resend(hooks, "email.delivered", [ANN], RS_ANN),
        resend(hooks, "email.opened", [ANN], RS_ANN),
        resend(hooks, "email.clicked", [ANN], RS_ANN, click={**click, "link": PERSONAL_LINK}),
        resend(hooks, "email.clicked", [BOB], None, click={**click, "link": OTHER_LINK}),
        # A click in a message to two people: one click, by one of them (Resend does not say who).
        resend(hooks, "email.clicked", [CAT, "dan@example.com"], RS_CAT, click={**click, "link": OTHER_LINK}),
        resend(hooks, "email.complained", [CAT], RS_CAT),
    ]
    assert post_all(hooks, "resend", requests) == 6
    found = {r["provider_event_id"]: r for r in rows(hooks)}
    ids = [headers["svix-id"] for _body, headers in requests]
    assert [(found[i]["kind"], found[i]["campaign_id"]) for i in ids] == [
        ("delivered", hooks.campaign.id), ("opened", hooks.campaign.id), ("clicked", hooks.campaign.id),
        ("clicked", hooks.campaign.id), ("clicked", hooks.campaign.id), ("complaint", hooks.campaign.id)]
    assert [found[i]["detail"] for i in ids[2:5]] == [STORED_LINK, OTHER_LINK, OTHER_LINK]
    for i in ids[1:5]:
        assert_anonymous(found[i])
    assert found[ids[0]]["email_hash"] == address_hash(ANN)
    assert found[ids[5]]["email_hash"] == address_hash(CAT)
    no_addresses_stored(hooks)
    assert_replay_stores_nothing(hooks, "resend", requests)


# ---------------------------------------------------------------------------------------------
# Amazon SES (event publishing through SNS)

SES_ANN = "0102018f6a8b9c0d-1e2f3a4b-5c6d-7e8f-9a0b-1c2d3e4f5a6b-000000"
SES_CAT = "0102018f6a8b9c0d-1e2f3a4b-5c6d-7e8f-9a0b-1c2d3e4f5a6c-000000"


def ses_mail(destination: list[str], message_id: str | None, ours: str | None = None) -> dict:
    mail: dict[str, Any] = {"timestamp": iso(-60), "source": "Ann Berg <ann@example.com>",
                            "sendingAccountId": "123456789012", "destination": destination,
                            "headersTruncated": False, "headers": [], "tags": {"ses:configuration-set": ["letter"]}}
    if message_id is not None:
        mail["messageId"] = message_id
    if ours is not None:
        mail["commonHeaders"] = {"messageId": ours, "subject": "First issue"}
    return mail


def ses_click(link: str, mail: dict) -> dict:
    return {"eventType": "Click", "mail": mail,
            "click": {"ipAddress": "192.0.2.1", "link": link, "linkTags": {"samplekey0": ["samplevalue0"]},
                      "timestamp": iso(4), "userAgent": "Mozilla/5.0"}}


def test_ses_delivery_open_click_and_complaint(hooks):
    hooks.set_provider_id(ANN, SES_ANN)  # SES's MessageId, as its API answered
    notes = [
        {"eventType": "Delivery", "mail": ses_mail([ANN], SES_ANN),
         "delivery": {"timestamp": iso(1), "processingTimeMillis": 546, "recipients": [ANN],
                      "smtpResponse": "250 2.6.0 Message received", "reportingMTA": "a8-70.smtp-out.amazonses.com"}},
        {"eventType": "Open", "mail": ses_mail([ANN], SES_ANN),
         "open": {"ipAddress": "192.0.2.1", "timestamp": iso(2), "userAgent": "Mozilla/5.0"}},
        ses_click(PERSONAL_LINK, ses_mail([ANN], SES_ANN)),
        ses_click(OTHER_LINK, ses_mail([BOB], None)),  # names no message: the last campaign sent to Bob
        # A message to two people: one click, by one of them (SES does not say who); by our Message-ID.
        ses_click(OTHER_LINK, ses_mail([CAT, "dan@example.com"], SES_CAT, ours=hooks.message_ids[CAT])),
        {"eventType": "Complaint", "mail": ses_mail([CAT], SES_CAT, ours=hooks.message_ids[CAT]),
         "complaint": {"feedbackId": "fb-complaint-cat", "timestamp": iso(6), "complaintFeedbackType": "abuse",
                       "complainedRecipients": [{"emailAddress": CAT}]}},
    ]
    messages = [hooks.sns.message(n) for n in notes]
    for message in messages:
        response = sns_post(hooks, message)
        assert response.status_code == 200 and response.get_json()["new"] == 1, response.get_data(as_text=True)
    found = [dict(r) for r in rows(hooks)]
    assert [(r["kind"], r["campaign_id"]) for r in found] == [
        ("delivered", hooks.campaign.id), ("opened", hooks.campaign.id), ("clicked", hooks.campaign.id),
        ("clicked", hooks.campaign.id), ("clicked", hooks.campaign.id), ("complaint", hooks.campaign.id)]
    assert [r["detail"] for r in found[2:5]] == [STORED_LINK, OTHER_LINK, OTHER_LINK]
    for row in found[1:5]:
        assert_anonymous(row)
    assert found[0]["email_hash"] == address_hash(ANN)
    assert found[5]["email_hash"] == address_hash(CAT)
    assert found[2]["occurred_at"] is not None
    no_addresses_stored(hooks)
    # SNS retries a message whole, with its MessageId: nothing new.
    for message in messages:
        assert sns_post(hooks, message).get_json()["new"] == 0
    assert [dict(r) for r in rows(hooks)] == found


# ---------------------------------------------------------------------------------------------
# Attribution when an event names no message


def second_issue(hooks: Hooks) -> Any:
    folder = hooks.root / "issues" / "2026-12-08-second"
    folder.mkdir(parents=True)
    (folder / "issue.md").write_text("---\nsubject: Second issue\npreheader: More\n---\n", encoding="utf-8")
    (folder / "01-post.md").write_text(textwrap.dedent("""\
        ---
        title: Another post
        ---
        Hello again.
        """), encoding="utf-8")
    return send_issue(hooks.config, hooks.store, "2026-12-08-second")


def _delivery_ids(conn, campaign_id: int, address: str) -> list[int]:
    return list(conn.scalars(
        select(deliveries.c.id).join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
        .where(deliveries.c.campaign_id == campaign_id, subscribers.c.email_hash == address_hash(address))))


def test_an_event_naming_no_message_goes_to_the_last_campaign_sent_to_the_address_before_it(hooks):
    first = hooks.campaign
    second = second_issue(hooks)
    now = dt.datetime.now(dt.UTC)
    with hooks.store.write() as conn:
        conn.execute(update(campaigns).where(campaigns.c.id == first.id)
                     .values(created_at=now - dt.timedelta(days=10)))
        conn.execute(update(campaigns).where(campaigns.c.id == second.id)
                     .values(created_at=now - dt.timedelta(days=3)))
        # The second issue did not reach Cat: it is not the last one sent to her.
        conn.execute(update(deliveries).where(deliveries.c.id.in_(_delivery_ids(conn, second.id, CAT)))
                     .values(status="failed", reason="test"))

    def ago(days: int) -> int:
        return int((now - dt.timedelta(days=days)).timestamp())

    batch = [
        {"email": ANN, "event": "click", "url": OTHER_LINK, "sg_event_id": "a-now", "timestamp": ago(0)},
        {"email": ANN, "event": "open", "sg_event_id": "a-5d", "timestamp": ago(5)},  # between the two
        {"email": ANN, "event": "delivered", "sg_event_id": "a-20d", "timestamp": ago(20)},  # before both
        {"email": BOB, "event": "open", "sg_event_id": "b-untimed"},  # no time: as of now
        {"email": CAT, "event": "click", "url": OTHER_LINK, "sg_event_id": "c-now", "timestamp": ago(0)},
        {"email": "stranger@example.com", "event": "open", "sg_event_id": "s-now", "timestamp": ago(0)},
        # A message id that is none of ours is another message (a test send): not guessed.
        {"email": ANN, "event": "click", "url": OTHER_LINK, "sg_event_id": "a-other", "timestamp": ago(0),
         "sg_message_id": "NotOurs000000000000000.filter-1.0"},
        # A soft bounce is not guessed either: soft bounces count once per campaign.
        {"email": BOB, "event": "bounce", "type": "blocked", "sg_event_id": "b-soft", "timestamp": ago(0)},
        {"email": BOB, "event": "spamreport", "sg_event_id": "b-spam", "timestamp": ago(0)},
    ]
    body = json.dumps(batch).encode()
    assert post_all(hooks, "sendgrid", [(body, hooks.sendgrid.headers(body))]) == len(batch)
    found = {r["provider_event_id"]: r for r in rows(hooks)}
    assert {k: r["campaign_id"] for k, r in found.items()} == {
        "a-now": second.id, "a-5d": first.id, "a-20d": None, "b-untimed": second.id, "c-now": first.id,
        "s-now": None, "a-other": None, "b-soft": None, "b-spam": second.id}
    for key in ("a-now", "a-5d", "b-untimed", "c-now", "s-now", "a-other"):
        assert_anonymous(found[key])
    assert found["a-20d"]["email_hash"] == address_hash(ANN)
    assert found["b-spam"]["email_hash"] == address_hash(BOB)


def test_an_unsubscribe_naming_no_message_still_leaves_every_list(hooks):
    subs.create_list(hooks.store, "other", "Other")
    subs.add(hooks.store, ANN, list_name="other", confirmed=True)
    body = json.dumps([{"email": ANN, "event": "unsubscribe", "sg_event_id": "u-1",
                        "timestamp": int(time.time()) + 5}]).encode()
    assert post_all(hooks, "sendgrid", [(body, hooks.sendgrid.headers(body))]) == 1
    [row] = rows(hooks)
    assert row["kind"] == "unsubscribe" and row["campaign_id"] == hooks.campaign.id  # counted for the issue
    assert row["email_hash"] == address_hash(ANN)
    statuses = {m.email: m.status for m in subs.iter_members(hooks.store, "other")}
    assert statuses[ANN] == "unsubscribed" and hooks.status(ANN) == "unsubscribed"


def test_a_postmark_click_id_cannot_be_recomputed_from_the_address_without_the_password():
    """Postmark gives opens and clicks no id, so ours is a digest of the event; keyed with the
    webhook password, so that the database alone does not say whose click it was."""
    body, headers = postmark("Click", ANN, "0a1b2c3d-0000-4000-8000-00000000000a", OriginalLink=PERSONAL_LINK,
                             ReceivedAt="2026-12-02T18:00:00.1234567Z")
    hook = wh.PostmarkWebhook("postmark-hook", "pm-5ecret-pass")
    [ours] = hook.parse(headers, body)
    other = wh.PostmarkWebhook("postmark-hook", "another-password")
    [theirs] = other.parse(postmark_auth("postmark-hook", "another-password"), body)
    assert ours.kind == "clicked" and ours.address == ANN  # known while it is attributed ...
    assert ours.event_id != theirs.event_id  # ... but its id depends on the secret
    assert hook.parse(headers, body)[0].event_id == ours.event_id  # and is stable, for replays
    record = json.loads(body)
    for guess in (wh._digest("Click", record["MessageID"], ANN, record["ReceivedAt"], None),
                  wh._digest("Click", record["MessageID"], ANN, record["ReceivedAt"], PERSONAL_LINK)):
        assert ours.event_id != guess


def test_recording_a_click_keeps_its_link_clean_whoever_parsed_it(hooks):
    """record_events cleans a click's link itself, as a link (scrub() on the whole URL would
    read ``via=@letter`` as an address and keep nothing of the link), and drops the reader."""
    link = "https://x.example/p?via=@letter&e=ann@example.com"
    click = wh.WebhookEvent(wh.CLICKED, ANN, (hooks.message_ids[ANN],), "c-1", None, detail=link)
    assert wh.record_events(hooks.store, "postmark", [click], 3).new == 1
    [row] = rows(hooks)
    assert row["detail"] == "https://x.example/p?via=@letter&e=[address]"
    assert row["campaign_id"] == hooks.campaign.id
    assert_anonymous(row)
