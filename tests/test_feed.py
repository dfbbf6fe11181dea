"""`newsletter new --from-feed` against a local feed server: the feeds the popular engines
write, never a post twice, polite HTTP, and one line for every way a feed can fail."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from newsletter import config as cfg
from newsletter import feed
from newsletter.content import load_issue, read_document
from tests.conftest import BASIC_TOML
from tests.feedserver import FEEDS

WORDPRESS_POSTS = 3


def use_feed(letter: Path, url: str, extra: str = "") -> None:
    (letter / "newsletter.toml").write_text(
        BASIC_TOML + f'\n[feed]\nurl = "{url}"\n{extra}', encoding="utf-8")


def drafted_folders(letter: Path) -> list[Path]:
    return sorted(p for p in (letter / "issues").iterdir() if p.is_dir())


def posts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.md") if p.name != "issue.md")


def meta(path: Path) -> dict:
    return dict(read_document(path).meta)


def body(path: Path) -> str:
    return read_document(path).body


@pytest.fixture
def wordpress(letter, feed_server):
    feed_server.serve_file("/feed/", "wordpress.xml")
    use_feed(letter, feed_server.url("/feed/"))
    return feed_server


# -- the first run, the second, and the week after ---------------------------------------------


def test_first_run_with_since_drafts_one_post_per_entry(wordpress, letter, cli):
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    (folder,) = drafted_folders(letter)
    files = posts(folder)
    assert len(files) == WORDPRESS_POSTS
    config = cfg.load(letter / "newsletter.toml")
    issue = load_issue(folder, "Ann Berg", config.newsletter.timezone)
    first = meta(files[0])
    assert issue.subject == first["title"] and folder.name.endswith(feed.slugify(first["title"]))
    assert issue.preheader and len(issue.preheader) <= feed.PREHEADER_CHARS
    dates = [meta(p)["date"] for p in files]
    assert dates == sorted(dates, reverse=True), "newest first"
    for path in files:
        m = meta(path)
        assert set(m) >= {"title", "author", "date", "canonical_url", "source_id"}
        assert m["canonical_url"].startswith("https://blog.example.com/")
        assert m["source_id"].startswith("https://blog.example.com/?p=")
    assert f"drafted {folder.name}/ from {WORDPRESS_POSTS} new posts" in result.output
    assert cli("check", folder.name).exit_code == 0


def test_second_run_with_nothing_new_creates_nothing(wordpress, letter, cli):
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    before = drafted_folders(letter)
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0
    assert f"no new posts in {wordpress.url('/feed/')} since Sun 01 Nov 2026 00:00" in result.output
    assert drafted_folders(letter) == before


def test_the_week_after_drafts_the_new_entry_alone_and_not_the_edited_one(wordpress, letter, cli):
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (first,) = drafted_folders(letter)
    known = {meta(p)["source_id"] for p in posts(first)}
    wordpress.serve_file("/feed/", "wordpress-next.xml")
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    (second,) = [f for f in drafted_folders(letter) if f != first]
    (only,) = posts(second)
    assert meta(only)["source_id"] not in known
    assert "from 1 new post in" in result.output


def test_a_post_already_in_an_issue_by_link_is_not_drafted(letter, feed_server, write, cli):
    feed_server.serve_file("/feed.xml", "no-ids.xml")
    use_feed(letter, feed_server.url("/feed.xml"))
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (folder,) = drafted_folders(letter)
    links = [meta(p)["canonical_url"] for p in posts(folder)]
    assert [meta(p)["source_id"] for p in posts(folder)] == links
    # A writer copied one of them by hand earlier: only its canonical_url says so.
    for path in posts(folder):
        path.unlink()
    (folder / "issue.md").unlink()
    folder.rmdir()
    write("issues/2026-11-24-by-hand/issue.md", "---\nsubject: By hand\npreheader: P\n---\n")
    write("issues/2026-11-24-by-hand/01-x.md", f"---\ntitle: X\ncanonical_url: {links[0]}\n---\nX\n")
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (drafted,) = [f for f in drafted_folders(letter) if f.name != "2026-11-24-by-hand"]
    assert [meta(p)["canonical_url"] for p in posts(drafted)] == links[1:]


def test_an_id_listed_twice_is_drafted_once(letter, feed_server, cli):
    feed_server.serve_file("/feed.xml", "duplicate-ids.xml")
    use_feed(letter, feed_server.url("/feed.xml"))
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0
    (folder,) = drafted_folders(letter)
    ids = [meta(p)["source_id"] for p in posts(folder)]
    assert len(ids) == len(set(ids)) == 2
    assert "lists 1 entry twice" in result.output


def test_since_leaves_out_older_entries(wordpress, letter, cli):
    newest = max(e.published for e in feed.parse((FEEDS / "wordpress.xml").read_bytes(), "x").entries)
    result = cli("new", "--from-feed", "--since", newest.strftime("%Y-%m-%d"))
    assert result.exit_code == 0
    (folder,) = drafted_folders(letter)
    assert len(posts(folder)) == 1


# -- what a post keeps of the entry -----------------------------------------------------------


def all_text(folder: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in posts(folder))


def test_hostile_markup_is_gone_and_the_shape_stays(wordpress, letter, cli):
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (folder,) = drafted_folders(letter)
    text = all_text(folder)
    for gone in ("<script", "alert(", "<iframe", "youtube.com/embed", "onclick", "<form",
                 "<input", "<style", "pixel.example.net", "<", "javascript:"):
        assert gone not in text, gone
    assert "\n> " in text, "the reader's quote is a blockquote"
    assert "\n- " in text and "\n1. " in text, "lists stay lists"
    assert "](https://blog.example.com/wp-content/uploads/2026/11/pipeline.png" in text
    assert "](/" not in text, "no relative link or image is left"


@pytest.mark.parametrize("name", ["wordpress.xml", "blogger.xml", "jekyll.xml", "ghost.xml",
                                  "substack.xml", "rss1.xml", "relative.xml"])
def test_every_engines_feed_drafts_clean_absolute_posts(letter, feed_server, cli, name):
    feed_server.serve_file("/feed", name)
    use_feed(letter, feed_server.url("/feed"))
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    (folder,) = drafted_folders(letter)
    for path in posts(folder):
        m, text = meta(path), body(path)
        assert m["title"] and m["source_id"] and m["canonical_url"].startswith("https://")
        assert text.strip(), path
        assert "<" not in text and "](/" not in text and "](img/" not in text and "](../" not in text
        for target in re.findall(r"\]\(([^)\s]+)", text):
            assert target.startswith(("https://", "http://", "mailto:")), (path.name, target)
        last = text.rstrip().rsplit("\n\n", 1)[-1]
        assert feed._fold(last) != "sell well", f"{path.name} still ends with the sign-off"
    assert cli("check", folder.name).exit_code == 0


def test_jekyll_relative_urls_resolve_against_the_post(letter, feed_server, cli):
    feed_server.serve_file("/feed.xml", "jekyll.xml")
    use_feed(letter, feed_server.url("/feed.xml"))
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (folder,) = drafted_folders(letter)
    text = all_text(folder)
    assert "/images/handshake.jpg)" in text and "](images/" not in text


def test_a_summary_only_feed_links_to_the_rest(letter, feed_server, cli):
    feed_server.serve_file("/index.xml", "hugo.xml")
    use_feed(letter, feed_server.url("/index.xml"))
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (folder,) = drafted_folders(letter)
    for path in posts(folder):
        assert f"[Read the rest]({meta(path)['canonical_url']})" in body(path)


def test_content_summary_sends_the_excerpt_and_a_link(wordpress, letter, cli):
    use_feed(letter, wordpress.url("/feed/"), 'content = "summary"\n')
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    (folder,) = drafted_folders(letter)
    for path in posts(folder):
        text = body(path)
        assert text.count("\n\n") <= 2 and "[Read the rest](https://blog.example.com/" in text
        assert "[…]" not in text


def test_download_images_keeps_them_beside_the_post(letter, feed_server, cli):
    from tests.webutil import PNG

    xml = (FEEDS / "relative.xml").read_text(encoding="utf-8").replace(
        "https://blog.example.com", feed_server.url("").rstrip("/"))
    feed_server.serve("/feed.xml", xml)
    for path in ("/wp-content/uploads/2026/11/desk.jpg", "/2026/11/10/the-desk-test/img/chart.png"):
        feed_server.serve(path, PNG, content_type="image/png")
    use_feed(letter, feed_server.url("/feed.xml"))
    result = cli("new", "--from-feed", "--since", "2026-11-01", "--download-images")
    assert result.exit_code == 0, result.output
    (folder,) = drafted_folders(letter)
    text = all_text(folder)
    assert "](desk.png)" in text and (folder / "desk.png").read_bytes() == PNG
    assert "](chart.png)" in text and (folder / "chart.png").read_bytes() == PNG
    assert not re.search(r"!\[[^\]]*\]\(http", text), "no image left remote"


# -- HTTP, the polite way --------------------------------------------------------------------


def test_the_second_request_asks_only_for_changes_and_a_304_is_read_from_the_cache(
        wordpress, letter, cli):
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    for folder in drafted_folders(letter):  # the writer threw the draft away
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    first, second = [r for r in wordpress.requests if r.path == "/feed/"]
    assert "if-none-match" not in first.headers
    assert second.headers["if-none-match"].startswith('"')
    assert second.headers["if-modified-since"] == "Tue, 01 Dec 2026 08:00:00 GMT"
    assert first.headers["user-agent"].startswith("letterfold/")
    (folder,) = drafted_folders(letter)
    assert len(posts(folder)) == WORDPRESS_POSTS, "the 304 drafted from the remembered feed"


def test_a_permanent_redirect_is_followed_and_reported(letter, feed_server, cli):
    feed_server.serve_file("/new/feed.xml", "wordpress.xml")
    feed_server.redirect("/feed", feed_server.url("/new/feed.xml"), code=301)
    use_feed(letter, feed_server.url("/feed"))
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0
    assert f"moved permanently to {feed_server.url('/new/feed.xml')}" in result.output
    assert len(drafted_folders(letter)) == 1


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda s: s.status("/feed", 404), "answered 404 Not Found; check the URL"),
    (lambda s: s.status("/feed", 410), "answered 410 Gone"),
    (lambda s: s.status("/feed", 500), "answered 500; the blog's server failed, try again later"),
    (lambda s: s.status("/feed", 503), "answered 503"),
    (lambda s: s.serve_file("/feed", "not-a-feed.html"),
     "is an HTML page, not a feed; the page names its feed: https://blog.example.com/feed/"),
    (lambda s: s.serve("/feed", "<!doctype html><title>Blog</title><p>Hi</p>", content_type="text/html"),
     "is an HTML page, not a feed; give the feed's own address (often /feed/"),
    (lambda s: s.serve("/feed", b"\x00\x01 not xml at all", content_type="application/xml"),
     "is not an RSS or Atom feed; give the feed's own address"),
])
def test_a_feed_that_fails_is_one_line_naming_the_url(letter, feed_server, setup, expected):
    setup(feed_server)
    url = feed_server.url("/feed")
    use_feed(letter, url)
    proc = run_cli(letter, "new", "--from-feed")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: feed {url}: ") and expected in line, line
    assert drafted_folders(letter) == []


def test_a_feed_that_hangs_times_out_in_one_line(letter, feed_server, monkeypatch):
    feed_server.hang("/feed", 5)
    use_feed(letter, feed_server.url("/feed"))
    config = cfg.load(letter / "newsletter.toml")
    with pytest.raises(feed.FeedError, match=r"did not answer within 0.5 s"):
        feed.fetch(config, feed_server.url("/feed"), timeout=0.5)


def test_a_server_that_is_not_there_is_one_line(letter):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    use_feed(letter, f"http://127.0.0.1:{port}/feed")
    proc = run_cli(letter, "new", "--from-feed")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: feed http://127.0.0.1:{port}/feed: cannot be reached "
                                   "(connection refused); check the URL and the network")


def test_no_feed_configured_says_how_to_give_one(letter, cli):
    proc = run_cli(letter, "new", "--from-feed")
    assert proc.returncode == 1
    assert "[feed] url" in proc.stderr and "newsletter new --from-feed URL" in proc.stderr


def test_a_one_off_url_overrides_the_configured_one(letter, feed_server, cli):
    feed_server.serve_file("/atom.xml", "blogger.xml")
    use_feed(letter, feed_server.url("/missing"))
    result = cli("new", "--from-feed", feed_server.url("/atom.xml"), "--since", "2026-11-01")
    assert result.exit_code == 0, result.output
    assert [r.path for r in feed_server.requests] == ["/atom.xml"]


def test_feed_settings_are_checked(letter):
    use_feed(letter, "https://blog.example.com/feed/", 'auto = "weekly"\ncontent = "most"\n'
             'lead = "soon"\n')
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load(letter / "newsletter.toml")
    problems = "\n".join(caught.value.problems)
    assert "[feed] auto: must be one of 'off', 'draft', 'send'" in problems
    assert "[feed] content: must be one of 'full', 'summary'" in problems
    assert "[feed] lead:" in problems
    (letter / "newsletter.toml").write_text(BASIC_TOML + '\n[feed]\nauto = "send"\n')
    with pytest.raises(cfg.ConfigError, match=r"\[feed\] auto: \"send\" needs the feed's address"):
        cfg.load(letter / "newsletter.toml")


def run_cli(letter: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run([sys.executable, "-m", "newsletter", *args], cwd=letter, env=env,
                          capture_output=True, text=True, timeout=60)


def test_an_atom_entry_edited_later_is_not_drafted_again(letter, feed_server, cli):
    original = (FEEDS / "blogger.xml").read_text(encoding="utf-8")
    feed_server.serve("/atom.xml", original, content_type="application/atom+xml")
    use_feed(letter, feed_server.url("/atom.xml"))
    assert cli("new", "--from-feed", "--since", "2026-11-01").exit_code == 0
    edited = original.replace(
        "<updated>2026-11-19T09:41:07.215-08:00</updated><category scheme",
        "<updated>2026-11-28T10:00:00.000-08:00</updated><category scheme", 1,
    ).replace("It is almost never price.", "It is almost never price. (Edited: a reader asked.)")
    assert edited != original and edited.count("2026-11-28T10:00") == 1
    feed_server.serve("/atom.xml", edited, content_type="application/atom+xml")
    result = cli("new", "--from-feed", "--since", "2026-11-01")
    assert result.exit_code == 0
    assert "no new posts in" in result.output
    assert len(drafted_folders(letter)) == 1
    assert feed_server.requests[-1].headers.get("if-none-match"), "asked with the old ETag"


def test_download_images_refuses_what_is_not_an_image_and_writes_nothing(letter, feed_server, cli):
    xml = (FEEDS / "relative.xml").read_text(encoding="utf-8").replace(
        "https://blog.example.com", feed_server.url("").rstrip("/"))
    feed_server.serve("/feed.xml", xml)
    feed_server.serve("/wp-content/uploads/2026/11/desk.jpg", "<html>login first</html>",
                      content_type="text/html")
    use_feed(letter, feed_server.url("/feed.xml"))
    proc = run_cli(letter, "new", "--from-feed", "--since", "2026-11-01", "--download-images")
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        "desk.jpg: is text/html, not an image; draft without --download-images to keep it as a "
        "remote image")
    assert drafted_folders(letter) == []
    assert not any((letter / ".cache").glob("draft-*")), "the half-made draft is removed"
