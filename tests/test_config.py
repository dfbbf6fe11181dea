from __future__ import annotations

import datetime as dt

import pytest

from newsletter import config as cfg
from newsletter.errors import ConfigError

from .conftest import BASIC_TOML


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def load_text(tmp_path, text, environ=None):
    path = tmp_path / "newsletter.toml"
    path.write_text(text, encoding="utf-8")
    return cfg.load(path, environ=environ or {})


def test_valid_config_is_typed_and_frozen(tmp_path):
    config = load_text(tmp_path, BASIC_TOML)
    n = config.newsletter
    assert n.name == "Test Letter"
    assert n.sender.email == "ann@example.com" and n.sender.name == "Ann Berg"
    assert str(n.sender) == "Ann Berg <ann@example.com>"
    assert n.reply_to == "ann@example.com"  # defaults to the sender
    assert n.sign_off == "Sell well"
    assert n.timezone.key == "Europe/Oslo"
    assert n.default_list == "main"
    assert config.schedule.weekday == 1 and config.schedule.time == dt.time(9, 0)
    assert config.schedule.grace == dt.timedelta(hours=6)
    assert config.provider.name == "outbox"
    assert config.database.url == f"sqlite:///{tmp_path.resolve()}/newsletter.db"
    with pytest.raises(AttributeError):
        n.name = "changed"  # type: ignore[misc]


def test_every_bad_key_is_reported_at_once(tmp_path):
    text = BASIC_TOML.replace(
        'from = { name = "Ann Berg", address = "ann@example.com" }', 'from = "bob@"'
    ).replace('weekday = "tuesday"', 'weekday = "tusday"').replace(
        'timezone = "Europe/Oslo"', 'timezone = "Europe/Olso"'
    )
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text + "\n[database]\nurl = 'mysql://x'\n")
    message = str(caught.value)
    lines = message.splitlines()
    assert "newsletter.toml: [newsletter] from: 'bob@' is not an email address" in lines
    assert "newsletter.toml: [schedule] weekday: 'tusday' is not a weekday (monday..sunday)" in lines
    assert any("[newsletter] timezone: 'Europe/Olso' is not a known time zone" in ln for ln in lines)
    assert any("[database] url:" in ln and "not a database URL" in ln for ln in lines)
    assert len(lines) == 4


def test_sender_as_string_with_name(tmp_path):
    text = BASIC_TOML.replace(
        'from = { name = "Ann Berg", address = "ann@example.com" }',
        'from = "Åse Lund <ase@example.org>"',
    )
    config = load_text(tmp_path, text)
    assert config.newsletter.sender.name == "Åse Lund"
    assert config.newsletter.sender.email == "ase@example.org"


def test_missing_required_keys_say_what_to_write(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "[newsletter]\n")
    message = str(caught.value)
    assert "[newsletter] name: is required" in message
    assert "[newsletter] site_url: is required, e.g. site_url = " in message
    assert "[newsletter] from: is required" in message


def test_unknown_keys_and_sections_are_named(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, BASIC_TOML + 'sign_of = "x"\n\n[shedule]\nday = 1\n')
    message = str(caught.value)
    assert "[schedule] sign_of: unknown key" in message  # appended to the [schedule] table
    assert "[shedule]: unknown section" in message


def test_secrets_are_refused_with_the_variable_to_use(tmp_path):
    text = BASIC_TOML + '\n[provider]\nname = "postmark"\nserver_token = "abc"\n'
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert "[provider] server_token: secrets never live in newsletter.toml" in message
    assert "POSTMARK_SERVER_TOKEN" in message
    assert "abc" not in message


def test_provider_and_database_sections_parse(tmp_path):
    text = BASIC_TOML + (
        '\n[provider]\nname = "smtp"\nhost = "127.0.0.1"\nport = 2525\nrate_limit = 20\n'
        'concurrency = 4\nbase_url = "http://127.0.0.1:9000/"\n'
        '\n[database]\nurl = "postgresql+psycopg://letter:pw@db.example.net/letter"\n'
    )
    config = load_text(tmp_path, text)
    assert config.provider.name == "smtp"
    assert config.provider.options == {"host": "127.0.0.1", "port": 2525}
    assert config.provider.rate_limit == 20.0 and config.provider.concurrency == 4
    assert config.provider.base_url == "http://127.0.0.1:9000"
    assert config.database.url.startswith("postgresql+psycopg://")


def test_bad_provider_values(tmp_path):
    text = BASIC_TOML + '\n[provider]\nname = "mailchimp"\nrate_limit = -1\nconcurrency = 0\n'
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    message = str(caught.value)
    assert "[provider] name: 'mailchimp' is not a provider" in message
    assert "[provider] rate_limit: must be a positive number" in message
    assert "[provider] concurrency: must be a positive whole number" in message


def test_database_url_from_environment_wins(tmp_path):
    config = load_text(
        tmp_path, BASIC_TOML, environ={"NEWSLETTER_DATABASE_URL": "sqlite:///other.db"}
    )
    assert config.database.url == f"sqlite:///{tmp_path.resolve()}/other.db"


def test_env_file_values_are_available_and_environment_wins(tmp_path):
    (tmp_path / ".env").write_text("NEWSLETTER_SECRET=from-file\nSMTP_PASSWORD=pw\n")
    config = load_text(tmp_path, BASIC_TOML, environ={"SMTP_PASSWORD": "from-env"})
    assert config.secret("NEWSLETTER_SECRET") == "from-file"
    assert config.secret("SMTP_PASSWORD") == "from-env"
    assert "from-file" not in repr(config)


def test_invalid_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "[newsletter\nname = 1")
    assert str(caught.value).startswith("newsletter.toml: is not valid TOML")


def test_find_config_searches_upwards(tmp_path, monkeypatch):
    (tmp_path / "newsletter.toml").write_text(BASIC_TOML)
    deep = tmp_path / "issues" / "x"
    deep.mkdir(parents=True)
    assert cfg.find_config(deep) == (tmp_path / "newsletter.toml").resolve()


def test_no_config_anywhere_says_how_to_start(tmp_path):
    with pytest.raises(ConfigError) as caught:
        cfg.find_config(tmp_path)
    assert "newsletter init" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("6h", dt.timedelta(hours=6)), ("90m", dt.timedelta(minutes=90)), ("1d", dt.timedelta(days=1)), (2, dt.timedelta(hours=2))],
)
def test_durations(value, expected):
    assert cfg.parse_duration(value) == expected


def test_mask_url_hides_password():
    assert cfg.mask_url("postgresql+psycopg://ann:s3cret@db/x") == "postgresql+psycopg://ann:***@db/x"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://ann@db/x?password=s3cret", "postgresql+psycopg://ann@db/x?password=***"),
        ("postgresql://db/x?sslmode=require&PASSWORD=s3cret&application_name=letter",
         "postgresql://db/x?sslmode=require&PASSWORD=***&application_name=letter"),
        ("postgresql://db/x?user=ann&sslpassword=s3cret", "postgresql://db/x?user=ann&sslpassword=***"),
        ("postgresql://db/x?pass%77ord=s3cret", "postgresql://db/x?pass%77ord=***"),
        ("postgresql://:s3cret@db/x", "postgresql://:***@db/x"),
        ("postgresql://ann:s3cret@db/x?password=s3cret", "postgresql://ann:***@db/x?password=***"),
        ("postgresql://ann@db:5432/x?sslmode=require", "postgresql://ann@db:5432/x?sslmode=require"),
        ("sqlite:////srv/letter/newsletter.db", "sqlite:////srv/letter/newsletter.db"),
    ],
)
def test_mask_url_hides_a_password_in_the_query_string_too(url, masked):
    assert cfg.mask_url(url) == masked


def test_a_database_url_password_is_masked_in_messages_and_repr(tmp_path):
    bad = "mysql://ann@db/x?password=s3cret"
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, BASIC_TOML, environ={"NEWSLETTER_DATABASE_URL": bad})
    assert "mysql://ann@db/x?password=***" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    good = "postgresql+psycopg://ann@db/x?password=s3cret"
    config = load_text(tmp_path, BASIC_TOML, environ={"NEWSLETTER_DATABASE_URL": good})
    assert config.database.url == good  # the real URL is kept for connecting
    assert "s3cret" not in repr(config) and "password=***" in repr(config.database)


def test_an_env_file_that_is_not_utf8_is_one_line_naming_the_line(tmp_path):
    (tmp_path / ".env").write_bytes(b"NEWSLETTER_SECRET=abc\n# mail\nSMTP_PASSWORD=bl\xe5b\xe6r\n")
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, BASIC_TOML)
    message = str(caught.value)
    assert message.startswith(".env line 3: is not UTF-8 text; save it as UTF-8")
    assert "\n" not in message and "SMTP_PASSWORD" not in message


def test_an_env_file_with_a_bom_still_reads(tmp_path):
    (tmp_path / ".env").write_bytes(b"\xef\xbb\xbfNEWSLETTER_SECRET=s\xc3\xa5\n")
    assert load_text(tmp_path, BASIC_TOML).secret("NEWSLETTER_SECRET") == "så"


def test_every_command_reports_a_latin1_env_file_in_one_line(letter, cli):
    (letter / ".env").write_bytes(b"SMTP_PASSWORD=bl\xe5b\xe6r\n")
    for args in (("subscribers", "list"), ("lists", "list"), ("check",)):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.splitlines() == [
            "error: .env line 1: is not UTF-8 text; save it as UTF-8 (a password with letters "
            "such as å is often the cause)"
        ]
        assert "Traceback" not in result.output


def test_a_secret_in_a_section_without_a_provider_says_where_it_goes_in_plain_words(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, BASIC_TOML + '\n[database]\napi_key = "abc"\n')
    message = str(caught.value)
    assert "[database] api_key: secrets never live in newsletter.toml; remove it and put it in the environment or in .env instead" in message
    assert "the environment in the environment" not in message and "abc" not in message
