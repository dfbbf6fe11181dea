from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from newsletter import build, checks, render
from newsletter import config as cfg
from newsletter.cli import main


def findings_for(letter, write, post: str, issue: str = "---\nsubject: S\npreheader: P\n---\n", toml=None):
    if toml:
        (letter / "newsletter.toml").write_text(toml)
    write("issues/2026-12-01-x/issue.md", issue)
    write("issues/2026-12-01-x/01-post.md", post)
    config = cfg.load(letter / "newsletter.toml", environ={})
    _, findings = build.check(config, "2026-12-01-x")
    return findings


def messages(findings, level="error"):
    return [str(f) for f in findings if f.level == level]


def test_clean_issue_passes(letter, write):
    assert findings_for(letter, write, "---\ntitle: T\n---\nHello [there](https://example.com).\n") == []


def test_image_without_alt_and_missing_image_name_file_and_line(letter, write):
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nIntro.\n\n![](missing.png)\n"))
    assert any(
        m.startswith("issues/2026-12-01-x/01-post.md line 6: image 'missing.png' has no alt text")
        for m in found
    )
    assert any("line 6: image 'missing.png' does not exist" in m for m in found)


def test_relative_and_unsafe_links_are_errors(letter, write):
    post = "---\ntitle: T\n---\n[rel](other-post) and [ftp](ftp://files.example.com/x) <a href='javascript:alert(1)'>js</a> and [ok](mailto:a@example.com)\n"
    found = messages(findings_for(letter, write, post))
    assert any("line 4: link 'other-post' is not absolute" in m for m in found)
    assert any("line 4: link 'ftp://files.example.com/x' uses ftp:" in m for m in found)
    assert any("uses javascript:" in m for m in found)  # raw HTML in a post
    assert not any("mailto:a@example.com" in m for m in found)


def test_raw_html_image_without_alt_is_caught(letter, write):
    post = '---\ntitle: T\n---\n<img src="https://example.com/a.png">\n'
    found = messages(findings_for(letter, write, post))
    assert any("image 'https://example.com/a.png' has no alt attribute" in m for m in found)


def test_subject_missing_and_long_and_preheader(letter, write):
    post = "---\ntitle: T\n---\nText\n"
    found = findings_for(letter, write, post, issue="---\npreheader: P\n---\n")
    assert "issues/2026-12-01-x/issue.md: subject is missing; add `subject: ...` to the front matter" in messages(found)
    long_subject = "A" * 81
    found = findings_for(letter, write, post, issue=f"---\nsubject: {long_subject}\n---\n")
    warnings = messages(found, "warning")
    assert any("subject is 81 characters" in w for w in warnings)
    assert any("preheader is missing" in w for w in warnings)
    assert messages(found) == []


def test_empty_posts_warn_about_plain_text(letter, write):
    found = findings_for(letter, write, "---\ntitle: T\n---\n")
    assert any("plain-text part will be empty" in w for w in messages(found, "warning"))


def test_missing_postal_address(letter, write):
    toml = (letter / "newsletter.toml").read_text().replace('postal_address = "1 Test Street, Oslo"\n', "")
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n", toml=toml))
    assert any("postal_address is empty" in m and "CAN-SPAM" in m for m in found)


def test_template_without_unsubscribe_link(letter, write):
    shutil.copytree(render.builtin_templates(), letter / "templates")
    for name in ("email.html", "email.txt"):
        path = letter / "templates" / name
        path.write_text(path.read_text().replace("{{ unsubscribe_url }}", "https://example.com/"))
    render._environment.cache_clear()
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n"))
    assert "templates/email.html: no unsubscribe link; keep <a href=\"{{ unsubscribe_url }}\"> in the footer" in found
    assert any(m.startswith("templates/email.txt: no unsubscribe URL") for m in found)


def test_html_over_gmail_clip_and_big_style_block(letter, write, monkeypatch):
    big = "---\ntitle: T\n---\n" + ("A sentence about selling well. " * 40 + "\n\n") * 100
    found = messages(findings_for(letter, write, big))
    assert any("Gmail clips messages over 102 KB" in m for m in found)

    monkeypatch.setattr(checks, "STYLE_BLOCK_BYTES", 100)
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n"))
    assert any("a <style> block is" in m and "Gmail ignores blocks over 16 KB" in m for m in found)


@pytest.mark.parametrize(
    ("url", "ok"),
    [("https://example.com", True), ("mailto:a@b.c", True), ("#fn1", True), ("#nowhere", False),
     ("ftp://x", False), ("/rel", False), ("http://", False)],
)
def test_link_problem(url, ok):
    assert (checks._link_problem(url, {"fn1"}) is None) is ok


AWKWARD_TOML = """\
[newsletter]
name = "Salt & <Pepper> \\"Weekly\\""
description = "Tips & tricks <for> 'sellers'"
site_url = "https://letter.example.com"
author = "Ann & Bo O'Neil"
from = { name = "Ann & Bo \\"Sales\\" <Team>", address = "ann@example.com" }
postal_address = "Hale & Sons AS, <Storgata> 1 \\"B\\", 0155 Øslo"
allow_example_domains = true
"""


def test_settings_with_ampersands_angle_brackets_and_quotes_pass_and_render(letter, write):
    (letter / "newsletter.toml").write_text(AWKWARD_TOML, encoding="utf-8")
    write("issues/2026-12-01-x/issue.md", "---\nsubject: S\npreheader: P\n---\n")
    write("issues/2026-12-01-x/01-post.md", "---\ntitle: T\n---\nHello [there](https://example.com).\n")
    config = cfg.load(letter / "newsletter.toml", environ={})
    rendered, findings = build.check(config, "2026-12-01-x")
    assert messages(findings) == []

    html, text, web = rendered.html, rendered.text, rendered.web_html
    # Escaped once in the HTML (non-ASCII as a character reference), never twice.
    assert "Hale &amp; Sons AS, &lt;Storgata&gt; 1 " in html and "0155 &#216;slo" in html
    assert "Salt &amp; &lt;Pepper&gt;" in html and "Ann &amp; Bo O" in html
    assert "&amp;amp;" not in html and "&amp;lt;" not in html and "<Pepper>" not in html
    # Plain in the text part.
    assert 'Hale & Sons AS, <Storgata> 1 "B", 0155 Øslo' in text
    assert 'Salt & <Pepper> "Weekly"' in text and "Ann & Bo O'Neil" in text
    assert "&amp;" not in text and "&lt;" not in text and "&#" not in text
    # The web version (the description is shown there).
    assert "Tips &amp; tricks &lt;for&gt; &#39;sellers&#39;" in web and "&amp;amp;" not in web
    # The From name survives the header as written.
    message = build.sample(config, rendered, "web/").message
    assert message["From"].addresses[0].display_name == 'Ann & Bo "Sales" <Team>'
    assert message["From"].addresses[0].addr_spec == "ann@example.com"


def test_a_postal_address_left_out_of_the_html_is_still_caught(letter, write):
    (letter / "newsletter.toml").write_text(AWKWARD_TOML, encoding="utf-8")
    shutil.copytree(render.builtin_templates(), letter / "templates")
    path = letter / "templates" / "email.html"
    path.write_text(path.read_text().replace("{{ postal_address }}", "Hale"))
    render._environment.cache_clear()
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n"))
    assert "templates/email.html: the postal address is missing; keep {{ postal_address }} in the footer" in found


# -- placeholders from `init` and `new` never reach readers ---------------------------------------

REAL_SENDER = 'from = { name = "Kari Nordmann", address = "kari@hale-letters.no" }'


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """What a newcomer has after `init`, `new "First"` and filling in only the postal address."""
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["init", "letter"]).exit_code == 0
    folder = tmp_path / "letter"
    toml = folder / "newsletter.toml"
    toml.write_text(toml.read_text().replace('postal_address = ""', 'postal_address = "1 Main Street, Oslo"'))
    monkeypatch.chdir(folder)
    assert CliRunner().invoke(main, ["new", "First", "--date", "2026-12-08"]).exit_code == 0
    return folder


FRESH_ERRORS = [
    "newsletter.toml: [newsletter] from: the sender name 'Your Name' is the placeholder `newsletter init` wrote",
    "newsletter.toml: [newsletter] author: 'Your Name' is the placeholder `newsletter init` wrote; write your name",
    "newsletter.toml: [newsletter] from: 'you@example.com' is on example.com, a domain reserved for examples, "
    "so no mail is delivered there; write the address you send from, on a domain of your own (and in "
    "reply_to, where it is set)",
    "newsletter.toml: [newsletter] site_url: 'https://newsletter.example.com' is on example.com, a domain "
    "reserved for examples, so every unsubscribe and web link in the email would be dead",
    "issues/2026-12-08-first/issue.md line 3: preheader is still the placeholder `newsletter new` wrote; "
    "write the line the inbox shows after the subject",
    "issues/2026-12-08-first/01-first.md line 3: author: 'Your Name' is the placeholder `newsletter new` wrote",
    "issues/2026-12-08-first/01-first.md line 5: 'Start with the story, then the point.' is the stub text "
    "`newsletter new` wrote; write the post here",
]


def fill_in(folder):
    """Replace every placeholder the way a writer would."""
    toml = folder / "newsletter.toml"
    toml.write_text(
        toml.read_text()
        .replace("Your Name", "Kari Nordmann")
        .replace("you@example.com", "kari@hale-letters.no")
        .replace("https://newsletter.example.com", "https://letter.hale-letters.no")
    )
    issue = folder / "issues" / "2026-12-08-first"
    (issue / "issue.md").write_text('---\nsubject: "First"\npreheader: "Why the quota is not the goal"\n---\n')
    (issue / "01-first.md").write_text('---\ntitle: "First"\nauthor: "Kari Nordmann"\n---\nSell well.\n')


def test_a_fresh_newsletter_is_refused_until_every_placeholder_is_replaced(fresh):
    config = cfg.load(fresh / "newsletter.toml", environ={})
    _, found = build.check(config, None)
    errors = messages(found)
    for expected in FRESH_ERRORS:
        assert any(m.startswith(expected) for m in errors), (expected, errors)
    assert len(errors) == len(FRESH_ERRORS), errors
    fill_in(fresh)
    _, found = build.check(cfg.load(fresh / "newsletter.toml", environ={}), None)
    assert found == []


@pytest.mark.parametrize("body", [
    "Start with the story, then the point. Close with what the reader can do on Monday.   \n\n\n",
    "Start with the story,\nthen the point.  Close with what the reader can do on Monday.\n",
    "Start with the story, then the point. Close with what the reader can do on Monday.\r\n",
    "My own opening.\n\nClose with what the reader can do on Monday.\n",
])
def test_the_stub_body_is_caught_with_only_the_title_changed_and_whitespace_changed(fresh, body):
    fill_in(fresh)
    post = fresh / "issues" / "2026-12-08-first" / "01-first.md"
    post.write_bytes(('---\ntitle: "A title of my own"\nauthor: "Kari Nordmann"\n---\n' + body).encode())
    _, found = build.check(cfg.load(fresh / "newsletter.toml", environ={}), None)
    (error,) = messages(found)
    line = 7 if body.startswith("My own") else 5
    assert error.startswith(f"issues/2026-12-08-first/01-first.md line {line}: '")
    assert "is the stub text `newsletter new` wrote; write the post here" in error


def test_the_sender_name_placeholder_is_an_error_even_where_example_domains_are_allowed(letter, write):
    toml = (letter / "newsletter.toml").read_text().replace('name = "Ann Berg"', 'name = "Your Name"')
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n", toml=toml))
    assert found == ["newsletter.toml: [newsletter] from: the sender name 'Your Name' is the placeholder "
                     "`newsletter init` wrote; write the name readers know you by"]


@pytest.mark.parametrize(("host", "reserved"), [
    ("example.com", "example.com"), ("letter.example.com", "example.com"), ("EXAMPLE.NET.", "example.net"),
    ("a.b.example.org", "example.org"), ("shop.example", ".example"), ("letter.test", ".test"),
    ("mail.invalid", ".invalid"), ("localhost", "localhost"), ("app.localhost", ".localhost"),
    ("hale-letters.no", None), ("example.co", None), ("myexample.com", None), ("example.com.au", None),
    ("testing.no", None), ("example.community", None), ("", None),
])
def test_example_domain_knows_the_names_reserved_for_examples(host, reserved):
    assert checks.example_domain(host) == reserved


def own_toml(**keys: str) -> str:
    """BASIC_TOML on the writer's own domain, without allow_example_domains, with ``keys`` set."""
    from .conftest import BASIC_TOML

    toml = (BASIC_TOML.replace("allow_example_domains = true\n", "")
            .replace('"https://letter.example.com"', '"https://letter.hale-letters.no"')
            .replace('address = "ann@example.com"', 'address = "ann@hale-letters.no"'))
    extra = "".join(f"{key} = {value}\n" for key, value in keys.items())
    return toml.replace("[schedule]", extra + "\n[schedule]")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("reply_to", '"ann@letters.example.org"',
     "[newsletter] reply_to: 'ann@letters.example.org' is on example.org, a domain reserved for examples, "
     "so replies would be lost"),
    ("unsubscribe_mailto", '"leave@example.net"',
     "[newsletter] unsubscribe_mailto: 'leave@example.net' is on example.net"),
    ("site_url", '"http://localhost:8111"',
     "[newsletter] site_url: 'http://localhost:8111' is on localhost, which is only ever this computer"),
    ("site_url", '"https://letter.test"',
     "[newsletter] site_url: 'https://letter.test' is on .test, a top-level domain reserved for tests"),
    ("from", '"Ann <ann@shop.example>"', "[newsletter] from: 'ann@shop.example' is on .example"),
])
def test_each_address_on_a_reserved_domain_names_its_key(letter, write, key, value, message):
    toml = own_toml(**{key: value})
    if key in ("site_url", "from"):  # replace the one already there
        toml = "\n".join(line for line in toml.splitlines()
                         if not line.startswith(f"{key} =") or line.endswith(value)) + "\n"
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n", toml=toml))
    assert len(found) == 1 and found[0].startswith(f"newsletter.toml: {message}"), found


def test_reserved_domains_pass_only_with_allow_example_domains(letter, write):
    post = "---\ntitle: T\n---\nx\n"
    assert findings_for(letter, write, post) == []  # BASIC_TOML allows them
    toml = (letter / "newsletter.toml").read_text().replace("allow_example_domains = true\n", "")
    found = messages(findings_for(letter, write, post, toml=toml))
    assert [m.split(":")[1].strip() for m in found] == ["[newsletter] from", "[newsletter] site_url"]
    assert findings_for(letter, write, post, toml=own_toml()) == []


def test_allow_example_domains_must_be_true_or_false(letter):
    toml = letter / "newsletter.toml"
    toml.write_text(toml.read_text().replace("allow_example_domains = true", 'allow_example_domains = "yes"'))
    with pytest.raises(cfg.ConfigError) as failed:
        cfg.load(toml, environ={})
    assert "[newsletter] allow_example_domains: must be true or false, got 'yes'" in str(failed.value)
    toml.write_text(toml.read_text().replace('allow_example_domains = "yes"\n', ""))
    assert cfg.load(toml, environ={}).newsletter.allow_example_domains is False


def test_check_build_and_send_refuse_a_fresh_newsletter(fresh):
    (fresh / ".env").write_text("NEWSLETTER_SECRET=fresh-secret\n")
    runner = CliRunner()
    assert runner.invoke(main, ["subscribers", "add", "reader@hale-letters.no", "--confirmed"]).exit_code == 0
    for command in (["check"], ["build"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 1, result.output
        for expected in FRESH_ERRORS:
            assert expected in result.output
        assert "checks: 7 errors, 0 warnings" in result.output
    result = runner.invoke(main, ["send", "--yes"])
    assert result.exit_code == 1
    assert "2026-12-08-first fails its pre-flight checks (newsletter.toml: [newsletter] from:" in result.output
    assert not (fresh / "outbox").exists()
    fill_in(fresh)
    result = runner.invoke(main, ["send", "--yes"])
    assert result.exit_code == 0, result.output
    assert len(list((fresh / "outbox").rglob("*.eml"))) == 1


def test_tick_refuses_a_fresh_newsletter(fresh):
    import datetime as dt

    from newsletter import schedule as sched
    from newsletter import subscribers as subs
    from newsletter.store import open_store

    config = cfg.load(fresh / "newsletter.toml", environ={"NEWSLETTER_SECRET": "fresh-secret"})
    issue = fresh / "issues" / "2026-12-08-first" / "issue.md"
    issue.write_text(issue.read_text().replace("---\n", "---\nsend_at: 2026-12-08 08:00\n", 1))
    with open_store(config) as store:
        subs.add(store, "reader@hale-letters.no", confirmed=True)
        (event,) = sched.tick(config, store, dt.datetime(2026, 12, 8, 8, 1, tzinfo=dt.UTC)).events
        assert event.outcome == "failed"
        assert event.detail.startswith("2026-12-08-first fails its pre-flight checks (newsletter.toml: "
                                       "[newsletter] from: the sender name 'Your Name'")
        assert not (fresh / "outbox").exists()


# -- the issue's list against the database -----------------------------------------------------


def test_check_names_a_list_that_is_not_in_the_database(letter_db, write, cli):
    from newsletter import subscribers as subs
    from newsletter.store import open_store

    write("issues/2026-12-01-x/issue.md", "---\nsubject: S\npreheader: P\nlist: weeklyy\n---\n")
    write("issues/2026-12-01-x/01-post.md", "---\ntitle: T\n---\nSell well.\n")
    with open_store(letter_db) as store:
        subs.create_list(store, "vip")
        subs.add(store, "ann@example.com", confirmed=True)  # makes the default list, main
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 1
    assert ("error: issues/2026-12-01-x/issue.md line 4: list 'weeklyy' does not exist; lists: main, vip. "
            "Write one of them in `list:`, or create it with `newsletter lists create weeklyy`") in result.output
    with open_store(letter_db) as store:
        subs.create_list(store, "weeklyy")
    result = CliRunner().invoke(main, ["check"])
    assert result.exit_code == 0, result.output


def test_schedule_refuses_a_list_that_is_not_in_the_database(letter_db, write):
    from newsletter import subscribers as subs
    from newsletter.store import open_store

    issue = write("issues/2026-12-08-x/issue.md", "---\nsubject: S\npreheader: P\nlist: weeklyy\n---\n")
    write("issues/2026-12-08-x/01-post.md", "---\ntitle: T\n---\nSell well.\n")
    with open_store(letter_db) as store:
        subs.create_list(store, "main")
        subs.create_list(store, "vip")
    before = issue.read_text()
    result = CliRunner().invoke(main, ["schedule", "x", "--now", "2026-12-01 09:00"])
    assert result.exit_code == 1
    assert result.output == ("error: issues/2026-12-08-x/issue.md line 4: list 'weeklyy' does not exist; "
                             "lists: main, vip. Write one of them in `list:`, or create it with "
                             "`newsletter lists create weeklyy`\n")
    assert issue.read_text() == before
    issue.write_text(before.replace("weeklyy", "vip"))
    result = CliRunner().invoke(main, ["schedule", "x", "--now", "2026-12-01 09:00"])
    assert result.exit_code == 0, result.output


def test_without_a_database_the_list_is_not_checked_and_no_database_is_made(letter, write):
    write("issues/2026-12-08-x/issue.md", "---\nsubject: S\npreheader: P\nlist: weekly\n---\n")
    write("issues/2026-12-08-x/01-post.md", "---\ntitle: T\n---\nSell well.\n")
    for command in (["check"], ["schedule", "x", "--now", "2026-12-01 09:00"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output
    assert not list(letter.glob("*.db*"))


# -- links and images written in a post are reported at the post ------------------------------


def test_bad_links_in_a_posts_html_are_reported_at_the_post_and_line(letter, write):
    post = ("---\ntitle: T\n---\nFirst line of a paragraph\nsecond line <a href='javascript:alert(1)'>js</a>\n"
            "\n<div>\n<p>A block</p>\n<a href=\"ftp://files.example.com/x\">ftp</a> <img src=\"https://example.com/a.png\">\n"
            "</div>\n\nA [wrapped\nlink](other-post) here.\n")
    found = messages(findings_for(letter, write, post))
    where = "issues/2026-12-01-x/01-post.md"
    assert f"{where} line 5: link 'javascript:alert(1)' uses javascript:, which mail clients block; use https:// or mailto:" in found
    assert f"{where} line 9: link 'ftp://files.example.com/x' uses ftp:, which mail clients block; use https:// or mailto:" in found
    assert f"{where} line 9: image 'https://example.com/a.png' has no alt attribute; add alt=\"...\"" in found
    assert any(m.startswith(f"{where} line 12: link 'other-post' is not absolute") for m in found)
    assert not any(m.startswith("templates/") for m in found), found


def test_bad_links_in_the_editors_note_are_reported_at_issue_md(letter, write):
    issue = "---\nsubject: S\npreheader: P\n---\nA note with <a href=\"javascript:void(0)\">a bad link</a>.\n"
    found = messages(findings_for(letter, write, "---\ntitle: T\n---\nx\n", issue=issue))
    assert found == ["issues/2026-12-01-x/issue.md line 5: link 'javascript:void(0)' uses javascript:, "
                     "which mail clients block; use https:// or mailto:"]
