"""Load and validate ``newsletter.toml`` into a typed, frozen object.

Every problem in the file is collected and reported at once, one line per key, e.g.
``newsletter.toml: [newsletter] from: 'bob@' is not an email address``. Secrets (API keys,
passwords, the signing secret) never live in the file: they come from the environment or
from a ``.env`` file beside it, and a key that looks like a secret is refused.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formataddr, parseaddr
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

CONFIG_NAME = "newsletter.toml"
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
PROVIDERS = ("outbox", "smtp", "postmark", "sendgrid", "mailgun", "resend", "ses")
SECRET_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "access_key")
# Where each provider's secret lives, for the hint when one turns up in the file.
SECRET_ENV_HINT = {
    "smtp": "SMTP_PASSWORD",
    "postmark": "POSTMARK_SERVER_TOKEN",
    "sendgrid": "SENDGRID_API_KEY",
    "mailgun": "MAILGUN_API_KEY",
    "resend": "RESEND_API_KEY",
    "ses": "AWS_SECRET_ACCESS_KEY",
}


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox: display name and address."""

    name: str
    email: str

    def __str__(self) -> str:
        return formataddr((self.name, self.email)) if self.name else self.email

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class NewsletterSettings:
    name: str
    description: str
    site_url: str
    language: str
    author: str
    sender: Address
    reply_to: str
    postal_address: str
    sign_off: str
    timezone: ZoneInfo
    default_list: str
    unsubscribe_mailto: str | None
    # Addresses on example.com, .test and the other names reserved for examples pass the
    # checks only when this is set: a test suite or a demo, never a real newsletter.
    allow_example_domains: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    weekday: int  # 0 = Monday
    time: dt.time
    grace: dt.timedelta

    @property
    def weekday_name(self) -> str:
        return WEEKDAYS[self.weekday]


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    rate_limit: float | None  # messages per second; None = as fast as the service allows
    concurrency: int | None  # parallel connections or requests; None = the provider's default
    base_url: str | None
    options: Mapping[str, Any]  # the service's own options, checked by its adapter


@dataclass(frozen=True, slots=True, repr=False)
class DatabaseSettings:
    url: str

    def __repr__(self) -> str:
        return f"DatabaseSettings(url={mask_url(self.url)!r})"


@dataclass(frozen=True, slots=True)
class PreviewSettings:
    test_recipients: tuple[str, ...]
    port: int


@dataclass(frozen=True, slots=True)
class WebSettings:
    soft_bounce_limit: int  # soft bounces in a row (no delivery between) that suppress
    max_body_bytes: int  # the largest request body the public server reads
    public_lists: tuple[str, ...] = ()  # lists the sign-up form may join (default list when empty)
    ip_signups_per_hour: int = 20  # sign-up form posts per client IP
    address_signups_per_day: int = 3  # confirmation emails per address
    webhook_tolerance: dt.timedelta = dt.timedelta(minutes=5)  # signed timestamps older are replays
    ses_topic_arn: str | None = None  # the SNS topic SES notifications must come from
    trusted_proxy: str | None = None  # the reverse proxy whose X-Forwarded-* headers are believed


FEED_CONTENT = ("full", "summary")
FEED_AUTO = ("off", "draft", "send")


@dataclass(frozen=True, slots=True)
class FeedSettings:
    url: str | None = None  # the blog's RSS or Atom feed
    content: str = "full"  # full: the whole post; summary: the excerpt and a "Read the rest" link
    auto: str = "off"  # what `tick` does before each slot: off, draft, or send (draft and schedule)
    lead: dt.timedelta = dt.timedelta(hours=24)  # how long before the slot `tick` drafts


@dataclass(frozen=True, slots=True)
class TrackingSettings:
    # Links in the email go through <site_url>/l/<id>, which counts one click per link of an
    # issue (never who clicked) and redirects. Off by default.
    clicks: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    newsletter: NewsletterSettings
    schedule: ScheduleSettings
    provider: ProviderSettings
    database: DatabaseSettings
    preview: PreviewSettings
    web: WebSettings
    env: Mapping[str, str] = field(repr=False)
    feed: FeedSettings = field(default_factory=FeedSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def issues_dir(self) -> Path:
        return self.root / "issues"

    @property
    def dist_dir(self) -> Path:
        return self.root / "dist"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def cache_dir(self) -> Path:
        """Files made from others and made again when lost (resized images)."""
        return self.root / ".cache"

    def secret(self, name: str) -> str | None:
        """A secret from the environment or .env; empty values count as unset."""
        value = self.env.get(name)
        return value or None


# ---------------------------------------------------------------------------------------------
# Finding and reading the file


def find_config(start: Path | None = None) -> Path:
    """The newsletter.toml for ``start`` (default: cwd), searching upwards like git does."""
    explicit = os.environ.get("NEWSLETTER_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"NEWSLETTER_CONFIG names {explicit}, which is not a file", CONFIG_NAME)
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or any folder above it; run `newsletter init DIR` "
        "to start a newsletter, or pass --config PATH",
        CONFIG_NAME,
    )


def load(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the configuration; raise ConfigError listing every problem."""
    path = Path(path) if path else find_config()
    if path.is_dir():
        path = path / CONFIG_NAME
    shown = _display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found; run `newsletter init DIR` to start one", shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read: {exc}", shown) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"is not valid TOML: {exc}", shown) from None
    env = load_env(path.parent, environ)
    return parse(data, path.resolve(), env)


def load_env(root: Path, environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """The process environment over the values of ``root/.env`` (the environment wins)."""
    merged: dict[str, str] = {}
    env_file = root / ".env"
    if env_file.is_file():
        merged.update(_read_env_file(env_file))
    merged.update(os.environ if environ is None else environ)
    return MappingProxyType(merged)


def _read_env_file(env_file: Path) -> dict[str, str]:
    """The values in a .env file; a file that is not UTF-8 is one ConfigError naming the
    line (python-dotenv would raise UnicodeDecodeError from deep inside)."""
    import io

    from dotenv import dotenv_values

    shown = _display_path(env_file)
    try:
        data = env_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", shown) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data[:offset].count(b"\n") + 1
        raise ConfigError(
            "is not UTF-8 text; save it as UTF-8 (a password with letters such as å is "
            "often the cause)",
            f"{shown} line {line}",
        ) from None
    values = dotenv_values(stream=io.StringIO(text))
    return {k: v for k, v in values.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# Validation


class _Section:
    """Reads one [section], recording a problem per bad key instead of stopping."""

    def __init__(self, name: str, data: Any, problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problem(None, f"must be a table, e.g. [{name}]")
            data = {}
        self.data: dict[str, Any] = data

    def problem(self, key: str | None, message: str) -> None:
        where = f"[{self.name}] {key}" if key else f"[{self.name}]"
        self.problems.append(f"{where}: {message}")

    def get(self, key: str, default: Any, check: Callable[[Any], Any] | None = None) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if check is None:
            return value
        try:
            return check(value)
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def required(self, key: str, check: Callable[[Any], Any], example: str) -> Any:
        if key not in self.data:
            self.seen.add(key)
            self.problem(key, f"is required, e.g. {key} = {example}")
            return None
        return self.get(key, None, check)

    def finish(self, allow_extra: bool = False) -> dict[str, Any]:
        """Report secrets and unknown keys; return the keys not read (when allowed)."""
        extra: dict[str, Any] = {}
        for key, value in self.data.items():
            if any(word in key.lower() for word in SECRET_WORDS):
                variable = SECRET_ENV_HINT.get(str(self.data.get("name", "")))
                where = f"set {variable} in the environment or in .env" if variable else (
                    "put it in the environment or in .env instead")
                self.problem(key, f"secrets never live in {CONFIG_NAME}; remove it and {where}")
            elif key not in self.seen:
                if allow_extra:
                    extra[key] = value
                else:
                    known = ", ".join(sorted(self.seen))
                    self.problem(key, f"unknown key (known keys: {known})")
        return extra


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value.strip()


def _nonempty(value: Any) -> str:
    text = _text(value)
    if not text:
        raise ValueError("must not be empty")
    return text


def _email(value: Any) -> str:
    from email_validator import EmailNotValidError, validate_email

    text = _text(value)
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError:
        raise ValueError(f"{text!r} is not an email address") from None


def _sender(value: Any) -> Address:
    if isinstance(value, dict):
        unknown = set(value) - {"name", "address"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}; use name and address")
        if "address" not in value:
            raise ValueError('needs an address, e.g. from = { name = "Ann", address = "ann@example.com" }')
        name = _text(value.get("name", ""))
        address = _email(value["address"])
    else:
        text = _text(value)
        name, raw = parseaddr(text)
        if not raw or "@" not in raw:
            raise ValueError(f"{text!r} is not an email address")
        address = _email(raw)
    if any(ch in name for ch in "\r\n"):
        raise ValueError("the name must not contain line breaks")
    return Address(name=name, email=address)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _url(value: Any) -> str:
    text = _text(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{text!r} is not an http(s) URL, e.g. https://letter.example.com")
    return text.rstrip("/")


def _feed_url(value: Any) -> str:
    """A feed's address exactly as given: /feed/ and /feed are different resources."""
    text = _text(value)
    _url(text)
    return text


def _language(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", text):
        raise ValueError(f"{text!r} is not a language tag, e.g. en or en-GB")
    return text


def _timezone(value: Any) -> ZoneInfo:
    text = _text(value)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{text!r} is not a known time zone, e.g. Europe/Oslo or UTC") from None


def _list_name(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", text):
        raise ValueError(f"{text!r} is not a list name (lowercase letters, digits, - and _)")
    return text


def parse_weekday(value: Any) -> int:
    text = _text(value).lower()
    for index, name in enumerate(WEEKDAYS):
        if text in (name, name[:3]):
            return index
    raise ValueError(f"{value!r} is not a weekday (monday..sunday)")


def parse_clock(value: Any) -> dt.time:
    text = _text(value)
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"{text!r} is not a time of day as HH:MM, e.g. 09:00")
    return dt.time(int(match[1]), int(match[2]))


def parse_duration(value: Any) -> dt.timedelta:
    """``6h``, ``90m``, ``1d``, ``30s`` or a bare number of hours."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration, e.g. 6h or 90m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return dt.timedelta(hours=value)
    text = _text(value).lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([dhms])", text)
    if not match:
        raise ValueError(f"{value!r} is not a duration, e.g. 6h or 90m")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match[2]]
    return dt.timedelta(**{unit: float(match[1])})


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}")
        return value.strip().lower()
    return check


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return float(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive whole number, got {value!r}")
    return value


def _port(value: Any) -> int:
    port = _positive_int(value)
    if port > 65535:
        raise ValueError(f"{port} is not a port number (1-65535)")
    return port


def _list_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError('must be a list of list names, e.g. ["main"]')
    return tuple(_list_name(item) for item in value)


def _topic_arn(value: Any) -> str:
    text = _text(value)
    if not re.fullmatch(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?", text):
        raise ValueError(
            f"{text!r} is not an SNS topic ARN, e.g. arn:aws:sns:eu-west-1:123456789012:ses-events"
        )
    return text


def _ip_address(value: Any) -> str:
    import ipaddress

    text = _text(value)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address, e.g. 127.0.0.1") from None


def _tolerance(value: Any) -> dt.timedelta:
    window = parse_duration(value)
    if not dt.timedelta(seconds=30) <= window <= dt.timedelta(hours=24):
        raise ValueError(f"{value!r} must be between 30s and 24h, e.g. 5m")
    return window


def _provider_name(value: Any) -> str:
    text = _text(value).lower()
    if text not in PROVIDERS:
        raise ValueError(f"{value!r} is not a provider; use one of {', '.join(PROVIDERS)}")
    return text


def _email_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("must be a list of email addresses")
    return tuple(_email(item) for item in value)


def _database_url(root: Path) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        return resolve_database_url(_nonempty(value), root)

    return check


def resolve_database_url(url: str, root: Path) -> str:
    """Make a relative SQLite path absolute against the newsletter folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        relative = url.removeprefix("sqlite:///")
        if relative and relative != ":memory:" and not relative.startswith("/"):
            return "sqlite:///" + str((root / relative).resolve())
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
        raise ValueError(
            f"{mask_url(url)!r} is not a database URL; use sqlite:///newsletter.db or "
            "postgresql+psycopg://user@host/dbname"
        )
    return url


# The password in a URL's user information (user:password@host). The user name and
# password are read the way SQLAlchemy reads them: the password ends at the first @.
_URL_PASSWORD = re.compile(r"(://[^:/\s]*:)[^@\s]*@")
# A query parameter (?password=..., &sslpassword=...): libpq and psycopg take secrets there too.
_URL_PARAMETER = re.compile(r"([?&;])([^=&;#\s]*)=([^&;#\s]*)")
_SECRET_PARAMETER_WORDS = (*SECRET_WORDS, "pwd")


def mask_url(url: str) -> str:
    """The URL (or a message holding one) with every password replaced by ***, in the
    user information and in the query string alike, fit for messages and logs."""
    from urllib.parse import unquote_plus

    def parameter(match: re.Match[str]) -> str:
        key = unquote_plus(match.group(2)).lower()
        if match.group(3) and any(word in key for word in _SECRET_PARAMETER_WORDS):
            return f"{match.group(1)}{match.group(2)}=***"
        return match.group(0)

    masked = _URL_PASSWORD.sub(r"\1***@", url)
    return _URL_PARAMETER.sub(parameter, masked)


def parse(data: Mapping[str, Any], path: Path, env: Mapping[str, str]) -> Config:
    problems: list[str] = []
    root = path.parent
    known_sections = {"newsletter", "schedule", "provider", "database", "preview", "web", "feed",
                      "tracking"}
    for name in data:
        if name not in known_sections:
            problems.append(
                f"[{name}]: unknown section (known sections: {', '.join(sorted(known_sections))})"
            )

    s = _Section("newsletter", data.get("newsletter"), problems)
    if "newsletter" not in data:
        s.problem(None, "section is missing; it names the newsletter and its sender")
    name = s.required("name", _nonempty, '"The Weekly Letter"')
    description = s.get("description", "", _text)
    site_url = s.required("site_url", _url, '"https://letter.example.com"')
    language = s.get("language", "en", _language)
    author = s.get("author", "", _text)
    sender = s.required("from", _sender, '{ name = "Ann Berg", address = "ann@example.com" }')
    reply_to = s.get("reply_to", None, _email)
    postal_address = s.get("postal_address", "", _text)
    sign_off = s.get("sign_off", "Sell well", _nonempty)
    timezone = s.get("timezone", ZoneInfo("UTC"), _timezone)
    default_list = s.get("default_list", "main", _list_name)
    unsubscribe_mailto = s.get("unsubscribe_mailto", None, _email)
    allow_example_domains = s.get("allow_example_domains", False, _flag)
    s.finish()

    sched = _Section("schedule", data.get("schedule"), problems)
    weekday = sched.get("weekday", 1, parse_weekday)
    clock = sched.get("time", dt.time(8, 0), parse_clock)
    grace = sched.get("grace", dt.timedelta(hours=6), parse_duration)
    sched.finish()

    prov = _Section("provider", data.get("provider"), problems)
    provider_name = prov.get("name", "outbox", _provider_name)
    rate_limit = prov.get("rate_limit", None, _positive_number)
    concurrency = prov.get("concurrency", None, _positive_int)
    base_url = prov.get("base_url", None, _url)
    options = prov.finish(allow_extra=True)

    db = _Section("database", data.get("database"), problems)
    db_url = db.get("url", resolve_database_url("sqlite:///newsletter.db", root), _database_url(root))
    db.finish()
    env_url = env.get("NEWSLETTER_DATABASE_URL")
    if env_url:
        try:
            db_url = resolve_database_url(env_url, root)
        except ValueError as exc:
            problems.append(f"NEWSLETTER_DATABASE_URL: {exc}")

    pre = _Section("preview", data.get("preview"), problems)
    test_recipients = pre.get("test_recipients", (), _email_list)
    preview_port = pre.get("port", 8025, _port)
    pre.finish()

    web = _Section("web", data.get("web"), problems)
    soft_bounce_limit = web.get("soft_bounce_limit", 3, _positive_int)
    max_body_bytes = web.get("max_body_bytes", 256 * 1024, _positive_int)
    public_lists = web.get("public_lists", (), _list_names)
    ip_signups = web.get("ip_signups_per_hour", 20, _positive_int)
    address_signups = web.get("address_signups_per_day", 3, _positive_int)
    tolerance = web.get("webhook_tolerance", dt.timedelta(minutes=5), _tolerance)
    ses_topic_arn = web.get("ses_topic_arn", None, _topic_arn)
    trusted_proxy = web.get("trusted_proxy", None, _ip_address)
    web.finish()

    fd = _Section("feed", data.get("feed"), problems)
    feed_url = fd.get("url", None, _feed_url)
    feed_content = fd.get("content", "full", _one_of(FEED_CONTENT))
    feed_auto = fd.get("auto", "off", _one_of(FEED_AUTO))
    feed_lead = fd.get("lead", dt.timedelta(hours=24), parse_duration)
    if feed_auto != "off" and feed_url is None:
        fd.problem("auto", f'"{feed_auto}" needs the feed\'s address: add url = "https://…/feed/"')
    fd.finish()

    tr = _Section("tracking", data.get("tracking"), problems)
    track_clicks = tr.get("clicks", False, _flag)
    tr.finish()

    if problems:
        raise ConfigError(problems, _display_path(path))

    return Config(
        path=path,
        newsletter=NewsletterSettings(
            name=name,
            description=description,
            site_url=site_url,
            language=language,
            author=author or sender.name,
            sender=sender,
            reply_to=reply_to or sender.email,
            postal_address=postal_address,
            sign_off=sign_off,
            timezone=timezone,
            default_list=default_list,
            unsubscribe_mailto=unsubscribe_mailto,
            allow_example_domains=allow_example_domains,
        ),
        schedule=ScheduleSettings(weekday=weekday, time=clock, grace=grace),
        provider=ProviderSettings(
            name=provider_name,
            rate_limit=rate_limit,
            concurrency=concurrency,
            base_url=base_url.rstrip("/") if base_url else None,
            options=MappingProxyType(options),
        ),
        database=DatabaseSettings(url=db_url),
        preview=PreviewSettings(test_recipients=test_recipients, port=preview_port),
        web=WebSettings(
            soft_bounce_limit=soft_bounce_limit,
            max_body_bytes=max_body_bytes,
            public_lists=public_lists or (default_list,),
            ip_signups_per_hour=ip_signups,
            address_signups_per_day=address_signups,
            webhook_tolerance=tolerance,
            ses_topic_arn=ses_topic_arn,
            trusted_proxy=trusted_proxy,
        ),
        env=env,
        feed=FeedSettings(url=feed_url, content=feed_content, auto=feed_auto, lead=feed_lead),
        tracking=TrackingSettings(clicks=track_clicks),
    )


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
