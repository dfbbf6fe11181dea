"""The feed's HTML becomes a post's Markdown: sanitised, absolute, the sign-off once."""

from __future__ import annotations

import pytest

from newsletter import feed

BASE = "https://blog.example.com/2026/11/24/listen-first/"


def markdown(fragment: str, base: str = BASE) -> str:
    return feed.to_markdown(feed.sanitise(fragment, base))


def test_scripts_styles_frames_forms_and_handlers_go_with_their_content():
    md = markdown(
        '<p onclick="steal()">Ask, then wait.</p><script>alert("x")</script>'
        '<style>p { color: red }</style><iframe src="https://video.example.net/x">watch</iframe>'
        '<form action="/subscribe"><input name="email"><button>Join</button></form>'
        '<noscript>enable scripts</noscript><object data="x.swf">flash</object>'
        '<svg><text>drawn</text></svg><p style="display:none" class="x">Still here.</p>'
    )
    assert md == "Ask, then wait.\n\nStill here.\n"


def test_links_and_images_become_absolute_against_the_entry_link():
    md = markdown(
        '<p><a href="/2026/10/older/">root</a> <a href="../notes/">parent</a> '
        '<a href="img/x.html">path</a> <a href="#why">fragment</a> '
        '<a href="https://elsewhere.example.org/a">absolute</a></p>'
        '<p><img src="/wp-content/uploads/2026/11/desk.jpg" alt="A desk"></p>'
    )
    assert "[root](https://blog.example.com/2026/10/older/)" in md
    assert "[parent](https://blog.example.com/2026/11/24/notes/)" in md
    assert "[path](https://blog.example.com/2026/11/24/listen-first/img/x.html)" in md
    assert "[fragment](https://blog.example.com/2026/11/24/listen-first/#why)" in md
    assert "[absolute](https://elsewhere.example.org/a)" in md
    assert "![A desk](https://blog.example.com/wp-content/uploads/2026/11/desk.jpg)" in md


def test_dangerous_link_schemes_lose_their_address():
    md = markdown('<p><a href="javascript:alert(1)">one</a> <a href="data:text/html,x">two</a> '
                  '<a href="vbscript:x">three</a> <img src="data:image/png;base64,AAAA" alt="d"></p>')
    assert "javascript" not in md and "data:" not in md and "vbscript" not in md
    assert "one two three" in md


@pytest.mark.parametrize("pixel", [
    '<img src="https://pixel.example.net/t.gif?u=1" width="1" height="1" alt="">',
    '<img src="https://pixel.example.net/t.gif" width="0" height="0">',
    '<img src="https://pixel.example.net/t.gif" height="1px">',
])
def test_tracking_pixels_are_dropped(pixel):
    assert "pixel.example.net" not in markdown(f"<p>Read on.{pixel}</p>")


def test_a_real_image_with_dimensions_stays():
    md = markdown('<img src="/a.png" width="800" height="450" alt="Pipeline">')
    assert md == "![Pipeline](https://blog.example.com/a.png)\n"


def test_quotes_lists_headings_and_emphasis_keep_their_shape():
    md = markdown(
        "<h2>What I ask</h2><blockquote><p>My manager never asked.</p><p>Nobody did.</p>"
        "</blockquote><ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>"
        "<p><strong>bold</strong> and <em>leaning</em></p>"
    )
    assert "## What I ask" in md
    assert "> My manager never asked.\n>\n> Nobody did." in md
    assert "- one\n- two" in md and "1. first\n2. second" in md
    assert "**bold** and *leaning*" in md


@pytest.mark.parametrize("closing", [
    "<p><strong>Sell well</strong></p>", "<p>Sell well.</p>", "<p><em>sell well!</em></p>",
    "<p>SELL WELL</p>", "<p><strong><em>Sell well</em></strong>.</p>",
])
def test_the_sign_off_as_the_last_paragraph_is_dropped(closing):
    md = markdown(f"<p>Listen first.</p><p>Then lead.</p>{closing}")
    assert feed.drop_sign_off(md, "Sell well") == ("Listen first.\n\nThen lead.\n", True)


@pytest.mark.parametrize("body", [
    "<p>Sell well, and listen first.</p>",  # the sign-off inside a longer sentence
    "<p>Sell well</p><p>Then a question: who did you listen to today?</p>",  # not last
    "<p>Sell well</p>",  # the only paragraph: nothing would be left
])
def test_the_sign_off_stays_when_it_is_not_the_closing_paragraph(body):
    md = markdown(body)
    assert feed.drop_sign_off(md, "Sell well") == (md, False)


def test_the_configured_sign_off_is_the_one_compared():
    md = markdown("<p>Body.</p><p>Lead kindly!</p>")
    assert feed.drop_sign_off(md, "Sell well")[1] is False
    assert feed.drop_sign_off(md, "Lead kindly")[1] is True
