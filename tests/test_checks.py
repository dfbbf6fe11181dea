from __future__ import annotations

import shutil

import pytest

from newsletter import build, checks, render
from newsletter import config as cfg


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
