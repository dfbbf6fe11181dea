"""Shared fixtures: a throwaway newsletter folder written inline into tmp_path."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

BASIC_TOML = """\
[newsletter]
name = "Test Letter"
description = "A letter for tests."
site_url = "https://letter.example.com"
language = "en"
author = "Ann Berg"
from = { name = "Ann Berg", address = "ann@example.com" }
postal_address = "1 Test Street, Oslo"
timezone = "Europe/Oslo"
allow_example_domains = true

[schedule]
weekday = "tuesday"
time = "09:00"
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own newsletter settings or secrets."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_") and name not in {"NEWSLETTER_TEST_POSTGRES_URL"}:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def write(tmp_path: Path):
    """write("a/b.md", text) -> Path: create a file under tmp_path, dedenting the text."""

    def _write(relative: str, text: str) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def letter(tmp_path: Path, write, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A minimal newsletter folder (newsletter.toml, no issues) as the working directory."""
    write("newsletter.toml", BASIC_TOML)
    (tmp_path / "issues").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- provider fixtures ---


@pytest.fixture
def configure(letter: Path):
    """configure(provider_toml, env) -> Config: the letter folder with a [provider] section."""
    from newsletter import config as cfg

    def _configure(provider: str = "", env: dict[str, str] | None = None, extra: str = ""):
        (letter / "newsletter.toml").write_text(
            BASIC_TOML + ("\n[provider]\n" + textwrap.dedent(provider) if provider else "") + extra
        )
        return cfg.load(letter / "newsletter.toml", environ=env or {})

    return _configure


@pytest.fixture
def sample_issue(letter: Path, write):
    """A two-post issue in the letter folder; returns its slug."""
    write("issues/2026-12-01-sample/issue.md", "---\nsubject: Sälj väl\npreheader: Pre\n---\n")
    write("issues/2026-12-01-sample/01-a.md", "---\ntitle: A\n---\nHello reader.\n")
    write("issues/2026-12-01-sample/02-b.md", "---\ntitle: B\n---\n> quoted\n\nMore.\n")
    return "2026-12-01-sample"


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sample_letter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of this repository's newsletter.toml and sample issues as the working directory."""
    import shutil

    shutil.copy(REPO / "newsletter.toml", tmp_path / "newsletter.toml")
    shutil.copytree(REPO / "issues", tmp_path / "issues")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def feed_server():
    """A local HTTP server for feeds, with routes set per test (tests/feedserver.py)."""
    from tests.feedserver import FeedServer

    with FeedServer() as server:
        yield server


# --- store fixtures ---

POSTGRES_SKIP = (
    "PostgreSQL tests skipped: run `. .ci/postgres.sh` to install and start a local server, "
    "or set NEWSLETTER_TEST_POSTGRES_URL"
)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A URL to an empty database: a SQLite file, or a fresh PostgreSQL database made for
    this test on the server named by NEWSLETTER_TEST_POSTGRES_URL (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip(POSTGRES_SKIP)
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"newsletter_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def store(db_url: str):
    """An opened, up-to-date store on each database; default list "main"."""
    from newsletter.store import open_store

    opened = open_store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def letter_db(letter: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The `letter` folder with its database on each kind of server (through the
    environment, as a deployment would set it)."""
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    return db_url


@pytest.fixture
def cli():
    """cli("subscribers", "add", ...) -> click Result, run in-process."""
    from click.testing import CliRunner

    from newsletter.cli import main

    runner = CliRunner()

    def _run(*args: str, input: str | None = None):
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    return _run


# --- the run's summary, and CI: nothing may skip ---


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line per reason for the skipped tests: a run without PostgreSQL or Chromium says
    so in a few lines, not one per test. (Failures and errors are listed one by one: `-rfE`
    in pyproject.toml.)"""
    from collections import Counter

    from newsletter.wording import plural

    reasons = Counter(_skip_reason(r) for r in terminalreporter.stats.get("skipped", []))
    if not reasons:
        return
    terminalreporter.write_sep("=", "skipped tests, by reason")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"SKIPPED {plural(count, 'test')}: {reason}", yellow=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With NEWSLETTER_REQUIRE_ALL=1 (set by .ci/run, which installs every system package
    the tests use), a skipped test fails the run."""
    if not os.environ.get("NEWSLETTER_REQUIRE_ALL"):
        return
    from newsletter.wording import plural

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        if reporter:
            reporter.write_line(f"NEWSLETTER_REQUIRE_ALL: {plural(skipped, 'test')} skipped; CI runs them all",
                                red=True)
        session.exitstatus = 1


# --- browser fixtures (headless Chromium through Playwright, never a downloaded browser) ---


def _browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    from newsletter.web.screenshot import BrowserMissing, find_chromium

    install = "install Chromium with `apt-get install chromium` and Playwright with `pip install playwright`"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"the playwright package is not installed; {install}"
    try:
        find_chromium()
    except BrowserMissing:
        return f"Chromium is not installed; {install}"
    return None


BROWSER_MISSING = _browser_missing()
needs_browser = pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless, for one test module."""
    from playwright.sync_api import sync_playwright

    from newsletter.web.screenshot import CHROMIUM_ARGS, find_chromium

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
        yield launched
        launched.close()
