"""The schedule's core: slots and times across DST, front matter edits, schedule/unschedule,
the calendar, tick (exactly once, grace, checks, resumes, races) and the scheduler loop.
Time is passed in; nothing here waits for a clock."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select, text

from newsletter import build
from newsletter import campaign as engine
from newsletter import schedule as sched
from newsletter import subscribers as subs
from newsletter.config import load
from newsletter.content import load_issue
from newsletter.errors import ContentError, NewsletterError
from newsletter.store import open_store
from newsletter.store.schema import campaigns, schedule_outcomes

from .conftest import BASIC_TOML
from .engine_util import add_worker

OSLO = ZoneInfo("Europe/Oslo")
UTC = dt.UTC
SECRET = "schedule-test-secret"
DEFAULT_SCHEDULE = 'weekday = "tuesday"\ntime = "09:00"\n'


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def oslo(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=OSLO)


def write_config(root: Path, schedule: str = DEFAULT_SCHEDULE, provider: str = 'name = "outbox"',
                 env: dict[str, str] | None = None):
    toml = BASIC_TOML.replace(DEFAULT_SCHEDULE, schedule) + "\n[provider]\n" + provider + "\n"
    (root / "newsletter.toml").write_text(toml, encoding="utf-8")
    return load(root / "newsletter.toml", environ=env or {})


def make_issue(root: Path, slug: str, send_at: str | None = None, list_name: str | None = None,
               post: str = "Sell well.\n") -> Path:
    folder = root / "issues" / slug
    folder.mkdir(parents=True, exist_ok=True)
    meta = [f"subject: Subject of {slug}", "preheader: Pre"]
    if list_name:
        meta.append(f"list: {list_name}")
    if send_at:
        meta.append(f"send_at: {send_at}")
    (folder / "issue.md").write_text("---\n" + "\n".join(meta) + "\n---\n", encoding="utf-8")
    (folder / "01-a.md").write_text(f"---\ntitle: A\n---\n{post}", encoding="utf-8")
    return folder


def outbox(root: Path) -> list[str]:
    """Recipients of every message the outbox provider wrote."""
    return sorted(p.name.split("-", 1)[1].removesuffix(".eml") for p in (root / "outbox").rglob("*.eml"))


@pytest.fixture
def setup(letter: Path, db_url: str):
    """setup(schedule=..., readers=3) -> (config, store): outbox provider, readers on main."""
    opened = []

    def make(schedule: str = DEFAULT_SCHEDULE, readers: int = 3, provider: str = 'name = "outbox"',
             env: dict[str, str] | None = None):
        environ = {"NEWSLETTER_SECRET": SECRET, "NEWSLETTER_DATABASE_URL": db_url, **(env or {})}
        config = write_config(letter, schedule, provider, environ)
        store = open_store(config)
        opened.append(store)
        for i in range(readers):
            subs.add(store, f"r{i}@example.com", confirmed=True)
        return config, store

    yield make
    for store in opened:
        store.close()


SUNDAY = 'weekday = "sunday"\ntime = "09:00"\n'


# -- slots and times -------------------------------------------------------------------------


def test_slots_keep_the_wall_clock_time_on_both_dst_change_dates(letter):
    config = write_config(letter, SUNDAY)
    spring = list(zip(sched.slots(config, utc(2026, 3, 20)), range(2), strict=False))
    assert [s for s, _ in spring] == [oslo(2026, 3, 22, 9), oslo(2026, 3, 29, 9)]
    assert [s.astimezone(UTC).hour for s, _ in spring] == [8, 7]  # CET, then CEST
    autumn = list(zip(sched.slots(config, utc(2026, 10, 17)), range(2), strict=False))
    assert [s.astimezone(UTC) for s, _ in autumn] == [utc(2026, 10, 18, 7), utc(2026, 10, 25, 8)]
    assert all(s.astimezone(OSLO).hour == 9 for s, _ in autumn)


def test_a_slot_time_the_spring_change_skips_becomes_the_moment_after_the_gap(letter):
    config = write_config(letter, 'weekday = "sunday"\ntime = "02:30"\n')
    slot = next(sched.slots(config, utc(2026, 3, 28)))
    assert slot.astimezone(UTC) == utc(2026, 3, 29, 1, 30)
    assert slot.strftime("%H:%M %Z") == "03:30 CEST"


def test_parse_moment_reads_the_newsletters_zone_offsets_and_named_zones():
    assert sched.parse_moment("2026-12-08 09:00", OSLO) == utc(2026, 12, 8, 8)
    assert sched.parse_moment("2026-07-07T09:00", OSLO) == utc(2026, 7, 7, 7)
    assert sched.parse_moment("2026-12-08T09:00:00+01:00", OSLO) == utc(2026, 12, 8, 8)
    assert sched.parse_moment("2026-12-08T08:00Z", OSLO) == utc(2026, 12, 8, 8)
    assert sched.parse_moment("2026-12-08 09:00 America/New_York", OSLO) == utc(2026, 12, 8, 14)
    # The hour the autumn change repeats: the first of the two (still summer time).
    assert sched.parse_moment("2026-10-25 02:30", OSLO) == utc(2026, 10, 25, 0, 30)


@pytest.mark.parametrize(("text", "message"), [
    ("next tuesday", "'next tuesday' is not a date and time; write e.g. 2026-12-08 09:00"),
    ("2026-13-01 09:00", "is not a date and time"),
    ("2026-12-08", "has no time of day; write e.g. 2026-12-08 09:00"),
    ("2026-12-08 09:00 Europe/Osloo", "'Europe/Osloo' is not a known time zone"),
    ("2026-12-08 09:00+01:00 Europe/Oslo", "has both an offset and a time zone"),
    ("2026-03-29 02:30", "2026-03-29 02:30 does not exist in Europe/Oslo"),
])
def test_parse_moment_refuses_bad_times_with_one_clear_line(text, message):
    with pytest.raises(sched.BadTime) as caught:
        sched.parse_moment(text, OSLO)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_send_at_text_is_local_time_with_an_offset_only_where_the_clock_repeats():
    assert sched.send_at_text(utc(2026, 12, 8, 8), OSLO) == "2026-12-08 09:00"
    assert sched.send_at_text(utc(2026, 3, 29, 7), OSLO) == "2026-03-29 09:00"
    first = sched.send_at_text(utc(2026, 10, 25, 0, 30), OSLO)
    second = sched.send_at_text(utc(2026, 10, 25, 1, 30), OSLO)
    assert (first, second) == ("2026-10-25 02:30+02:00", "2026-10-25 02:30+01:00")
    assert sched.parse_moment(second, OSLO) == utc(2026, 10, 25, 1, 30)


# -- editing the front matter ----------------------------------------------------------------


def test_set_front_matter_adds_replaces_and_removes_only_that_line():
    original = "---\nsubject: \"Hi\"   # keep this comment\npreheader: x\n---\nBody\n"
    added = sched.set_front_matter(original, "send_at", "2026-12-08 09:00")
    assert added == "---\nsubject: \"Hi\"   # keep this comment\npreheader: x\nsend_at: 2026-12-08 09:00\n---\nBody\n"
    moved = sched.set_front_matter(added, "send_at", "2026-12-15 09:00")
    assert moved == added.replace("2026-12-08", "2026-12-15")
    assert sched.set_front_matter(moved, "send_at", None) == original
    assert sched.set_front_matter(original, "send_at", None) == original


def test_set_front_matter_keeps_crlf_bom_and_continued_values():
    crlf = "\ufeff---\r\nsubject: Hi\r\nsend_at:\r\n  2026-12-01 09:00\r\nlist: main\r\n---\r\nBody\r\n"
    out = sched.set_front_matter(crlf, "send_at", "2026-12-08 09:00")
    assert out == "\ufeff---\r\nsubject: Hi\r\nsend_at: 2026-12-08 09:00\r\nlist: main\r\n---\r\nBody\r\n"
    bare = sched.set_front_matter("Just a note.\n", "send_at", "2026-12-08 09:00")
    assert bare == "---\nsend_at: 2026-12-08 09:00\n---\nJust a note.\n"
    with pytest.raises(ContentError, match="appears 2 times"):
        sched.set_front_matter("---\nsend_at: a\nsend_at: b\n---\n", "send_at", "x")


def test_write_send_at_changes_nothing_but_the_send_at_line(tmp_path):
    path = tmp_path / "issue.md"
    original = ("---\r\n# planned with the team\r\nsubject: 'Quota: the real goal'\r\n"
                "preheader: >-\r\n  Two lines\r\n  folded\r\nlist: main\r\n---\r\n"
                "An *editor's* note.\r\n\r\nWith trailing spaces   \r\n")
    path.write_bytes(original.encode("utf-8"))
    sched.write_send_at(path, utc(2026, 12, 8, 8), OSLO)
    written = path.read_bytes().decode("utf-8")
    assert written == original.replace("list: main\r\n", "list: main\r\nsend_at: 2026-12-08 09:00\r\n")
    sched.write_send_at(path, None, OSLO)
    assert path.read_bytes().decode("utf-8") == original


def test_write_send_at_refuses_front_matter_it_cannot_edit_by_line(tmp_path):
    path = tmp_path / "issue.md"
    original = "---\n{subject: Hi, preheader: P}\n---\nBody\n"
    path.write_text(original)
    with pytest.raises(ContentError, match="cannot be edited safely; set `send_at:` by hand"):
        sched.write_send_at(path, utc(2026, 12, 8, 8), OSLO)
    assert path.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["issue.md"]  # no temporary file left


# -- schedule and unschedule -----------------------------------------------------------------


def test_schedule_defaults_to_the_issues_own_slot_and_keeps_the_rest_of_the_file(setup, letter):
    config, store = setup()
    folder = make_issue(letter, "2026-12-15-own-slot")
    before = (folder / "issue.md").read_text()
    done = sched.schedule_issue(config, store, "own-slot", None, utc(2026, 12, 1, 12))
    assert done.send_at == oslo(2026, 12, 15, 9) and done.previous is None
    assert (folder / "issue.md").read_text() == before.replace(
        "preheader: Pre\n", "preheader: Pre\nsend_at: 2026-12-15 09:00\n")
    issue = load_issue(folder, "x", OSLO)
    assert issue.send_at == utc(2026, 12, 15, 8)


def test_schedule_default_is_the_next_slot_no_other_issue_claims(setup, letter):
    config, store = setup()
    make_issue(letter, "2026-12-08-taken", send_at="2026-12-08 09:00")
    make_issue(letter, "2026-12-15-draft")  # a draft dated to a slot claims it too
    make_issue(letter, "2026-11-03-late-idea")  # its own slot has passed
    done = sched.schedule_issue(config, store, "2026-11-03-late-idea", None, utc(2026, 12, 1, 12))
    assert done.send_at == oslo(2026, 12, 22, 9)


def test_schedule_at_a_time_on_the_dst_change_date(setup, letter):
    config, store = setup(SUNDAY)
    folder = make_issue(letter, "2026-03-29-spring")
    done = sched.schedule_issue(config, store, "spring", "2026-03-29 09:00", utc(2026, 3, 28))
    assert done.send_at == utc(2026, 3, 29, 7)
    assert "send_at: 2026-03-29 09:00\n" in (folder / "issue.md").read_text()
    default = make_issue(letter, "2026-10-25-autumn")
    done = sched.schedule_issue(config, store, "autumn", None, utc(2026, 10, 20))
    assert done.send_at == utc(2026, 10, 25, 8)
    assert "send_at: 2026-10-25 09:00\n" in (default / "issue.md").read_text()


def test_schedule_refuses_a_time_in_the_past_and_changes_nothing(setup, letter):
    config, store = setup()
    folder = make_issue(letter, "2026-12-08-x")
    before = (folder / "issue.md").read_bytes()
    with pytest.raises(sched.BadTime, match=r"--at Tue 01 Dec 2026, 09:00 CET is in the past \(it is Tue 01 Dec 2026, 10:00 CET now\)"):
        sched.schedule_issue(config, store, "2026-12-08-x", "2026-12-01 09:00", utc(2026, 12, 1, 9))
    assert (folder / "issue.md").read_bytes() == before


def test_a_sent_issue_cannot_be_scheduled_or_unscheduled(setup, letter):
    config, store = setup()
    folder = make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    report = sched.tick(config, store, utc(2026, 12, 8, 8, 1))
    assert [e.outcome for e in report.events] == ["sent"]
    before = (folder / "issue.md").read_bytes()
    with pytest.raises(sched.AlreadySent, match=r"2026-12-08-x was sent to main on .*; it cannot be scheduled again"):
        sched.schedule_issue(config, store, "2026-12-08-x", "2026-12-22 09:00", utc(2026, 12, 9))
    with pytest.raises(sched.AlreadySent, match="cannot be unscheduled"):
        sched.unschedule_issue(config, store, "2026-12-08-x")
    assert (folder / "issue.md").read_bytes() == before


def test_unschedule_makes_a_draft_again(setup, letter):
    config, store = setup()
    folder = make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    done = sched.unschedule_issue(config, store, "2026-12-08-x")
    assert done.previous == utc(2026, 12, 8, 8)
    assert "send_at" not in (folder / "issue.md").read_text()
    again = sched.unschedule_issue(config, store, "2026-12-08-x")
    assert again.previous is None


# -- tick ------------------------------------------------------------------------------------


def test_tick_sends_a_due_issue_once_and_only_when_due(setup, letter):
    config, store = setup(readers=4)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    early = sched.tick(config, store, utc(2026, 12, 8, 7, 59))
    assert early.events == [] and early.next_up == ("2026-12-08-x", utc(2026, 12, 8, 8))
    assert not (letter / "outbox").exists()
    report = sched.tick(config, store, utc(2026, 12, 8, 8, 0, 30))
    (event,) = report.events
    assert (event.issue, event.list_name, event.outcome) == ("2026-12-08-x", "main", "sent")
    assert event.detail == "4 sent of 4"
    assert outbox(letter) == [f"r{i}@example.com" for i in range(4)]
    later = sched.tick(config, store, utc(2026, 12, 8, 8, 5))
    assert later.events == []
    assert len(outbox(letter)) == 4
    assert sched.outcomes(store)["2026-12-08-x"].outcome == "sent"


def test_tick_sends_to_the_list_named_in_the_front_matter(setup, letter):
    config, store = setup(readers=2)
    subs.create_list(store, "vip")
    subs.add(store, "vip@example.com", list_name="vip", confirmed=True)
    make_issue(letter, "2026-12-08-vip", send_at="2026-12-08 09:00", list_name="vip")
    report = sched.tick(config, store, utc(2026, 12, 8, 8, 1))
    assert [(e.list_name, e.outcome) for e in report.events] == [("vip", "sent")]
    assert outbox(letter) == ["vip@example.com"]
    assert engine.find_campaign(store, "2026-12-08-vip", "vip").status == "finished"


@pytest.mark.parametrize(("send_at", "before", "at"), [
    ("2026-03-29 09:00", utc(2026, 3, 29, 6, 59), utc(2026, 3, 29, 7, 0, 30)),  # spring forward
    ("2026-10-25 09:00", utc(2026, 10, 25, 7, 59), utc(2026, 10, 25, 8, 0, 30)),  # fall back
])
def test_tick_on_the_dst_change_dates_sends_at_nine_local(setup, letter, send_at, before, at):
    config, store = setup(SUNDAY, readers=1)
    make_issue(letter, "dst-issue", send_at=send_at)
    assert sched.tick(config, store, before).events == []
    report = sched.tick(config, store, at)
    assert [e.outcome for e in report.events] == ["sent"]
    assert at.astimezone(OSLO).strftime("%H:%M") == "09:00"


def test_grace_is_real_time_across_the_spring_change(setup, letter):
    """01:30 CET + 6h is 08:30 CEST: the wall clock moved 7 hours, real time 6."""
    config, store = setup(SUNDAY, readers=1)
    make_issue(letter, "night-issue", send_at="2026-03-29 01:30")
    report = sched.tick(config, store, utc(2026, 3, 29, 6, 20))  # 08:20 local
    assert [e.outcome for e in report.events] == ["sent"]
    make_issue(letter, "night-two", send_at="2026-03-29 01:30+01:00")
    (late,) = sched.tick(config, store, utc(2026, 3, 29, 6, 31)).events  # 08:31 local
    assert late.outcome == "missed"


def test_a_missed_slot_is_left_unsent_and_reported_once(setup, letter):
    config, store = setup(readers=2)
    make_issue(letter, "2026-12-08-stale", send_at="2026-12-08 09:00")
    now = utc(2026, 12, 10, 9)
    (event,) = sched.tick(config, store, now).events
    assert event.outcome == "missed" and event.new and event.problem
    assert "was due Tue 08 Dec 2026, 09:00 CET, more than the 6h grace ago, so it was not sent" in event.detail
    assert "`newsletter send 2026-12-08-stale`" in event.detail
    (again,) = sched.tick(config, store, now + dt.timedelta(minutes=1)).events
    assert again.outcome == "missed" and not again.new
    assert not (letter / "outbox").exists()
    assert engine.find_campaign(store, "2026-12-08-stale", "main") is None


def test_within_grace_a_late_tick_still_sends(setup, letter):
    config, store = setup(readers=1, schedule=DEFAULT_SCHEDULE + 'grace = "2h"\n')
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    assert [e.outcome for e in sched.tick(config, store, utc(2026, 12, 8, 9, 59)).events] == ["sent"]


def test_failing_checks_stop_the_issue_until_it_is_fixed(setup, letter):
    config, store = setup(readers=2)
    folder = make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00", post="![](missing.png)\n")
    (event,) = sched.tick(config, store, utc(2026, 12, 8, 8, 1)).events
    assert event.outcome == "failed" and event.new
    assert event.detail.startswith("2026-12-08-x fails its pre-flight checks (")
    assert "missing.png" in event.detail
    (again,) = sched.tick(config, store, utc(2026, 12, 8, 8, 2)).events
    assert again.outcome == "failed" and not again.new
    assert engine.find_campaign(store, "2026-12-08-x", "main") is None
    entry = sched.calendar(config, store, utc(2026, 12, 8, 8, 3)).earlier[0]
    assert entry.status.kind == "failed" and "missing.png" in entry.status.detail
    (folder / "01-a.md").write_text("---\ntitle: A\n---\nFixed.\n")
    (sent,) = sched.tick(config, store, utc(2026, 12, 8, 9, 0)).events
    assert sent.outcome == "sent" and len(outbox(letter)) == 2


def test_nothing_is_started_without_a_secret_or_an_audience(setup, letter):
    config, store = setup(readers=0)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    (event,) = sched.tick(config, store, utc(2026, 12, 8, 8, 1)).events
    assert event.outcome == "failed" and "list main has no active subscribers" in event.detail
    subs.add(store, "r@example.com", confirmed=True)
    no_secret = write_config(letter, env={"NEWSLETTER_DATABASE_URL": store.url})
    (event,) = sched.tick(no_secret, store, utc(2026, 12, 8, 8, 2)).events
    assert event.outcome == "failed" and "NEWSLETTER_SECRET is not set" in event.detail
    assert engine.all_campaigns(store) == []


def test_an_issue_that_does_not_load_is_reported_not_sent(setup, letter):
    config, store = setup(readers=1)
    folder = make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    (folder / "01-a.md").write_text("---\nauthor: nobody\n---\nNo title.\n")
    (event,) = sched.tick(config, store, utc(2026, 12, 8, 8, 1)).events
    assert event.outcome == "failed" and "title is missing" in event.detail


def test_tick_resumes_a_campaign_whose_process_died(setup, letter):
    config, store = setup(readers=3)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    rendered = build.render(config, "2026-12-08-x")
    started = engine.start(store, rendered, "main", "outbox")
    add_worker(store, started.id, socket.gethostname(), _dead_pid(), expires_in=300)
    # Days later: the grace is for starting, not for finishing what was started.
    (event,) = sched.tick(config, store, utc(2026, 12, 11, 8)).events
    assert event.outcome == "sent" and event.resumed
    assert str(event).startswith("2026-12-08-x → main: resumed and finished: 3 sent of 3")
    assert outbox(letter) == ["r0@example.com", "r1@example.com", "r2@example.com"]


def test_tick_leaves_a_campaign_another_live_process_is_sending(setup, letter):
    config, store = setup(readers=2)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    started = engine.start(store, build.render(config, "2026-12-08-x"), "main", "outbox")
    add_worker(store, started.id, socket.gethostname(), os.getppid(), expires_in=300)
    (event,) = sched.tick(config, store, utc(2026, 12, 8, 8, 1)).events
    assert (event.outcome, event.problem) == ("busy", False)
    assert not (letter / "outbox").exists()
    assert sched.outcomes(store) == {}
    cal = sched.calendar(config, store, utc(2026, 12, 8, 8, 1))
    assert [e.status.kind for e in cal.earlier] == ["sending"]


def test_a_lost_race_to_start_or_to_send_is_someone_elses_campaign(setup, letter, monkeypatch):
    config, store = setup(readers=2)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")

    def exists(*args, **kwargs):
        raise engine.CampaignExists("2026-12-08-x already has a campaign for list main")

    monkeypatch.setattr(engine, "start", exists)
    (event,) = sched.tick(config, store, utc(2026, 12, 8, 8, 1)).events
    assert event.outcome == "busy" and "started it at the same moment" in event.detail
    assert sched.outcomes(store) == {}


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- races on the database, both kinds -------------------------------------------------------


def _wait_until_blocked(store, seconds: float = 10) -> None:
    """On PostgreSQL wait until another session waits for a lock; on SQLite (whose writers
    queue on the file lock, invisible from here) give the thread a moment to get there."""
    if store.dialect != "postgresql":
        time.sleep(0.5)
        return
    deadline = time.monotonic() + seconds
    with store.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the other session never blocked")


def test_two_starts_at_the_same_moment_make_one_campaign(setup, letter):
    """The loser's check runs before the winner commits; the unique (issue, list) index then
    refuses its insert (PostgreSQL) or the write lock makes it see the row (SQLite)."""
    config, store = setup(readers=2)
    make_issue(letter, "2026-12-08-x")
    rendered = build.render(config, "2026-12-08-x")
    list_id = subs.list_id(store, "main")
    caught: list[BaseException] = []

    def loser():
        try:
            engine.start(store, rendered, "main", "outbox")
        except BaseException as exc:
            caught.append(exc)

    now = dt.datetime.now(UTC)
    with store.write() as conn:
        conn.execute(insert(campaigns).values(
            uid="winner", issue=rendered.slug, list_id=list_id, status="sending", subject="s",
            content_hash=rendered.content_hash, source_hashes={}, provider="outbox", total=0,
            created_at=now, updated_at=now))
        thread = threading.Thread(target=loser)
        thread.start()
        _wait_until_blocked(store)
    thread.join(30)
    assert len(caught) == 1 and isinstance(caught[0], engine.CampaignExists), caught
    with store.read() as conn:
        assert conn.execute(select(campaigns.c.uid)).scalars().all() == ["winner"]


# -- the calendar ----------------------------------------------------------------------------


def test_calendar_shows_each_slot_with_its_issue_and_status_and_flags_empty_weeks(setup, letter):
    config, store = setup(readers=1)
    make_issue(letter, "2026-12-01-sent", send_at="2026-12-01 09:00")
    sched.tick(config, store, utc(2026, 12, 1, 8, 1))
    make_issue(letter, "2026-11-24-missed", send_at="2026-11-24 09:00")
    make_issue(letter, "2026-12-08-planned", send_at="2026-12-08 09:00")
    make_issue(letter, "2026-12-15-draft")
    make_issue(letter, "2026-12-29-one", send_at="2026-12-29 09:00")
    make_issue(letter, "2026-12-29-two", send_at="2026-12-29 10:00")
    make_issue(letter, "2026-12-18-extra", send_at="2026-12-18 12:00")
    cal = sched.calendar(config, store, utc(2026, 12, 2, 12), weeks=5)
    assert [(e.slug, e.status.kind) for e in cal.earlier] == [("2026-11-24-missed", "missed")]
    rows = [(r.when.astimezone(OSLO).strftime("%m-%d %H:%M"), r.on_cadence,
             [(e.slug, e.status.kind) for e in r.entries]) for r in cal.rows]
    assert rows == [
        ("12-08 09:00", True, [("2026-12-08-planned", "scheduled")]),
        ("12-15 09:00", True, [("2026-12-15-draft", "draft")]),
        ("12-18 12:00", False, [("2026-12-18-extra", "scheduled")]),
        ("12-22 09:00", True, []),
        ("12-29 09:00", True, [("2026-12-29-one", "scheduled"), ("2026-12-29-two", "scheduled")]),
        ("01-05 09:00", True, []),
    ]
    assert cal.empty_weeks == 2
    sent = sched.calendar(config, store, utc(2026, 11, 30, 12), weeks=1).rows[0].entries[0]
    assert (sent.slug, sent.status.kind) == ("2026-12-01-sent", "sent")
    assert sent.status.detail.endswith("CET to main")


def test_a_rescheduled_issue_sheds_its_old_failure(setup, letter):
    config, store = setup(readers=1)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    sched.tick(config, store, utc(2026, 12, 9, 9))  # missed
    sched.schedule_issue(config, store, "2026-12-08-x", "2026-12-15 09:00", utc(2026, 12, 9, 9))
    (row,) = sched.calendar(config, store, utc(2026, 12, 9, 9), weeks=1).rows
    assert [(e.slug, e.status.kind) for e in row.entries] == [("2026-12-08-x", "scheduled")]


def test_sent_issues_reads_the_database_without_creating_one(letter, tmp_path):
    config = write_config(letter, env={"NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"})
    assert sched.sent_issues(config) == {}
    assert not (tmp_path / "none.db").exists()


def test_record_outcome_keeps_one_row_per_issue_and_says_when_it_changed(setup, letter):
    config, store = setup(readers=0)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    (planned,) = sched.scan(config)
    assert sched.record_outcome(store, planned, "failed", "a", utc(2026, 12, 8, 8))
    assert not sched.record_outcome(store, planned, "failed", "a", utc(2026, 12, 8, 8, 1))
    assert sched.record_outcome(store, planned, "failed", "b", utc(2026, 12, 8, 8, 2))
    with store.read() as conn:
        rows = conn.execute(select(schedule_outcomes)).all()
    assert len(rows) == 1 and rows[0].detail == "b"
    assert rows[0].first_seen == utc(2026, 12, 8, 8, 2) and rows[0].updated_at == utc(2026, 12, 8, 8, 2)


# -- the scheduler loop ----------------------------------------------------------------------


def test_the_scheduler_survives_failing_ticks_and_logs_every_one():
    lines: list[str] = []
    calls = iter([
        NewsletterError("newsletter.toml: [schedule] weekday: 'tusday' is not a weekday"),
        RuntimeError("a bug"),
        sched.TickReport(now=utc(2026, 12, 8, 8), next_up=("2026-12-15-x", utc(2026, 12, 15, 8))),
        sched.TickReport(now=utc(2026, 12, 8, 8), events=[
            sched.TickEvent("2026-12-08-x", "main", "sent", "3 sent of 3")]),
    ])

    def run_tick(scheduler):
        item = next(calls, None)
        if item is None:
            scheduler.stop("done")
            return sched.TickReport(now=utc(2026, 12, 8, 8))
        if isinstance(item, BaseException):
            raise item
        return item

    s = sched.Scheduler(run_tick, lines.append, interval=0, tz=OSLO)
    assert s.run() == "done"
    assert s.ticks == 5
    assert lines[0] == "tick failed: newsletter.toml: [schedule] weekday: 'tusday' is not a weekday; trying again in 0s"
    assert lines[1].startswith("tick failed: Traceback") and "RuntimeError: a bug" in lines[1]
    assert lines[2] == "nothing due; next: 2026-12-15-x at Tue 15 Dec 2026, 09:00 CET"
    assert lines[3] == "2026-12-08-x → main: sent: 3 sent of 3"


def test_the_scheduler_stops_after_a_signal_stopped_a_send():
    lines: list[str] = []
    report = sched.TickReport(now=utc(2026, 12, 8, 8), interrupted="terminated", events=[
        sched.TickEvent("2026-12-08-x", "main", "stopped", "stopped after 3 of 9 (terminated)")])
    s = sched.Scheduler(lambda _s: report, lines.append, interval=0)
    assert s.run() == "terminated"
    assert s.ticks == 1 and lines == ["2026-12-08-x → main: stopped: stopped after 3 of 9 (terminated)"]


def test_the_scheduler_ticks_on_the_beat_and_straight_after_a_long_tick():
    clock = [1000.0]
    waits: list[float] = []
    durations = iter([5.0, 130.0, 1.0, 0.0])

    def run_tick(scheduler):
        clock[0] += next(durations)
        if len(waits) == 3:
            scheduler.stop("terminated")
        return sched.TickReport(now=utc(2026, 12, 8, 8))

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    s = sched.Scheduler(run_tick, lambda line: None, interval=60, clock=lambda: clock[0], wait=wait)
    assert s.run() == "terminated"
    # 5 s of work, then wait out the minute; a 130 s send: go again at once; then the beat.
    assert waits == [55.0, 0.0, 59.0]
    assert s.ticks == 4


def test_a_tick_asked_to_stop_starts_nothing_new(setup, letter):
    config, store = setup(readers=2)
    make_issue(letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    asked = iter([False])  # the stop comes while the issue renders
    report = sched.tick(config, store, utc(2026, 12, 8, 8, 1), should_stop=lambda: next(asked, True))
    assert report.events == []
    assert engine.all_campaigns(store) == [] and not (letter / "outbox").exists()
