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
    assert "checks: 1 error, 0 warnings" in result.output
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
    # It builds, and its stub text is all that stops it.
    result = run("build")
    assert result.exit_code == 1 and "checks: 2 errors, 0 warnings" in result.output
    assert "preheader is still the placeholder" in result.output and "is the stub text" in result.output
    (folder / "issue.md").write_text('---\nsubject: "Quotas"\npreheader: "Why the number lies"\n---\n')
    post = next(folder.glob("01-*.md"))
    front_matter = post.read_text().rpartition("---\n")[0]
    post.write_text(front_matter + "---\nThe story, then the point.\n")
    assert run("build").exit_code == 0


def test_new_transliterates_the_title_into_the_folder_name(letter):
    result = run("new", "Tromsø og Ålesund", "--date", "2026-12-08")
    assert result.exit_code == 0, result.output
    folder = letter / "issues" / "2026-12-08-tromso-og-alesund"
    assert (folder / "01-tromso-og-alesund.md").is_file()
    assert 'subject: "Tromsø og Ålesund"' in (folder / "issue.md").read_text(encoding="utf-8")


# -- naming an issue on the command line ---------------------------------------------------------

# Every command that takes ISSUE, with the options that get it past its own prompts.
ISSUE_COMMANDS = [
    ("build",),
    ("check",),
    ("preview", "--no-open"),
    ("send", "--yes"),
    ("send", "--dry-run"),
    ("send", "--test-to", "me@example.org"),
    ("status",),
    ("cancel", "--yes"),
    ("schedule",),
    ("unschedule",),
    ("report",),
]


@pytest.fixture
def two_issues(letter, write, monkeypatch):
    """The letter with the outbox, one reader, and two issues both called why-quotas-fail."""
    write("newsletter.toml", (letter / "newsletter.toml").read_text() + '\n[provider]\nname = "outbox"\n')
    write(".env", "NEWSLETTER_SECRET=names-secret\n")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{letter / 'newsletter.db'}")
    for slug in ("2026-12-01-why-quotas-fail", "2026-12-08-why-quotas-fail"):
        write(f"issues/{slug}/issue.md", "---\nsubject: Why quotas fail\npreheader: P\n---\n")
        write(f"issues/{slug}/01-a.md", "---\ntitle: A\n---\nSell well.\n")
    assert run("subscribers", "add", "ann@example.com", "--confirmed").exit_code == 0
    return letter


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_the_list_above_has_every_command_that_takes_an_issue():
    takes_issue = {" ".join(path) for path, command in all_commands(main)
                   if any(p.name == "issue" for p in command.params)}
    assert takes_issue == {args[0] for args in ISSUE_COMMANDS}


@pytest.mark.parametrize("args", ISSUE_COMMANDS, ids=" ".join)
def test_an_unknown_issue_is_an_error_everywhere(two_issues, args):
    line = error_line(CliRunner().invoke(main, [args[0], "nope", *args[1:]]))
    assert line.startswith("error: no issue 'nope' in ")
    assert "2026-12-01-why-quotas-fail, 2026-12-08-why-quotas-fail" in line
    assert not (two_issues / "outbox").exists()


@pytest.mark.parametrize("args", ISSUE_COMMANDS, ids=" ".join)
def test_a_short_name_of_two_issues_is_ambiguous_everywhere(two_issues, args):
    line = error_line(CliRunner().invoke(main, [args[0], "why-quotas-fail", *args[1:]]))
    assert line.startswith("error: 'why-quotas-fail' is ambiguous: ")
    assert "2026-12-01-why-quotas-fail" in line and "2026-12-08-why-quotas-fail" in line
    assert not (two_issues / "outbox").exists()


def test_status_still_shows_an_issue_whose_folder_was_deleted(two_issues):
    sent = run("send", "2026-12-01-why-quotas-fail", "--yes")
    assert sent.exit_code == 0, sent.output
    shutil.rmtree(two_issues / "issues" / "2026-12-01-why-quotas-fail")
    for name in ("2026-12-01-why-quotas-fail", "issues/2026-12-01-why-quotas-fail/"):
        status = CliRunner().invoke(main, ["status", name])
        assert status.exit_code == 0, status.output
        assert "2026-12-01-why-quotas-fail → main via outbox: finished" in status.stdout
    # The short name now names one folder (the other issue), which has no campaign yet.
    assert run("status", "why-quotas-fail").stdout == "no campaigns for 2026-12-08-why-quotas-fail yet\n"
    cancel = error_line(CliRunner().invoke(main, ["cancel", "2026-12-01-why-quotas-fail", "--yes"]))
    assert cancel == "error: the campaign for 2026-12-01-why-quotas-fail is finished already"
