"""Importing this tool's JSON export: the backup the README suggests reads back with names,
attributes, statuses and lists, and still never brings back anyone who left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsletter import subscribers as subs
from newsletter.errors import ImportFileError
from newsletter.store import open_store


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


def _write(path: Path, items: list) -> Path:
    path.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def _members(store, list_name=None) -> dict[str, tuple[str, str, dict]]:
    return {m.email: (m.name, m.status, m.attributes) for m in subs.iter_members(store, list_name)}


def _everything(store) -> list[tuple]:
    return sorted(
        (m.list, m.email, m.name, m.status, json.dumps(m.attributes, sort_keys=True))
        for m in subs.iter_members(store, all_lists=True)
    )


def _fill(store) -> None:
    """Every kind of member, on two lists."""
    subs.create_list(store, "weekly", "The weekly letter")
    subs.add(store, "ann@example.com", name="Ann Ødegård", confirmed=True,
             attributes={"city": "Tromsø", "tags": ["vip", "b2b"], "score": 7})
    subs.add(store, "ann@example.com", list_name="weekly", confirmed=True)
    subs.add(store, "Bob@Example.org", name="Bob")  # pending, spelled as given
    subs.add(store, "cid@example.net", confirmed=True)
    subs.unsubscribe(store, "cid@example.net")
    for email, reason in (("dan@example.com", "bounced"), ("eve@example.com", "complained"),
                          ("fay@example.com", "manual")):
        subs.add(store, email, confirmed=True)
        subs.add(store, email, list_name="weekly", confirmed=True)
        subs.suppress(store, email, reason)
    subs.add(store, "gus@example.com", confirmed=True)
    subs.forget(store, "gus@example.com")
    subs.add(store, "=cmd@example.com", name='=HYPERLINK("x")', list_name="weekly", confirmed=True)


def test_a_json_export_imports_into_a_fresh_database_as_it_was(db_url, tmp_path, cli, letter,
                                                               monkeypatch):
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)
    with open_store(db_url) as first:
        _fill(first)
        before = _everything(first)
    exported = cli("subscribers", "export", "--all-lists", "--format", "json")
    assert exported.exit_code == 0
    backup = letter / "backup.json"
    backup.write_text(exported.stdout, encoding="utf-8")

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", fresh)
    result = cli("subscribers", "import", "backup.json")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert lines[0] == "Imported backup.json into lists 'weekly', 'main'."  # as the file has them
    assert "(list 'weekly' created: the file names them)" in lines
    # Memberships: Ann on both lists, Bob (pending), =cmd; Cid left, and Dan, Eve and Fay
    # (suppressed) on both lists are recorded but kept out of every audience.
    assert "added 4" in lines and "rejected 0" in lines
    assert any(line.startswith("kept out 7 ") for line in lines)

    with open_store(fresh) as second:
        assert _everything(second) == before
        assert _members(second)["Bob@Example.org"] == ("Bob", "pending", {})
        # Nobody who left or was suppressed is in an audience.
        assert [m.email for b in subs.iter_audience(second) for m in b] == ["ann@example.com"]
        assert [m.email for b in subs.iter_audience(second, "weekly") for m in b] == [
            "ann@example.com", "=cmd@example.com"]
        for email, reason in (("dan@example.com", "bounced"), ("eve@example.com", "complained"),
                              ("fay@example.com", "manual")):
            assert subs.get_suppression(second, email).reason == reason

    # The second database's export says the same, but for the bookkeeping of when and how.
    def data(text: str) -> list[dict]:
        kept = ("email", "name", "status", "list", "attributes")
        return sorted(({k: m[k] for k in kept} for m in json.loads(text)),
                      key=lambda m: (m["list"], m["email"]))

    again = cli("subscribers", "export", "--all-lists", "--format", "json").stdout
    assert data(again) == data(exported.stdout)
    assert len(data(again)) == 11
    # And importing the same backup again changes nothing.
    second_run = cli("subscribers", "import", "backup.json")
    words = [" ".join(line.split()) for line in second_run.output.splitlines()]
    assert "added 0" in words and "updated 0" in words and "unchanged 4" in words


def test_a_json_import_never_brings_back_anyone_who_left(store, tmp_path):
    subs.add(store, "ann@example.com", confirmed=True)
    subs.unsubscribe(store, "ann@example.com")
    subs.add(store, "bob@example.com", confirmed=True)
    subs.suppress(store, "bob@example.com", "bounced")
    subs.forget(store, "cid@example.com")
    path = _write(tmp_path / "old.json", [
        {"email": "ann@example.com", "status": "active", "list": "main"},
        {"email": "bob@example.com", "status": "active", "list": "main"},
        {"email": "cid@example.com", "name": "Cid", "status": "active", "list": "main"},
        {"email": "dan@example.com", "status": "active", "list": "main",
         "unsubscribed_at": "2026-01-02T03:04:05Z"},
        {"email": "eve@example.com", "status": "complained", "list": "main"},
    ])
    summary = subs.import_file(store, path)
    assert (summary.added, summary.kept_out, summary.rejected) == (0, 5, 0)
    members = _members(store)
    assert members["ann@example.com"][1] == "unsubscribed"
    assert members["bob@example.com"][1] == "bounced"
    assert "cid@example.com" not in members  # forgotten: not even a row
    assert members["dan@example.com"][1] == "unsubscribed"  # the date of leaving counts
    assert subs.get_suppression(store, "eve@example.com").reason == "complained"
    assert [m for b in subs.iter_audience(store) for m in b] == []


def test_list_puts_every_item_into_one_list(store, tmp_path):
    subs.create_list(store, "restored")
    path = _write(tmp_path / "backup.json", [
        {"email": "ann@example.com", "name": "Ann", "status": "active", "list": "main"},
        {"email": "ann@example.com", "name": "Ann", "status": "active", "list": "weekly"},
        {"email": "bob@example.com", "status": "pending", "list": "weekly"},
    ])
    summary = subs.import_file(store, path, list_name="restored")
    assert summary.lists == ["restored"] and summary.created_lists == []
    assert (summary.added, summary.duplicates) == (2, 1)
    assert _members(store, "restored") == {
        "ann@example.com": ("Ann", "active", {}),
        "bob@example.com": ("", "pending", {}),
    }
    assert [lst.name for lst in subs.get_lists(store)] == ["restored"]


def test_bad_items_are_rejected_by_line_and_written_back_as_json(store, tmp_path):
    path = tmp_path / "backup.json"
    path.write_text(
        "[\n"
        '  {"email": "ann@example.com", "name": "Ann", "attributes": {"city": "Oslo"}},\n'
        '  "bob@example.com",\n'
        '  {"name": "No Address"},\n'
        '  {"email": "cid@example.com", "status": "lurking"},\n'
        '  {"email": "dan@example.com", "list": "Weekly Letter"},\n'
        '  {"email": "eve@example.com", "attributes": [1, 2]},\n'
        '  {"email": "fay@", "name": "Fay"},\n'
        '  {"email": 42},\n'
        '  {"email": "gus@example.com", "plan": "pro", "seats": 3, "source": "web"}\n'
        "]\n",
        encoding="utf-8",
    )
    summary = subs.import_file(store, path)
    assert (summary.added, summary.rejected) == (2, 7)
    assert [(r.unit, r.row) for r in summary.rejections] == [
        ("line", 3), ("line", 4), ("line", 5), ("line", 6), ("line", 7), ("line", 8), ("line", 9)]
    reasons = {r.row: r.reason for r in summary.rejections}
    assert reasons[3].startswith("not a member")
    assert reasons[4] == "no email address"
    assert reasons[5].startswith("unknown status 'lurking'")
    assert "is not a list name" in reasons[6]
    assert reasons[7].startswith("attributes should be an object")
    assert "fay@" in reasons[8]
    assert reasons[9] == "email should be text, not 42"
    members = _members(store)
    assert members["gus@example.com"] == ("", "active", {"plan": "pro", "seats": 3})
    assert members["ann@example.com"] == ("Ann", "active", {"city": "Oslo"})

    rejected = Path.cwd() / "backup.rejected.json"
    assert summary.rejected_path == rejected
    items = json.loads(rejected.read_text(encoding="utf-8"))
    assert items[0] == {"rejected_line": 3, "rejected_reason": reasons[3], "item": "bob@example.com"}
    assert items[3]["email"] == "dan@example.com" and items[3]["rejected_line"] == 6
    # Fixed, the rejected file imports like any other (its bookkeeping keys are ignored).
    items[3]["list"] = "weekly"
    (tmp_path / "fixed.json").write_text(json.dumps(items[3:4]), encoding="utf-8")
    fixed = subs.import_file(store, tmp_path / "fixed.json")
    assert (fixed.added, fixed.created_lists) == (1, ["weekly"])
    assert _members(store, "weekly") == {"dan@example.com": ("", "active", {})}


def test_a_json_syntax_error_names_the_line_and_imports_nothing(store, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"email": "ann@example.com"},\n  {"email": "bob@example.com",}\n]\n',
                    encoding="utf-8")
    with pytest.raises(ImportFileError, match=r"broken\.json line 3: not valid JSON"):
        subs.import_file(store, path)
    assert _members(store) == {}
    for text, message in (('{"email": "ann@example.com"}', "line 1: a JSON subscriber file is a list"),
                          ('[{"email": "ann@example.com"}', "expected ',' or ']' after an item"),
                          ('[{"email": "a@example.com"}] x', "expected nothing after the closing ]"),
                          ("", "the file is empty")):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ImportFileError, match=message):
            subs.import_file(store, path)
    assert _members(store) == {}


def test_a_long_json_file_is_read_piece_by_piece(store, tmp_path, monkeypatch):
    from newsletter import subscriber_file

    monkeypatch.setattr(subscriber_file, "JSON_READ_CHARS", 64)  # every item spans pieces
    items = [{"email": f"r{i}@example.com", "name": f"Reader {i}", "attributes": {"n": i}}
             for i in range(300)]
    summary = subs.import_file(store, _write(tmp_path / "many.json", items), chunk_size=50)
    assert (summary.rows, summary.added) == (300, 300)
    assert _members(store)["r299@example.com"] == ("Reader 299", "active", {"n": 299})


def test_a_csv_row_that_complained_after_leaving_stays_suppressed(store, tmp_path):
    """The export of a reader who unsubscribed and then complained has both a status and an
    unsubscribe date; the stricter must count."""
    path = tmp_path / "backup.csv"
    path.write_text("email,status,unsubscribed_at\nann@example.com,complained,2026-01-02T03:04:05Z\n",
                    encoding="utf-8")
    subs.import_file(store, path)
    assert subs.get_suppression(store, "ann@example.com").reason == "complained"
