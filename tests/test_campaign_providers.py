"""Every provider through the campaign engine: a campaign sends, pauses when the service keeps
failing, resumes, and reports, against each service's local stand-in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import pytest

from newsletter import build
from newsletter import campaign as engine
from newsletter import subscribers as subs
from newsletter.store import open_store

from .engine_util import FakeClock
from .fakes import mailgun, postmark, resend, sendgrid, ses


@dataclass
class Service:
    fake: Any
    settings: str
    env: dict[str, str]
    delivered: Any  # fake -> list of addresses, one per delivered message


def _resend_to(message: dict) -> list[str]:
    to = message["to"]
    return [parseaddr(mailbox)[1] for mailbox in (to if isinstance(to, list) else [to])]


SERVICES = {
    "postmark": lambda: Service(
        postmark.FakePostmark(), 'name = "postmark"\n', {"POSTMARK_SERVER_TOKEN": postmark.TOKEN},
        lambda f: [m["To"].rsplit("<", 1)[-1].rstrip(">") for m in f.messages]),
    "sendgrid": lambda: Service(
        sendgrid.FakeSendgrid(verified=("example.com",)), 'name = "sendgrid"\n', {"SENDGRID_API_KEY": sendgrid.KEY},
        lambda f: [m["to"][0]["email"] for m in f.messages]),
    "mailgun": lambda: Service(
        mailgun.FakeMailgun(), f'name = "mailgun"\ndomain = "{mailgun.DOMAIN}"\n', {"MAILGUN_API_KEY": mailgun.KEY},
        lambda f: [m["address"] for m in f.messages]),
    "resend": lambda: Service(
        resend.FakeResend(), 'name = "resend"\n', {"RESEND_API_KEY": resend.KEY},
        lambda f: [a for m in f.messages for a in _resend_to(m)]),
    "ses": lambda: Service(
        ses.FakeSes(), f'name = "ses"\nregion = "{ses.REGION}"\n',
        {"AWS_ACCESS_KEY_ID": ses.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": ses.SECRET},
        lambda f: [a for m in f.messages for a in m["to"]]),
}


@pytest.fixture(autouse=True)
def _no_aws_settings_from_the_machine(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SESV2",
                 "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


@pytest.fixture(params=sorted(SERVICES))
def service(request):
    made = SERVICES[request.param]()
    made.fake.start()
    yield request.param, made
    made.fake.stop()


def setup(configure, sample_issue, made: Service, readers: int):
    config = configure(
        made.settings + f'base_url = "{made.fake.url}"\ntimeout = 2\nbatch_size = 3\nconcurrency = 1\n',
        env={"NEWSLETTER_SECRET": "providers-secret", **made.env},
    )
    store = open_store(config)
    for i in range(readers):
        subs.add(store, f"r{i}@example.com", name=f"Reader {i}", confirmed=True)
    return config, store, build.render(config, sample_issue)


def run(config, store, rendered, **options):
    found = engine.find_campaign(store, rendered.slug, "main") or engine.start(
        store, rendered, "main", config.provider.name
    )
    return engine.send_campaign(config, store, found, rendered, sleep=(clock := FakeClock()).sleep, clock=clock, **options)


def test_a_campaign_pauses_in_an_outage_resumes_and_reaches_everyone_once(service, configure, sample_issue):
    name, made = service
    config, store, rendered = setup(configure, sample_issue, made, readers=7)
    try:
        made.fake.faults = [None] + [503] * 12  # the service goes down after its first answer
        first = run(config, store, rendered)
        assert not first.finished and "503" in first.stopped_reason
        assert 1 <= first.counts["sent"] < 7 and first.counts["sent"] + first.counts["queued"] == 7
        assert engine.find_campaign(store, rendered.slug).status == "paused"
        made.fake.faults = []
        second = run(config, store, rendered)
        assert second.finished, second.stopped_reason
        assert (second.counts["sent"], second.counts.total) == (7, 7)
        assert Counter(made.delivered(made.fake)) == Counter({f"r{i}@example.com": 1 for i in range(7)})
    finally:
        store.close()


def test_per_recipient_refusals_are_reported_and_the_rest_sent(service, configure, sample_issue):
    name, made = service
    if name == "postmark":
        made.fake.inactive = {"r1@example.com"}  # refused by the service itself
    config, store, rendered = setup(configure, sample_issue, made, readers=4)
    try:
        subs.add(store, "åsa@example.com", confirmed=True)  # no message can carry this address
        result = run(config, store, rendered)
        assert result.finished
        assert result.counts["failed"] >= 1
        assert any("non-ASCII" in reason for reason in result.counts.failed_reasons)
        delivered = Counter(made.delivered(made.fake))
        assert max(delivered.values()) == 1 and "åsa@example.com" not in delivered
        assert result.counts["sent"] == len(delivered)
    finally:
        store.close()


def test_resend_resends_a_batch_whose_answer_was_lost_without_delivering_twice(configure, sample_issue):
    made = SERVICES["resend"]()
    made.fake.start()
    config, store, rendered = setup(configure, sample_issue, made, readers=6)
    try:
        made.fake.faults = [None, "hang-after"]  # batch 2 is taken, but its answer never comes
        made.fake.hang_seconds = 3
        result = run(config, store, rendered)
        assert result.finished and result.counts["sent"] == 6 and result.counts["unknown"] == 0
        assert Counter(made.delivered(made.fake)) == Counter({f"r{i}@example.com": 1 for i in range(6)})
    finally:
        store.close()
        made.fake.stop()
