"""The SES adapter, through boto3, against a local endpoint that speaks the SES v2 API."""

from __future__ import annotations

import importlib
import logging
import socket
import sys

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from newsletter import build
from newsletter.errors import ConfigError
from newsletter.message import MessageTemplate
from newsletter.providers import (
    FatalError,
    TransientError,
    get_provider,
    provider_class,
)

from .fakes.ses import ACCESS_KEY, REGION, SECRET, FakeSes
from .provider_util import batch_of

ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET}


@pytest.fixture(autouse=True)
def _no_aws_settings_from_the_machine(monkeypatch):
    """boto3 also reads the process environment (profiles, endpoints); tests must not."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SESV2",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


@pytest.fixture
def fake():
    with FakeSes() as service:
        service.hang_seconds = 2.5
        yield service


def make(configure, sample_issue, fake, extra="", env=None):
    config = configure(
        f'name = "ses"\nregion = "{REGION}"\nbase_url = "{fake.url}"\ntimeout = 1\n{extra}',
        env=dict(ENV) if env is None else env,
    )
    return get_provider(config), MessageTemplate(config, build.render(config, sample_issue), "main")


@pytest.fixture
def ses(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    yield provider, template
    provider.close()


def sends(fake):
    return [r for r in fake.requests if r.path == "/v2/email/outbound-emails"]


def test_one_signed_raw_message_per_recipient_with_its_own_headers(ses, fake):
    provider, template = ses
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.org"]))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert [o.provider_id for o in outcomes] == [m["id"] for m in fake.messages]
    first, second = fake.messages
    assert first["to"] == ["a@example.com"] and first["from"] == "ann@example.com"
    assert first["tags"] == {"nl_delivery": "1", "nl_campaign": "c1"}
    message = first["message"]
    assert message["To"] == "Reader 1 <a@example.com>" and message["Subject"] == "Sälj väl"
    assert message["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/t1>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert second["message"]["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/t2>"
    assert "https://letter.example.com/unsubscribe/t2" in second["message"].get_body(("plain",)).get_content()
    # signed by boto3 with the key from the configuration's environment
    assert all(f"Credential={ACCESS_KEY}/" in r.headers["authorization"] for r in sends(fake))


def test_sending_is_paced_at_the_accounts_rate(fake, configure, sample_issue):
    fake.max_send_rate = 10
    provider, template = make(configure, sample_issue, fake)
    outcomes = provider.send_batch(batch_of(template, [f"r{i}@example.com" for i in range(15)]))
    assert all(o.status == "sent" for o in outcomes)
    assert fake.throttled == 0
    assert provider.pacer.rate == pytest.approx(9.0)  # 90% of MaxSendRate
    config = configure(f'name = "ses"\nregion = "{REGION}"\nbase_url = "{fake.url}"\nrate_limit = 4\n', env=dict(ENV))
    slower = get_provider(config)
    slower.send_batch(batch_of(template, ["x@example.com"]))
    assert slower.pacer.rate == pytest.approx(3.6)


def test_without_getaccount_permission_it_paces_at_the_configured_rate(fake, configure, sample_issue):
    fake.denied = {"GetAccount"}
    provider, template = make(configure, sample_issue, fake, extra="rate_limit = 50\n")
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
    assert provider.pacer.rate == pytest.approx(45.0)
    assert "GetAccount is not allowed" in provider.rate_note
    with pytest.raises(FatalError, match="may not call ses:GetAccount"):
        provider.check()


def test_a_rejected_recipient_fails_alone(fake, configure, sample_issue):
    fake.production = False  # the sandbox: only verified recipients
    fake.identities |= {"friend@example.org"}
    provider, template = make(configure, sample_issue, fake)
    outcomes = provider.send_batch(batch_of(template, ["friend@example.org", "stranger@example.net"]))
    assert [o.status for o in outcomes] == ["sent", "failed"]
    assert outcomes[1].reason.startswith("ses MessageRejected: Email address is not verified")
    assert "stranger@example.net" in outcomes[1].reason


def test_an_unverified_sender_stops_the_campaign(fake, configure, sample_issue):
    fake.identities = {"other.example"}
    provider, template = make(configure, sample_issue, fake)
    with pytest.raises(FatalError, match="the sender ann@example.com is not a verified identity in region eu-west-1"):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages == []


def test_throttling_is_retried_and_keeps_what_was_sent(ses, fake):
    provider, template = ses
    fake.faults = [None, 429]
    with pytest.raises(TransientError, match="throttled \\(TooManyRequestsException") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent")]
    assert caught.value.retry_after == 1.0
    assert len(fake.messages) == 1


def test_the_maximum_sending_rate_error_is_transient(ses, fake):
    provider, template = ses
    provider.send_batch(batch_of(template, ["a@example.com"]))  # paced from here on
    fake.max_send_rate = 0  # SES now says every call is over the rate
    with pytest.raises(TransientError, match="Maximum sending rate exceeded"):
        provider.send_batch(batch_of(template, ["b@example.com"]))


def test_a_spent_daily_quota_stops_the_campaign_with_what_was_sent(fake, configure, sample_issue):
    fake.max_24h = 2
    provider, template = make(configure, sample_issue, fake)
    with pytest.raises(FatalError, match="24-hour sending quota is used up.*resume the campaign") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [o.status for o in caught.value.partial] == ["sent", "sent"]


@pytest.mark.parametrize(
    ("setting", "text"),
    [
        ("suspended", "may no longer send"),
        ("paused", "sending is paused"),
        ("mail_from", "custom MAIL FROM domain"),
        ("config_set", "Configuration set <weekly> does not exist.; check \\[provider\\] configuration_set"),
    ],
)
def test_account_wide_refusals_are_fatal(fake, configure, sample_issue, setting, text):
    extra = 'configuration_set = "weekly"\n' if setting == "config_set" else ""
    if setting == "suspended":
        fake.suspended = True
    elif setting == "paused":
        fake.paused = True
    elif setting == "mail_from":
        fake.mail_from_verified = False
    provider, template = make(configure, sample_issue, fake, extra=extra)
    with pytest.raises(FatalError, match=text):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages == []


def test_a_configuration_set_is_named_on_every_message(fake, configure, sample_issue):
    fake.configuration_sets = {"weekly"}
    provider, template = make(configure, sample_issue, fake, extra='configuration_set = "weekly"\n')
    provider.send_batch(batch_of(template, ["a@example.com"]))
    assert fake.messages[0]["configuration_set"] == "weekly"


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIDSOMEONEELSE00000", "AWS_SECRET_ACCESS_KEY": SECRET}, "does not recognise the credentials.*AWS_ACCESS_KEY_ID"),
        ({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": "wrong/secret/value/0000000000000000"}, "refused the signature.*AWS_SECRET_ACCESS_KEY"),
        ({**ENV, "AWS_SESSION_TOKEN": "an-expired-or-foreign-token"}, "AWS_SESSION_TOKEN"),
    ],
)
def test_credential_problems_are_fatal_and_name_the_variable(fake, configure, sample_issue, env, text, caplog):
    caplog.set_level(logging.DEBUG)
    provider, template = make(configure, sample_issue, fake, env=env)
    with pytest.raises(FatalError, match=text) as sending:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    with pytest.raises(FatalError, match=text) as checking:
        provider.check()
    for secret in [env["AWS_SECRET_ACCESS_KEY"]] + ([env["AWS_SESSION_TOKEN"]] if "AWS_SESSION_TOKEN" in env else []):
        assert secret not in str(sending.value) and secret not in str(checking.value)
        assert secret not in caplog.text
    assert fake.messages == []


def test_a_session_token_travels_and_stays_out_of_the_logs(fake, configure, sample_issue, caplog):
    caplog.set_level(logging.DEBUG)
    fake.session_token = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
    provider, template = make(configure, sample_issue, fake, env={**ENV, "AWS_SESSION_TOKEN": fake.session_token})
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
    assert fake.session_token not in caplog.text and SECRET not in caplog.text


def test_the_wrong_region_is_named(fake, configure, sample_issue):
    config = configure(f'name = "ses"\nregion = "us-east-1"\nbase_url = "{fake.url}"\n', env=dict(ENV))
    provider = get_provider(config)
    with pytest.raises(FatalError, match="signed for us-east-1, which this endpoint does not serve.*check \\[provider\\] region"):
        provider.check()


def test_missing_permission_to_send_is_fatal(ses, fake):
    provider, template = ses
    fake.denied = {"SendEmail"}
    with pytest.raises(FatalError, match="may not call ses:SendEmail"):
        provider.send_batch(batch_of(template, ["a@example.com"]))


@pytest.mark.parametrize("fault", ["hang", "drop", "drop-after"])
def test_a_call_without_an_answer_is_unknown_and_the_rest_retried(ses, fake, fault):
    provider, template = ses
    fake.faults = [None, fault]
    with pytest.raises(TransientError) as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent"), (2, "unknown")]
    assert len(fake.messages) == (2 if fault == "drop-after" else 1)


@pytest.mark.parametrize("fault", [500, 503])
def test_server_errors_are_transient(ses, fake, fault):
    provider, template = ses
    fake.faults = [fault]
    with pytest.raises(TransientError, match=f"server error {fault}"):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]


def test_an_endpoint_that_cannot_be_reached_is_transient(configure, sample_issue):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = configure(f'name = "ses"\nregion = "{REGION}"\nbase_url = "http://127.0.0.1:{port}"\ntimeout = 1\n', env=dict(ENV))
    provider = get_provider(config)
    with pytest.raises(TransientError, match="cannot reach the SES endpoint"):
        provider.check()


def test_check_reports_the_account(ses, fake):
    provider, _ = ses
    line = provider.check()
    assert line.startswith(f"ses: credentials accepted in region {REGION}")
    assert "sending enabled, production access; max send rate 200/s, 0 of 50000 sent" in line
    fake.production = False
    assert "in the sandbox (only verified recipients" in provider.check()
    fake.sending_enabled = False
    fake.enforcement = "SHUTDOWN"
    with pytest.raises(FatalError, match="sending is disabled for this account in region eu-west-1.*SHUTDOWN"):
        provider.check()


def test_settings_and_credentials_come_from_the_config_and_its_environment(configure, fake):
    config = configure(f'name = "ses"\nbase_url = "{fake.url}"\n', env={**ENV, "AWS_REGION": "eu-north-1"})
    provider = get_provider(config)
    assert provider.region == "eu-north-1" and provider.client.meta.endpoint_url == fake.url
    default = get_provider(configure('name = "ses"\nregion = "eu-central-1"\n', env=dict(ENV)))
    assert default.client.meta.endpoint_url == "https://email.eu-central-1.amazonaws.com"
    with pytest.raises(ConfigError, match="region: is required for ses"):
        get_provider(configure('name = "ses"\n', env=dict(ENV)))
    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set"):
        get_provider(configure('name = "ses"\nregion = "eu-west-1"\n'))
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY is not set"):
        get_provider(configure('name = "ses"\nregion = "eu-west-1"\n', env={"AWS_ACCESS_KEY_ID": ACCESS_KEY}))
    with pytest.raises(ConfigError, match="region: 'not a region' is not an AWS region name"):
        get_provider(configure('name = "ses"\nregion = "not a region"\n', env=dict(ENV)))


def test_without_boto3_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.delitem(sys.modules, "newsletter.providers.ses", raising=False)
    with pytest.raises(ConfigError, match=r"needs the Python package boto3; run `pip install 'newsletter\[ses\]'`"):
        provider_class("ses")
    monkeypatch.undo()
    importlib.import_module("newsletter.providers.ses")


def test_the_server_refuses_mail_without_unsubscribe_headers(fake):
    client = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET, region_name=REGION).client(
        "sesv2", endpoint_url=fake.url, config=BotoConfig(retries={"total_max_attempts": 1}))
    raw = b"From: ann@example.com\r\nTo: a@example.com\r\nSubject: Hi\r\n\r\nHello\r\n"
    with pytest.raises(ClientError) as caught:
        client.send_email(FromEmailAddress="ann@example.com", Destination={"ToAddresses": ["a@example.com"]},
                          Content={"Raw": {"Data": raw}})
    assert caught.value.response["Error"]["Code"] == "BadRequestException"
    assert "List-Unsubscribe" in caught.value.response["Error"]["Message"]
    assert fake.messages == []
