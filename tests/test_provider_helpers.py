"""The small helpers the API adapters share: placeholders to service tags, unsubscribe
headers from their per-issue shape, and the HTTP client's extra status handling."""

from __future__ import annotations

import time

import pytest

from newsletter import build
from newsletter import config as cfg
from newsletter.message import HeaderInjection, MessageTemplate
from newsletter.providers import TransientError, UnknownOutcome, UnsubscribeHeaders, retag
from newsletter.providers.http import HttpClient, describe_body, reset_after

from .conftest import BASIC_TOML
from .fakes.httpbase import FakeService, Reply, json_reply, text_reply


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


class Echo(FakeService):
    """Answers 200 and counts what it took; its own error body is {"own": ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.taken = 0

    def error_reply(self, status):
        return json_reply(status, {"own": f"error {status}"})

    def dispatch(self, request):
        with self.lock:
            self.taken += 1
        return json_reply(200, {"ok": True})


def own_error(response) -> bool:
    body = response.json() if response.content.startswith(b"{") else {}
    return "own" in body


@pytest.mark.parametrize("status", [500, 503, 507])
def test_a_5xx_is_a_refusal_only_with_the_services_own_error_body(status):
    with Echo() as service:
        knows = HttpClient("svc", service.url, timeout=(1, 1), error_body=own_error)
        blind = HttpClient("svc", service.url, timeout=(1, 1))  # no test: nothing proves a refusal
        service.faults = [status, status, text_reply(status, "<html><body>down</body></html>")]
        with pytest.raises(TransientError, match=f"svc: server error {status}$"):
            knows.request("POST", "/")
        with pytest.raises(UnknownOutcome, match=f"svc: server error {status} without svc's error body"):
            blind.request("POST", "/")
        with pytest.raises(UnknownOutcome, match=r"\(an HTML page\); the request may have been accepted"):
            knows.request("POST", "/")
        assert service.taken == 0
        knows.close()
        blind.close()


@pytest.mark.parametrize("status", [502, 504])
def test_502_and_504_are_unknown_even_with_the_services_own_error_body(status):
    with Echo() as service:
        client = HttpClient("svc", service.url, timeout=(1, 1), error_body=own_error)
        service.faults = [status, ("after", status)]
        for _ in range(2):
            with pytest.raises(UnknownOutcome, match=f"svc: gateway error {status} .* may have been passed on"):
                client.request("POST", "/")
        assert service.taken == 1  # the second was taken, then the answer was replaced
        # a caller that reads these statuses itself still gets them
        service.faults = [status]
        assert client.request("POST", "/", passthrough=(status,)).status_code == status
        client.close()


def test_an_unknown_answer_is_told_in_one_short_line_without_markup():
    page = "<html>\n<head><title>Oops</title></head>\n<body>" + "<p>lorem ipsum</p>\n" * 500 + "</body></html>"
    proxy = "upstream connect error or disconnect/reset before headers.\r\n   reset reason:\tconnection failure " * 20
    with Echo() as service:
        client = HttpClient("svc", service.url, timeout=(1, 1), error_body=own_error)
        service.faults = [text_reply(500, page), text_reply(500, proxy, "text/plain"), Reply(503), ("after", text_reply(502, page))]
        messages = []
        for _ in range(4):
            with pytest.raises(UnknownOutcome) as caught:
                client.request("POST", "/")
            messages.append(str(caught.value))
        client.close()
    for message in messages:
        assert message.startswith("svc: ") and len(message) < 250
        assert not any(ch in message for ch in "\r\n\t<>")
    assert "an HTML page" in messages[0] and "an HTML page" in messages[3]
    assert "upstream connect error or disconnect/reset before headers. reset reason: conn" in messages[1]
    assert messages[1].count("upstream") == 1 and "..." in messages[1]
    assert "an empty body" in messages[2]


def test_an_answer_that_breaks_off_is_unknown():
    with Echo() as service:
        client = HttpClient("svc", service.url, timeout=(1, 1))
        service.faults = ["cut-after"]
        with pytest.raises(UnknownOutcome, match="broke off"):
            client.request("POST", "/")
        assert service.taken == 1
        client.close()


def test_describe_body_names_what_came_back():
    class Fake:
        def __init__(self, text, kind=""):
            self.text, self.content, self.headers = text, text.encode(), {"Content-Type": kind}

    assert describe_body(Fake("")) == "an empty body"
    assert describe_body(Fake("  \n")) == "an empty body"
    assert describe_body(Fake("<!doctype html><p>x</p>")) == "an HTML page"
    assert describe_body(Fake("oops", "text/html")) == "an HTML page"
    assert describe_body(Fake('{"a": 1}')) == "JSON in another shape"
    assert describe_body(Fake("Service\n  Unavailable", "text/plain")) == "Service Unavailable"
