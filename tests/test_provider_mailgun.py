"""The Mailgun adapter against a local server that follows Mailgun's messages API."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest
import requests
from werkzeug.formparser import parse_form_data

from newsletter import build
from newsletter.errors import ConfigError
from newsletter.message import MessageTemplate
from newsletter.providers import (
    FatalError,
    TransientError,
    UnknownOutcome,
    get_provider,
)

from .fakes.httpbase import json_reply, text_reply
from .fakes.mailgun import DOMAIN, KEY, FakeMailgun
from .provider_util import MAINTENANCE_PAGE, batch_of, foreign_5xx

GATEWAY_PAGE = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center></body>\r\n</html>\r\n"


@pytest.fixture
def fake():
    with FakeMailgun() as service:
        service.hang_seconds = 2.5
        yield service


def make(configure, sample_issue, fake, extra="", env=None, html_extra="", text_extra=""):
    config = configure(
        f'name = "mailgun"\ndomain = "{DOMAIN}"\nbase_url = "{fake.url}"\ntimeout = 1\n{extra}',
        env={"MAILGUN_API_KEY": KEY} if env is None else env,
    )
    rendered = build.render(config, sample_issue)
    if html_extra or text_extra:
        rendered = dataclasses.replace(
            rendered,
            html=rendered.html.replace("</body>", f"{html_extra}</body>"),
            text=rendered.text + text_extra,
        )
    return get_provider(config), MessageTemplate(config, rendered, "main")


@pytest.fixture
def mailgun(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    yield provider, template
    provider.close()


def form_of(request):
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": request.headers["content-type"],
               "CONTENT_LENGTH": str(len(request.body)), "wsgi.input": io.BytesIO(request.body)}
    return parse_form_data(environ, max_form_memory_size=None)[1]


def calls(fake):
    return [r for r in fake.requests if r.path.endswith("/messages")]


def test_one_call_per_batch_with_the_issue_once_and_values_per_recipient(mailgun, fake):
    provider, template = mailgun
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org", "c@example.net"]))
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert len({o.provider_id for o in outcomes}) == 1  # one id for the whole call
    assert outcomes[0].provider_id == fake.messages[0]["id"].strip("<>")
    [call] = calls(fake)
    assert call.path == f"/v3/{DOMAIN}/messages"
    form = form_of(call)
    assert len(form.getlist("html")) == 1 and len(form.getlist("text")) == 1
    assert form.getlist("to") == ["Reader 1 <a@example.com>", "Reader 2 <b@example.org>", "Reader 3 <c@example.net>"]
    assert "%recipient.nl_unsubscribe_url_h%" in form["html"] and "[[nl:" not in form["html"]
    assert template.web_url in form["html"]  # the same for everyone: filled in once
    variables = json.loads(form["recipient-variables"])
    assert set(variables) == {"a@example.com", "b@example.org", "c@example.net"}
    assert variables["b@example.org"]["nl_unsubscribe_url_t"] == "https://letter.example.com/unsubscribe/t2"
    assert variables["b@example.org"]["nl_key"] == "2"
    for n, message in enumerate(fake.messages, start=1):
        url = f"https://letter.example.com/unsubscribe/t{n}"
        assert message["headers"]["List-Unsubscribe"] == f"<{url}>"
        assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["headers"]["List-Id"].endswith("<main.letter.example.com>")
        assert message["variables"] == {"nl-delivery": str(n), "nl-campaign": "c1"}
        assert url in message["html"] and url in message["text"]
        assert "%recipient" not in message["html"] + message["text"]


def test_no_recipient_sees_another(mailgun, fake):
    provider, template = mailgun
    addresses = ["a@example.com", "b@example.org", "c@example.net"]
    provider.send_batch(batch_of(template, addresses))
    assert [m["to"] for m in fake.messages] == ["Reader 1 <a@example.com>", "Reader 2 <b@example.org>", "Reader 3 <c@example.net>"]
    for message in fake.messages:
        others = [a for a in addresses if a != message["address"]]
        everything = message["to"] + message["html"] + message["text"] + json.dumps(message["headers"])
        assert not any(other in everything for other in others)


def test_without_recipient_variables_the_server_shows_everyone(fake):
    """The control for the test above: Mailgun's documented behaviour without batch mode."""
    fields = {"from": "ann@example.com", "subject": "Hi", "text": "x", "h:List-Unsubscribe": "<https://x/u>",
              "h:List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    response = requests.post(f"{fake.url}/v3/{DOMAIN}/messages", auth=("api", KEY), timeout=5,
                             data=[*fields.items(), ("to", "a@example.com"), ("to", "b@example.org")])
    assert response.status_code == 200
    [message] = fake.messages
    assert message["to"] == "a@example.com, b@example.org"


def test_html_gets_escaped_values_and_text_raw_values(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake, html_extra="<p>Hi [[nl:name]]!</p>", text_extra="Hi [[nl:name]]!\n")
    provider.send_batch(batch_of(template, ["a@example.com"], names=["Tom & <Jerry>"]))
    [message] = fake.messages
    assert "Hi Tom &amp; &lt;Jerry&gt;!" in message["html"]
    assert "Hi Tom & <Jerry>!" in message["text"]


def test_mailgun_variables_in_values_or_the_issue_are_never_expanded(fake, configure, sample_issue):
    provider, template = make(
        configure, sample_issue, fake,
        html_extra="<p>Hi [[nl:name]]! Write %recipient.email% to greet.</p>",
        text_extra="Hi [[nl:name]]! Write %recipient.email% to greet.\n",
    )
    sneaky = "%recipient.nl_unsubscribe_url_t% %recipient%"
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"], names=[sneaky, "Bea"]))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    first = fake.messages[0]
    joined = sneaky.replace("%recipient", "%\u2060recipient")
    assert f"Hi {joined}!" in first["text"]
    assert "Hi &#37;recipient.nl_unsubscribe_url_t% &#37;recipient%!" in first["html"]
    assert "Write %\u2060recipient.email% to greet." in first["text"]
    assert "Write &#37;recipient.email% to greet." in first["html"]
    assert first["text"].count("unsubscribe/t1") == 1  # only the footer link, not the name


def test_an_invalid_address_is_found_by_halving_and_fails_alone(mailgun, fake):
    provider, template = mailgun
    addresses = [f"r{i}@example.com" for i in range(16)]
    fake.invalid = {"r11@example.com"}
    outcomes = provider.send_batch(batch_of(template, addresses))
    assert [o.status for o in outcomes].count("sent") == 15
    assert outcomes[11].status == "failed" and "not a valid address" in outcomes[11].reason
    assert sorted(m["address"] for m in fake.messages) == sorted(set(addresses) - {"r11@example.com"})
    assert len(calls(fake)) <= 1 + 2 * 4  # log2(16) rounds of halving


def test_a_400_about_the_request_is_fatal(mailgun, fake):
    provider, template = mailgun
    # about the sender, not a recipient: halving cannot help, every call would fail
    fake.faults = [json_reply(400, {"message": "'from' parameter is not a valid address. please check documentation"})]
    with pytest.raises(FatalError, match=r"refused \(400\): 'from' parameter is not a valid address"):
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"]))
    assert len(calls(fake)) == 1 and fake.messages == []


def test_a_bad_key_is_fatal_without_showing_the_key(fake, configure, sample_issue, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "key-not-the-right-one"
    provider, template = make(configure, sample_issue, fake, env={"MAILGUN_API_KEY": secret})
    with pytest.raises(FatalError) as sending:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    with pytest.raises(FatalError) as checking:
        provider.check()
    for error in (sending.value, checking.value):
        assert "MAILGUN_API_KEY" in str(error) and "401" in str(error)
        assert secret not in str(error)
    assert secret not in caplog.text and KEY not in caplog.text


def test_an_unknown_domain_names_the_region(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake, extra="")
    provider.domain = "mg.elsewhere.example"
    with pytest.raises(FatalError, match=r"domain mg.elsewhere.example was not found \(US region") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert 'set region = "eu"' in str(caught.value)
    with pytest.raises(FatalError, match="was not found"):
        provider.check()


def test_a_sandbox_domain_refuses_strangers(fake, configure, sample_issue):
    fake.domains[DOMAIN]["type"] = "sandbox"
    provider, template = make(configure, sample_issue, fake)
    with pytest.raises(FatalError, match="Sandbox subdomains are for test purposes only"):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert "sandbox domain" in provider.check()


def test_check_reports_the_domain(mailgun, fake):
    provider, _ = mailgun
    assert provider.check() == f"mailgun: API key accepted; domain {DOMAIN} is active (US region, {fake.url})"
    fake.domains[DOMAIN]["state"] = "unverified"
    with pytest.raises(FatalError, match="is unverified, not active; finish its DNS set-up"):
        provider.check()


def test_429_is_retried_as_mailgun_says(mailgun, fake):
    provider, template = mailgun
    fake.retry_after = "7"
    fake.faults = [429]
    with pytest.raises(TransientError, match="rate limited") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.retry_after == 7.0
    assert fake.messages == []


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (500, TransientError, "server error 500"),
        (503, TransientError, "server error 503"),
        ("hang", UnknownOutcome, "took more than 1 s"),
        ("drop", UnknownOutcome, "dropped"),
        ("hang-after", UnknownOutcome, "took more than 1 s"),
    ],
)
def test_transport_faults(mailgun, fake, fault, error, text):
    provider, template = mailgun
    fake.faults = [fault]
    with pytest.raises(error, match=text):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert len(fake.messages) == (1 if fault == "hang-after" else 0)
    assert [o.status for o in provider.send_batch(batch_of(template, ["z@example.com"]))] == ["sent"]


def test_a_failure_after_halving_keeps_what_was_sent(mailgun, fake):
    provider, template = mailgun
    fake.faults = [json_reply(400, {"message": "'to' parameter is not a valid address. please check documentation"}), None, 503]
    with pytest.raises(TransientError) as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent"), (2, "sent")]


def test_a_batch_of_1000_goes_in_one_call_and_1001_is_refused(mailgun, fake):
    provider, template = mailgun
    assert provider.batch_size == 1000
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(1000)]))
    assert all(o.status == "sent" for o in outcomes) and len(fake.messages) == 1000
    assert len(calls(fake)) == 1
    fields = [("from", "ann@example.com"), ("subject", "Hi"), ("text", "x"),
              ("h:List-Unsubscribe", "<https://x/u>"), ("h:List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    fields += [("to", f"r{i}@example.com") for i in range(1001)]
    response = requests.post(f"{fake.url}/v3/{DOMAIN}/messages", auth=("api", KEY), data=fields, timeout=5)
    assert response.status_code == 400 and "1000" in response.json()["message"]


def test_the_server_refuses_mail_without_unsubscribe_headers(fake):
    fields = [("from", "ann@example.com"), ("subject", "Hi"), ("text", "x"), ("to", "a@example.com")]
    response = requests.post(f"{fake.url}/v3/{DOMAIN}/messages", auth=("api", KEY), data=fields, timeout=5)
    assert response.status_code == 400 and "List-Unsubscribe" in response.json()["message"]
    assert fake.messages == []


def test_a_repeated_address_in_a_batch_fails_instead_of_sharing_values(mailgun, fake):
    provider, template = mailgun
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "A@example.com"]))
    assert [o.status for o in outcomes] == ["sent", "failed"]
    assert "twice" in outcomes[1].reason


def test_regions_and_base_url(configure, fake):
    env = {"MAILGUN_API_KEY": KEY}
    assert get_provider(configure('name = "mailgun"\n', env=env)).client.base_url == "https://api.mailgun.net"
    eu = get_provider(configure('name = "mailgun"\nregion = "eu"\n', env=env))
    assert eu.client.base_url == "https://api.eu.mailgun.net"
    assert eu.domain == "example.com"  # the sender's domain unless [provider] domain says otherwise
    override = get_provider(configure(f'name = "mailgun"\nregion = "eu"\nbase_url = "{fake.url}"\n', env=env))
    assert override.client.base_url == fake.url
    with pytest.raises(ConfigError, match="region: 'asia' is not a Mailgun region"):
        get_provider(configure('name = "mailgun"\nregion = "asia"\n', env=env))
    with pytest.raises(ConfigError, match="MAILGUN_API_KEY is not set"):
        get_provider(configure('name = "mailgun"\n'))


def test_413_halves_the_call_until_it_fits(mailgun, fake):
    provider, template = mailgun
    issue = len(template.rendered.html.encode()) + len(template.rendered.text.encode())
    fake.max_bytes = issue + 2000 + 10 * 600  # the shared fields and about ten recipients
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(40)]))
    assert [o.status for o in outcomes] == ["sent"] * 40
    assert len({o.provider_id for o in outcomes}) > 2  # several calls, one id each
    assert len(fake.messages) == 40
    fake.max_bytes = 100
    with pytest.raises(FatalError, match="larger than Mailgun accepts"):
        provider.send_batch(batch_of(template, ["a@example.com"]))


def test_a_subject_holding_mailgun_variables_keeps_them(mailgun, fake):
    provider, template = mailgun
    template.subject = "Dear %recipient%"
    provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages[0]["subject"] == "Dear %\u2060recipient%"


def test_a_recipient_failed_before_the_call_stays_failed_when_the_call_fails(mailgun, fake):
    provider, template = mailgun
    fake.faults = [500]
    with pytest.raises(TransientError) as caught:
        provider.send_batch(batch_of(template, ["jörg@example.com", "b@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "failed")]
    assert "non-ASCII" in caught.value.partial[0].reason


# -- what an answer proves: refused, or perhaps taken ---------------------------------------


def assert_one_line(error, status):
    text = str(error)
    assert text.startswith("mailgun: ") and str(status) in text
    assert "\n" not in text and "\r" not in text and "<" not in text and len(text) < 300


def test_a_502_after_mailgun_took_the_call_is_unknown_and_not_refused(mailgun, fake):
    provider, template = mailgun
    fake.faults = [("after", text_reply(502, GATEWAY_PAGE))]
    with pytest.raises(UnknownOutcome, match="gateway error 502") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.org"]))
    assert_one_line(caught.value, 502)
    # Mailgun queued the call, once: retrying it would give both readers a second copy
    assert fake.calls == 1
    assert [m["address"] for m in fake.messages] == ["a@example.com", "b@example.org"]


@pytest.mark.parametrize(
    "fault",
    [
        ("after", 504),  # even with Mailgun's own JSON message: a gateway's status
        ("after", text_reply(503, MAINTENANCE_PAGE)),
        ("after", text_reply(200, "<html><body>OK</body></html>")),  # no message id: not Mailgun's answer
        "drop-after",
        "cut-after",
    ],
)
def test_an_answer_lost_after_mailgun_took_the_call_is_unknown(mailgun, fake, fault):
    provider, template = mailgun
    fake.faults = [fault]
    with pytest.raises(UnknownOutcome):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.calls == 1 and len(fake.messages) == 1


@pytest.mark.parametrize(("fault", "status"), foreign_5xx(json_reply(500, {"errors": ["Internal Server Error"]})))  # JSON, but not mailgun's
def test_a_5xx_not_known_to_come_from_mailgun_is_unknown(mailgun, fake, fault, status):
    provider, template = mailgun
    fake.faults = [fault]
    with pytest.raises(UnknownOutcome) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert_one_line(caught.value, status)
    assert "may have been" in str(caught.value)
    assert fake.messages == []  # nothing was taken here, but nothing in the answer proves it


@pytest.mark.parametrize(
    "fault",
    [
        json_reply(500, {"message": "Internal Server Error"}),
        json_reply(503, {"message": "Service is temporarily unavailable"}, **{"Retry-After": "30"}),
    ],
)
def test_a_5xx_with_mailguns_message_body_is_a_refusal(mailgun, fake, fault):
    provider, template = mailgun
    fake.faults = [fault]
    with pytest.raises(TransientError, match=f"server error {fault.status}") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.retry_after == (30.0 if fault.status == 503 else None)
    assert fake.messages == []
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
