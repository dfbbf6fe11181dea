"""The Postmark adapter against a local server that follows Postmark's batch API."""

from __future__ import annotations

import pytest

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
from .fakes.postmark import TOKEN, FakePostmark
from .provider_util import MAINTENANCE_PAGE, batch_of, foreign_5xx

GATEWAY_PAGE = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center></body>\r\n</html>\r\n"


@pytest.fixture
def fake():
    with FakePostmark() as service:
        service.hang_seconds = 2.5
        yield service


@pytest.fixture
def postmark(fake, configure, sample_issue):
    config = configure(
        f'name = "postmark"\nbase_url = "{fake.url}"\ntimeout = 1\n',
        env={"POSTMARK_SERVER_TOKEN": TOKEN},
    )
    provider = get_provider(config)
    template = MessageTemplate(config, build.render(config, sample_issue), "main")
    yield provider, template
    provider.close()


def test_batch_is_sent_with_headers_stream_and_bodies(postmark, fake):
    provider, template = postmark
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org"]))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert all(o.provider_id for o in outcomes)
    first = fake.messages[0]
    assert first["To"] == "Reader 1 <a@example.com>"
    assert first["From"] == "Ann Berg <ann@example.com>"
    assert first["Subject"] == "Sälj väl"
    assert first["MessageStream"] == "broadcast"
    headers = {h["Name"]: h["Value"] for h in first["Headers"]}
    assert headers["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/t1>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://letter.example.com/unsubscribe/t1" in first["HtmlBody"]
    assert "https://letter.example.com/unsubscribe/t1" in first["TextBody"]
    assert "[[nl:" not in first["HtmlBody"]


def test_partial_failures_map_to_each_recipient(postmark, fake):
    provider, template = postmark
    fake.inactive = {"gone@example.com"}
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "gone@example.com", "c@example.com"]))
    assert [o.status for o in outcomes] == ["sent", "failed", "sent"]
    assert outcomes[1].reason.startswith("postmark 406:")
    assert len(fake.messages) == 2


def test_bad_token_stops_with_the_variable_named(fake, configure, sample_issue):
    config = configure(f'name = "postmark"\nbase_url = "{fake.url}"\n', env={"POSTMARK_SERVER_TOKEN": "wrong-token"})
    provider = get_provider(config)
    template = MessageTemplate(config, build.render(config, sample_issue), "main")
    with pytest.raises(FatalError) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert "POSTMARK_SERVER_TOKEN" in str(caught.value)
    assert "wrong-token" not in str(caught.value)
    with pytest.raises(FatalError):
        provider.check()


def test_missing_token_is_a_config_error(fake, configure):
    config = configure(f'name = "postmark"\nbase_url = "{fake.url}"\n')
    with pytest.raises(ConfigError, match="POSTMARK_SERVER_TOKEN is not set"):
        get_provider(config)


def test_check_reports_the_server(postmark):
    provider, _ = postmark
    assert "server token accepted" in provider.check()


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (429, TransientError, "rate limited"),
        (500, TransientError, "server error 500"),
        (503, TransientError, "server error 503"),
        ("hang", UnknownOutcome, "took more than 1 s"),
        ("drop", UnknownOutcome, "dropped"),
    ],
)
def test_transport_faults(postmark, fake, fault, error, text):
    provider, template = postmark
    fake.faults = [fault]
    with pytest.raises(error) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert text in str(caught.value)
    if fault == 429:
        assert caught.value.retry_after == 1.0
    assert fake.messages == []
    # the next call goes through
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]


def test_unprocessable_batch_is_fatal(postmark, fake):
    from .fakes.httpbase import json_reply

    provider, template = postmark
    fake.faults = [json_reply(422, {"ErrorCode": 400, "Message": "The 'From' address you supplied is not a Sender Signature."})]
    with pytest.raises(FatalError, match="Sender Signature"):
        provider.send_batch(batch_of(template, ["a@example.com"]))


def test_batch_size_is_postmarks_limit(postmark, fake):
    provider, template = postmark
    assert provider.batch_size == 500
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(500)]))
    assert len(outcomes) == 500 and len(fake.messages) == 500


# -- what an answer proves: refused, or perhaps taken ---------------------------------------


def assert_one_line(error, status):
    text = str(error)
    assert text.startswith("postmark: ") and str(status) in text
    assert "\n" not in text and "\r" not in text and "<" not in text and len(text) < 300


def test_a_502_after_postmark_took_the_batch_is_unknown_and_not_refused(postmark, fake):
    provider, template = postmark
    fake.faults = [("after", text_reply(502, GATEWAY_PAGE))]
    with pytest.raises(UnknownOutcome, match="gateway error 502") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.org"]))
    assert_one_line(caught.value, 502)
    assert "an HTML page" in str(caught.value)
    # Postmark took the batch, once: retrying it would give both readers a second copy
    assert fake.batches == 1
    assert [m["To"] for m in fake.messages] == ["Reader 1 <a@example.com>", "Reader 2 <b@example.org>"]


@pytest.mark.parametrize(
    "fault",
    [
        ("after", 504),  # even with Postmark's own error body: a gateway's status
        ("after", text_reply(503, MAINTENANCE_PAGE)),
        ("after", text_reply(200, "<html><body>OK</body></html>")),  # not the documented result
        ("after", json_reply(200, {"ErrorCode": 0, "Message": "OK"})),  # an object, not one result per message
        "drop-after",
        "cut-after",
    ],
)
def test_an_answer_lost_after_postmark_took_the_batch_is_unknown(postmark, fake, fault):
    provider, template = postmark
    fake.faults = [fault]
    with pytest.raises(UnknownOutcome):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.batches == 1 and len(fake.messages) == 1


@pytest.mark.parametrize(("fault", "status"), foreign_5xx(json_reply(500, {"error": "Internal Server Error"})))  # JSON, but not postmark's
def test_a_5xx_not_known_to_come_from_postmark_is_unknown(postmark, fake, fault, status):
    provider, template = postmark
    fake.faults = [fault]
    with pytest.raises(UnknownOutcome) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert_one_line(caught.value, status)
    assert "may have been" in str(caught.value)
    assert fake.messages == []  # nothing was taken here, but nothing in the answer proves it


@pytest.mark.parametrize(
    "fault",
    [
        json_reply(500, {"ErrorCode": 500, "Message": "An internal error occurred."}),
        json_reply(503, {"ErrorCode": 100, "Message": "Maintenance"}, **{"Retry-After": "30"}),
    ],
)
def test_a_5xx_with_postmarks_error_body_is_a_refusal(postmark, fake, fault):
    provider, template = postmark
    fake.faults = [fault]
    with pytest.raises(TransientError, match=f"server error {fault.status}") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.retry_after == (30.0 if fault.status == 503 else None)
    assert fake.messages == []
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]


def test_a_per_message_rate_limit_retries_that_reader_only(postmark, fake):
    provider, template = postmark
    fake.retry_first = {"b@example.org": 1}
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org", "c@example.net"]))
    assert [o.status for o in outcomes] == ["sent", "retry", "sent"]
    assert outcomes[1].reason.startswith("postmark 429:") and outcomes[1].provider_id is None
    assert outcomes[0].provider_id and outcomes[2].provider_id
    assert [m["To"] for m in fake.messages] == ["Reader 1 <a@example.com>", "Reader 3 <c@example.net>"]
    # once the count is used up, the reader is taken
    again = provider.send_batch(batch_of(template, ["b@example.org"]))
    assert [o.status for o in again] == ["sent"]
    assert fake.retry_first == {"b@example.org": 0}
    assert [m["To"] for m in fake.messages][-1] == "Reader 1 <b@example.org>"
