"""The SES adapter, through boto3, against a local endpoint that speaks the SES v2 API."""

from __future__ import annotations

import base64
import email
import email.policy
import importlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parseaddr
from pathlib import Path

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
    UnknownOutcome,
    get_provider,
    provider_class,
)

from .fakes.httpbase import Reply
from .fakes.ses import ACCESS_KEY, REGION, SECRET, FakeSes, aws_error
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
    assert slower.pacer.rate == pytest.approx(4.0)  # the configured rate, as it stands


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
    with pytest.raises(FatalError, match="the sender ann@example.com was refused in region eu-west-1 .*MessageRejected: Email address is not verified"):
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
        ("config_set", "Configuration set <weekly> does not exist.\\); check \\[provider\\] configuration_set"),
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
    with pytest.raises(ConfigError, match=r"needs the Python package boto3; run `pip install 'letterfold\[ses\]'`"):
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


# -- the account's rate ------------------------------------------------------------------------

EMULATOR_404 = Reply(404, (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server.   If you entered the URL manually\n"
    "please check your spelling and try again.</p>\n"
), {"Content-Type": "text/html; charset=utf-8"})


def account_calls(fake):
    return [r for r in fake.requests if r.path == "/v2/email/account"]


def test_with_a_rate_limit_getaccount_is_never_called(fake, configure, sample_issue):
    fake.denied = {"GetAccount"}
    provider, template = make(configure, sample_issue, fake, extra="rate_limit = 50\n")
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"]))] == ["sent", "sent"]
    assert account_calls(fake) == []
    assert provider.pacer.rate == pytest.approx(50.0)
    with pytest.raises(FatalError, match="may not call ses:GetAccount"):  # the check still asks
        provider.check()


@pytest.mark.parametrize(
    "answer",
    [
        EMULATOR_404,  # an emulator without GetAccount
        aws_error(400, "BadRequestException", "GetAccount is not supported here."),
        aws_error(403, "AccessDeniedException", "User is not authorized to perform: ses:GetAccount", in_header=False),
    ],
    ids=["404-page", "bad-request", "access-denied"],
)
def test_without_a_rate_limit_a_refused_getaccount_paces_at_the_sandbox_rate(fake, configure, sample_issue, answer):
    fake.fault_paths = ("/v2/email/account",)
    fake.faults = [answer]
    provider, template = make(configure, sample_issue, fake)
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
    assert provider.pacer.rate == pytest.approx(0.9)  # 90% of the sandbox's 1/s
    note = provider.rate_note
    assert "GetAccount" in note and "1/s" in note and "rate_limit" in note
    assert "\n" not in note and "<" not in note and len(note) <= 200
    assert len(account_calls(fake)) == 1


def test_a_getaccount_server_error_is_asked_again_rather_than_guessed(fake, configure, sample_issue):
    fake.fault_paths = ("/v2/email/account",)
    fake.faults = [503]
    provider, template = make(configure, sample_issue, fake)
    with pytest.raises(TransientError, match="server error 503"):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert sends(fake) == []
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.com"]))] == ["sent"]
    assert provider.pacer.rate == pytest.approx(180.0)


# -- what each answer to SendEmail means ----------------------------------------------------------

NOT_VERIFIED = "Email address is not verified. The following identities failed the check in region EU-WEST-1: "


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (aws_error(400, "MessageRejected", NOT_VERIFIED + "a@example.com"), "failed"),
        (aws_error(400, "MessageRejected", NOT_VERIFIED + "ann@example.com"), "fatal"),
        (aws_error(400, "MessageRejected", "Did not have authority to send from email ann@example.com"), "fatal"),
        (aws_error(400, "MessageRejected", "Sender <ann@example.com> refused by policy."), "fatal"),
        (aws_error(400, "BadRequestException", "Illegal address: a@example.com"), "failed"),
        (aws_error(400, "AccountSuspendedException", "Account suspended."), "fatal"),
        (aws_error(400, "SendingPausedException", "Paused."), "fatal"),
        (aws_error(400, "MailFromDomainNotVerifiedException", "MAIL FROM is not set up."), "fatal"),
        (aws_error(404, "NotFoundException", "No such configuration set."), "fatal"),
        (aws_error(403, "AccessDenied", "Not allowed.", in_header=False), "fatal"),
        (aws_error(403, "AccessDeniedException", "Not allowed.", in_header=False), "fatal"),
        (aws_error(403, "InvalidClientTokenId", "No such key.", in_header=False), "fatal"),
        (aws_error(400, "RequestExpired", "Signature expired.", in_header=False), "fatal"),
        (EMULATOR_404, "fatal"),
        (aws_error(400, "LimitExceededException", "Too many."), "transient"),
        (aws_error(429, "TooManyRequestsException", "Slow down."), "transient"),
        (aws_error(400, "ThrottlingException", "Maximum sending rate exceeded."), "transient"),
        (aws_error(400, "Throttling", "Rate exceeded."), "transient"),
        (aws_error(500, "InternalFailure", "Failed."), "transient"),
        (aws_error(503, "ServiceUnavailable", "Try later."), "transient"),
        (aws_error(502, "InternalFailure", "Bad gateway."), "unknown"),
        (aws_error(504, "InternalFailure", "Gateway timeout."), "unknown"),
        (Reply(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}), "unknown"),
        (Reply(500, "<html><body>Internal Server Error</body></html>", {"Content-Type": "text/html"}), "unknown"),
        (Reply(503, ""), "unknown"),
    ],
)
def test_each_answer_is_classified_by_its_code_and_status(ses, fake, answer, kind):
    provider, template = ses
    provider.send_batch(batch_of(template, ["first@example.com"]))  # paced, and the issue accepted once
    fake.faults = [answer]
    batch = batch_of(template, ["a@example.com", "b@example.com"])
    if kind == "failed":
        outcomes = provider.send_batch(batch)
        assert [o.status for o in outcomes] == ["failed", "sent"]
        assert "\n" not in outcomes[0].reason and len(outcomes[0].reason) <= 200
        return
    expected = {"fatal": FatalError, "transient": TransientError, "unknown": TransientError}[kind]
    with pytest.raises(expected) as caught:
        provider.send_batch(batch)
    assert type(caught.value) is expected
    message = str(caught.value)
    assert "\n" not in message and "</" not in message and len(message) <= 200
    assert [(o.key, o.status) for o in caught.value.partial] == ([(1, "unknown")] if kind == "unknown" else [])
    assert len(sends(fake)) == 2  # the refused call alone: b was never tried, nothing retried by botocore


def test_a_refused_sender_stops_once_whatever_the_wording(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    fake.faults = [aws_error(400, "MessageRejected", "Did not have authority to send from email ann@example.com")] * 3
    with pytest.raises(FatalError, match="the sender ann@example.com was refused in region eu-west-1.*verify") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert caught.value.partial == []
    assert len(sends(fake)) == 1 and fake.messages == []


def test_a_rejection_naming_nobody_stops_unless_another_reader_got_through(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    rejected = aws_error(400, "MessageRejected", "Message rejected.")
    fake.faults = [rejected, rejected]
    with pytest.raises(FatalError, match="refused the message for 2 readers and accepted none") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    assert caught.value.partial == []  # neither is marked failed: a resume tries them again
    assert fake.messages == []
    fake.faults = [rejected]
    outcomes = provider.send_batch(batch_of(template, ["a@example.com", "b@example.com", "c@example.com"]))
    by_key = {o.key: o for o in outcomes}
    assert [by_key[k].status for k in (1, 2, 3)] == ["failed", "sent", "sent"]  # the message is fine; a's copy is not
    assert by_key[1].reason == "ses MessageRejected: Message rejected."


def test_every_error_message_is_one_short_line(fake, configure, sample_issue):
    provider, template = make(configure, sample_issue, fake)
    fake.faults = [EMULATOR_404]
    with pytest.raises(FatalError) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    message = str(caught.value)
    assert message.startswith("ses: ") and "404" in message and "[provider] base_url" in message
    assert "\n" not in message and "<" not in message and "  " not in message and len(message) <= 200
    long = "Message rejected:\n" + "a very long explanation, " * 40
    fake.faults = [aws_error(400, "MessageRejected", long)]
    with pytest.raises(FatalError) as caught:
        provider.send_batch(batch_of(template, ["a@example.com"]))
    message = str(caught.value)
    assert "\n" not in message and "  " not in message and len(message) <= 200
    assert "(MessageRejected: Message rejected: a very long" in message and "…)" in message


# -- answers that never came ----------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["hang", "drop-after"])
def test_no_answer_for_the_last_message_is_unknown_not_a_pause(ses, fake, fault):
    provider, template = ses
    fake.faults = [None, fault]
    with pytest.raises(UnknownOutcome) as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"]))
    assert [(o.key, o.status) for o in caught.value.partial] == [(1, "sent"), (2, "unknown")]
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fault", [503, "drop-after", "hang"])
def test_botocore_never_retries_a_send(fake, configure, sample_issue, monkeypatch, fault):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    provider, template = make(configure, sample_issue, fake)
    fake.faults = [fault]
    with pytest.raises((TransientError, UnknownOutcome)):
        provider.send_batch(batch_of(template, ["a@example.com"]))
    assert len(sends(fake)) == 1
    assert len(fake.messages) == (1 if fault == "drop-after" else 0)


def test_a_send_to_an_endpoint_that_refuses_connections_is_transient(configure, sample_issue):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = configure(f'name = "ses"\nregion = "{REGION}"\nbase_url = "http://127.0.0.1:{port}"\n'
                       "timeout = 1\nrate_limit = 5\n", env=dict(ENV))
    provider = get_provider(config)
    template = MessageTemplate(config, build.render(config, sample_issue), "main")
    with pytest.raises(TransientError, match="could not connect") as caught:
        provider.send_batch(batch_of(template, ["a@example.com", "b@example.com"]))
    assert type(caught.value) is TransientError and caught.value.partial == []


# -- against moto's SES v2 server ---------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_server():
    """moto's server, in this process on 127.0.0.1: another implementation of SES v2 than ours,
    with its own wording (and no GetAccount)."""
    server_module = pytest.importorskip("moto.server", reason="moto is not installed; pip install 'moto[server]'")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto(moto_server):
    """(url, sent): a freshly reset moto, and a function counting the messages it accepted."""
    import requests
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    requests.post(f"{moto_server}/moto-api/reset", timeout=5).raise_for_status()
    yield moto_server, lambda: len(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages)


def on_moto(url, configure, sample_issue, extra=""):
    config = configure(f'name = "ses"\nregion = "{REGION}"\nbase_url = "{url}"\ntimeout = 5\n{extra}', env=dict(ENV))
    provider = get_provider(config)
    calls: list[str] = []  # every HTTP attempt boto3 makes, retries included
    provider.client.meta.events.register("before-send.sesv2", lambda request, **_: calls.append(request.url))
    return provider, MessageTemplate(config, build.render(config, sample_issue), "main"), calls


def verify_on_moto(url, identity):
    client = boto3.session.Session(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET, region_name=REGION).client(
        "sesv2", endpoint_url=url)
    client.create_email_identity(EmailIdentity=identity)


def test_moto_sends_with_a_rate_limit_and_no_getaccount(moto, configure, sample_issue):
    url, sent = moto
    verify_on_moto(url, "example.com")
    provider, template, calls = on_moto(url, configure, sample_issue, extra="rate_limit = 20\n")
    outcomes = provider.send_batch(batch_of(template, ["a@example.org", "b@example.org"]))
    assert [o.status for o in outcomes] == ["sent", "sent"] and all(o.provider_id for o in outcomes)
    assert sent() == 2
    assert calls == [f"{url}/v2/email/outbound-emails"] * 2  # no GetAccount, no retries
    provider.close()


def test_moto_without_getaccount_paces_at_the_sandbox_rate(moto, configure, sample_issue):
    url, sent = moto
    verify_on_moto(url, "ann@example.com")
    provider, template, calls = on_moto(url, configure, sample_issue)
    assert [o.status for o in provider.send_batch(batch_of(template, ["a@example.org"]))] == ["sent"]
    assert calls[0] == f"{url}/v2/email/account"
    if provider.rate_note:  # moto answers GetAccount with its 404 page
        assert provider.pacer.rate == pytest.approx(0.9)
        assert provider.rate_note.startswith("ses: GetAccount was refused (HTTP 404") and "\n" not in provider.rate_note
    provider.close()


def test_moto_refusing_an_unverified_sender_stops_once(moto, configure, sample_issue):
    url, sent = moto
    verify_on_moto(url, "other.example")
    provider, template, calls = on_moto(url, configure, sample_issue, extra="rate_limit = 20\n")
    with pytest.raises(FatalError, match="the sender ann@example.com was refused in region eu-west-1") as caught:
        provider.send_batch(batch_of(template, ["a@example.org", "b@example.org", "c@example.org"]))
    assert caught.value.partial == []
    assert calls == [f"{url}/v2/email/outbound-emails"]  # one refusal, not one per reader
    assert sent() == 0
    assert "\n" not in str(caught.value) and len(str(caught.value)) <= 200
    provider.close()


# -- against aws-ses-v2-local, an SES v2 emulator in Node.js ---------------------------------------
#
# Another implementation than ours and moto's, pinned in tests/emulators/package.json (2.9.0
# runs on Node.js 18 and newer; 2.10 needs 20.19), run as its own process. What its source
# (dist/ in node_modules) does, and so all these tests assert: SendEmail takes Raw content,
# parses it and stores from, to (the message's To header, not Destination), subject and the
# text and HTML bodies, but no headers; it answers {MessageId}. It checks no identity,
# recipient, rate or quota, and accepts any SigV4 credentials. GetAccount answers the JSON in
# its AWS_SES_ACCOUNT variable, or without one 400 {"message": "Bad Request Exception"} with no
# error code. Any path it does not know is 404 "<UnknownOperationException/>".

EMULATORS = Path(__file__).resolve().parent / "emulators"
SES_LOCAL = EMULATORS / "node_modules" / "aws-ses-v2-local"
SES_LOCAL_INSTALL = "run `npm ci --prefix tests/emulators` (Node.js and npm: `apt-get install nodejs npm`)"
UNSUBSCRIBE_LINK = re.compile(r"https://letter\.example\.com/unsubscribe/[\w.-]+")


def _ses_local_missing() -> str | None:
    """Why aws-ses-v2-local cannot run here, or None when it can."""
    if not (SES_LOCAL / "package.json").is_file():
        return f"aws-ses-v2-local is not installed; {SES_LOCAL_INSTALL}"
    if shutil.which("node") is None:
        return f"Node.js is not installed; {SES_LOCAL_INSTALL}"
    return None


class SesLocal:
    """A running aws-ses-v2-local: its URL and what it has stored."""

    def __init__(self, url: str) -> None:
        self.url = url

    def emails(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/store", timeout=5) as answer:
            return json.load(answer)["emails"]

    def clear(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/clear-store", method="POST"), timeout=5).close()


@contextmanager
def running_ses_local(log: Path, account: dict | None = None) -> Iterator[SesLocal]:
    """aws-ses-v2-local on 127.0.0.1 on a port the system picks (it prints which), until the
    block ends. ``account`` is what GetAccount answers; without it GetAccount is refused."""
    missing = _ses_local_missing()
    if missing:
        pytest.skip(missing)  # with NEWSLETTER_REQUIRE_ALL=1 the run fails (conftest.py)
    cli = SES_LOCAL / json.loads((SES_LOCAL / "package.json").read_text())["bin"]["aws-ses-v2-local"]
    env = {k: v for k, v in os.environ.items() if k not in {"AWS_SES_ACCOUNT", "SMTP_TRANSPORT"}}
    if account is not None:
        env["AWS_SES_ACCOUNT"] = json.dumps(account)
    with log.open("wb") as out:
        process = subprocess.Popen([shutil.which("node"), str(cli), "--host", "127.0.0.1", "--port", "0"],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=EMULATORS)
    try:
        yield SesLocal(_answering(process, log))
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answering(process: subprocess.Popen, log: Path, wait: float = 20.0) -> str:
    """The emulator's URL once its health check answers 200."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"aws-ses-v2-local exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        port = re.search(r"server running at http://\S+:(\d+)", log.read_text(errors="replace"))
        if port:
            url = f"http://127.0.0.1:{port.group(1)}"
            try:
                with urllib.request.urlopen(f"{url}/health-check", timeout=2) as answer:
                    if answer.status == 200:
                        return url
            except OSError:
                pass
        time.sleep(0.05)
    pytest.fail(f"aws-ses-v2-local did not answer within {wait:g} s: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module")
def ses_local_server(tmp_path_factory):
    with running_ses_local(tmp_path_factory.mktemp("ses-local") / "emulator.log") as emulator:
        yield emulator


@pytest.fixture
def ses_local(ses_local_server):
    """The module's emulator with an empty store."""
    ses_local_server.clear()
    return ses_local_server


def on_ses_local(url, configure, sample_issue, extra=""):
    config = configure(f'name = "ses"\nregion = "{REGION}"\nbase_url = "{url}"\ntimeout = 5\n{extra}', env=dict(ENV))
    provider = get_provider(config)
    sent: list = []  # every HTTP request boto3 makes, retries included
    provider.client.meta.events.register("before-send.sesv2", lambda request, **_: sent.append(request))
    return provider, MessageTemplate(config, build.render(config, sample_issue), "main"), sent


def raw_message(request) -> email.message.EmailMessage:
    """The message a SendEmail request carried (the emulator keeps no headers of it)."""
    data = json.loads(request.body)["Content"]["Raw"]["Data"]
    return email.message_from_bytes(base64.b64decode(data), policy=email.policy.default)


def test_ses_local_takes_a_full_batch_at_the_rate_limit_each_reader_once_with_their_own_link(ses_local, configure, sample_issue):
    provider, template, sent = on_ses_local(ses_local.url, configure, sample_issue, extra="rate_limit = 40\n")
    readers = [f"r{i}@example.org" for i in range(1, provider.max_batch + 1)]
    started = time.monotonic()
    outcomes = provider.send_batch(batch_of(template, readers))
    took = time.monotonic() - started
    assert [o.status for o in outcomes] == ["sent"] * len(readers)
    assert [r.url for r in sent] == [f"{ses_local.url}/v2/email/outbound-emails"] * len(readers)  # no GetAccount
    assert took >= (len(readers) - 1) / 40 * 0.95  # paced at 40/s
    stored = {e["messageId"]: e for e in ses_local.emails()}
    assert sorted(stored) == sorted(o.provider_id for o in outcomes)  # its own ids, each once
    assert Counter(parseaddr(t)[1] for e in stored.values() for t in e["destination"]["to"]) == Counter(readers)
    for i, (outcome, request) in enumerate(zip(outcomes, sent, strict=True), start=1):
        link = f"https://letter.example.com/unsubscribe/t{i}"
        kept = stored[outcome.provider_id]
        assert parseaddr(kept["destination"]["to"][0]) == (f"Reader {i}", f"r{i}@example.org")
        assert parseaddr(kept["from"]) == ("Ann Berg", "ann@example.com")
        assert kept["subject"] == "Sälj väl"  # its own MIME parser decodes our encoded words
        assert set(UNSUBSCRIBE_LINK.findall(kept["body"]["text"])) == {link}
        assert set(UNSUBSCRIBE_LINK.findall(kept["body"]["html"])) == {link}
        message = raw_message(request)  # the bytes the emulator answered with this MessageId
        assert message["List-Unsubscribe"] == f"<{link}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    provider.close()


def test_ses_local_campaign_in_six_batches_on_four_workers_mails_each_reader_once(ses_local, configure, sample_issue):
    from sqlalchemy import select

    from newsletter import campaign as engine
    from newsletter import subscribers as subs
    from newsletter import tokens
    from newsletter.store import open_store
    from newsletter.store.schema import subscribers

    secret = "ses-local-campaign-secret"
    config = configure(f'name = "ses"\nregion = "{REGION}"\nbase_url = "{ses_local.url}"\ntimeout = 5\n'
                       "rate_limit = 100\nbatch_size = 5\nconcurrency = 4\n", env={"NEWSLETTER_SECRET": secret, **ENV})
    store = open_store(config)
    try:
        readers = [f"r{i}@example.org" for i in range(30)]
        for i, address in enumerate(readers):
            subs.add(store, address, name=f"Reader {i}", confirmed=True)
        rendered = build.render(config, sample_issue)
        result = engine.send_campaign(config, store, engine.start(store, rendered, "main", "ses"), rendered)
        assert result.finished, result.stopped_reason
        assert (result.counts["sent"], result.counts.total) == (30, 30)
        with store.read() as conn:
            address_of = dict(conn.execute(select(subscribers.c.id, subscribers.c.email)).all())
        stored = ses_local.emails()
        assert Counter(parseaddr(e["destination"]["to"][0])[1] for e in stored) == Counter(readers)
        for kept in stored:
            (link,) = set(UNSUBSCRIBE_LINK.findall(kept["body"]["text"]))
            token = link.rsplit("/", 1)[1]
            assert address_of[tokens.verify(secret, "unsubscribe", token)["s"]] == parseaddr(kept["destination"]["to"][0])[1]
    finally:
        store.close()


def test_ses_local_without_an_account_paces_at_the_sandbox_rate(ses_local, configure, sample_issue):
    provider, template, sent = on_ses_local(ses_local.url, configure, sample_issue)
    outcomes = provider.send_batch(batch_of(template, ["a@example.org", "b@example.org"]))
    assert [o.status for o in outcomes] == ["sent", "sent"]
    assert [r.url.removeprefix(ses_local.url) for r in sent] == ["/v2/email/account"] + ["/v2/email/outbound-emails"] * 2
    assert provider.pacer.rate == pytest.approx(0.9)  # its 400 without a code is a refusal, not a stop
    assert provider.rate_note == ("ses: GetAccount was refused (HTTP 400: Bad Request Exception); pacing at the "
                                  "sandbox rate, 1/s (set [provider] rate_limit to choose)")
    assert len(ses_local.emails()) == 2
    with pytest.raises(FatalError, match=r"^ses: GetAccount was refused \(HTTP 400: Bad Request Exception\)$"):
        provider.check()  # the check cannot report an account it is not told
    provider.close()


SES_LOCAL_ACCOUNT = {
    "DedicatedIpAutoWarmupEnabled": False,
    "Details": {"AdditionalContactEmailAddresses": [], "ContactLanguage": "EN", "MailType": "MARKETING",
                "ReviewDetails": {"CaseId": "1", "Status": "PENDING"}, "UseCaseDescription": "tests",
                "WebsiteURL": "https://letter.example.com"},
    "EnforcementStatus": "HEALTHY",
    "ProductionAccessEnabled": False,
    "SendingEnabled": True,
    "SendQuota": {"Max24HourSend": 200, "MaxSendRate": 14, "SentLast24Hours": 3},
    "SuppressionAttributes": {"SuppressedReasons": []},
}


def test_ses_local_with_an_account_paces_at_its_rate_and_the_check_reports_it(tmp_path, configure, sample_issue):
    with running_ses_local(tmp_path / "emulator.log", account=SES_LOCAL_ACCOUNT) as emulator:
        provider, template, sent = on_ses_local(emulator.url, configure, sample_issue)
        line = provider.check()
        assert line == (
            f"ses: credentials accepted in region {REGION} at {emulator.url}; sending enabled, in the sandbox "
            f"(only verified recipients; request production access in the SES console, or check [provider] region "
            f"if {REGION} is not where you have it); max send rate 14/s, 3 of 200 sent in the last 24 h"
        )
        outcomes = provider.send_batch(batch_of(template, ["a@example.org", "b@example.org", "c@example.org"]))
        assert [o.status for o in outcomes] == ["sent"] * 3
        assert provider.pacer.rate == pytest.approx(12.6) and provider.rate_note == ""  # 90% of 14/s
        assert len(emulator.emails()) == 3
        provider.close()


def test_ses_local_at_a_wrong_path_stops_the_campaign_at_the_first_send(ses_local, configure, sample_issue):
    wrong = f"{ses_local.url}/ses"
    provider, template, sent = on_ses_local(wrong, configure, sample_issue, extra="rate_limit = 20\n")
    with pytest.raises(FatalError) as caught:
        provider.send_batch(batch_of(template, ["a@example.org", "b@example.org"]))
    assert str(caught.value) == (f"ses: region {REGION} at {wrong} does not answer SendEmail "
                                 "(HTTP 404: <UnknownOperationException/>); check [provider] base_url")
    assert caught.value.partial == [] and len(sent) == 1  # one call, not retried, b never tried
    assert ses_local.emails() == []
    with pytest.raises(FatalError, match="does not answer GetAccount .*check \\[provider\\] base_url"):
        provider.check()
    provider.close()
