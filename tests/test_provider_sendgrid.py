"""The SendGrid adapter against a local server that follows SendGrid's v3 Mail Send API."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import pytest
import requests

from newsletter import build
from newsletter.errors import ConfigError
from newsletter.message import MessageTemplate
from newsletter.providers import (
    FatalError,
    TransientError,
    UnknownOutcome,
    get_provider,
)

from .fakes.httpbase import Reply, json_reply, text_reply
from .fakes.sendgrid import KEY, FakeSendgrid
from .provider_util import MAINTENANCE_PAGE, batch_of, foreign_5xx

GATEWAY_PAGE = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center></body>\r\n</html>\r\n"


@pytest.fixture
def fake():
    with FakeSendgrid() as service:
        service.hang_seconds = 2.5
        yield service


def make(configure, sample_issue, fake, extra="", env=None, with_name=False):
    config = configure(
        f'name = "sendgrid"\nbase_url = "{fake.url}"\ntimeout = 1\n{extra}',
        env={"SENDGRID_API_KEY": KEY} if env is None else env,
    )
    rendered = build.render(config, sample_issue)
    if with_name:  # the built-in templates do not greet by name; this issue does
        rendered = dataclasses.replace(
            rendered,
            html=rendered.html.replace("</body>", "<p>Hello [[nl:name]]!</p></body>"),
            text=rendered.text + "\nHello [[nl:name]]!\n",
        )
    return get_provider(config), MessageTemplate(config, rendered, "main")


@pytest.fixture
def sendgrid(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    yield provider, template
    provider.close()


def posts(fake):
    return [r for r in fake.requests if r.path == "/v3/mail/send"]


def test_issue_travels_once_and_each_recipient_gets_their_own_values(sendgrid, fake):
    provider, template = sendgrid
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org", "c@example.net"]))
    assert [o.status for o in outcomes] == ["sent"] * 3
    message_id = fake.messages[0]["message_id"]
    assert [o.provider_id for o in outcomes] == [f"{message_id}#0", f"{message_id}#1", f"{message_id}#2"]
    [request] = posts(fake)
    body = request.json()
    html = next(c["value"] for c in body["content"] if c["type"] == "text/html")
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "[[nl:" not in html and "-nl_unsubscribe_url_h-" in html
    # the web link is the same for everyone and is filled in once per issue
    assert template.web_url in html and "web_url" not in json.dumps(body["personalizations"])
    # per recipient: only the address, the tag values, the headers and the delivery key
    first = body["personalizations"][0]
    assert set(first) == {"to", "substitutions", "headers", "custom_args"}
    assert first["custom_args"] == {"nl_delivery": "1"}
    assert set(first["substitutions"]) == {"-nl_email_h-", "-nl_email_t-", "-nl_unsubscribe_url_h-", "-nl_unsubscribe_url_t-"}
    for n, message in enumerate(fake.messages, start=1):
        url = f"https://letter.example.com/unsubscribe/t{n}"
        assert message["headers"]["List-Unsubscribe"] == f"<{url}>"
        assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["headers"]["List-Id"].endswith("<main.letter.example.com>")
        assert url in message["html"] and url in message["text"]
        assert "-nl_" not in message["html"] and "-nl_" not in message["text"]
        for other in set(range(1, 4)) - {n}:
            assert f"/t{other}\"" not in message["html"] and f"/t{other}\n" not in message["text"]
    assert fake.messages[1]["to"] == [{"email": "b@example.org", "name": "Reader 2"}]
    assert "b@example.org subscribed" in fake.messages[1]["text"]
    assert body["tracking_settings"] == {"subscription_tracking": {"enable": False}}


def test_html_gets_escaped_values_and_text_raw_values(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake, with_name=True)
    provider.send_batch(batch_of(template, ["a@example.com"], names=["Tom & <Jerry>"]))
    [message] = fake.messages
    assert "Hello Tom &amp; &lt;Jerry&gt;!" in message["html"]
    assert "Hello Tom & <Jerry>!" in message["text"]


def test_a_value_holding_a_tag_is_never_expanded_again(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake, with_name=True)
    sneaky = "-nl_unsubscribe_url_t- -nl_email_h-"
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"], names=[sneaky, "Bea"]))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    first, second = fake.messages
    assert f"Hello {sneaky}!" in first["text"] and f"Hello {sneaky}!" in first["html"]
    assert "Hello Bea!" in second["text"]
    subs = posts(fake)[0].json()["personalizations"][0]["substitutions"]
    assert all(key.startswith("-nl1_") for key in subs)  # a prefix no value of the batch contains


def test_bytes_per_recipient_are_a_small_fraction_of_the_issue(sendgrid, fake):
    provider, template = sendgrid
    provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(100)]))
    provider.send_batch(batch_of(template, [f"s{i}@example.com" for i in range(200)]))
    small, large = (len(r.body) for r in posts(fake))
    per_recipient = (large - small) / 100
    issue_size = len(template.rendered.html.encode()) + len(template.rendered.text.encode())
    assert per_recipient < 1000 < issue_size
    assert small < issue_size + 100 * 1000  # the issue once, not once per recipient


def test_a_batch_of_1000_goes_in_one_request(sendgrid, fake):
    provider, template = sendgrid
    assert provider.batch_size == 1000
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(1000)]))
    assert len(outcomes) == 1000 and all(o.status == "sent" for o in outcomes)
    assert len(posts(fake)) == 1 and len(fake.messages) == 1000


def test_a_400_naming_recipients_fails_them_and_sends_the_others(sendgrid, fake):
    provider, template = sendgrid
    fake.invalid = {"bad@example.com", "worse@example.com"}
    addresses = ["a@example.com", "bad@example.com", "c@example.com", "worse@example.com"]
    outcomes = provider.send_batch(batch_of(template, addresses))
    assert [o.status for o in outcomes] == ["sent", "failed", "sent", "failed"]
    assert "Does not contain a valid address" in outcomes[1].reason
    assert "personalizations.1.to.0.email" in outcomes[1].reason
    assert [m["to"][0]["email"] for m in fake.messages] == ["a@example.com", "c@example.com"]
    assert len(posts(fake)) == 2


def test_a_400_about_the_request_as_a_whole_is_fatal(sendgrid, fake):
    provider, template = sendgrid
    fake.faults = [json_reply(400, {"errors": [{"field": "from.email", "message": "The from email does not contain a valid address."}]})]
    with pytest.raises(FatalError, match=r"refused \(400\): The from email does not contain a valid address. \(from.email\)"):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages == []


def test_an_unverified_sender_is_fatal_and_says_so(sendgrid, fake):
    provider, template = sendgrid
    fake.verified = {"elsewhere.example"}
    with pytest.raises(FatalError, match="verified Sender Identity") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert "(403" in str(caught.value)


def test_a_bad_key_is_fatal_without_showing_the_key(fake, configure, sample_issue, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "SG.wrong-secret-value"
    provider, template = make(configure, sample_issue, fake, env={"SENDGRID_API_KEY": secret})
    with pytest.raises(FatalError) as sending:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    with pytest.raises(FatalError) as checking:
        provider.check()
    for error in (sending.value, checking.value):
        assert "SENDGRID_API_KEY" in str(error) and "401" in str(error)
        assert secret not in str(error)
    assert secret not in caplog.text and KEY not in caplog.text


def test_missing_key_is_a_config_error(fake, configure):
    config = configure(f'name = "sendgrid"\nbase_url = "{fake.url}"\n')
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY is not set"):
        get_provider(config)


def test_413_splits_the_batch_until_it_fits(sendgrid, fake):
    provider, template = sendgrid
    one = len(json.dumps(template.rendered.html)) + len(json.dumps(template.rendered.text))
    fake.max_bytes = one + 12 * 700  # room for about a dozen recipients per request
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(40)]))
    assert [o.status for o in outcomes] == ["sent"] * 40
    assert [o.key for o in outcomes] == list(range(1, 41))
    assert len(fake.messages) == 40 and len(fake.accepted) > 2
    assert max(fake.accepted) <= fake.max_bytes
    assert sorted(m["to"][0]["email"] for m in fake.messages) == sorted(f"r{i}@example.com" for i in range(40))


def test_413_for_a_single_recipient_is_fatal(sendgrid, fake):
    provider, template = sendgrid
    fake.max_bytes = 1000
    with pytest.raises(FatalError, match="larger than SendGrid accepts"):
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"]))
    assert fake.messages == []


def test_a_failure_after_a_split_keeps_what_was_sent(sendgrid, fake):
    provider, template = sendgrid
    fake.faults = [Reply(413, {"errors": [{"field": None, "message": "Payload Too Large"}]}), None, 500]
    with pytest.raises(TransientError) as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent"), (2, "sent")]
    assert [m["to"][0]["email"] for m in fake.messages] == ["a@example.com", "b@example.com"]


def test_429_waits_until_the_rate_window_resets(sendgrid, fake):
    provider, template = sendgrid
    fake.reset_in = 30
    fake.faults = [429]
    with pytest.raises(TransientError, match="rate limited") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert 27 <= caught.value.retry_after <= 31
    assert fake.messages == []


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (500, TransientError, "server error 500"),
        (503, TransientError, "server error 503"),
        ("hang", UnknownOutcome, "took more than 1 s"),
        ("drop", UnknownOutcome, "dropped"),
        ("drop-after", UnknownOutcome, "dropped"),
    ],
)
def test_transport_faults(sendgrid, fake, fault, error, text):
    provider, template = sendgrid
    fake.faults = [fault]
    with pytest.raises(error, match=text) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.partial == []
    # "drop-after": SendGrid took it, but we cannot know: the outcome is unknown, never "sent"
    assert len(fake.messages) == (1 if fault == "drop-after" else 0)
    assert [o.status for o in provider.send_batch(batch_of(template, ["z@example.com"]))] == ["sent"]


def test_names_with_commas_are_made_acceptable(sendgrid, fake):
    provider, template = sendgrid
    outcomes = provider.send_batch(batch_of(template, ["a@example.com"], names=["Berg, Ann; PhD"]))
    assert outcomes[0].status == "sent"
    assert fake.messages[0]["to"][0]["name"] == "Berg  Ann  PhD"


def test_an_address_headers_cannot_carry_fails_alone(sendgrid, fake):
    provider, template = sendgrid
    outcomes = provider.send_batch(batch_of(template, ["jörg@example.com", "b@bücher.example"]))
    assert outcomes[0].status == "failed" and "non-ASCII" in outcomes[0].reason
    assert outcomes[1].status == "sent"
    assert fake.messages[0]["to"][0]["email"] == "b@xn--bcher-kva.example"


def test_check_reports_the_scope(sendgrid, fake):
    provider, _ = sendgrid
    assert "API key accepted with the mail.send scope" in provider.check()
    fake.scopes = ["stats.read"]
    with pytest.raises(FatalError, match="lacks the mail.send scope"):
        provider.check()


def test_region_eu_uses_the_eu_api(configure):
    config = configure('name = "sendgrid"\nregion = "eu"\n', env={"SENDGRID_API_KEY": KEY})
    assert get_provider(config).client.base_url == "https://api.eu.sendgrid.com"
    config = configure('name = "sendgrid"\nregion = "mars"\n', env={"SENDGRID_API_KEY": KEY})
    with pytest.raises(ConfigError, match="region: 'mars' is not a SendGrid region"):
        get_provider(config)


# -- the local server refuses what SendGrid refuses ---------------------------------------


def mail(personalizations, **extra):
    return {
        "from": {"email": "ann@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "x"}, {"type": "text/html", "value": "<p>x</p>"}],
        "personalizations": personalizations,
        **extra,
    }


def person(i):
    return {"to": [{"email": f"r{i}@example.com"}],
            "headers": {"List-Unsubscribe": f"<https://x/u/{i}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}}


def post(fake, body, key=KEY):
    return requests.post(f"{fake.url}/v3/mail/send", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=5)


def test_server_refuses_more_than_1000_personalizations(fake):
    response = post(fake, mail([person(i) for i in range(1001)]))
    assert response.status_code == 400
    assert "limited to 1000 personalizations" in response.json()["errors"][0]["message"]
    assert post(fake, mail([person(i) for i in range(1000)])).status_code == 202


def test_server_refuses_mail_without_unsubscribe_headers(fake):
    bare = {"to": [{"email": "r@example.com"}]}
    response = post(fake, mail([person(1), bare]))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "personalizations.1.headers"
    assert fake.messages == []


def test_server_refuses_bad_keys_html_first_and_reserved_headers(fake):
    assert post(fake, mail([person(1)]), key="nope").status_code == 401
    html_first = mail([person(1)], content=[{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}])
    assert post(fake, html_first).json()["errors"][0]["field"] == "content"
    reserved = mail([person(1)], headers={"Subject": "no"})
    assert "reserved" in post(fake, reserved).json()["errors"][0]["message"]
    twice = mail([person(1), person(1)])
    assert "duplicate" in post(fake, twice).json()["errors"][0]["message"]
    assert fake.messages == []


def test_server_429_carries_the_reset_time(fake):
    fake.faults = [429]
    response = post(fake, mail([person(1)]))
    assert response.status_code == 429
    assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time()) + 25
    assert response.headers["X-RateLimit-Remaining"] == "0"


def test_a_subject_holding_tag_text_keeps_it(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    template.subject = "Why -nl_email_t- is not your name"
    provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages[0]["subject"] == "Why -nl_email_t- is not your name"


def test_a_recipient_failed_before_the_call_stays_failed_when_the_call_fails(sendgrid, fake):
    provider, template = sendgrid
    fake.faults = [500]
    with pytest.raises(TransientError) as caught:
        provider.send_batch(batch_of(template, ["jörg@example.com", "b@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "failed")]
    assert "non-ASCII" in caught.value.partial[0].reason


# -- what an answer proves: refused, or perhaps taken ---------------------------------------


def assert_one_line(error, status):
    text = str(error)
    assert text.startswith("sendgrid: ") and str(status) in text
    assert "\n" not in text and "\r" not in text and "<" not in text and len(text) < 300


def test_a_502_after_sendgrid_took_the_mail_is_unknown_and_not_refused(sendgrid, fake):
    provider, template = sendgrid
    fake.faults = [("after", text_reply(502, GATEWAY_PAGE))]
    with pytest.raises(UnknownOutcome, match="gateway error 502") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.org"]))
    assert_one_line(caught.value, 502)
    assert caught.value.partial == []
    # SendGrid queued the request, once: retrying it would give both readers a second copy
    assert len(fake.accepted) == 1
    assert [m["to"][0]["email"] for m in fake.messages] == ["a@example.com", "b@example.org"]


@pytest.mark.parametrize(
    "fault",
    [
        ("after", 504),  # even with SendGrid's own errors body: a gateway's status
        ("after", text_reply(503, MAINTENANCE_PAGE)),
        ("after", Reply(200)),  # 200 is not SendGrid's answer to a (non-sandbox) send
        "drop-after",
        "cut-after",
    ],
)
def test_an_answer_lost_after_sendgrid_took_the_mail_is_unknown(sendgrid, fake, fault):
    provider, template = sendgrid
    fake.faults = [fault]
    with pytest.raises(UnknownOutcome):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert len(fake.accepted) == 1 and len(fake.messages) == 1


@pytest.mark.parametrize(("fault", "status"), foreign_5xx(json_reply(500, {"message": "Internal Server Error"})))  # JSON, but not sendgrid's
def test_a_5xx_not_known_to_come_from_sendgrid_is_unknown(sendgrid, fake, fault, status):
    provider, template = sendgrid
    fake.faults = [fault]
    with pytest.raises(UnknownOutcome) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert_one_line(caught.value, status)
    assert "may have been" in str(caught.value)
    assert fake.messages == []  # nothing was taken here, but nothing in the answer proves it


@pytest.mark.parametrize(
    "fault",
    [
        json_reply(500, {"errors": [{"field": None, "message": "An internal server error occurred.", "help": None}]}),
        json_reply(503, {"errors": [{"field": None, "message": "The v3 API is not available."}]}, **{"Retry-After": "30"}),
    ],
)
def test_a_5xx_with_sendgrids_errors_body_is_a_refusal(sendgrid, fake, fault):
    provider, template = sendgrid
    fake.faults = [fault]
    with pytest.raises(TransientError, match=f"server error {fault.status}") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.retry_after == (30.0 if fault.status == 503 else None)
    assert fake.messages == []
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]


def test_a_gateway_error_after_a_split_keeps_what_was_sent_and_the_rest_is_unknown(sendgrid, fake):
    provider, template = sendgrid
    fake.faults = [Reply(413, {"errors": [{"field": None, "message": "Payload Too Large"}]}), None, ("after", 502)]
    with pytest.raises(UnknownOutcome) as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent"), (2, "sent")]
    assert [m["to"][0]["email"] for m in fake.messages] == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
