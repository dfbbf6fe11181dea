"""The small helpers the API adapters share: placeholders to service tags, unsubscribe
headers from their per-issue shape, and the HTTP client's extra status handling."""

from __future__ import annotations

import time

import pytest

from newsletter import build
from newsletter import config as cfg
from newsletter.message import HeaderInjection, MessageTemplate
from newsletter.providers import TransientError, UnsubscribeHeaders, retag
from newsletter.providers.http import HttpClient, reset_after

from .conftest import BASIC_TOML
from .fakes.httpbase import FakeService, Reply


def test_retag_replaces_every_placeholder_and_nothing_else():
    text = "Hi [[nl:name]] <[[nl:email]]> [[nl:name]] [[nl:other]] [nl:name]"
    assert retag(text, {"name": "-n-", "email": "-e-"}) == "Hi -n- <-e-> -n- [[nl:other]] [nl:name]"


def test_unsubscribe_headers_match_the_message_headers(letter, sample_issue):
    (letter / "newsletter.toml").write_text(
        BASIC_TOML.replace("[schedule]", 'unsubscribe_mailto = "leave@example.com"\n\n[schedule]')
    )
    config = cfg.load(letter / "newsletter.toml", environ={})
    template = MessageTemplate(config, build.render(config, sample_issue), "main")
    headers = UnsubscribeHeaders(template)
    url = "https://letter.example.com/unsubscribe/abc.def"
    expected = template.headers_for(url)
    assert headers.for_url(url) == expected["List-Unsubscribe"]
    assert "mailto:leave@example.com" in headers.for_url(url)
    assert headers.post == expected["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with pytest.raises(HeaderInjection):
        headers.for_url("https://letter.example.com/u/x\r\nBcc: everyone@example.com")


class Answers(FakeService):
    def dispatch(self, request):
        return Reply(429, {"errors": []}, {"X-RateLimit-Reset": str(int(time.time()) + 20), "Retry-After": "2"})


def test_passthrough_returns_a_status_instead_of_raising():
    with Answers() as service:
        client = HttpClient("svc", service.url, timeout=(1, 1))
        with pytest.raises(TransientError) as caught:
            client.request("GET", "/")
        assert caught.value.retry_after == 2.0  # the default: Retry-After
        response = client.request("GET", "/", passthrough=(429,))
        assert response.status_code == 429
        assert 18 <= reset_after(response, "X-RateLimit-Reset") <= 20
        assert reset_after(response, "X-Missing") is None
        client.close()
