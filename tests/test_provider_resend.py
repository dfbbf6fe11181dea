"""The Resend adapter against a local server that follows Resend's batch API, including its
24-hour memory of idempotency keys."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import requests

from newsletter import build
from newsletter.errors import ConfigError
from newsletter.message import MessageTemplate
from newsletter.providers import (
    Batch,
    FatalError,
    Pacer,
    TransientError,
    UnknownOutcome,
    get_provider,
)
from newsletter.providers.resend import idempotency_key

from .fakes.httpbase import json_reply, text_reply
from .fakes.resend import KEY, SENDING_KEY, FakeResend
from .provider_util import MAINTENANCE_PAGE, foreign_5xx
from .provider_util import batch_of as shared_batch_of

GATEWAY_PAGE = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center></body>\r\n</html>\r\n"


@pytest.fixture
def fake():
    with FakeResend() as service:
        service.hang_seconds = 2.5
        service.rate_limit = 1000  # the pacing test sets Resend's real default
        yield service


def make(configure, sample_issue, fake, extra='requests_per_second = 1000\n', env=None):
    config = configure(
        f'name = "resend"\nbase_url = "{fake.url}"\ntimeout = 1\n{extra}',
        env={"RESEND_API_KEY": KEY} if env is None else env,
    )
    return get_provider(config), MessageTemplate(config, build.render(config, sample_issue), "main")


@pytest.fixture
def resend(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    yield provider, template
    provider.close()


def batch_of(template, addresses, key="campaign-7/batch-3"):
    return shared_batch_of(template, addresses, key=key, label="campaign-7")


def posts(fake):
    return [r for r in fake.requests if r.path == "/emails/batch"]


def test_each_email_carries_its_own_body_headers_and_tags(resend, fake):
    provider, template = resend
    assert provider.idempotent and provider.batch_size == 100
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org"]))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert [o.provider_id for o in outcomes] == [m["id"] for m in fake.messages]
    [request] = posts(fake)
    assert request.headers["idempotency-key"] == "campaign-7/batch-3"
    assert request.headers["x-batch-validation"] == "permissive"
    first, second = fake.messages
    assert first["to"] == ['"Reader 1" <a@example.com>'] and first["from"] == "Ann Berg <ann@example.com>"
    assert first["subject"] == "Sälj väl"
    assert first["headers"]["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/t1>"
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert second["headers"]["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/t2>"
    assert "https://letter.example.com/unsubscribe/t1" in first["html"] and "[[nl:" not in first["html"]
    assert "https://letter.example.com/unsubscribe/t2" in second["text"]
    assert first["tags"] == [{"name": "nl_delivery", "value": "1"}, {"name": "nl_campaign", "value": "campaign-7"}]


@pytest.mark.parametrize("fault", ["drop-after", "hang-after"])
def test_a_lost_answer_is_unknown_and_the_resent_batch_is_not_delivered_twice(resend, fake, fault):
    provider, template = resend
    fake.faults = [fault]
    batch = batch_of(template, ["a@example.com", "b@example.org", "c@example.net"])
    with pytest.raises(UnknownOutcome):
        provider.send_batch(batch)
    assert len(fake.messages) == 3  # Resend did send them; the answer was lost
    first_bodies = [r.body for r in posts(fake)]
    # resumed: the same batch again, with the same key
    outcomes = provider.send_batch(batch)
    assert [o.status for o in outcomes] == ["sent"] * 3
    assert [o.provider_id for o in outcomes] == [m["id"] for m in fake.messages]
    assert len(fake.messages) == 3  # replayed, not sent again
    again = posts(fake)[-1]
    assert again.body == first_bodies[0] and again.headers["idempotency-key"] == batch.idempotency_key


def test_a_resumed_batch_that_lost_a_reader_is_reported_unknown_not_sent_twice(resend, fake):
    provider, template = resend
    fake.faults = ["drop-after"]
    first = batch_of(template, ["a@example.com", "b@example.com", "c@example.com"], key="c7-b1")
    with pytest.raises(UnknownOutcome):
        provider.send_batch(first)
    # resumed after b@ unsubscribed: the same key, a smaller batch
    resumed = Batch(template, [first.envelopes[0], first.envelopes[2]], "c7-b1", first.label)
    outcomes = provider.send_batch(resumed)
    assert [(o.key, o.status) for o in outcomes] == [(1, "unknown"), (3, "unknown")]
    assert "invalid_idempotent_request" in outcomes[0].reason and "most likely delivered" in outcomes[0].reason
    assert len(fake.messages) == 3  # nobody got it twice


def test_a_batch_still_in_progress_is_retried_later(resend, fake):
    provider, template = resend
    fake.hold(KEY, "c7-b9")
    with pytest.raises(TransientError, match="still being processed") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"], key="c7-b9"))
    assert caught.value.retry_after == 1.0
    assert fake.messages == []


def test_the_server_forgets_keys_after_24_hours(resend, fake):
    provider, template = resend
    start = fake.clock()
    batch = batch_of(template, ["a@example.com"], key="c7-b2")
    provider.send_batch(batch)
    fake.clock = lambda: start + 23 * 3600
    provider.send_batch(batch)
    assert len(fake.messages) == 1
    fake.clock = lambda: start + 24 * 3600 + 60
    provider.send_batch(batch)
    assert len(fake.messages) == 2  # why a resume must come within a day to be safe


def test_refused_emails_fail_alone_and_ids_stay_with_their_recipients(resend, fake):
    provider, template = resend
    fake.invalid = {"bad@example.com"}
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "bad@example.com", "c@example.com"]))
    assert [o.status for o in outcomes] == ["sent", "failed", "sent"]
    assert "Invalid `to` field" in outcomes[1].reason
    by_address = {m["to"][0]: m["id"] for m in fake.messages}
    assert outcomes[0].provider_id == by_address['"Reader 1" <a@example.com>']
    assert outcomes[2].provider_id == by_address['"Reader 3" <c@example.com>']


def test_an_unverified_domain_is_fatal(resend, fake):
    provider, template = resend
    fake.domains = {"example.com": "pending"}
    with pytest.raises(FatalError, match="The example.com domain is not verified"):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    with pytest.raises(FatalError, match="domain example.com is pending"):
        provider.check()


def test_a_bad_key_is_fatal_without_showing_the_key(fake, configure, sample_issue, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "re_definitely_not_valid"
    provider, template = make(configure, sample_issue, fake, env={"RESEND_API_KEY": secret})
    with pytest.raises(FatalError) as sending:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    with pytest.raises(FatalError) as checking:
        provider.check()
    for error in (sending.value, checking.value):
        assert "RESEND_API_KEY" in str(error) and "invalid_api_key" in str(error)
        assert secret not in str(error)
    assert secret not in caplog.text and KEY not in caplog.text
    with pytest.raises(ConfigError, match="RESEND_API_KEY is not set"):
        make(configure, sample_issue, fake, env={})


def test_rate_limit_429_waits_as_told(resend, fake):
    provider, template = resend
    fake.retry_after = "3"
    fake.faults = [429]
    with pytest.raises(TransientError, match="rate_limit_exceeded") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.retry_after == 3.0
    assert fake.messages == []


def test_a_spent_daily_quota_stops_the_campaign(resend, fake):
    provider, template = resend
    fake.daily_quota = 2
    provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"], key="k1"))
    with pytest.raises(FatalError, match="daily_quota_exceeded.*resume the campaign once the quota resets"):
        provider.send_batch(batch_of(template, ["c@example.com"], key="k2"))
    assert len(fake.messages) == 2


def test_default_pacing_keeps_under_resends_two_requests_per_second(fake, configure, sample_issue):
    fake.rate_limit = 2  # Resend's default
    provider, template = make(configure, sample_issue, fake, extra="")
    for n in range(4):
        outcomes = provider.send_batch(batch_of(template, [f"r{n}@example.com"], key=f"k{n}"))
        assert outcomes[0].status == "sent"
    assert fake.rate_limited == 0 and len(fake.messages) == 4


def test_the_pacer_spaces_callers_evenly_across_threads():
    now = [0.0]
    slept = []
    lock = threading.Lock()

    def sleep(seconds):
        with lock:
            slept.append(round(seconds, 6))

    pacer = Pacer(2, clock=lambda: now[0], sleep=sleep)
    threads = [threading.Thread(target=pacer.wait) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(slept) == [0.5, 1.0, 1.5]  # the first goes at once, then one every 0.5 s
    now[0] = 10.0
    assert pacer.wait() == 0  # after a quiet spell, no wait


@pytest.mark.parametrize(
    ("fault", "error", "text"),
    [
        (500, TransientError, "server error 500"),
        (503, TransientError, "server error 503"),
        ("hang", UnknownOutcome, "took more than 1 s"),
        ("drop", UnknownOutcome, "dropped"),
    ],
)
def test_transport_faults(resend, fake, fault, error, text):
    provider, template = resend
    fake.faults = [fault]
    with pytest.raises(error, match=text):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages == []
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]


def test_check_reports_the_domain(resend, fake, configure, sample_issue):
    provider, _ = resend
    assert provider.check() == "resend: API key accepted; sending domain example.com is verified in us-east-1"
    fake.domains = {"other.example": "verified"}
    with pytest.raises(FatalError, match="example.com is not among this account's domains \\(other.example\\)"):
        provider.check()
    sending_only, _ = make(configure, sample_issue, fake, env={"RESEND_API_KEY": SENDING_KEY})
    assert "sending-only key" in sending_only.check()


def test_a_full_batch_goes_in_one_call(resend, fake):
    provider, template = resend
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(100)]))
    assert len(outcomes) == 100 and all(o.status == "sent" for o in outcomes)
    assert len(posts(fake)) == 1


def test_long_batch_keys_are_hashed_to_resends_limit():
    assert idempotency_key("c1-b1") == "c1-b1"
    long = "x" * 300
    assert len(idempotency_key(long)) <= 256 and idempotency_key(long) == idempotency_key(long)
    assert idempotency_key(long) != idempotency_key("y" * 300)


# -- the local server refuses what Resend refuses -----------------------------------------


def email(i, **extra):
    return {"from": "ann@example.com", "to": [f"r{i}@example.com"], "subject": "Hi", "text": "x",
            "headers": {"List-Unsubscribe": f"<https://x/u/{i}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
            **extra}


def post(fake, emails, **headers):
    return requests.post(f"{fake.url}/emails/batch", data=json.dumps(emails), timeout=5,
                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers})


def test_server_refuses_more_than_100_emails_and_missing_unsubscribe_headers(fake):
    response = post(fake, [email(i) for i in range(101)])
    assert response.status_code == 422 and "at most 100" in response.json()["message"]
    bare = email(1)
    del bare["headers"]
    response = post(fake, [email(0), bare])
    assert response.status_code == 422 and "emails[1]" in response.json()["message"]
    assert fake.messages == []


def test_server_checks_idempotency_keys(fake):
    assert post(fake, [email(1)], **{"Idempotency-Key": "k" * 257}).json()["name"] == "invalid_idempotency_key"
    first = post(fake, [email(1)], **{"Idempotency-Key": "k1"})
    replay = post(fake, [email(1)], **{"Idempotency-Key": "k1"})
    assert first.json() == replay.json() and len(fake.messages) == 1
    assert post(fake, [email(2)], **{"Idempotency-Key": "k1"}).status_code == 409


def test_server_limits_requests_per_second(fake):
    fake.rate_limit = 2
    statuses = [post(fake, [email(i)], **{"Idempotency-Key": f"r{i}"}).status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    limited = post(fake, [email(9)])
    assert limited.headers["ratelimit-limit"] == "2" and limited.headers["retry-after"]


def test_a_recipient_failed_before_the_call_stays_failed_when_the_call_fails(resend, fake):
    provider, template = resend
    fake.faults = [500]
    with pytest.raises(TransientError) as caught:
        provider.send_batch(batch_of(template, ["jörg@example.com", "b@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "failed")]
    assert "non-ASCII" in caught.value.partial[0].reason


# -- what an answer proves: refused, or perhaps taken ---------------------------------------


def assert_one_line(error, status):
    text = str(error)
    assert text.startswith("resend: ") and str(status) in text
    assert "\n" not in text and "\r" not in text and "<" not in text and len(text) < 300


def test_a_502_after_resend_took_the_batch_is_unknown_and_resent_under_its_key(resend, fake):
    provider, template = resend
    fake.faults = [("after", text_reply(502, GATEWAY_PAGE))]
    batch = batch_of(template, ["a@example.com", "b@example.org"])
    with pytest.raises(UnknownOutcome, match="gateway error 502") as caught:
        provider.send_batch(batch)
    assert_one_line(caught.value, 502)
    assert len(fake.messages) == 2  # Resend sent the batch, once
    # what the engine does for an idempotent provider: the same batch again, the same key
    outcomes = provider.send_batch(batch)
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert [o.provider_id for o in outcomes] == [m["id"] for m in fake.messages]
    assert len(fake.messages) == 2  # replayed, not sent again
    assert len({r.headers["idempotency-key"] for r in posts(fake)}) == 1


@pytest.mark.parametrize(
    "fault",
    [
        ("after", 504),  # even with Resend's own error body: a gateway's status
        ("after", text_reply(503, MAINTENANCE_PAGE)),
        ("after", text_reply(200, "<html><body>OK</body></html>")),  # not the documented result
        "drop-after",
        "cut-after",
    ],
)
def test_an_answer_lost_after_resend_took_the_batch_is_unknown(resend, fake, fault):
    provider, template = resend
    fake.faults = [fault]
    batch = batch_of(template, ["a@example.com"])
    with pytest.raises(UnknownOutcome):
        provider.send_batch(batch)
    assert len(fake.messages) == 1
    assert [o.status for o in provider.send_batch(batch)] == ["sent"]
    assert len(fake.messages) == 1


@pytest.mark.parametrize(("fault", "status"), foreign_5xx(json_reply(500, {"message": "Internal Server Error"})))  # JSON, but not resend's
def test_a_5xx_not_known_to_come_from_resend_is_unknown(resend, fake, fault, status):
    provider, template = resend
    fake.faults = [fault]
    batch = batch_of(template, ["a@example.com"])
    with pytest.raises(UnknownOutcome) as caught:
        provider.send_batch(batch)
    assert_one_line(caught.value, status)
    assert "may have been" in str(caught.value)
    assert fake.messages == []
    # sent again under the same key, as the engine does: nothing was taken, so now it goes out once
    assert [o.status for o in provider.send_batch(batch)] == ["sent"]
    assert len(fake.messages) == 1


@pytest.mark.parametrize(
    "fault",
    [
        json_reply(500, {"statusCode": 500, "name": "application_error", "message": "An unexpected error occurred."}),
        json_reply(503, {"statusCode": 503, "name": "internal_server_error", "message": "Unavailable."},
                   **{"retry-after": "30"}),
    ],
)
def test_a_5xx_with_resends_error_body_is_a_refusal(resend, fake, fault):
    provider, template = resend
    fake.faults = [fault]
    with pytest.raises(TransientError, match=f"server error {fault.status}") as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert caught.value.retry_after == (30.0 if fault.status == 503 else None)
    assert fake.messages == []
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
