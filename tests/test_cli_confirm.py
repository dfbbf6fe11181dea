"""The double opt-in from the command line: `subscribers add` sends the confirmation email
the site sends, and `subscribers confirm-request` sends it again, within the site's limits.
Emails go through the outbox provider and are read back from the outbox folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.test import Client

from newsletter import subscribers as subs
from newsletter.store import open_store
from newsletter.store.schema import rate_limits

from .webutil import confirm_path, heading, load, outbox, text_of, write_letter


@pytest.fixture
def root(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A newsletter folder with the outbox provider and NEWSLETTER_SECRET in .env."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    write_letter(tmp_path)
    return tmp_path


def _status(root: Path, email: str, list_name: str = "main") -> str | None:
    with open_store(load(root)) as store:
        return {m.email: m.status for m in subs.iter_members(store, list_name)}.get(email)


def _limit(root: Path, per_day: int) -> None:
    toml = root / "newsletter.toml"
    toml.write_text(toml.read_text() + f"\n[web]\naddress_signups_per_day = {per_day}\n")


def _site(root: Path):
    from newsletter.web.app import PublicApp

    config = load(root)
    store = open_store(config)
    return PublicApp(config, store), store


def test_add_sends_the_sites_confirmation_email_and_its_link_confirms(root, cli):
    result = cli("subscribers", "add", "ann@example.com", "--name", "Ann Berg")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Added ann@example.com to 'main' (pending); the confirmation "
                                    "email is on its way")
    assert result.stderr == ""
    [mail] = outbox(root, "confirm")
    assert mail["To"] == "ann@example.com"
    assert mail["Subject"] == "Confirm your subscription to Test Letter"
    assert _status(root, "ann@example.com") == "pending"

    # The same email as the site's: subscribe Bob through the form and compare.
    app, store = _site(root)
    try:
        client = Client(app)
        client.post("/subscribe", data={"email": "bob@example.com"})
        app.mailer.wait()
        by_to = {m["To"]: m for m in outbox(root, "confirm")}
        site_mail = by_to["bob@example.com"]
        assert site_mail["Subject"] == mail["Subject"]
        assert site_mail["List-Unsubscribe-Post"] == mail["List-Unsubscribe-Post"]

        def body(message) -> str:
            return text_of(message).replace(confirm_path(message), "LINK")

        assert body(site_mail) == body(mail)

        # Ann's link, sent by the command line, confirms on the site (POST only).
        path = confirm_path(mail)
        assert heading(client.get(path).get_data(as_text=True)).startswith("Confirm")
        assert _status(root, "ann@example.com") == "pending"
        client.post(path)
        assert _status(root, "ann@example.com") == "active"
    finally:
        app.close()
        store.close()


def test_add_confirmed_is_active_and_sends_nothing(root, cli):
    result = cli("subscribers", "add", "ann@example.com", "--confirmed")
    assert result.exit_code == 0
    assert "Added ann@example.com to 'main' (active)." in result.stdout
    assert outbox(root, "confirm") == []
    assert _status(root, "ann@example.com") == "active"


def test_add_without_a_secret_says_so_in_one_line_and_leaves_them_pending(root, cli):
    (root / ".env").unlink()
    result = cli("subscribers", "add", "ann@example.com", "--list", "main")
    assert result.exit_code == 0, result.output
    assert "Added ann@example.com to 'main' (pending)" in result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("No confirmation email sent: environment: NEWSLETTER_SECRET is not set")
    assert line.endswith("send it later with `newsletter subscribers confirm-request ann@example.com`.")
    assert outbox(root, "confirm") == []
    assert _status(root, "ann@example.com") == "pending"

    # Once the secret is there, the hint works as written.
    write_letter(root)
    again = cli("subscribers", "confirm-request", "ann@example.com")
    assert again.exit_code == 0, again.output
    assert "sent        ann@example.com" in again.stdout
    assert "Sent 1 confirmation email." in again.stdout
    assert [m["To"] for m in outbox(root, "confirm")] == ["ann@example.com"]


def test_add_with_a_provider_not_set_up_still_adds(root, cli):
    toml = root / "newsletter.toml"
    toml.write_text(toml.read_text().replace('name = "outbox"', 'name = "postmark"'))
    cli("lists", "create", "weekly")
    result = cli("subscribers", "add", "ann@example.com", "--list", "weekly")
    assert result.exit_code == 0, result.output
    [line] = result.stderr.splitlines()
    assert "POSTMARK_SERVER_TOKEN is not set" in line
    assert "`newsletter subscribers confirm-request ann@example.com --list weekly`" in line
    assert _status(root, "ann@example.com", "weekly") == "pending"


def test_confirm_request_all_pending_sends_to_pending_readers_only(root, cli):
    (root / ".env").unlink()  # the adds send nothing
    for email in ("ann@example.com", "bob@example.com"):
        cli("subscribers", "add", email)
    cli("subscribers", "add", "cid@example.com", "--confirmed")
    cli("subscribers", "add", "dan@example.com")
    cli("subscribers", "unsubscribe", "dan@example.com")
    cli("subscribers", "add", "eve@example.com")
    cli("subscribers", "suppress", "eve@example.com", "--reason", "bounced")
    write_letter(root)

    result = cli("subscribers", "confirm-request", "--all-pending", "--yes")
    assert result.exit_code == 0, result.output
    assert sorted(m["To"] for m in outbox(root, "confirm")) == ["ann@example.com", "bob@example.com"]
    assert result.stdout.splitlines()[-1] == "Sent 2 confirmation emails."

    named = cli("subscribers", "confirm-request", "cid@example.com", "dan@example.com", "eve@example.com")
    assert named.exit_code == 0, named.output
    assert "skipped     cid@example.com: already active" in named.stdout
    assert "skipped     dan@example.com: unsubscribed" in named.stdout
    assert "skipped     eve@example.com: suppressed (bounced)" in named.stdout
    assert named.stdout.splitlines()[-1] == "Sent 0 confirmation emails (3 skipped)."
    assert len(outbox(root, "confirm")) == 2


def test_confirm_request_asks_before_mailing_everyone_pending(root, cli):
    (root / ".env").unlink()
    cli("subscribers", "add", "ann@example.com")
    write_letter(root)
    result = cli("subscribers", "confirm-request", "--all-pending", input="n\n")
    assert result.exit_code == 1
    assert "Send the confirmation email to 1 pending reader on 'main'?" in result.output
    assert outbox(root, "confirm") == []


def test_confirm_request_is_limited_per_address_like_the_site(root, cli):
    _limit(root, 2)
    cli("subscribers", "add", "ann@example.com")  # the first email
    second = cli("subscribers", "confirm-request", "ann@example.com")
    assert "Sent 1 confirmation email." in second.stdout
    third = cli("subscribers", "confirm-request", "ann@example.com")
    assert third.exit_code == 0, third.output
    line = next(line for line in third.stdout.splitlines() if "ann@example.com" in line)
    assert line.startswith("  limited     ann@example.com: had 2 confirmation emails today")
    assert "address_signups_per_day" in line and "try again in" in line and "hours" in line
    assert third.stdout.splitlines()[-1] == "Sent 0 confirmation emails (1 limited)."

    # The form counts against the same limit: the site sends her nothing more today.
    app, store = _site(root)
    try:
        Client(app).post("/subscribe", data={"email": "ann@example.com"})
        app.mailer.wait()
        assert app.mailer.sent == 0
        with store.read() as conn:
            keys = conn.execute(select(rate_limits.c.key)).scalars().all()
        assert keys and not any("ann" in k or "example" in k for k in keys)  # hashes only
    finally:
        app.close()
        store.close()


def test_an_add_over_the_limit_is_made_and_says_when_to_send_it(root, cli):
    _limit(root, 1)
    app, store = _site(root)
    try:  # she signed up on the site today: that was her one email
        Client(app).post("/subscribe", data={"email": "ann@example.com"})
        app.mailer.wait()
    finally:
        app.close()
        store.close()
    cli("lists", "create", "weekly")
    result = cli("subscribers", "add", "ann@example.com", "--list", "weekly")
    assert result.exit_code == 0, result.output
    assert "Added ann@example.com to 'weekly' (pending)" in result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("No confirmation email sent: had 1 confirmation email today "
                           "([web] address_signups_per_day); try again in 24 hours")
    assert line.endswith("send it later with "
                         "`newsletter subscribers confirm-request ann@example.com --list weekly`.")
    assert _status(root, "ann@example.com", "weekly") == "pending"
    assert len(outbox(root, "confirm")) == 1  # the site's


def test_confirm_request_dry_run_sends_nothing_and_counts_nothing(root, cli):
    (root / ".env").unlink()
    cli("subscribers", "add", "ann@example.com")
    write_letter(root)
    _limit(root, 1)
    for _ in range(2):
        dry = cli("subscribers", "confirm-request", "--all-pending", "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert "would send  ann@example.com" in dry.stdout
        assert dry.stdout.splitlines()[-1] == "Dry run: 1 confirmation email would be sent."
    assert outbox(root, "confirm") == []
    real = cli("subscribers", "confirm-request", "ann@example.com")
    assert "Sent 1 confirmation email." in real.stdout  # the dry runs used none of her one


def test_confirm_request_input_errors(root, cli):
    cli("subscribers", "add", "ann@example.com")
    unknown = cli("subscribers", "confirm-request", "ann@example.com", "zed@example.com")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == (
        "error: zed@example.com is not on list 'main'; add them with "
        "`newsletter subscribers add zed@example.com` (nothing was sent)"
    )
    assert len(outbox(root, "confirm")) == 1  # the add's only
    assert cli("subscribers", "confirm-request").exit_code == 2
    assert cli("subscribers", "confirm-request", "ann@example.com", "--all-pending").exit_code == 2
    nobody = cli("subscribers", "confirm-request", "--all-pending", "--list", "main", "--yes")
    assert nobody.exit_code == 0
    missing = cli("subscribers", "confirm-request", "ann@example.com", "--list", "nope")
    assert missing.exit_code == 1 and "no list named 'nope'" in missing.stderr


def test_the_command_line_sends_confirmations_without_the_web_package():
    code = textwrap.dedent("""
        import sys
        import newsletter.optin, newsletter.subscribers, newsletter.cli
        from newsletter.cli import subscribers
        subscribers.optin.request_confirmations  # load the lazy module
        sys.exit(", ".join(sorted(m for m in sys.modules if m.startswith("newsletter.web"))) or None)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
