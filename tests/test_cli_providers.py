"""`newsletter providers check` against the local service fakes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from newsletter.cli import main

from .conftest import BASIC_TOML
from .fakes import mailgun as mailgun_fake
from .fakes import sendgrid as sendgrid_fake


@pytest.fixture(autouse=True)
def _no_service_keys_from_the_machine(monkeypatch):
    for name in ("SENDGRID_API_KEY", "MAILGUN_API_KEY", "RESEND_API_KEY", "POSTMARK_SERVER_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def setup_letter(letter, provider: str, dotenv: str = "") -> None:
    (letter / "newsletter.toml").write_text(BASIC_TOML + "\n[provider]\n" + provider)
    (letter / ".env").write_text(dotenv)


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_a_working_set_up_prints_what_was_checked(letter):
    with sendgrid_fake.FakeSendgrid() as fake:
        setup_letter(letter, f'name = "sendgrid"\nbase_url = "{fake.url}"\n', f"SENDGRID_API_KEY={sendgrid_fake.KEY}\n")
        result = run("providers", "check")
    assert result.exit_code == 0, result.output
    assert result.output == f"sendgrid: API key accepted with the mail.send scope ({fake.url})\n"
    assert [r.path for r in fake.requests] == ["/v3/scopes"]


def test_a_refused_key_is_one_line_and_exit_code_1(letter):
    secret = "SG.a-key-that-was-revoked"
    with sendgrid_fake.FakeSendgrid() as fake:
        setup_letter(letter, f'name = "sendgrid"\nbase_url = "{fake.url}"\n', f"SENDGRID_API_KEY={secret}\n")
        result = run("providers", "check")
    assert result.exit_code == 1
    assert result.output.startswith("error: sendgrid: the API refused the key in SENDGRID_API_KEY (401")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert secret not in result.output


def test_a_domain_in_the_other_region_is_named(letter):
    with mailgun_fake.FakeMailgun() as fake:
        setup_letter(letter, f'name = "mailgun"\ndomain = "mg.unknown.example"\nbase_url = "{fake.url}"\n',
                     f"MAILGUN_API_KEY={mailgun_fake.KEY}\n")
        result = run("providers", "check")
    assert result.exit_code == 1
    assert "error: mailgun: domain mg.unknown.example was not found (US region" in result.output
    assert 'set region = "eu"' in result.output


def test_a_missing_secret_is_a_configuration_error(letter):
    setup_letter(letter, 'name = "resend"\n')
    result = run("providers", "check")
    assert result.exit_code == 1
    assert result.output == (
        "error: environment: RESEND_API_KEY is not set; put it in the environment or in .env "
        "beside newsletter.toml (the resend provider needs it)\n"
    )


def test_the_default_outbox_is_checked_too(letter):
    result = run("providers", "check")
    assert result.exit_code == 0
    assert result.output == f"outbox: messages are written under {letter.resolve() / 'outbox'}\n"
