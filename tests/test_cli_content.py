from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from newsletter import config as cfg
from newsletter.cli import main
from newsletter.scaffold import new_issue

REPO = Path(__file__).resolve().parent.parent


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_every_command_has_help():
    for path, command in all_commands(main):
        assert command.help and command.help.strip(), f"{' '.join(path)} has no help"
        result = run(*path, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


@pytest.fixture
def sample(tmp_path, monkeypatch):
    shutil.copy(REPO / "newsletter.toml", tmp_path / "newsletter.toml")
    shutil.copytree(REPO / "issues", tmp_path / "issues")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_build_writes_every_file_and_prints_sizes(sample):
    result = run("build")
    assert result.exit_code == 0, result.output
    out = sample / "dist" / "2026-12-08-listen-before-you-lead"
    for name in ("email.html", "email.txt", "message.eml", "preview.html", "web/index.html"):
        assert (out / name).is_file(), name
        assert f"dist/2026-12-08-listen-before-you-lead/{name}" in result.output
    assert " KB" in result.output and "checks: all passed" in result.output
    assert not any(p.name.startswith(".") for p in (sample / "dist").iterdir())


def test_build_publishes_images_with_the_web_version(sample):
    result = run("build", "the-quota-is-not-the-goal")
    assert result.exit_code == 0, result.output
    web = sample / "dist" / "2026-12-01-the-quota-is-not-the-goal" / "web"
    assert (web / "quota-chart.png").read_bytes()[:4] == b"\x89PNG"
    assert 'src="quota-chart.png"' in (web / "index.html").read_text()


def test_build_twice_replaces_the_folder(sample):
    assert run("build").exit_code == 0
    stale = sample / "dist" / "2026-12-08-listen-before-you-lead" / "stale.txt"
    stale.write_text("old")
    assert run("build").exit_code == 0
    assert not stale.exists()


def test_check_passes_and_fails(sample):
    assert run("check", "2026-12-01-the-quota-is-not-the-goal").exit_code == 0
    post = sample / "issues" / "2026-12-01-the-quota-is-not-the-goal" / "01-the-quota-is-not-the-goal.md"
    post.write_text(post.read_text().replace("(quota-chart.png)", "(gone.png)"))
    result = run("check", "2026-12-01-the-quota-is-not-the-goal")
    assert result.exit_code == 1
    assert "image 'gone.png' does not exist" in result.output
    assert "01-the-quota-is-not-the-goal.md line " in result.output


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda p: p.write_text("---\ntitle: [oops\n---\nx\n"), "front matter is not valid YAML"),
        (lambda p: p.write_text("---\nauthor: A\n---\nx\n"), "title is missing"),
    ],
)
def test_bad_posts_give_one_line_and_exit_1(sample, breakage, expected):
    post = sample / "issues" / "2026-12-08-listen-before-you-lead" / "02-from-the-mailbag.md"
    breakage(post)
    result = CliRunner().invoke(main, ["build"])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_unknown_issue_and_bad_config(sample):
    result = CliRunner().invoke(main, ["build", "nope"])
    assert result.exit_code == 1
    assert "2026-12-01-the-quota-is-not-the-goal, 2026-12-08-listen-before-you-lead" in result.output
    toml = sample / "newsletter.toml"
    toml.write_text(toml.read_text().replace('address = "martin@letter.example.com"', 'address = "bob@"'))
    result = CliRunner().invoke(main, ["build"])
    assert result.exit_code == 1
    assert "error: newsletter.toml: [newsletter] from: 'bob@' is not an email address" in result.output


def test_no_newsletter_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build"])
    assert result.exit_code == 1 and "newsletter init" in result.output


def test_init_scaffolds_a_working_newsletter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("init", "my-letter", "--author", "Kari Nordmann", "--from", "kari@example.org")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "my-letter"
    for name in ("newsletter.toml", "templates/email.html", "templates/email.txt", "issues", ".gitignore"):
        assert (folder / name).exists(), name
    assert "dist/" in (folder / ".gitignore").read_text() and ".env" in (folder / ".gitignore").read_text()
    env = (folder / ".env").read_text()
    assert env.startswith("NEWSLETTER_SECRET=") and len(env.strip()) > 40
    assert (folder / ".env").stat().st_mode & 0o077 == 0
    config = cfg.load(folder / "newsletter.toml", environ={})
    assert config.newsletter.name == "My Letter"
    assert config.newsletter.sender.email == "kari@example.org"
    # a new issue in the new newsletter builds (its only error: the postal address to fill in)
    monkeypatch.chdir(folder)
    assert run("new", "Why quotas fail").exit_code == 0
    result = CliRunner().invoke(main, ["build"])
    assert "postal_address is empty" in result.output
    assert result.exit_code == 1


def test_init_refuses_an_existing_newsletter(sample):
    result = CliRunner().invoke(main, ["init", "."])
    assert result.exit_code == 1 and "already exists" in result.output


def test_new_dates_the_issue_to_the_next_free_slot(letter):
    config = cfg.load(letter / "newsletter.toml", environ={})
    monday = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    first = new_issue(config, "Why quotas fail", now=monday)
    assert first.folder.name == "2026-12-01-why-quotas-fail"
    assert first.slot.isoformat() == "2026-12-01T09:00:00+01:00"
    text = (first.folder / "issue.md").read_text()
    assert 'subject: "Why quotas fail"' in text
    assert (first.folder / "01-why-quotas-fail.md").read_text().startswith('---\ntitle: "Why quotas fail"')
    second = new_issue(config, "Second", now=monday)
    assert second.folder.name.startswith("2026-12-08-")
    # Tuesday after the slot time: the next slot is a week on
    late = dt.datetime(2026, 12, 15, 9, 30, tzinfo=dt.UTC)
    assert new_issue(config, "Third", now=late).folder.name.startswith("2026-12-22-")


def test_new_command(letter):
    result = run("new", 'Quotas: "the" number')
    assert result.exit_code == 0, result.output
    (folder,) = (letter / "issues").iterdir()
    assert dt.date.fromisoformat(folder.name[:10]).weekday() == 1  # a Tuesday
    assert run("build").exit_code == 0
