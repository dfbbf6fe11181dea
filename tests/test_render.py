from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from newsletter import build, render
from newsletter import config as cfg
from newsletter.errors import TemplateError
from newsletter.message import MessageTemplate, Personalizer, Recipient, field_values

from .webutil import PNG

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def sample(tmp_path, monkeypatch):
    """A copy of this repository's own newsletter: its config, templates and sample issues."""
    shutil.copy(REPO / "newsletter.toml", tmp_path / "newsletter.toml")
    shutil.copytree(REPO / "issues", tmp_path / "issues")
    monkeypatch.chdir(tmp_path)
    return cfg.load(tmp_path / "newsletter.toml", environ={})


POST = """\
---
title: "Tables, notes and code"
canonical_url: https://blog.example.com/t
---
# Top heading

Some *emphasis*, **strong**, ~~struck~~ and `code`.[^1]

| Stage | Win rate |
|-------|----------|
| Demo  | 40%      |

> A reader wrote in
> with two lines.

- one
- two

```
pipeline = []
```

![A chart](chart.png) and [a link](https://example.com/x) and [the paper](paper.pdf).

[^1]: A footnote.
"""


@pytest.fixture
def letter_issue(letter, write):
    write("issues/2026-12-01-t/issue.md", "---\nsubject: Tables\npreheader: Pre\n---\nEditor's *note*.\n")
    write("issues/2026-12-01-t/01-t.md", POST)
    (letter / "issues/2026-12-01-t/chart.png").write_bytes(PNG)
    (letter / "issues/2026-12-01-t/paper.pdf").write_bytes(b"%PDF fake")
    config = cfg.load(letter / "newsletter.toml", environ={})
    return config, build.render(config, "2026-12-01-t")


def test_markdown_extensions_render(letter_issue):
    _, r = letter_issue
    html = r.html
    assert "<table" in html and "Win rate" in html  # tables
    assert "<s" in html and "struck" in html  # strikethrough
    assert 'class="footnote-ref"' in html and "A footnote." in html  # footnotes
    assert "<blockquote" in html and 'class="code"' in html and "<ul" in html
    # a post's top heading sits below the post title (h2)
    assert re.search(r"<h3[^>]*>Top heading</h3>", html)


def test_email_html_structure(letter_issue):
    config, r = letter_issue
    html = r.html
    assert html.startswith("<!DOCTYPE html>")
    assert '<html lang="en"' in html
    assert '<meta name="viewport"' in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert '<meta name="supported-color-schemes" content="light dark">' in html
    assert "<!--[if mso]>" in html  # Outlook fixed-width wrapper
    assert 'role="presentation"' in html
    body = html.split("<body", 1)[1]
    first = re.search(r"<(\w+)[^>]*>", body.split(">", 1)[1]).group(0)
    assert 'class="preheader"' in first and "display:none" in first and "mso-hide:all" in first
    assert "Pre" in body.split("</div>", 1)[0]
    # header: name and date; each post title and byline; sign-off and footer
    assert config.newsletter.name in html and "1 December 2026" in html
    assert "Tables, notes and code" in html and "By Ann Berg" in html
    assert "Read on the web" in html
    assert re.search(r">Sell well</p>\s*<p[^>]*>Ann Berg</p>", html)
    assert "1 Test Street, Oslo" in html
    assert 'href="[[nl:unsubscribe_url]]"' in html and 'href="[[nl:web_url]]"' in html


def test_premailer_adds_presentational_attributes_only_where_html_has_them(letter_issue):
    """premailer copies CSS into bgcolor, width, height and align on any element: those on
    tables, cells and <body> stay for Outlook; the ones HTML lacks do not."""
    _, r = letter_issue
    html = r.html
    assert 'height="auto"' not in html
    assert not re.search(r"<(?:code|pre)\b[^>]*\sbgcolor=", html)
    assert not re.search(r"<body\b[^>]*\swidth=", html)
    assert re.search(r'<body\b[^>]*\sbgcolor="#f3f1ec"', html)
    assert re.search(r'<table role="presentation" class="container"[^>]*\sbgcolor="#ffffff"', html)
    assert re.search(r'<td\b[^>]*\svalign="top"', html) and re.search(r'<th\b[^>]*\salign="left"', html)
    assert re.search(r"<code\b[^>]*background-color:#f1efe9", html)  # the CSS stays


CLIENT_POST = """\
---
title: What the clients keep
---
The forecast is a promise.[^promise] See [the table](#the-table) and the deck at
https://decks.example.com/quarterly-business-review/2026/q4/pipeline-coverage-by-segment.pdf
or run `pipeline.coverage_by_segment(region="north", quarter="2026-Q4", include_slipped=True)`.

```python
def coverage(pipeline, quota):
    return   sum(deal.value for deal in pipeline) / quota  # three spaces kept
        # https://wiki.example.com/sales/forecasting/how-we-count-coverage-and-why-it-matters
```

[^promise]: Keep it, or say early that you cannot.
"""


@pytest.fixture
def client_issue(letter, write):
    write("issues/2026-12-01-c/issue.md", "---\nsubject: Clients\npreheader: Pre\n---\n")
    write("issues/2026-12-01-c/01-c.md", CLIENT_POST)
    return build.render(cfg.load(letter / "newsletter.toml", environ={}), "2026-12-01-c")


def test_email_footnotes_are_a_plain_list_without_sections_or_jumps(client_issue):
    """Outlook for Windows and Yahoo strip <section>; Gmail on iOS and Yahoo do not follow
    in-page anchors. The web version keeps both."""
    html = client_issue.html
    assert "<section" not in html and 'href="#' not in html and "&#8617;" not in html
    assert re.search(r'<sup class="footnote-ref"[^>]*>1</sup>', html)
    assert re.search(r'<ol class="footnotes"[^>]*>\s*<li class="footnote-item"[^>]*>\s*<p[^>]*>Keep it, or say early', html)
    web = client_issue.web_html
    assert '<section class="footnotes">' in web and 'href="#fn-p1-1"' in web and 'href="#fnref-p1-1"' in web
    # a writer's own in-page link goes to the same place in the web version
    assert 'href="https://letter.example.com/archive/2026-12-01-c/#the-table"' in html
    assert 'href="#the-table"' in web


def test_email_code_blocks_wrap_without_pre_and_keep_their_spacing(client_issue):
    html = client_issue.html
    body = html.split("</head>", 1)[1]
    assert "<pre" not in body and "white-space" not in body and "overflow-wrap" not in html
    block = re.search(r'<div class="code"[^>]*>(.*?)</div>', body, flags=re.S).group(1)
    lines = block.split("<br>\n")
    assert lines[0] == "def coverage(pipeline, quota):"
    assert lines[1].startswith("&#160;&#160;&#160;&#160;return&#160;&#160; sum(deal.value")  # indent and a run of 3
    assert "<wbr>" in lines[2] and lines[2].replace("<wbr>", "").rstrip().endswith(
        "https://wiki.example.com/sales/forecasting/how-we-count-coverage-and-why-it-matters</span>")
    # the plain-text part keeps the code as written
    assert "        return   sum(deal.value for deal in pipeline) / quota" in client_issue.text


def test_long_words_in_the_email_can_break(client_issue):
    body = client_issue.html.split("</head>", 1)[1]
    spans = re.findall(r'<span class="long"[^>]*>(.*?)</span>', body)
    assert any(s.replace("<wbr>", "").startswith("https://decks.example.com/quarterly") for s in spans)
    assert any("coverage_by_segment" in s.replace("<wbr>", "") for s in spans)  # inline code too
    assert all("<wbr>" in s for s in spans) and "</wbr>" not in body
    assert re.search(r'<span class="long" style="[^"]*word-break:break-all', body)  # Outlook for Windows
    assert "<wbr>" not in client_issue.web_html and "<wbr>" not in client_issue.text


def test_breakable_leaves_short_words_and_escapes():
    assert render.breakable("a <b> & c") == "a &lt;b&gt; &amp; c"
    long = render.breakable("x" * 45)
    assert long == '<span class="long">' + render.WBR_MARK.join(["x" * 20, "x" * 20, "x" * 5]) + "</span>"


def test_css_is_inlined_and_media_queries_kept_in_one_head_block(letter_issue):
    _, r = letter_issue
    head, body = r.html.split("</head>", 1)
    assert head.count("<style") == 1
    assert "@media screen and (max-width:600px)" in head and "!important" in head
    assert "prefers-color-scheme:dark" in head
    assert "<style" not in body
    assert re.search(r'<blockquote style="[^"]*border-left:4px solid', body)


def test_links_made_absolute_for_email_relative_for_web(letter_issue):
    config, r = letter_issue
    base = "https://letter.example.com/archive/2026-12-01-t/"
    assert r.web_url == base
    assert f'src="{base}chart.png"' in r.html
    assert f'href="{base}paper.pdf"' in r.html
    assert 'src="chart.png"' in r.web_html and 'href="paper.pdf"' in r.web_html
    assert {a.name for a in r.assets} == {"chart.png", "paper.pdf"}


def test_placeholders_survive_inlining_and_text(letter_issue):
    _, r = letter_issue
    for name in render.FIELDS:
        marker = render.PLACEHOLDERS[name]
        if name != "name":
            assert marker in r.html, name
            assert marker in r.text, name
    # premailer would URL-encode a space or make a relative href absolute: neither happened
    assert "%5B%5Bnl" not in r.html and "[[nl:unsubscribe_url]]" in r.html


def test_personalisation_fills_fields_without_rerendering(letter_issue, monkeypatch):
    config, r = letter_issue
    calls = []
    monkeypatch.setattr(render, "inline_css", lambda *a: calls.append(a))
    p = Personalizer(r)
    for n in range(50):
        values = field_values(
            Recipient(f"r{n}@example.com", f"Reader {n}"), f"https://u/{n}", r.web_url
        )
        html, text = p.html(values), p.text(values)
        assert f"r{n}@example.com" in html and f"https://u/{n}" in text
        assert "[[nl:" not in html and "[[nl:" not in text
    assert calls == []  # nothing was inlined (or rendered) again


def test_personalised_html_escapes_values(letter_issue):
    _, r = letter_issue
    html = Personalizer(r).html(
        field_values(Recipient('x"<script>@example.com', "<b>"), "https://u/?a=1&b=2", r.web_url)
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="https://u/?a=1&amp;b=2"' in html


def test_text_part_reads_on_its_own(letter_issue):
    _, r = letter_issue
    text = r.text
    assert "Top heading\n===========" in text
    assert "> A reader wrote in with two lines." in text
    assert "- one\n- two" in text
    assert "    pipeline = []" in text
    assert "a link [1]" in text and "[1] https://example.com/x" in text
    assert "[2] https://letter.example.com/archive/2026-12-01-t/paper.pdf" in text
    assert "[A chart]" in text
    assert "Notes\n-----\n[^1] A footnote." in text
    assert "Sell well\nAnn Berg" in text
    assert "Unsubscribe: [[nl:unsubscribe_url]]" in text
    assert "1 Test Street, Oslo" in text
    assert all(len(line) <= 80 for line in text.splitlines() if "http" not in line)
    assert "<" not in text.replace("<b>", "")


def test_sample_issue_text_matches_golden(sample):
    """The plain-text part of the repository's first sample issue, line by line."""
    r = build.render(sample, "2026-12-01-the-quota-is-not-the-goal")
    golden = GOLDEN / "the-quota-is-not-the-goal.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(r.text, encoding="utf-8")
    assert r.text == golden.read_text(encoding="utf-8")


def test_sample_issue_quotes_a_reader_and_signs_off(sample):
    r = build.render(sample, "2026-12-01-the-quota-is-not-the-goal")
    assert "<blockquote" in r.html
    assert "Sell well" in r.html and "Sell well" in r.text


def test_unknown_template_variable_names_file_and_line(letter_issue, letter, write):
    config, _ = letter_issue
    shutil.copytree(render.builtin_templates(), letter / "templates")
    path = letter / "templates" / "email.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, "{{ newsletter.nmae }}")
    path.write_text("\n".join(lines) + "\n")
    render._environment.cache_clear()
    with pytest.raises(TemplateError) as caught:
        build.render(config, "2026-12-01-t")
    message = str(caught.value)
    assert message.startswith(f"{path} line 3: ")
    assert "nmae" in message


def test_missing_template_names_folders(letter_issue, letter):
    config, _ = letter_issue
    with pytest.raises(TemplateError, match="template 'nope.html' not found"):
        render.render_template(config, "nope.html", {})


@pytest.fixture
def compiles(monkeypatch):
    """The templates Jinja2 compiles from source, in a process starting afresh."""
    import jinja2

    compiled = []
    real = jinja2.Environment.compile

    def counting(self, source, name=None, filename=None, *args, **kwargs):
        compiled.append(name)
        return real(self, source, name, filename, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    render._environment.cache_clear()
    yield compiled
    render._environment.cache_clear()


def test_templates_are_compiled_once_and_kept(letter_issue, letter, compiles):
    config, first = letter_issue  # rendered once: the templates compiled and kept
    assert list((letter / ".cache" / "templates").iterdir())
    again = build.render(config, "2026-12-01-t")  # as a new process renders it
    assert compiles == [] and again.text == first.text and again.html == first.html
    shutil.rmtree(letter / ".cache" / "templates")
    render._environment.cache_clear()
    build.render(config, "2026-12-01-t")
    assert {"email.html", "email.txt", "web.html"} <= set(compiles)


def test_an_edited_template_is_compiled_again(letter_issue, letter, compiles):
    config, _ = letter_issue
    shutil.copytree(render.builtin_templates(), letter / "templates")
    build.render(config, "2026-12-01-t")
    path = letter / "templates" / "email.txt"
    path.write_text(path.read_text().replace("{{ sign_off }}", "{{ sign_off }}, always"))
    render._environment.cache_clear()
    assert "Sell well, always" in build.render(config, "2026-12-01-t").text
    assert compiles.count("email.txt") == 2


def test_a_damaged_compiled_template_is_compiled_again(letter_issue, letter, compiles):
    config, first = letter_issue
    for kept in (letter / ".cache" / "templates").iterdir():
        kept.write_bytes(kept.read_bytes()[:40])  # cut short after Jinja2's header
    assert build.render(config, "2026-12-01-t").text == first.text
    assert {"email.html", "email.txt", "web.html"} <= set(compiles)


def test_a_template_cache_that_cannot_be_written_only_costs_time(letter_issue, letter, compiles):
    config, first = letter_issue
    shutil.rmtree(letter / ".cache" / "templates")
    (letter / ".cache" / "templates").write_text("not a folder")
    for _ in range(2):
        render._environment.cache_clear()
        assert build.render(config, "2026-12-01-t").text == first.text
    assert compiles.count("email.txt") == 2


def parse(raw: bytes):
    import email
    from email import policy

    return email.message_from_bytes(raw, policy=policy.default)


def test_message_is_complete_mime(letter_issue):
    config, r = letter_issue
    template = MessageTemplate(config, r, "main")
    raw = template.bytes_for(
        Recipient("asa@bücher.example", "Åsa Lindqvist, \"Sales\""),
        "https://letter.example.com/unsubscribe/TOKEN",
        "<c1.42@example.com>",
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == "Ann Berg <ann@example.com>"
    assert msg["Reply-To"] == "ann@example.com"
    assert msg["Subject"] == "Tables"
    assert msg["Date"] and msg["Message-ID"] == "<c1.42@example.com>"
    assert msg["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/TOKEN>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "Test Letter <main.letter.example.com>"
    to = msg["To"].addresses[0]
    assert to.display_name == 'Åsa Lindqvist, "Sales"'
    assert to.addr_spec == "asa@xn--bcher-kva.example"  # the domain in IDNA form
    assert b"=?utf-8?" in raw  # the non-ASCII name is encoded
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert html.replace("\r\n", "\n") == Personalizer(r).html(field_values(
        Recipient("asa@bücher.example", 'Åsa Lindqvist, "Sales"'),
        "https://letter.example.com/unsubscribe/TOKEN", r.web_url)).replace("\r\n", "\n")
    assert "Unsubscribe: https://letter.example.com/unsubscribe/TOKEN" in text
    assert "asa@bücher.example" in text


def test_non_ascii_subject_is_encoded(letter, write):
    write("issues/2026-12-01-u/issue.md", "---\nsubject: Sälj väl – vecka 49\n---\n")
    write("issues/2026-12-01-u/01-a.md", "---\ntitle: Å\n---\nText\n")
    config = cfg.load(letter / "newsletter.toml", environ={})
    r = build.render(config, "2026-12-01-u")
    raw = MessageTemplate(config, r, "main").bytes_for(Recipient("a@example.com"), "https://u/t", "<x@example.com>")
    assert raw.isascii()
    assert parse(raw)["Subject"] == "Sälj väl – vecka 49"


def test_header_injection_is_refused(letter_issue):
    from newsletter.message import HeaderInjection

    with pytest.raises(HeaderInjection):
        Recipient("ann@example.com\r\nBcc: all@example.com")
    config, r = letter_issue
    template = MessageTemplate(config, r, "main")
    with pytest.raises(HeaderInjection, match="non-ASCII characters before the @"):
        template.bytes_for(Recipient("åsa@example.com"), "https://u/x", "<x@example.com>")


def test_mail_safe_html_is_ascii_with_short_lines():
    word = "selling "
    paragraph = f'<p style="margin:0 0 18px 0; font-family:Georgia, serif" title="a b c">Sälj {word * 200}</p>'
    pre = f"<pre>{'x ' * 400}</pre>"
    out = render.mail_safe(f"<html><head><style>p {{ color: red }}</style></head>\n<body>{paragraph}\n{pre}\n</body></html>")
    assert out.isascii() and "S&#228;lj" in out
    lines = out.split("\n")
    wrapped = [ln for ln in lines if "selling" in ln and "<pre" not in ln]
    assert len(wrapped) > 2 and all(len(ln) <= render.WRAP_AT + 10 for ln in wrapped)
    assert 'style="margin:0 0 18px 0; font-family:Georgia, serif"' in out  # no break inside a value
    assert 'title="a b c"' in out
    assert f"<pre>{'x ' * 400}</pre>" in out  # preformatted text is left alone
    # breaking at spaces changes nothing a browser shows
    assert " ".join(out.split()) == " ".join(render.mail_safe(out).split())


def test_messages_go_7bit_and_fall_back_to_quoted_printable(letter_issue, letter, write):
    config, r = letter_issue
    raw = MessageTemplate(config, r, "main").bytes_for(
        Recipient("asa@bücher.example", "Åsa"), "https://letter.example.com/unsubscribe/T", "<x@example.com>")
    html_part = raw.split(b'Content-Type: text/html; charset="utf-8"\r\n', 1)[1]
    assert html_part.startswith(b"Content-Transfer-Encoding: 7bit")
    assert b"asa@b&#252;cher.example" in raw  # the address, as a character reference in the HTML
    text_part = raw.split(b'Content-Type: text/plain; charset="utf-8"\r\n', 1)[1]
    assert text_part.startswith(b"Content-Transfer-Encoding: quoted-printable")  # "ü" is not ASCII
    msg = parse(raw)
    assert "asa@bücher.example" in msg.get_body(("plain",)).get_content()
    # a line that cannot be shortened (inside <pre>) sends the HTML quoted-printable
    write("issues/2026-12-01-t/02-code.md", "---\ntitle: Code\n---\n<pre>" + "x" * 1200 + "</pre>\n")
    long = build.render(config, "2026-12-01-t")
    raw = MessageTemplate(config, long, "main").bytes_for(Recipient("a@example.com"), "https://u/t", "<x@example.com>")
    assert b'text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable' in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert "x" * 1200 in parse(raw).get_body(("html",)).get_content()


def test_a_name_cannot_forge_a_mime_boundary(letter_issue, letter):
    config, _ = letter_issue
    shutil.copytree(render.builtin_templates(), letter / "templates")
    for name in ("email.html", "email.txt"):  # a template that greets the reader by name
        path = letter / "templates" / name
        path.write_text(path.read_text().replace("{{ sign_off }}", "{{ sign_off }}, {{ recipient.name }}"))
    render._environment.cache_clear()
    r = build.render(config, "2026-12-01-t")
    template = MessageTemplate(config, r, "main")
    forged = f"--{template.boundary}"
    raw = template.bytes_for(Recipient("a@example.com", forged), "https://u/t", "<x@example.com>")
    msg = parse(raw)
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert forged in msg.get_body(("html",)).get_content()


def test_json_bodies_match_the_plain_ones(letter_issue):
    import json

    _, r = letter_issue
    p = Personalizer(r)
    for name in ['Ann "Quotes" \\ Back', "Åsa\tTab", "<script>x</script>", "\u2028line sep", ""]:
        values = field_values(Recipient("a@example.com", name), "https://u/?a=1&b=\"2\"", r.web_url)
        assert json.loads(p.html_json(values)) == p.html(values)
        assert json.loads(p.text_json(values)) == p.text(values)
        assert p.html_json(values).isascii()


def test_list_unsubscribe_adds_the_mailto_when_configured(letter_issue, letter):
    toml = letter / "newsletter.toml"
    toml.write_text(toml.read_text().replace("[schedule]", 'unsubscribe_mailto = "leave@example.com"\n\n[schedule]'))
    config = cfg.load(toml, environ={})
    r = build.render(config, "2026-12-01-t")
    raw = MessageTemplate(config, r, "main").bytes_for(Recipient("a@example.com"), "https://u/T", "<x@example.com>")
    assert parse(raw)["List-Unsubscribe"] == "<https://u/T>, <mailto:leave@example.com?subject=unsubscribe>"


def test_a_floated_image_keeps_its_align_for_outlook_without_css_validation():
    # the inliner reads an <img>'s float with CSS validation off (its patterns cost a tenth
    # of the first inlining in a process); the align attribute Outlook reads is still written
    from newsletter.render import _inline_css

    doc = ('<!DOCTYPE html><html><head><style>.r{float:right;width:100px}</style></head><body>'
           '<img class="r" src="a.png" alt=""><img style="float: left" src="b.png" alt="">'
           '<img style="float: none" src="c.png" alt=""></body></html>')
    out = _inline_css(doc)
    assert '<img class="r" src="a.png" alt="" style="float:right; width:100px" width="100" align="right">' in out
    assert '<img style="float: left" src="b.png" alt="" align="left">' in out
    assert '<img style="float: none" src="c.png" alt="">' in out
