"""The confirmation email is rendered once per list and day; each reader gets their link."""

from __future__ import annotations

from newsletter import config as cfg
from newsletter import optin


def test_one_render_per_list_each_reader_with_their_own_link(letter, monkeypatch):
    config = cfg.load(letter / "newsletter.toml")
    calls = []
    real = optin.inline_css

    def counting(html: str) -> str:
        calls.append(html)
        return real(html)

    monkeypatch.setattr(optin, "inline_css", counting)
    monkeypatch.setattr(optin, "_rendered_cache", {})
    main = optin.ListRef(1, "main", "")
    first = optin.confirmation_message(config, main, "https://letter.example.com/confirm/aaa.111")
    second = optin.confirmation_message(config, main, "https://letter.example.com/confirm/bbb.222")
    assert len(calls) == 1
    for message, link, other in ((first, "aaa.111", "bbb.222"), (second, "bbb.222", "aaa.111")):
        assert f'href="https://letter.example.com/confirm/{link}"' in message.html
        assert f"https://letter.example.com/confirm/{link}" in message.text
        assert other not in message.html + message.text
        assert optin._LINK_MARK not in message.html + message.text
    assert first.html.replace("aaa.111", "bbb.222") == second.html
    optin.confirmation_message(config, optin.ListRef(2, "vip", "The VIP letter"), "https://x/1")
    assert len(calls) == 2, "another list has its own wording"
    assert "The VIP letter" in calls[1]


def test_a_link_is_escaped_in_the_html_part(letter, monkeypatch):
    config = cfg.load(letter / "newsletter.toml")
    monkeypatch.setattr(optin, "_rendered_cache", {})
    message = optin.confirmation_message(config, optin.ListRef(1, "main", ""),
                                         "https://letter.example.com/confirm/a?x=1&y=2")
    assert 'href="https://letter.example.com/confirm/a?x=1&amp;y=2"' in message.html
    assert "https://letter.example.com/confirm/a?x=1&y=2" in message.text
