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
