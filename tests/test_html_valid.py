"""Every page the public site serves, and every page `newsletter archive` writes, passes the
Nu HTML checker with no errors. The email HTML passes it too, but for the email-client idioms
listed in EMAIL_IDIOMS, kept on purpose. The checker is vnu.jar from npm (tests/validator),
run once for all the pages and emails by Debian's Java."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner
from werkzeug.test import Client

from newsletter import build, tokens
from newsletter import config as cfg
from newsletter import subscribers as subs
from newsletter.cli import main
from newsletter.message import MessageTemplate, Recipient, message_id, unsubscribe_url
from newsletter.store import open_store
from newsletter.web.app import PublicApp

from .conftest import REPO
from .webutil import (
    ISSUE,
    PNG,
    SECRET,
    add_reader,
    confirm_path,
    load,
    outbox,
    send_issue,
    unsubscribe_path,
    write_letter,
)

VNU = REPO / "tests" / "validator" / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"
REQUIRE_ALL = bool(os.environ.get("NEWSLETTER_REQUIRE_ALL"))  # read before any test clears it
INSTALL = ("install Java with `apt-get install default-jre-headless` and the checker with "
           "`npm ci --prefix tests/validator --ignore-scripts` (.ci/run does both)")

# What each page is; the fixture below makes exactly these.
PAGES = [
    "subscribe", "subscribe-refused", "subscribed",
    "confirm", "confirmed", "confirm-used", "confirm-left", "confirm-blocked", "confirm-gone",
    "link-expired", "link-forged",
    "unsubscribe", "unsubscribed", "unsubscribe-test-copy", "unsubscribed-test-copy",
    "error-404", "error-405", "error-413",
    "archive-empty", "archive", "issue",
    "written-archive", "written-issue",
]
# A page with the two mistakes the checker once found here, to show it still finds them.
CANARY = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>canary</title></head>
<body><p><time datetime="2026-12-01T09:00:00.123456+00:00">1 December</time></p>
<form method="post" action=""><button type="submit">Go</button></form></body></html>
"""


# The email HTML as readers get it: this repository's two sample issues, an issue that uses
# every kind of block a post can have, and the sign-up confirmation.
SAMPLE_ISSUES = ["2026-12-01-the-quota-is-not-the-goal", "2026-12-08-listen-before-you-lead"]
EMAILS = [*(f"email-{slug}" for slug in SAMPLE_ISSUES), "email-every-block", "email-confirm"]


class Idiom(NamedTuple):
    """A message the checker gives about the email HTML that is kept on purpose: its text
    exactly, a pattern the tag it points at must match, and why it stays."""

    message: str
    tag: str  # a regular expression matched at the start of the flagged tag
    reason: str


# Every message about an email that is an error, or a warning that something is obsolete,
# must be one of these (see the README's development section, which lists the same).
EMAIL_IDIOMS = [
    Idiom("Attribute “xmlns:v” not allowed here.",
          r"<html\b[^>]*\sxmlns:v=\"urn:schemas-microsoft-com:vml\"",
          "declares the v: prefix Outlook for Windows needs for VML (buttons, backgrounds) in an "
          "MSO block; the stock template draws none, a post or an own template may"),
    Idiom("Attribute “xmlns:o” not allowed here.",
          r"<html\b[^>]*\sxmlns:o=\"urn:schemas-microsoft-com:office:office\"",
          "declares the o: prefix of the MSO-only OfficeDocumentSettings block (96 dpi in Outlook)"),
    Idiom("Element “meta” is missing one or more of the following attributes: “content”, “property”.",
          r"<meta name=\"x-apple-disable-message-reformatting\">",
          "Apple Mail stops shrinking the email to fit when this name is present; it has no value"),
    Idiom("CSS: “mso-hide”: Property “mso-hide” doesn't exist.", r"<div class=\"preheader\"",
          "Outlook for Windows ignores display:none; mso-hide:all hides the preheader there"),
    Idiom("The “bgcolor” attribute on the “body” element is obsolete. Use CSS instead.", r"<body\b",
          "the page colour for clients that drop the body's style attribute"),
    Idiom("The “width” attribute on the “table” element is obsolete. Use CSS instead.", r"<table\b",
          "Outlook for Windows sizes a table by the attribute, not by CSS"),
    Idiom("The “cellpadding” attribute on the “table” element is obsolete. Use CSS instead.",
          r"<table role=\"presentation\"", "layout tables: no default cell padding in Outlook"),
    Idiom("The “cellspacing” attribute on the “table” element is obsolete. Use CSS instead.",
          r"<table role=\"presentation\"", "layout tables: no default gaps between cells in Outlook"),
    Idiom("The “border” attribute on the “table” element is obsolete. "
          "Consider specifying “img { border: 0; }” in CSS instead.",
          r"<table role=\"presentation\"", "layout tables: no border in clients that ignore CSS"),
    Idiom("The “bgcolor” attribute on the “table” element is obsolete. Use CSS instead.",
          r"<table role=\"presentation\"", "Outlook for Windows paints a table's background from bgcolor"),
    Idiom("The “align” attribute on the “td” element is obsolete. Use CSS instead.", r"<td\b",
          "Outlook for Windows aligns a cell (the centred column, the footer, a post's table "
          "columns) by the attribute"),
    Idiom("The “align” attribute on the “th” element is obsolete. Use CSS instead.", r"<th\b",
          "a post's table headings keep their alignment in Outlook for Windows"),
    Idiom("The “valign” attribute on the “td” element is obsolete. Use CSS instead.", r"<td\b",
          "a post's table cells stay top-aligned in Outlook for Windows"),
]

# An issue that uses every kind of block a post can have, in two posts and a note.
EVERY_BLOCK = {
    "issue.md": """\
---
subject: Every block a post can have
preheader: Tables, images, code, notes, quotes and lists
---
The editor's note, with [a link](https://example.com/note) and *emphasis*.
""",
    "01-blocks.md": """\
---
title: Every block a post can have
canonical_url: https://blog.example.com/every-block
---
# The pipeline in numbers

A sentence with `inline code`, **strong** and ~~struck~~ text, and a note.[^first]

| Stage     | Deals | Won |
|:----------|------:|:---:|
| Discovery | 40    | 12  |
| Proposal  | 18    | 9   |

![Deals won, by stage](chart.png "Won by stage")

```python
def win_rate(won, total):
    return won / total
```

    an indented code block

> A reader wrote:
>
> - a quote can hold a list
> - and a second point

1. First step
2. Second step, with a list inside:
   - one
   - two

## A smaller heading

The note is referred to again,[^first] another one follows,[^second] and [a report](report.pdf).

[^first]: The first footnote.
[^second]: The second footnote, with `code` in it.
""",
    "02-second.md": """\
---
title: A second post
---
This post has a footnote too,[^1] so the two posts' notes must not share an id.

---

After a rule.

[^1]: The second post's note.
""",
}

# An email with the idioms and with the mistakes premailer once made here (and others), to
# show that the list keeps the first and lets none of the second through.
EMAIL_CANARY = """<!DOCTYPE html>
<html lang="en" xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office"
 xmlns:w="urn:schemas-microsoft-com:office:word">
<head><meta charset="utf-8"><meta name="x-apple-disable-message-reformatting"><title>canary</title></head>
<body width="100%" bgcolor="#f3f1ec">
<div class="preheader" style="display:none;mso-hide:all;">Pre</div>
<div class="note" style="mso-hide:all">Hidden</div>
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" bgcolor="#ffffff">
<tr><td align="center" valign="top" id="twice"><center>Centred</center>
<p><img src="https://example.com/a.png" alt="A" height="auto"></p>
<pre bgcolor="#f1efe9">code</pre><p id="twice">Again</p></td></tr>
</table>
<table border="0"><tr><td>Not a layout table</td></tr></table>
</body></html>
"""


def _missing() -> str | None:
    if shutil.which("java") is None:
        return f"the Nu HTML checker needs Java, which is not installed; {INSTALL}"
    if not VNU.is_file():
        return f"the Nu HTML checker (vnu.jar) is not installed; {INSTALL}"
    return None


def _html_part(message) -> bytes:
    part = message.get_body(("html",))
    assert part is not None
    return part.get_content().encode("utf-8")


def _emails(root: Path) -> dict[str, bytes]:
    """The HTML part of the message a reader gets for each issue in EMAILS (made in ``root``,
    the working directory): the sample newsletter with its issues and the every-block one."""
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    shutil.copytree(REPO / "issues", root / "issues")
    folder = root / "issues" / "2026-12-15-every-block"
    folder.mkdir()
    for name, text in EVERY_BLOCK.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "chart.png").write_bytes(PNG)
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 a report")
    config = cfg.load(root / "newsletter.toml", environ={})
    reader = Recipient("reader@example.com", 'Åsa "Sales" <Lindqvist> & Co')
    leave = unsubscribe_url(config, tokens.sign(SECRET, "unsubscribe", {"s": 1, "l": "main"}))
    emails = {}
    for name, slug in [*((f"email-{slug}", slug) for slug in SAMPLE_ISSUES),
                       ("email-every-block", folder.name)]:
        rendered = build.render(config, slug)
        raw = MessageTemplate(config, rendered, "main").bytes_for(reader, leave, message_id(config))
        emails[name] = _html_part(email.message_from_bytes(raw, policy=email.policy.default))
    every = emails["email-every-block"].decode()
    for block in ("<table", "<img", 'class="code"', "<code", "<blockquote", "<ol", "<ul", 'class="footnotes"'):
        assert block in every, block
    return emails


def _site_pages(root: Path) -> dict[str, bytes]:
    """Every kind of page the site serves, and the two `newsletter archive` writes, by name
    (run in ``root``); and, as "email-confirm", the HTML of the confirmation email."""
    write_letter(root, web='public_lists = ["main", "weekly"]\n')
    config = load(root)
    pages: dict[str, bytes] = {}
    with open_store(config) as store:
        subs.create_list(store, "weekly", title="The weekly digest")
        add_reader(store, "ann@example.com")
        app = PublicApp(config, store)
        client = Client(app)

        def get(name: str, path: str, status: int = 200, method: str = "GET", **kw) -> None:
            response = client.open(path, method=method, **kw)
            assert response.status_code == status, (name, response.status_code)
            pages[name] = response.get_data()

        def sign_up(address: str, ip: str) -> str:
            get("subscribed", "/subscribe", method="POST", data={"email": address},
                environ_overrides={"REMOTE_ADDR": ip})
            app.mailer.wait()
            [mail] = [m for m in outbox(root, "confirm") if m["To"] == address]
            pages.setdefault("email-confirm", _html_part(mail))
            return confirm_path(mail)

        try:
            get("archive-empty", "/archive/")
            campaign = send_issue(config, store)
            [issue_mail] = outbox(root, f"{campaign.id}-{campaign.issue}")
            get("archive", "/archive/")
            get("issue", f"/archive/{ISSUE}/")

            get("subscribe", "/subscribe")
            get("subscribe-refused", "/subscribe", 400, method="POST", data={"email": "not an address"})
            first = sign_up("rita@example.com", "192.0.2.1")
            get("confirm", first)
            get("confirmed", first, method="POST")
            get("confirm-used", first, method="POST")
            subs.unsubscribe(store, "rita@example.com")
            get("confirm-left", first, 410, method="POST")
            blocked = sign_up("bounced@example.com", "192.0.2.2")
            subs.suppress(store, "bounced@example.com", "bounced")
            get("confirm-blocked", blocked, 403)
            nobody = tokens.sign(SECRET, "confirm", {"s": 999, "l": 1, "c": 0, "m": "x"}, ttl=60)
            get("confirm-gone", f"/confirm/{nobody}", 410)
            expired = tokens.sign(SECRET, "confirm", {"s": 1, "l": 1, "c": 0}, ttl=-1)
            get("link-expired", f"/confirm/{expired}", 400)
            get("link-forged", "/confirm/bm90.aGluZw", 400)

            leave = unsubscribe_path(issue_mail)
            get("unsubscribe", leave)
            get("unsubscribed", leave, method="POST", data={"unsubscribe": "1"})
            test_copy = "/unsubscribe/" + tokens.sign(SECRET, "unsubscribe", {"s": 0, "l": 0})
            get("unsubscribe-test-copy", test_copy)
            get("unsubscribed-test-copy", test_copy, method="POST")

            get("error-404", "/nowhere", 404)
            get("error-405", "/subscribe", 405, method="DELETE")
            get("error-413", "/subscribe", 413, method="POST", data={"name": "x" * 300_000})
        finally:
            app.close()

    result = CliRunner().invoke(main, ["archive", "--out", "site"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pages["written-archive"] = (root / "site" / "archive" / "index.html").read_bytes()
    pages["written-issue"] = (root / "site" / "archive" / ISSUE / "index.html").read_bytes()
    return pages


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, list[dict]]:
    """The checker's messages for each page (and the canary), from one run of vnu."""
    missing = _missing()
    if missing:
        if REQUIRE_ALL:
            pytest.fail(f"NEWSLETTER_REQUIRE_ALL: {missing}")
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as patch:  # as conftest's _clean_env, for the whole module
        for name in [n for n in os.environ if n.startswith("NEWSLETTER_")]:
            patch.delenv(name)
        (root / "letter").mkdir()
        patch.chdir(root / "letter")
        pages = _site_pages(root / "letter")
        (root / "emails").mkdir()
        patch.chdir(root / "emails")
        pages.update(_emails(root / "emails"))
    assert sorted(pages) == sorted(PAGES + EMAILS)
    folder = root / "checked"
    folder.mkdir()
    files = {}
    for name, body in {**pages, "canary": CANARY.encode(), "email-canary": EMAIL_CANARY.encode()}.items():
        files[name] = folder / f"{name}.html"
        files[name].write_bytes(body)
    run = subprocess.run(
        ["java", "-jar", str(VNU), "--format", "json", "--stdout", "--exit-zero-always",
         *(str(p) for p in files.values())],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    messages = json.loads(run.stdout)["messages"]
    found: dict[str, list[dict]] = {name: [] for name in files}
    by_file = {path.name: name for name, path in files.items()}
    for message in messages:
        name = by_file.get(message.get("url", "").rsplit("/", 1)[-1])
        assert name is not None, message  # a message about no page: the checker itself failed
        found[name].append(message)
    return found


def _errors(messages: list[dict]) -> list[str]:
    return [f"line {m.get('lastLine', '?')}: {m.get('message')} [{m.get('extract', '').strip()}]"
            for m in messages if m.get("type") in ("error", "non-document-error")
            or m.get("subType") == "fatal"]


def test_the_checker_still_finds_the_mistakes_it_once_found(report):
    errors = "\n".join(_errors(report["canary"]))
    assert "datetime" in errors and "action" in errors, errors


@pytest.mark.parametrize("name", PAGES)
def test_every_page_is_valid_html(report, name):
    assert _errors(report[name]) == []


def _flagged_tag(message: dict) -> str:
    """The source the checker points at: the tag a message is about."""
    extract = message.get("extract", "")
    start = message.get("hiliteStart", 0)
    return extract[start:start + message.get("hiliteLength", len(extract))].strip()


def _idiom(message: dict) -> Idiom | None:
    for idiom in EMAIL_IDIOMS:
        if message.get("message") == idiom.message and re.match(idiom.tag, _flagged_tag(message)):
            return idiom
    return None


def _checked(message: dict) -> bool:
    """An error, or a warning that something is obsolete (where email idioms show up)."""
    return (message.get("type") in ("error", "non-document-error") or message.get("subType") == "fatal"
            or (message.get("subType") == "warning" and " is obsolete." in message.get("message", "")))


def _unexplained(messages: list[dict]) -> list[str]:
    return [f"line {m.get('lastLine', '?')}: {m.get('message')} [{_flagged_tag(m)}]"
            for m in messages if _checked(m) and _idiom(m) is None]


@pytest.mark.parametrize("name", EMAILS)
def test_every_email_is_valid_html_but_for_the_idioms_kept(report, name):
    assert _unexplained(report[name]) == []


def test_every_idiom_kept_is_still_in_the_emails(report):
    """The list names only what the emails really have: an idiom dropped from the template
    comes off the list (and out of the README)."""
    seen = {_idiom(m) for name in EMAILS for m in report[name]}
    assert [idiom.message for idiom in EMAIL_IDIOMS if idiom not in seen] == []


def test_the_idioms_kept_let_no_other_mistake_through(report):
    checked = [m for m in report["email-canary"] if _checked(m)]
    kept = {idiom.message for idiom in map(_idiom, checked) if idiom is not None}
    assert kept == {idiom.message for idiom in EMAIL_IDIOMS} - {
        "The “align” attribute on the “th” element is obsolete. Use CSS instead."
    }
    assert [m["message"] for m in checked if _idiom(m) is None] == [
        "Attribute “xmlns:w” not allowed here.",
        "Attribute “width” not allowed on element “body” at this point.",
        "CSS: “mso-hide”: Property “mso-hide” doesn't exist.",  # on a div that is no preheader
        "The “center” element is obsolete. Use CSS instead.",
        "Bad value “auto” for attribute “height” on element “img”: Expected a digit but saw “a” instead.",
        "Attribute “bgcolor” not allowed on element “pre” at this point.",
        "Duplicate ID “twice”.",
        "The “border” attribute on the “table” element is obsolete. "  # on a table for data
        "Consider specifying “img { border: 0; }” in CSS instead.",
    ], "\n".join(_unexplained(report["email-canary"]))
