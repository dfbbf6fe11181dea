"""`newsletter send --dry-run` as a writer runs it (whole processes, so the counting runs in
a forked child as it does for them): what it says, the errors it stops at, and that it sends
and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BASIC_TOML

EXE = str(Path(sys.executable).with_name("newsletter"))
SLUG = "2026-12-01-dry"


def newsletter(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "POSTMARK_"))}
    env["NEWSLETTER_DATABASE_URL"] = f"sqlite:///{root / 'newsletter.db'}"
    return subprocess.run([EXE, *args], cwd=root, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def letter3(tmp_path: Path) -> Path:
    """The outbox, one issue and three confirmed readers."""
    (tmp_path / "newsletter.toml").write_text(BASIC_TOML + '\n[provider]\nname = "outbox"\n')
    (tmp_path / ".env").write_text("NEWSLETTER_SECRET=dry-run-secret\n")
    issue = tmp_path / "issues" / SLUG
    issue.mkdir(parents=True)
    (issue / "issue.md").write_text("---\nsubject: Dry run\npreheader: P\n---\n")
    (issue / "01-a.md").write_text("---\ntitle: A\n---\nSell well.\n")
    (tmp_path / "readers.csv").write_text("email\nr1@example.com\nr2@example.com\nr3@example.com\n")
    done = newsletter(tmp_path, "subscribers", "import", "readers.csv")
    assert done.returncode == 0, done.stderr
    return tmp_path


def sent_files(root: Path) -> list[Path]:
    return sorted((root / "outbox").rglob("*.eml")) if (root / "outbox").exists() else []


def test_it_counts_the_audience_and_sends_nothing(letter3):
    dry = newsletter(letter3, "send", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "Would send 'Dry run' to 3 subscribers of main via outbox, in 1 batch of up to 200.",
        "  r1@example.com", "  r2@example.com", "  r3@example.com",
        "Nothing sent (dry run).",
    ]
    assert sent_files(letter3) == []
    assert "no campaigns" in newsletter(letter3, "status").stdout


def test_an_issue_already_sent_is_reported_with_its_campaign(letter3):
    assert newsletter(letter3, "send", "--yes").returncode == 0
    dry = newsletter(letter3, "send", "--dry-run", SLUG)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == (f"{SLUG} → main: campaign finished (3 sent); 0 still to send "
                                  "via outbox. Nothing sent.")


def test_with_test_to_it_names_the_proofs_and_sends_none(letter3):
    dry = newsletter(letter3, "send", "--dry-run", "--test-to", "me@example.org")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == ("Would send a proof of 'Dry run' to me@example.org via outbox. "
                                  "Nothing sent (dry run).")
    assert sent_files(letter3) == []


@pytest.mark.parametrize(("args", "says"), [
    (("--test-to", "me.example.org"), "error: 'me.example.org' is not a valid email address"),
    (("--list", "vip"), "error: no list named 'vip' (lists: main); create it with `newsletter lists create vip`"),
])
def test_a_bad_address_or_list_is_one_line_and_exit_code_1(letter3, args, says):
    dry = newsletter(letter3, "send", "--dry-run", *args)
    assert dry.returncode == 1 and dry.stdout == ""
    assert dry.stderr.startswith(says) and len(dry.stderr.splitlines()) == 1, dry.stderr


def test_failed_checks_stop_it_as_they_stop_a_send(letter3):
    (letter3 / "issues" / SLUG / "01-a.md").write_text("---\ntitle: A\n---\n![](missing.png)\n")
    dry = newsletter(letter3, "send", "--dry-run")
    assert dry.returncode == 1 and dry.stdout == ""
    assert dry.stderr.startswith(f"error: {SLUG} fails its pre-flight checks"), dry.stderr


def test_a_provider_without_its_key_is_the_error_a_send_gives(letter3):
    toml = letter3 / "newsletter.toml"
    toml.write_text(toml.read_text().replace('name = "outbox"', 'name = "postmark"'))
    dry, send = (newsletter(letter3, "send", *args) for args in (("--dry-run",), ("--yes",)))
    assert dry.returncode == send.returncode == 1
    assert dry.stderr == send.stderr and "POSTMARK_SERVER_TOKEN" in dry.stderr


@pytest.mark.parametrize("fork", [True, False])
def test_the_database_library_is_loaded_by_the_child_only(letter3, fork):
    code = ("import sys; from newsletter import beside, config, dryrun; "
            f"beside.FORK = {fork}; "
            "plan = dryrun.dry_run(config.load('newsletter.toml', environ={}), None); "
            "print(plan.would.total, plan.provider, 'sqlalchemy' in sys.modules)")
    env = {**os.environ, "NEWSLETTER_DATABASE_URL": f"sqlite:///{letter3 / 'newsletter.db'}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=letter3, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "outbox", str(not fork)]
