"""`newsletter report`: an issue's numbers, tracked links, unsubscribes counted against the
issue that prompted them, the weeks around it, and the HTML page with its SVG charts."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from werkzeug.test import Client

from newsletter import report as rep
from newsletter import subscribers as subs
from newsletter import tracking
from newsletter.campaign import find_campaign
from newsletter.content import load_issue
from newsletter.render import render_issue
from newsletter.store import open_store
from newsletter.store.schema import LEFT_BY_LINK, events, links
from newsletter.web import webhooks as wh
from newsletter.web.app import PublicApp

from .test_web_server import request, start_server, stop_server
from .webutil import ISSUE, add_reader, load, outbox, send_issue, unsubscribe_path, write_letter

POST = "https://blog.example.com/2026/12/the-post"
OTHER = "https://example.org/a?b=1&c=2"
READERS = ["ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"]
UTC = dt.UTC


def tracked_letter(root: Path, clicks: bool = True) -> None:
    write_letter(root)
    toml = root / "newsletter.toml"
    toml.write_text(toml.read_text() + f"\n[tracking]\nclicks = {'true' if clicks else 'false'}\n")
    (root / "issues" / ISSUE / "01-post.md").write_text(
        "---\ntitle: The post\ncanonical_url: " + POST + "\n---\nHello reader. Read [this](" + OTHER + ")"
        " and [the archive](https://letter.example.com/archive/).\n", encoding="utf-8")


@pytest.fixture
def sent(tmp_path, monkeypatch, db_url):
    """(config, store, campaign): the issue sent through the outbox to four readers, links tracked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    tracked_letter(tmp_path)
    config = load(tmp_path)
    store = open_store(config)
    for address in READERS:
        add_reader(store, address)
    campaign = send_issue(config, store)
    yield config, store, campaign
    store.close()


def html_of(message) -> str:
    return message.get_body(("html",)).get_content()


def link_ids(html: str) -> list[str]:
    return re.findall(r'href="https://letter\.example\.com/l/([a-z2-7]{16})"', html)


# ---------------------------------------------------------------------------------------------
# Tracked links


def test_links_to_elsewhere_point_at_their_counter_the_same_for_every_reader(sent, tmp_path):
    config, store, campaign = sent
    messages = outbox(tmp_path, f"{campaign.id}-{ISSUE}")
    assert len(messages) == 4
    first = html_of(messages[0])
    ids = link_ids(first)
    assert set(ids) == {tracking.link_id(ISSUE, POST), tracking.link_id(ISSUE, OTHER)}
    assert all(link_ids(html_of(m)) == ids for m in messages)  # no reader in the address
    assert POST not in first and "example.org/a" not in first
    # The site's own links (archive, unsubscribe) and the plain-text part are left as they are.
    assert 'href="https://letter.example.com/archive/"' in first
    assert "https://letter.example.com/unsubscribe/" in first
    text = messages[0].get_body(("plain",)).get_content()
    assert OTHER in text and "/l/" not in text
    assert tracking.clicks(store, ISSUE) == [(POST, 0), (OTHER, 0)]  # in the email's order


def test_rendering_again_gives_the_same_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracked_letter(tmp_path)
    config = load(tmp_path)
    issue = load_issue(config.issues_dir / ISSUE, "Ann", config.newsletter.timezone)
    one, two = render_issue(config, issue), render_issue(config, issue)
    assert one.tracked == two.tracked and one.html == two.html
    assert set(one.tracked.values()) == {POST, OTHER}  # &amp; in the HTML, & in the address


def test_without_tracking_the_links_are_the_real_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracked_letter(tmp_path, clicks=False)
    config = load(tmp_path)
    rendered = render_issue(config, load_issue(config.issues_dir / ISSUE, "Ann", config.newsletter.timezone))
    assert rendered.tracked == {} and "/l/" not in rendered.html and POST in rendered.html


def test_a_tracked_link_redirects_and_counts_a_click_head_only_looks(sent):
    config, store, _campaign = sent
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    key = tracking.link_id(ISSUE, OTHER)
    for _ in range(3):
        response = client.get(f"/l/{key}")
        assert response.status_code == 302 and response.headers["Location"] == OTHER
        assert response.headers["Cache-Control"] == "no-store"
    assert client.head(f"/l/{key}").status_code == 302
    assert dict(tracking.clicks(store, ISSUE))[OTHER] == 3
    assert dict(tracking.clicks(store, ISSUE))[POST] == 0


@pytest.mark.parametrize("key", ["aaaaaaaaaaaaaaaa", "not-an-id", "A" * 16, "x" * 200])
def test_a_forged_or_unknown_link_is_not_found(sent, key):
    config, store, _campaign = sent
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    response = client.get(f"/l/{key}")
    assert response.status_code == 404 and "Location" not in response.headers


def test_links_of_an_issue_nobody_was_sent_do_not_redirect(sent):
    config, store, _campaign = sent
    now = dt.datetime.now(UTC)
    unsent = {tracking.link_id("2026-12-08-next", "https://evil.example.net/"): "https://evil.example.net/"}
    with store.write() as conn:
        tracking.record(conn, "2026-12-08-next", unsent, now)
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    (key,) = unsent
    assert client.get(f"/l/{key}").status_code == 404
    with store.read() as conn:
        assert conn.execute(select(links.c.clicks).where(links.c.id == key)).scalar_one() == 0


class _NoMail:
    def submit(self, *args, **kwargs) -> None:
        raise AssertionError("no confirmation email in these tests")

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The numbers


def test_the_report_counts_what_happened_to_the_issue(sent, tmp_path):
    config, store, campaign = sent
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    messages = outbox(tmp_path, f"{campaign.id}-{ISSUE}")
    by_reader = {str(m["To"]): m for m in messages}
    # Two readers leave through the issue's link (one-click and the page's button), one
    # twice: counted once. One is unsubscribed by hand: not the issue's doing.
    assert client.post(unsubscribe_path(by_reader["ann@example.com"]),
                       data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert client.post(unsubscribe_path(by_reader["bob@example.com"])).status_code == 200
    assert client.post(unsubscribe_path(by_reader["bob@example.com"])).status_code == 200
    subs.unsubscribe(store, "cat@example.com")
    for _ in range(2):
        client.get(f"/l/{tracking.link_id(ISSUE, POST)}")
    client.get(f"/l/{tracking.link_id(ISSUE, OTHER)}")
    now = dt.datetime.now(UTC)
    _events(store, campaign.id, now, [
        (wh.DELIVERED, "d1"), (wh.DELIVERED, "d2"), (wh.DELIVERED, "d3"), (wh.BOUNCE, "b1"),
        (wh.SOFT_BOUNCE, "s1"), (wh.COMPLAINT, "c1"), (wh.UNSUBSCRIBE, "u1"), ("clicked", "k1"),
        ("opened", "o1"), ("opened", "o2"),
    ])
    r = rep.issue_report(store, find_campaign(store, ISSUE))
    assert (r.total, r.sent, r.failed_total, r.unknown, r.skipped) == (4, 4, 0, 0, 0)
    assert (r.delivered, r.bounced_hard, r.bounced_soft, r.complained) == (3, 1, 1, 1)
    assert (r.left_by_link, r.left_by_service) == (2, 1)
    assert dict(r.clicks) == {POST: 2 + 1, OTHER: 1}  # one click reported by the service too
    assert r.opens == 2
    assert r.headline() == "4 sent, 3 delivered, 2 bounced, 1 complained, 3 unsubscribed, 4 clicks"
    # Nothing says who clicked, opened or left through the link.
    with store.read() as conn:
        rows = conn.execute(select(events.c.kind, events.c.email_hash)
                            .where(events.c.kind.in_(["clicked", "opened", LEFT_BY_LINK]))).all()
    assert rows and all(hashed is None for _kind, hashed in rows)


def _events(store, campaign_id, now, rows):
    with store.write() as conn:
        for kind, event_id in rows:
            conn.execute(insert(events).values(
                provider="postmark", kind=kind, email_hash=None if kind in ("clicked", "opened") else f"h{event_id}",
                campaign_id=campaign_id, provider_event_id=event_id,
                detail=POST if kind == "clicked" else "", occurred_at=now, created_at=now))


def test_an_issue_that_was_not_sent_is_one_line(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    write_letter(tmp_path)
    result = cli("report", ISSUE)
    assert result.exit_code == 1
    assert result.output.strip() == (f"error: {ISSUE} has not been sent, so there is nothing to report "
                                     f"yet; `newsletter send {ISSUE}` sends it")


def test_the_command_needs_an_issue_or_weeks(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    write_letter(tmp_path)
    result = cli("report")
    assert result.exit_code == 2 and "name an ISSUE, or pass --weeks N" in result.output
    result = cli("report", "--weeks", "4", "--html", str(tmp_path / "missing" / "r.html"))
    assert result.exit_code == 1 and "does not exist; create it" in result.output


def test_the_command_prints_the_table_and_status_the_headline(sent, cli):
    config, store, campaign = sent
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    client.get(f"/l/{tracking.link_id(ISSUE, OTHER)}")
    result = cli("report", ISSUE)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.search(r"^  sent\s+4$", result.output, re.M), result.output
    assert re.search(r"^  delivered \(reported by the email service\)\s+not reported$", result.output, re.M)
    assert f"           1  {OTHER}" in lines and f"           0  {POST}" in lines
    status = cli("status", ISSUE)
    assert "how it did: 4 sent, 0 unsubscribed, 1 clicks" in status.output, status.output


# ---------------------------------------------------------------------------------------------
# The weeks


def test_the_weeks_count_joins_leaves_and_size(sent, cli):
    config, store, campaign = sent
    subs.unsubscribe(store, "dan@example.com")
    subs.suppress(store, "cat@example.com", "bounced")
    now = dt.datetime.now(UTC)
    w = rep.weeks_report(store, 3, now, config.newsletter.timezone)
    assert [x.start.weekday() for x in w.weeks] == [0, 0, 0]
    assert (w.weeks[-1].joined, w.weeks[-1].left, w.weeks[-1].size) == (4, 2, 2)
    assert [x.size for x in w.weeks[:-1]] == [0, 0]
    assert [r.issue for r in w.issues] == [ISSUE]
    later = rep.weeks_report(store, 3, now + dt.timedelta(weeks=3), config.newsletter.timezone)
    assert [(x.size, x.joined, x.left) for x in later.weeks] == [(2, 0, 0)] * 3
    assert later.issues == []  # sent the week before the window


# ---------------------------------------------------------------------------------------------
# The page


class _Page(HTMLParser):
    """The numbers of the report page: table cells by data-key, SVG bars and points."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, str] = {}
        self.link_cells: dict[str, str] = {}
        self.svgs: list[str] = []
        self.stages: dict[str, int] = {}
        self.bars: dict[str, int] = {}
        self.weeks: dict[str, dict[str, int]] = {}
        self.tags: set[str] = set()
        self._key: str | None = None
        self._url: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "svg":
            self.svgs.append(a.get("class", ""))
        if tag == "td" and "data-key" in a:
            self._key = a["data-key"]
        if tag == "td" and "data-url" in a:
            self._url = a["data-url"]
        if tag == "g" and a.get("class") == "stage":
            self.stages[a["data-label"]] = int(a["data-value"])
        if tag == "g" and a.get("class") == "bar":
            self.bars[a["data-label"]] = int(a["data-value"])
        if tag == "g" and a.get("class") == "week":
            self.weeks[a["data-week"]] = {k: int(a[f"data-{k}"]) for k in ("size", "joined", "left")}

    def handle_data(self, data):
        if self._key:
            self.cells[self._key] = data.strip()
            self._key = None
        if self._url:
            self.link_cells[self._url] = data.strip()
            self._url = None


def test_the_page_has_the_charts_and_their_numbers_match_the_table(sent, tmp_path, cli):
    config, store, campaign = sent
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    for _ in range(5):
        client.get(f"/l/{tracking.link_id(ISSUE, POST)}")
    client.get(f"/l/{tracking.link_id(ISSUE, OTHER)}")
    client.post(unsubscribe_path(outbox(tmp_path, f"{campaign.id}-{ISSUE}")[0]))
    _events(store, campaign.id, dt.datetime.now(UTC), [(wh.DELIVERED, "d1"), (wh.DELIVERED, "d2")])
    out = tmp_path / "report.html"
    result = cli("report", ISSUE, "--weeks", "4", "--html", str(out))
    assert result.exit_code == 0, result.output
    html = out.read_text()
    page = _Page()
    page.feed(html)
    assert "script" not in page.tags and "<link" not in html and "src=" not in html  # nothing fetched
    assert page.svgs == ["chart chart-funnel", "chart chart-clicks", "chart chart-weeks"]
    assert page.stages == {"In the campaign": 4, "Sent": 4, "Delivered": 2}
    assert page.cells["total"] == "4" and page.cells["sent"] == "4" and page.cells["delivered"] == "2"
    assert page.cells["left_by_link"] == "1"
    assert page.bars == {POST: 5, OTHER: 1}
    assert {url: int(n) for url, n in page.link_cells.items()} == page.bars
    (this_week,) = [w for w in page.weeks.values() if w["joined"]]
    assert this_week == {"size": 3, "joined": 4, "left": 1}
    assert len(page.weeks) == 4


def test_the_page_without_tracking_says_how_to_turn_it_on(tmp_path, monkeypatch, db_url, cli):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    tracked_letter(tmp_path, clicks=False)
    config = load(tmp_path)
    with open_store(config) as store:
        add_reader(store, "ann@example.com")
        send_issue(config, store)
    out = tmp_path / "r.html"
    assert cli("report", ISSUE, "--html", str(out)).exit_code == 0
    html = out.read_text()
    assert "[tracking] clicks = true" in html and "chart-clicks" not in html


# ---------------------------------------------------------------------------------------------
# One-click unsubscribes through a real `newsletter serve`


def test_one_click_unsubscribes_through_the_server_count_against_the_issue(tmp_path, monkeypatch, db_url):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    tracked_letter(tmp_path)
    config = load(tmp_path)
    with open_store(config) as store:
        for address in READERS:
            add_reader(store, address)
        campaign = send_issue(config, store)
    messages = outbox(tmp_path, f"{campaign.id}-{ISSUE}")
    server, base = start_server(tmp_path, db_url=db_url)
    try:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        for message in messages[:2]:
            path = unsubscribe_path(message)
            assert request(base, "GET", path)[0] == 200  # a scanner's GET changes nothing
            status, _, _ = request(base, "POST", path, body=b"List-Unsubscribe=One-Click", headers=form)
            assert status == 200
        status, headers, _ = request(base, "GET", f"/l/{tracking.link_id(ISSUE, POST)}")
        assert status == 302 and headers["location"] == POST
    finally:
        stop_server(server)
    with open_store(config) as store:
        r = rep.issue_report(store, find_campaign(store, ISSUE))
    assert (r.left_by_link, r.left_by_service) == (2, 0)
    assert dict(r.clicks)[POST] == 1


def test_a_click_changes_its_counter_and_nothing_else(sent):
    """The one GET that writes: /l/<id> adds one to that link's counter. Every other table,
    and every other column of links, is as it was; a HEAD changes nothing at all."""
    from sqlalchemy import inspect

    from newsletter.store.schema import metadata

    config, store, _campaign = sent
    client = Client(PublicApp(config, store, mailer=_NoMail()))
    key = tracking.link_id(ISSUE, POST)

    def tables():
        with store.read() as conn:
            names = set(inspect(conn).get_table_names())
            return {t.name: sorted(repr(tuple(r)) for r in conn.execute(select(t)))
                    for t in metadata.sorted_tables if t.name in names and t.name != "links"}

    def counters():
        with store.read() as conn:
            return dict(conn.execute(select(links.c.id, links.c.clicks)).all())

    before, clicks = tables(), counters()
    assert client.head(f"/l/{key}").status_code == 302
    assert client.get("/l/aaaaaaaaaaaaaaaa").status_code == 404
    assert tables() == before and counters() == clicks
    assert client.get(f"/l/{key}").status_code == 302
    assert tables() == before
    assert counters() == {**clicks, key: clicks[key] + 1}
