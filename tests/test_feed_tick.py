"""[feed] auto: `tick` drafts (and with "send" schedules) the coming slot's issue from the
blog's feed, once per slot however many ticks run at once."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from newsletter import config as cfg
from newsletter import feed
from newsletter import schedule as sched
from newsletter import subscribers as subs
from newsletter.content import load_issue
from newsletter.store import open_store
from tests.conftest import BASIC_TOML
from tests.feedserver import FEEDS

UTC = dt.UTC
# BASIC_TOML's slot is Tuesday 09:00 Europe/Oslo: Tuesday 24 November 2026 is 08:00 UTC.
# tick drafts what was published since the previous slot less the lead (16 Nov, 08:00 UTC).
SLOT = dt.datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
SINCE = dt.datetime(2026, 11, 16, 8, 0, tzinfo=UTC)


def published_since(name: str, since: dt.datetime) -> int:
    entries = feed.parse((FEEDS / name).read_bytes(), "http://x/").entries
    return sum(1 for e in entries if e.published >= since)


def at(hours_before_slot: float) -> dt.datetime:
    return SLOT - dt.timedelta(hours=hours_before_slot)


def configure(letter: Path, url: str, auto: str, extra: str = "") -> cfg.Config:
    (letter / "newsletter.toml").write_text(
        BASIC_TOML + f'\n[feed]\nurl = "{url}"\nauto = "{auto}"\n{extra}', encoding="utf-8")
    (letter / ".env").write_text("NEWSLETTER_SECRET=" + "s" * 40 + "\n", encoding="utf-8")
    return cfg.load(letter / "newsletter.toml")


@pytest.fixture
def auto(letter, letter_db, feed_server):
    """configure(auto) -> (config, store) with the WordPress feed and two readers."""
    feed_server.serve_file("/feed/", "wordpress.xml")
    opened = []

    def _setup(mode: str, extra: str = ""):
        config = configure(letter, feed_server.url("/feed/"), mode, extra)
        store = open_store(config)
        opened.append(store)
        for address in ("ann.reader@example.org", "bo.reader@example.org"):
            subs.add(store, address, confirmed=True)
        return config, store

    yield _setup
    for store in opened:
        store.close()


def issue_folders(letter: Path) -> list[Path]:
    return sorted(p for p in (letter / "issues").iterdir() if p.is_dir())


def test_auto_draft_waits_for_the_lead_then_drafts_once_and_does_not_schedule(auto, letter):
    config, store = auto("draft")
    assert sched.tick(config, store, at(25)).events == []
    assert issue_folders(letter) == []
    (event,) = sched.tick(config, store, at(23)).events
    assert event.outcome == "drafted" and event.new and not event.problem
    (folder,) = issue_folders(letter)
    assert folder.name.startswith("2026-11-24-")
    assert f"`newsletter schedule {folder.name}`" in event.detail
    issue = load_issue(folder, "Ann Berg", config.newsletter.timezone)
    assert issue.send_at is None
    assert len(issue.posts) == published_since("wordpress.xml", SINCE) == 1
    # Later ticks leave the drafted slot alone, and the slot passes with nothing sent.
    for hours in (22, 1, 0, -1):
        assert sched.tick(config, store, at(hours)).events == []
    assert issue_folders(letter) == [folder]
    assert sched.campaign_states(store) == {}


def test_auto_send_schedules_the_draft_and_tick_sends_it_at_the_slot(auto, letter):
    config, store = auto("send")
    (event,) = sched.tick(config, store, at(20)).events
    assert event.outcome == "drafted" and "scheduled for Tue 24 Nov 2026, 09:00 CET" in event.detail
    (folder,) = issue_folders(letter)
    issue = load_issue(folder, "Ann Berg", config.newsletter.timezone)
    assert issue.send_at == SLOT
    assert sched.tick(config, store, at(1)).events == []
    (sent,) = sched.tick(config, store, at(-0.1)).events
    assert sent.outcome == "sent" and sent.issue == folder.name and "2 sent of 2" in sent.detail


def test_a_week_without_a_new_post_sends_nothing_and_says_so_once(auto, letter, feed_server):
    config, store = auto("send")
    assert sched.tick(config, store, at(20)).events[0].outcome == "drafted"
    assert sched.tick(config, store, at(-0.1)).events[0].outcome == "sent"
    next_slot = SLOT + dt.timedelta(days=7)
    (event,) = sched.tick(config, store, next_slot - dt.timedelta(hours=20)).events
    assert event.outcome == "nothing" and event.new
    assert event.detail.startswith(f"no new posts in {feed_server.url('/feed/')} since ")
    assert event.detail.endswith("; nothing goes out")
    # Looked at again within the hour (cheaply: the server answers 304), reported once.
    assert sched.tick(config, store, next_slot - dt.timedelta(hours=19, minutes=30)).events == []
    (again,) = sched.tick(config, store, next_slot - dt.timedelta(hours=18, minutes=59)).events
    assert again.outcome == "nothing" and not again.new
    assert feed_server.requests[-1].headers.get("if-none-match")
    assert len(issue_folders(letter)) == 1
    assert len(sched.campaign_states(store)) == 1


def test_a_post_published_before_the_slot_is_drafted_on_the_next_look(auto, letter, feed_server):
    config, store = auto("draft")
    next_slot = SLOT + dt.timedelta(days=7)
    feed_server.serve_file("/feed/", "wordpress.xml")
    sched.tick(config, store, at(20))
    (event,) = sched.tick(config, store, next_slot - dt.timedelta(hours=20)).events
    assert event.outcome == "nothing"
    feed_server.serve_file("/feed/", "wordpress-next.xml")
    (event,) = sched.tick(config, store, next_slot - dt.timedelta(hours=18)).events
    assert event.outcome == "drafted" and "from 1 new post" in event.detail


def test_a_slot_that_already_has_an_issue_is_not_drafted(auto, letter, write):
    config, store = auto("draft")
    write("issues/2026-11-24-by-hand/issue.md", "---\nsubject: By hand\npreheader: P\n---\n")
    write("issues/2026-11-24-by-hand/01-x.md", "---\ntitle: X\n---\nWritten by hand.\n")
    assert sched.tick(config, store, at(20)).events == []
    assert [p.name for p in issue_folders(letter)] == ["2026-11-24-by-hand"]


def test_a_failing_feed_is_reported_once_and_tried_again_within_the_hour(auto, letter, feed_server):
    config, store = auto("draft")
    feed_server.status("/feed/", 503)
    (event,) = sched.tick(config, store, at(20)).events
    assert event.problem and "answered 503" in event.detail
    assert "the next tick tries again within the hour" in event.detail
    assert sched.tick(config, store, at(19.5)).events == []
    (again,) = sched.tick(config, store, at(18.9)).events
    assert again.problem and not again.new
    feed_server.serve_file("/feed/", "wordpress.xml")
    (event,) = sched.tick(config, store, at(17.8)).events
    assert event.outcome == "drafted"


def test_auto_off_never_fetches(auto, letter, feed_server):
    config, store = auto("off")
    assert sched.tick(config, store, at(1)).events == []
    assert feed_server.requests == []


def test_tick_command_walked_forward_prints_what_it_did(auto, letter, feed_server):
    auto("send")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
           "NEWSLETTER_DATABASE_URL": os.environ.get("NEWSLETTER_DATABASE_URL", "")}

    def tick(moment: dt.datetime) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "newsletter", "tick", "--now", moment.isoformat()],
                              cwd=letter, env=env, capture_output=True, text=True, timeout=60)

    early = tick(at(30))
    assert early.returncode == 0 and early.stdout == ""
    drafted = tick(at(20))
    assert drafted.returncode == 0, drafted.stderr
    assert drafted.stdout.startswith("feed → Tue 24 Nov 09:00: drafted 2026-11-24-")
    sent = tick(at(-0.05))
    assert sent.returncode == 0 and ": sent: 2 sent of 2" in sent.stdout


def test_two_ticks_at_once_draft_the_slot_once(auto, letter, feed_server):
    """Both processes reach the feed slot together; the slot's row lets one draft. The feed
    answers slowly so the second tick arrives while the first is still drafting."""
    auto("send")
    feed_server.serve_file("/feed/", "wordpress.xml")
    feed_server.delay("/feed/", 1.5)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")},
           "NEWSLETTER_DATABASE_URL": os.environ.get("NEWSLETTER_DATABASE_URL", "")}
    command = [sys.executable, "-m", "newsletter", "tick", "--now", at(20).isoformat()]
    procs = [subprocess.Popen(command, cwd=letter, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    drafted = [out for out, _ in outputs if "drafted" in out]
    assert len(drafted) == 1, outputs
    assert len(issue_folders(letter)) == 1
    assert sum(1 for r in feed_server.requests if r.path == "/feed/") == 1


def test_calendar_says_when_the_feed_drafts_an_empty_week(letter, feed_server, cli):
    configure(letter, feed_server.url("/feed/"), "send", 'lead = "12h"\n')
    result = cli("calendar", "--weeks", "2", "--now", "2026-11-20T10:00:00+01:00")
    assert result.exit_code == 0
    assert ("Tue 2026-11-24 09:00 CET  — empty: `tick` drafts and schedules it from the feed "
            "Mon 23 Nov 21:00 if there are new posts") in result.output
    assert "`newsletter new --from-feed` drafts it from the blog's feed" in result.output
    assert feed_server.requests == [], "the calendar only reads"
