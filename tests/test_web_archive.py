"""The archive and the Atom feed: served by the app, and written as static files by
`newsletter archive`."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.test import Client

from newsletter import campaign as engine
from newsletter.content import load_issue
from newsletter.render import render_issue
from newsletter.store import open_store
from newsletter.store.schema import campaigns
from newsletter.web.app import PublicApp

from .webutil import ISSUE, PNG, add_reader, load, send_issue, write_letter

ATOM = "{http://www.w3.org/2005/Atom}"
SECOND = "2026-12-08-second"


def write_second(root: Path) -> None:
    folder = root / "issues" / SECOND
    folder.mkdir(parents=True)
    (folder / "issue.md").write_text("---\nsubject: Second issue\npreheader: Listen first\n---\n")
    (folder / "01-post.md").write_text("---\ntitle: Listen\n---\nListen before you lead.\n")


@pytest.fixture
def letter_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_letter(tmp_path)
    write_second(tmp_path)
    config = load(tmp_path)
    store = open_store(config)
    add_reader(store, "ann@example.com")
    app = PublicApp(config, store)
    yield tmp_path, config, store, Client(app)
    app.close()
    store.close()


def feed_entries(xml: bytes) -> list[ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == f"{ATOM}feed"
    return root.findall(f"{ATOM}entry")


def test_nothing_sent_yet(letter_site):
    root, config, store, client = letter_site
    page = client.get("/archive/")
    assert page.status_code == 200 and "No issues have been sent yet" in page.get_data(as_text=True)
    assert feed_entries(client.get("/feed.xml").get_data()) == []
    assert client.get(f"/archive/{ISSUE}/").status_code == 404
    assert client.get(f"/archive/{ISSUE}/chart.png").status_code == 404


def test_sent_issues_newest_first_with_their_web_version_and_images(letter_site):
    root, config, store, client = letter_site
    first = send_issue(config, store, ISSUE)
    send_issue(config, store, SECOND)

    index = client.get("/archive/")
    page = index.get_data(as_text=True)
    assert index.status_code == 200 and "public" in index.headers["Cache-Control"]
    assert page.index('href="2026-12-08-second/"') < page.index(f'href="{ISSUE}/"')
    assert "First &lt;b&gt;issue&lt;/b&gt; &amp; more" in page and "<b>issue</b>" not in page
    assert "Why quotas fail" in page and "Listen first" in page

    web = client.get(f"/archive/{ISSUE}/")
    with store.read() as conn:
        frozen = conn.execute(select(campaigns.c.web_html).where(campaigns.c.id == first.id)).scalar_one()
    assert web.get_data(as_text=True) == frozen
    assert 'src="chart.png"' in frozen
    assert "style-src 'unsafe-inline'" in web.headers["Content-Security-Policy"]
    assert "script-src" not in web.headers["Content-Security-Policy"]
    image = client.get(f"/archive/{ISSUE}/chart.png")
    assert image.status_code == 200 and image.get_data() == PNG and image.mimetype == "image/png"

    for path in (f"/archive/{ISSUE}/issue.md", f"/archive/{ISSUE}/../../newsletter.toml",
                 f"/archive/{ISSUE}/%2e%2e/%2e%2e/.env", "/archive/nope/", f"/archive/{ISSUE}/01-post.md"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/archive/{ISSUE}").status_code in (301, 308)


def test_the_archive_shows_what_was_sent_even_after_the_files_change(letter_site):
    root, config, store, client = letter_site
    send_issue(config, store, ISSUE)
    post = root / "issues" / ISSUE / "01-post.md"
    post.write_text(post.read_text().replace("Hello reader.", "Edited afterwards."))
    page = client.get(f"/archive/{ISSUE}/").get_data(as_text=True)
    assert "Hello reader." in page and "Edited afterwards." not in page
    assert client.get(f"/archive/{ISSUE}/chart.png").status_code == 200


def test_an_issue_nobody_got_is_not_in_the_archive(letter_site):
    root, config, store, client = letter_site
    n = config.newsletter
    rendered = render_issue(config, load_issue(config.issues_dir / SECOND, n.author, n.timezone))
    campaign = engine.start(store, rendered, "main", "outbox")
    engine.cancel(store, campaign)
    assert client.get(f"/archive/{SECOND}/").status_code == 404
    assert SECOND not in client.get("/archive/").get_data(as_text=True)


def test_the_feed(letter_site):
    root, config, store, client = letter_site
    send_issue(config, store, ISSUE)
    send_issue(config, store, SECOND)
    response = client.get("/feed.xml")
    assert response.status_code == 200 and response.mimetype == "application/atom+xml"
    feed = ET.fromstring(response.get_data())
    assert feed.findtext(f"{ATOM}title") == "Test Letter"
    assert feed.find(f"{ATOM}link[@rel='self']").get("href") == "https://letter.example.com/feed.xml"
    entries = feed.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == ["Second issue", "First <b>issue</b> & more"]
    first = entries[1]
    url = f"https://letter.example.com/archive/{ISSUE}/"
    assert first.findtext(f"{ATOM}id") == url and first.find(f"{ATOM}link").get("href") == url
    assert first.findtext(f"{ATOM}summary") == "Why quotas fail"
    assert first.findtext(f"{ATOM}updated").endswith("Z")
    content = first.find(f"{ATOM}content")
    assert content.get("type") == "html" and content.get("{http://www.w3.org/XML/1998/namespace}base") == url
    assert "Hello reader." in content.text and '<img src="chart.png"' in content.text


def test_newsletter_archive_writes_the_same_pages_as_static_files(letter_site, cli):
    root, config, store, client = letter_site
    send_issue(config, store, ISSUE)
    out = root / "site"
    out.mkdir()
    (out / "index.html").write_text("the blog's own page")
    (out / "archive").mkdir()
    (out / "archive" / "stale.html").write_text("left over")

    result = cli("archive", "--out", "site")
    assert result.exit_code == 0, result.output
    assert "wrote 1 issue, " in result.output and "site/feed.xml" in result.output
    assert (out / "index.html").read_text() == "the blog's own page"
    assert not (out / "archive" / "stale.html").exists()
    assert (out / "archive" / "index.html").read_bytes() == client.get("/archive/").get_data()
    assert (out / "archive" / ISSUE / "index.html").read_bytes() == client.get(f"/archive/{ISSUE}/").get_data()
    assert (out / "archive" / ISSUE / "chart.png").read_bytes() == PNG
    assert (out / "feed.xml").read_bytes() == client.get("/feed.xml").get_data()
    assert (out / "static" / "site.css").read_bytes() == client.get("/static/site.css").get_data()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    send_issue(config, store, SECOND)
    assert cli("archive", "--out", "site").exit_code == 0
    assert (out / "archive" / SECOND / "index.html").is_file()
    assert len(feed_entries((out / "feed.xml").read_bytes())) == 2


def test_the_index_dates_are_valid_html_datetimes(letter_site):
    root, config, store, client = letter_site
    send_issue(config, store, ISSUE)
    page = client.get("/archive/").get_data(as_text=True)
    stamps = re.findall(r'<time datetime="([^"]*)">', page)
    # HTML allows at most three digits of a second's fraction: whole seconds, in UTC.
    assert stamps and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s) for s in stamps), stamps


@pytest.mark.parametrize("site_url", ["https://letter.example.com", "https://blog.example.com/letter"])
def test_redirects_go_to_site_url_whatever_the_host_header(letter_site, site_url):
    root, config, store, client = letter_site
    toml = root / "newsletter.toml"
    toml.write_text(toml.read_text().replace('site_url = "https://letter.example.com"', f'site_url = "{site_url}"'))
    config = load(root)
    send_issue(config, store, ISSUE)
    app = PublicApp(config, store)
    try:
        evil = Client(app)
        for path, target in (("/archive", "/archive/"), (f"/archive/{ISSUE}?utm=x", f"/archive/{ISSUE}/?utm=x"),
                             ("/", "/archive/")):
            for base in ("http://evil.example/", "https://evil.example:8443/"):
                response = evil.get(path, base_url=base, headers={"X-Forwarded-Host": "evil.example"})
                assert 300 <= response.status_code < 400, (path, base)
                assert response.headers["Location"] == site_url + target, (path, base)
    finally:
        app.close()
