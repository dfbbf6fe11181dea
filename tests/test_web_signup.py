"""The public app in-process (werkzeug's test client) on SQLite and PostgreSQL: sign-up with
double opt-in, confirmation, one-click unsubscribe, and the security rules around them."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, update
from werkzeug.test import Client

from newsletter import subscribers as subs
from newsletter import tokens
from newsletter.config import Config
from newsletter.errors import ConfigError
from newsletter.providers import FatalError, Provider
from newsletter.store import Store, open_store
from newsletter.store.schema import memberships, metadata, rate_limits, subscribers
from newsletter.web import signup
from newsletter.web.app import PublicApp

from .fakes.postmark import TOKEN, FakePostmark
from .webutil import (
    ISSUE,
    SECRET,
    add_reader,
    confirm_path,
    heading,
    load,
    outbox,
    send_issue,
    text_of,
    unsubscribe_path,
    write_letter,
)

SECURITY_HEADERS = ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy",
                    "Referrer-Policy")


@dataclass
class Site:
    root: Path
    config: Config
    store: Store
    app: PublicApp
    client: Client

    def post(self, path: str = "/subscribe", ip: str = "192.0.2.1", **kw):
        return self.client.post(path, environ_overrides={"REMOTE_ADDR": ip}, **kw)

    def subscribe(self, email: str, ip: str = "192.0.2.1", **fields):
        response = self.post(data={"email": email, **fields}, ip=ip)
        self.app.mailer.wait()
        return response

    def confirmations(self) -> list:
        return outbox(self.root, "confirm")

    def membership(self, address: str, list_name: str = "main") -> str | None:
        members = {m.email: m.status for m in subs.iter_members(self.store, list_name)}
        return members.get(address)


@pytest.fixture
def make_site(tmp_path, db_url, monkeypatch):
    made: list[Site] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)

    def _make(web: str = "", env: str = "") -> Site:
        write_letter(tmp_path, web, env)
        config = load(tmp_path)
        store = open_store(config)
        app = PublicApp(config, store)
        site = Site(tmp_path, config, store, app, Client(app))
        made.append(site)
        return site

    yield _make
    for site in made:
        site.app.close()
        site.store.close()


@pytest.fixture
def site(make_site) -> Site:
    return make_site()


# ---------------------------------------------------------------------------------------------
# Subscribing and confirming


def test_the_form_page_has_the_fields_a_honeypot_and_no_script(site):
    response = site.client.get("/subscribe")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'name="email"' in page and 'name="name"' in page and 'type="email"' in page
    assert f'name="{signup.HONEYPOT}"' in page and 'tabindex="-1"' in page
    assert '<input type="hidden" name="list" value="main">' in page
    assert "<script" not in page
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_a_new_reader_gets_a_pending_membership_and_a_confirmation_email(site):
    response = site.subscribe("reader@example.com", name="Rita")
    assert response.status_code == 200
    assert heading(response.get_data(as_text=True)) == "Check your inbox"
    assert site.membership("reader@example.com") == "pending"

    [mail] = site.confirmations()
    assert mail["To"] == "reader@example.com"  # the name typed into the form is not echoed
    assert "Confirm your subscription" in mail["Subject"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = confirm_path(mail).rsplit("/", 1)[1]
    payload = json.loads(tokens._unb64(token.split(".")[0]))
    assert payload["exp"] - dt.datetime.now(dt.UTC).timestamp() == pytest.approx(7 * 86400, abs=60)
    assert "reader" not in token and "example" not in token  # ids only, never the address


def test_the_confirmation_link_shows_one_button_and_get_or_head_change_nothing(site):
    site.subscribe("reader@example.com")
    path = confirm_path(site.confirmations()[0])
    token = path.rsplit("/", 1)[1]
    for _ in range(3):  # mail scanners open every link, with GET and with HEAD
        assert site.client.head(path).status_code == 200
        response = site.client.get(path)
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and heading(page) == "Confirm your subscription to Test Letter"
    assert page.count("<button") == 1 and page.count("<form") == 1
    assert re.search(rf'<form method="post" action="\.\./confirm/{re.escape(token)}">', page), page
    assert "<script" not in page and "script-src" not in response.headers["Content-Security-Policy"]
    assert site.membership("reader@example.com") == "pending"


def test_the_button_makes_the_membership_active_and_the_link_is_used_up(site):
    site.subscribe("reader@example.com")
    path = confirm_path(site.confirmations()[0])

    first = site.client.post(path)
    assert first.status_code == 200 and heading(first.get_data(as_text=True)) == "You are subscribed"
    assert site.membership("reader@example.com") == "active"
    for again in (site.client.post(path), site.client.get(path)):
        page = again.get_data(as_text=True)
        assert again.status_code == 200 and heading(page) == "You are subscribed"
        assert "This link has been used" in page and "<button" not in page
    assert site.membership("reader@example.com") == "active"


def test_an_old_confirmation_link_does_not_bring_back_a_reader_who_left(site):
    site.subscribe("reader@example.com")
    path = confirm_path(site.confirmations()[0])
    assert site.client.post(path).status_code == 200
    subs.unsubscribe(site.store, "reader@example.com")
    for response in (site.client.get(path), site.client.post(path)):
        page = response.get_data(as_text=True)
        assert response.status_code == 410 and heading(page) == "This link no longer works"
        assert "Subscribe again" in page and "<button" not in page
    assert site.membership("reader@example.com") == "unsubscribed"


def test_a_pending_link_is_void_once_the_reader_leaves(site):
    site.subscribe("reader@example.com")
    mail = site.confirmations()[0]
    site.client.post(unsubscribe_path(mail), data="List-Unsubscribe=One-Click",
                     content_type="application/x-www-form-urlencoded")
    assert site.membership("reader@example.com") == "unsubscribed"
    response = site.client.post(confirm_path(mail))
    assert response.status_code == 410 and heading(response.get_data(as_text=True)) == "This link no longer works"
    assert site.membership("reader@example.com") == "unsubscribed"


def test_each_return_needs_a_new_link_and_every_older_one_stays_void(site):
    site.subscribe("back@example.com")
    first = confirm_path(site.confirmations()[0])
    assert site.client.post(first).status_code == 200
    subs.unsubscribe(site.store, "back@example.com")
    (site.root / "outbox" / "confirm").rename(site.root / "outbox" / "confirm-1")

    site.subscribe("back@example.com")  # a new sign-up: a new link for it
    second = confirm_path(site.confirmations()[0])
    assert second != first
    assert site.client.post(first).status_code == 410
    assert site.membership("back@example.com") == "unsubscribed"
    assert site.client.post(second).status_code == 200
    assert site.membership("back@example.com") == "active"

    subs.unsubscribe(site.store, "back@example.com")
    for old in (first, second):
        assert site.client.post(old).status_code == 410
    assert site.membership("back@example.com") == "unsubscribed"


def test_two_emails_for_one_pending_sign_up_both_work_until_one_is_used(site):
    site.subscribe("twice@example.com")
    first = confirm_path(site.confirmations()[0])
    (site.root / "outbox" / "confirm").rename(site.root / "outbox" / "confirm-1")
    site.subscribe("twice@example.com", ip="192.0.2.77")
    second = confirm_path(site.confirmations()[0])
    assert heading(site.client.get(first).get_data(as_text=True)).startswith("Confirm your subscription")
    assert site.client.post(second).status_code == 200
    used = site.client.post(first)
    assert used.status_code == 200 and "This link has been used" in used.get_data(as_text=True)


def test_an_expired_or_forged_confirmation_link_changes_nothing(site):
    site.subscribe("reader@example.com")
    with site.store.read() as conn:
        row = conn.execute(select(subscribers.c.id, subscribers.c.created_at)).one()
    expired = tokens.sign(SECRET, "confirm", {"s": row.id, "l": 1, "c": int(row.created_at.timestamp())},
                          ttl=-1)
    response = site.client.get(f"/confirm/{expired}")
    assert response.status_code == 400
    assert heading(response.get_data(as_text=True)) == "This link has expired"
    assert "Subscribe again" in response.get_data(as_text=True)

    forged = signup.confirm_token("not-our-secret", row.id, 1, row.created_at, "x")
    response = site.client.get(f"/confirm/{forged}")
    assert response.status_code == 400 and heading(response.get_data(as_text=True)) == "This link is not valid"
    good = confirm_path(site.confirmations()[0]).rsplit("/", 1)[1]
    # Change a character of the signature that carries all of its bits, to a different one.
    tampered = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    for broken in ("nonsense", "a.b", tampered):
        assert site.client.get(f"/confirm/{broken}").status_code == 400
    unsubscribe_token = tokens.sign(SECRET, "unsubscribe", {"s": row.id, "l": 1})
    assert site.client.get(f"/confirm/{unsubscribe_token}").status_code == 400  # wrong purpose
    for bad in (expired, forged, unsubscribe_token):
        assert site.client.post(f"/confirm/{bad}").status_code == 400
    assert site.membership("reader@example.com") == "pending"


def test_a_link_sent_before_links_carried_a_mark_confirms_only_a_pending_sign_up(site):
    site.subscribe("old@example.com")
    add_reader(site.store, "left@example.com")
    subs.unsubscribe(site.store, "left@example.com")
    with site.store.read() as conn:
        rows = {r.email: r for r in conn.execute(select(subscribers.c.id, subscribers.c.email,
                                                        subscribers.c.created_at))}

    def legacy(address: str) -> str:
        row = rows[address]
        payload = {"s": row.id, "l": 1, "c": int(row.created_at.timestamp())}
        return "/confirm/" + tokens.sign(SECRET, "confirm", payload, ttl=3600)

    assert site.client.post(legacy("left@example.com")).status_code == 410
    assert site.membership("left@example.com") == "unsubscribed"
    assert site.client.post(legacy("old@example.com")).status_code == 200
    assert site.membership("old@example.com") == "active"
    assert "This link has been used" in site.client.post(legacy("old@example.com")).get_data(as_text=True)


def test_a_link_cannot_confirm_a_later_reader_who_got_the_same_id(site):
    site.subscribe("first@example.com")
    path = confirm_path(site.confirmations()[0])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    with site.store.write() as conn:  # as if `forget` removed the row and a new reader took its id
        conn.execute(update(subscribers).values(email="second@example.com", email_key="second@example.com",
                                                created_at=later))
    for response in (site.client.get(path), site.client.post(path)):
        assert response.status_code == 410
        assert heading(response.get_data(as_text=True)) == "This link no longer works"
    assert site.membership("second@example.com") == "pending"


def test_the_answer_is_the_same_whether_or_not_the_address_is_known(site):
    add_reader(site.store, "active@example.com")
    add_reader(site.store, "left@example.com")
    subs.unsubscribe(site.store, "left@example.com")
    subs.suppress(site.store, "bounced@example.com", "bounced")
    site.subscribe("pending@example.com", ip="192.0.2.9")

    answers = {}
    for address in ("new@example.com", "pending@example.com", "active@example.com",
                    "left@example.com", "bounced@example.com"):
        form = site.subscribe(address, ip="192.0.2.2")
        as_json = site.client.post("/subscribe", json={"email": address}, environ_overrides={"REMOTE_ADDR": "192.0.2.3"})
        site.app.mailer.wait()
        answers[address] = (form.status_code, form.get_data(), as_json.status_code, as_json.get_data())
    assert len(set(answers.values())) == 1
    assert answers["new@example.com"][0] == 200 and answers["new@example.com"][2] == 200

    mailed = sorted({m["To"] for m in site.confirmations()})
    assert mailed == ["left@example.com", "new@example.com", "pending@example.com"]
    assert site.membership("active@example.com") == "active"
    assert site.membership("left@example.com") == "unsubscribed"  # until they confirm
    assert subs.get_suppression(site.store, "bounced@example.com").reason == "bounced"


def test_json_sign_up(site):
    response = site.client.post("/subscribe", json={"email": "json@example.com", "name": "Jay", "list": "main"})
    site.app.mailer.wait()
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json()["ok"] is True
    assert site.membership("json@example.com") == "pending"
    assert [m["To"] for m in site.confirmations()] == ["json@example.com"]

    bad = site.client.post("/subscribe", json={"email": "not-an-address"})
    assert bad.status_code == 400 and bad.get_json()["ok"] is False
    assert "not a valid email address" in bad.get_json()["error"]
    garbage = site.client.post("/subscribe", data=b"{not json", content_type="application/json")
    assert garbage.status_code == 400


def test_an_unsubscribed_reader_comes_back_only_by_confirming(site):
    add_reader(site.store, "back@example.com")
    subs.unsubscribe(site.store, "back@example.com")
    site.subscribe("back@example.com")
    assert site.membership("back@example.com") == "unsubscribed"
    site.client.get(confirm_path(site.confirmations()[0]))
    assert site.membership("back@example.com") == "unsubscribed"  # a GET is not a yes
    site.client.post(confirm_path(site.confirmations()[0]))
    assert site.membership("back@example.com") == "active"


def test_a_forgotten_address_may_join_again_and_a_bounced_one_may_not(site):
    add_reader(site.store, "gone@example.com")
    subs.forget(site.store, "gone@example.com")
    site.subscribe("gone@example.com")
    [mail] = site.confirmations()
    assert subs.get_suppression(site.store, "gone@example.com").reason == "forgotten"
    assert site.client.post(confirm_path(mail)).status_code == 200
    assert subs.get_suppression(site.store, "gone@example.com") is None
    assert site.membership("gone@example.com") == "active"

    # A confirmation link cannot undo a bounce that came in after it was sent.
    site.subscribe("later-bounced@example.com")
    mail = next(m for m in site.confirmations() if m["To"] == "later-bounced@example.com")
    subs.suppress(site.store, "later-bounced@example.com", "bounced")
    response = site.client.post(confirm_path(mail))
    assert response.status_code == 403
    assert heading(response.get_data(as_text=True)) == "This address cannot be subscribed"
    assert site.membership("later-bounced@example.com") == "bounced"


def test_the_honeypot_answers_as_usual_and_keeps_nothing(site):
    response = site.subscribe("bot@example.com", **{signup.HONEYPOT: "http://spam.example"})
    assert response.status_code == 200 and heading(response.get_data(as_text=True)) == "Check your inbox"
    assert site.membership("bot@example.com") is None
    assert site.confirmations() == []


def test_bad_input_is_refused_with_the_form_and_escaped(site):
    response = site.subscribe("<script>alert(1)</script>", name="<script>alert(2)</script>")
    page = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "<script>" not in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert 'role="alert"' in page and "not a valid email address" in page

    assert site.subscribe("ok@example.com", list="secret-list").status_code == 400
    # A line break in a name is folded to a space; a name still unfit for a header is refused.
    assert site.subscribe("ok@example.com", name="Ann\r\nBcc: x@example.com " * 10).status_code == 400
    assert site.membership("ok@example.com") is None and site.confirmations() == []


def test_a_subscriber_named_script_is_harmless_on_every_page(site):
    subs.create_list(site.store, "vip", title="<script>alert('list')</script>")
    subs.add(site.store, "scripted@example.com", name="<script>alert('x')</script>", list_name="vip",
             confirmed=True)
    with site.store.read() as conn:
        sub_id = conn.execute(select(subscribers.c.id)).scalar_one()
        list_id = conn.execute(select(memberships.c.list_id)).scalar_one()
    token = tokens.sign(SECRET, "unsubscribe", {"s": sub_id, "l": list_id})
    for response in (site.client.get(f"/unsubscribe/{token}"), site.client.post(f"/unsubscribe/{token}")):
        page = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "<script>" not in page and "&lt;script&gt;alert(&#39;list&#39;)&lt;/script&gt;" in page


def test_per_ip_limit(make_site):
    site = make_site("ip_signups_per_hour = 3\n")
    answers = [site.subscribe(f"r{i}@example.com", ip="198.51.100.7").status_code for i in range(4)]
    assert answers == [200, 200, 200, 429]
    refused = site.subscribe("r9@example.com", ip="198.51.100.7")
    assert int(refused.headers["Retry-After"]) > 3000
    assert site.membership("r9@example.com") is None
    assert site.subscribe("r9@example.com", ip="198.51.100.8").status_code == 200
    with site.store.read() as conn:
        keys = conn.execute(select(rate_limits.c.key)).scalars().all()
    assert not any("198.51" in k or "example.com" in k for k in keys)  # hashes only


def test_per_address_limit_sends_no_more_mail_and_says_nothing(make_site):
    site = make_site("address_signups_per_day = 2\n")
    answers = [site.subscribe("victim@example.com", ip=f"203.0.113.{i}") for i in range(4)]
    assert len({(a.status_code, a.get_data()) for a in answers}) == 1
    assert len(site.confirmations()) == 1  # the outbox keeps one file per address
    assert site.app.mailer.sent == 2


def test_rate_limit_windows_end(site):
    now = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    with site.store.write() as conn:
        assert [signup.over_limit(conn, "k", 2, dt.timedelta(hours=1), now) for _ in range(3)] == [0, 0, 3600]
        later = now + dt.timedelta(minutes=61)
        assert signup.over_limit(conn, "k", 2, dt.timedelta(hours=1), later) == 0
    assert signup.prune_counters(site.store, now + dt.timedelta(days=3)) == 1


def test_the_request_body_is_capped(make_site):
    site = make_site("max_body_bytes = 2048\n")
    response = site.post(data={"email": "big@example.com", "name": "x" * 5000})
    assert response.status_code == 413
    assert all(name in response.headers for name in SECURITY_HEADERS)
    assert site.membership("big@example.com") is None
    assert site.post("/webhooks/mailgun", data=b"x" * 4096, content_type="application/json").status_code == 413


def test_confirmations_go_through_the_configured_provider(tmp_path, db_url, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    with FakePostmark() as fake:
        write_letter(tmp_path, env=f"POSTMARK_SERVER_TOKEN={TOKEN}\n")
        toml = tmp_path / "newsletter.toml"
        toml.write_text(toml.read_text().replace('name = "outbox"', f'name = "postmark"\nbase_url = "{fake.url}"'))
        config = load(tmp_path)
        with open_store(config) as store:
            app = PublicApp(config, store)
            Client(app).post("/subscribe", data={"email": "pm@example.com"})
            app.mailer.wait()
            app.close()
        [message] = fake.messages
    assert message["To"] == "pm@example.com"
    assert "/confirm/" in message["TextBody"] and "/confirm/" in message["HtmlBody"]


def test_a_failing_provider_is_logged_and_the_answer_does_not_change(site, caplog):
    class Broken(Provider):
        name = "broken"

        def send_batch(self, batch):
            raise FatalError("broken: the service refused the key")

    mailer = signup.Mailer(site.config, site.store, SECRET, provider_factory=Broken)
    app = PublicApp(site.config, site.store, mailer=mailer)
    with caplog.at_level(logging.ERROR, logger="newsletter.web"):
        response = Client(app).post("/subscribe", data={"email": "x@example.com"})
        mailer.wait()
    assert response.status_code == 200 and heading(response.get_data(as_text=True)) == "Check your inbox"
    assert mailer.failed == 1 and "the service refused the key" in caplog.text
    assert "x@example.com" not in caplog.text
    app.close()


# ---------------------------------------------------------------------------------------------
# Leaving


@pytest.fixture
def sent(site):
    add_reader(site.store, "ann@example.com")
    add_reader(site.store, "bob@example.com")
    campaign = send_issue(site.config, site.store)
    return {m["To"]: m for m in outbox(site.root, f"{campaign.id}-{campaign.issue}")}


def test_get_shows_one_button_and_the_list_and_changes_nothing(site, sent):
    path = unsubscribe_path(sent["ann@example.com"])
    for _ in range(3):  # link scanners GET, sometimes more than once
        response = site.client.get(path)
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert heading(page) == "Unsubscribe from Test Letter?"
    assert page.count("<button") == 1 and 'method="post"' in page
    token = path.rsplit("/", 1)[1]
    assert f'<form method="post" action="../unsubscribe/{token}">' in page  # never action=""
    assert site.membership("ann@example.com") == "active"


def test_head_on_an_unsubscribe_link_changes_nothing(site, sent):
    path = unsubscribe_path(sent["ann@example.com"])
    for _ in range(3):  # link scanners send HEAD as well as GET
        response = site.client.head(path)
        assert response.status_code == 200 and response.get_data() == b""
    assert site.membership("ann@example.com") == "active"


def test_the_button_unsubscribes_at_once_and_offers_to_come_back(site, sent):
    path = unsubscribe_path(sent["ann@example.com"])
    response = site.client.post(path, data={"unsubscribe": "1"})
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and heading(page) == "You are unsubscribed"
    assert 'href="../subscribe?list=main"' in page
    assert site.membership("ann@example.com") == "unsubscribed"
    assert site.membership("bob@example.com") == "active"


def test_one_click_is_idempotent(site, sent):
    path = unsubscribe_path(sent["bob@example.com"])
    body = "List-Unsubscribe=One-Click"
    first = site.client.post(path, data=body, content_type="application/x-www-form-urlencoded")
    with site.store.read() as conn:
        when = conn.execute(select(memberships.c.unsubscribed_at)
                            .where(memberships.c.status == "unsubscribed")).scalar_one()
    second = site.client.post(path, data=body, content_type="application/x-www-form-urlencoded")
    assert first.status_code == second.status_code == 200
    assert first.get_data() == second.get_data()
    with site.store.read() as conn:
        assert conn.execute(select(memberships.c.unsubscribed_at)
                            .where(memberships.c.status == "unsubscribed")).scalar_one() == when
    assert site.membership("bob@example.com") == "unsubscribed"


def test_a_forged_unsubscribe_link_changes_nothing(site, sent):
    path = unsubscribe_path(sent["ann@example.com"])
    payload, signature = path.rsplit("/", 1)[1].split(".")
    other = tokens.sign(SECRET, "unsubscribe", {"s": 2, "l": 1}).split(".")[0]
    for forged in (f"{other}.{signature}", f"{payload}.{signature[:-2]}AA", tokens.sign("other", "unsubscribe", {"s": 1, "l": 1})):
        response = site.client.post(f"/unsubscribe/{forged}", data="List-Unsubscribe=One-Click",
                                    content_type="application/x-www-form-urlencoded")
        assert response.status_code == 400
    assert site.membership("ann@example.com") == site.membership("bob@example.com") == "active"


def test_a_test_copy_link_unsubscribes_nobody(site, sent):
    token = tokens.sign(SECRET, "unsubscribe", {"s": 0, "l": 0})
    page = site.client.get(f"/unsubscribe/{token}").get_data(as_text=True)
    assert heading(page) == "This link is from a test copy" and "<button" not in page
    response = site.client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click",
                                content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200 and heading(response.get_data(as_text=True)) == "Nothing to unsubscribe"
    assert site.membership("ann@example.com") == "active"


def test_a_forgotten_reader_can_still_use_the_link(site, sent):
    path = unsubscribe_path(sent["ann@example.com"])
    subs.forget(site.store, "ann@example.com")
    assert site.client.get(path).status_code == 200
    response = site.client.post(path, data="List-Unsubscribe=One-Click",
                                content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200 and heading(response.get_data(as_text=True)) == "You are unsubscribed"


# ---------------------------------------------------------------------------------------------
# Every response


def test_security_headers_on_every_response(site, sent):
    unsub = unsubscribe_path(sent["ann@example.com"])
    responses = [
        site.client.get("/subscribe"), site.post(data={"email": "h@example.com"}),
        site.post(data={"email": "bad"}), site.client.get("/nowhere"),
        site.client.delete("/subscribe"), site.client.get("/confirm/x.y"),
        site.client.get(unsub), site.client.post(unsub), site.client.get("/archive/"),
        site.client.get(f"/archive/{ISSUE}/"), site.client.get("/feed.xml"),
        site.client.get("/healthz"), site.client.get("/static/site.css"),
        site.client.post("/webhooks/postmark", json={}), site.client.post("/webhooks/nowhere"),
        site.client.get("/"),
    ]
    for response in responses:
        missing = [h for h in SECURITY_HEADERS if h not in response.headers]
        assert not missing, (response.status, response.request.path if hasattr(response, "request") else "", missing)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert site.client.delete("/subscribe").status_code == 405
    assert site.client.get("/").headers["Location"].endswith("archive/")


def _tables(store: Store) -> dict[str, list[str]]:
    with store.read() as conn:
        names = set(inspect(conn).get_table_names())
        return {t.name: sorted(repr(tuple(row)) for row in conn.execute(select(t)))
                for t in metadata.sorted_tables if t.name in names}


def test_get_and_head_change_nothing_anywhere(site, sent):
    site.subscribe("pending@example.com")
    confirm = confirm_path(site.confirmations()[0])
    unsub = unsubscribe_path(sent["ann@example.com"])
    paths = ["/", "/healthz", "/subscribe", "/subscribe?email=x%40example.com&list=main", confirm,
             confirm + "?confirm=1", unsub, unsub + "?List-Unsubscribe=One-Click", "/archive",
             "/archive/", f"/archive/{ISSUE}/", f"/archive/{ISSUE}/chart.png", "/feed.xml",
             "/static/site.css", "/favicon.ico", "/webhooks/mailgun", "/nowhere"]
    before = _tables(site.store)
    for path in paths:
        for method in ("GET", "HEAD"):
            response = site.client.open(path, method=method, environ_overrides={"REMOTE_ADDR": "192.0.2.50"})
            assert response.status_code < 500, (method, path)
    assert _tables(site.store) == before
    assert site.membership("pending@example.com") == "pending"
    assert site.membership("ann@example.com") == "active"


def test_health(site):
    response = site.client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_serving_without_the_secret_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_letter(tmp_path)
    (tmp_path / ".env").write_text("")
    config = load(tmp_path)
    with open_store(config) as store, pytest.raises(Exception, match="NEWSLETTER_SECRET is not set"):
        PublicApp(config, store)


# ---------------------------------------------------------------------------------------------
# Configuration


def test_web_settings_are_read_and_checked(configure):
    config = configure(extra=textwrap.dedent("""
        [web]
        public_lists = ["main", "weekly"]
        ip_signups_per_hour = 5
        address_signups_per_day = 1
        webhook_tolerance = "10m"
        ses_topic_arn = "arn:aws:sns:eu-west-1:123456789012:ses-events"
        trusted_proxy = "127.0.0.1"
    """))
    web = config.web
    assert web.public_lists == ("main", "weekly") and web.ip_signups_per_hour == 5
    assert web.webhook_tolerance == dt.timedelta(minutes=10) and web.trusted_proxy == "127.0.0.1"
    assert configure().web.public_lists == ("main",)

    with pytest.raises(ConfigError) as caught:
        configure(extra=textwrap.dedent("""
            [web]
            public_lists = ["Main List"]
            ip_signups_per_hour = 0
            webhook_tolerance = "2d"
            ses_topic_arn = "arn:aws:s3:::bucket"
            trusted_proxy = "proxy.local"
        """))
    text = str(caught.value)
    for key in ("public_lists", "ip_signups_per_hour", "webhook_tolerance", "ses_topic_arn", "trusted_proxy"):
        assert f"[web] {key}:" in text


def test_confirmation_email_text(site):
    site.subscribe("reader@example.com")
    body = text_of(site.confirmations()[0])
    assert "Confirm your subscription to Test Letter" in body
    assert "1 Test Street, Oslo" in body and "7 days" in body


def test_a_damaged_link_page_says_what_is_wrong_once_and_what_to_do_once(site):
    for path in ("/confirm/nonsense", "/unsubscribe/nonsense"):
        text = site.client.get(path).get_data(as_text=True)
        assert not re.search(r"[^./]\.\.(?![./])", text)  # no sentence ends twice
        assert text.lower().count("copy the whole link") == 1
        assert "This link is damaged." in text or "This link is not valid." in text


def test_the_mail_process_with_broken_settings_logs_each_lost_email_and_still_stops(tmp_path, caplog):
    import multiprocessing
    import os
    import signal

    (tmp_path / "newsletter.toml").write_text("[newsletter\nname = broken\n")
    jobs = multiprocessing.get_context("spawn").JoinableQueue()
    jobs.put((7, 1))
    jobs.put(None)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signup._mail_from_process(str(tmp_path / "newsletter.toml"), {}, SECRET, jobs, os.getpid())
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    jobs.join()  # every job was accounted for: a server stopping does not wait forever
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("confirmation emails cannot be sent: ") and "newsletter.toml" in m
               for m in messages), messages
    assert any("subscriber 7 not sent" in m for m in messages), messages
