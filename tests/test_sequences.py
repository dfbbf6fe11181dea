"""Welcome sequences: step files, who joins, and `tick` walked forward across the delays.

Each test runs on SQLite and PostgreSQL, sending through the outbox provider, and counts
the messages the outbox wrote for each step."""

from __future__ import annotations

import datetime as dt
import email
from email import policy
from pathlib import Path

import pytest

from newsletter import config as cfg
from newsletter import schedule as sched
from newsletter import sequences as seq
from newsletter import subscribers as subs
from newsletter.errors import ContentError
from newsletter.store import open_store

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)

WELCOME = """\
---
subject: Welcome aboard
preheader: One email a week.
delay: 0
---
Thank you for joining. Reply and tell me what you sell.
"""

THREE_POSTS = """\
---
subject: Three posts to start with
delay: 3d
---
Start with [the quota post](https://blog.example.com/quota).
"""


@pytest.fixture
def letter_seq(letter, letter_db, write):
    """(config, store) for a letter with sequences/welcome/ holding two steps (0 and 3d)."""
    (letter / ".env").write_text("NEWSLETTER_SECRET=" + "s" * 40 + "\n", encoding="utf-8")
    write("sequences/welcome/01-welcome.md", WELCOME)
    write("sequences/welcome/02-three-posts.md", THREE_POSTS)
    config = cfg.load(letter / "newsletter.toml")
    store = open_store(config)
    yield config, store
    store.close()


def mailed(letter: Path, step: str) -> list[str]:
    """The addresses the outbox holds a message of ``step`` for (``welcome_01-welcome``)."""
    found = []
    for path in sorted((letter / "outbox").glob(f"*-{step}/*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        found.append(str(message["To"]))
    return found


def texts(letter: Path, step: str) -> list[str]:
    out = []
    for path in sorted((letter / "outbox").glob(f"*-{step}/*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        out.append(message.get_body(("plain",)).get_content())
    return out


def tick(config, store, when):
    return [e for e in sched.tick(config, store, when).events if isinstance(e, seq.SequenceEvent)]


def started(config, store) -> dt.datetime:
    """Start the sequences (as the first tick does) and return the moment."""
    now = dt.datetime.now(UTC)
    assert tick(config, store, now) == []
    return now


def test_a_reader_who_joins_gets_each_step_once_at_its_delay(letter_seq, letter):
    config, store = letter_seq
    t0 = started(config, store)
    subs.add(store, "ann@example.org", confirmed=True)
    joined = dt.datetime.now(UTC)
    (event,) = tick(config, store, joined + MINUTE)
    assert (event.sequence, event.step, event.outcome) == ("welcome", "01-welcome", "sent")
    assert event.detail.startswith("1 sent")
    assert mailed(letter, "welcome_01-welcome") == ["ann@example.org"]
    # Nothing more until three days after joining; then step 2, once.
    for when in (joined + DAY, joined + 3 * DAY - MINUTE):
        assert tick(config, store, when) == []
    (event,) = tick(config, store, joined + 3 * DAY + MINUTE)
    assert (event.step, event.outcome) == ("02-three-posts", "sent")
    for when in (joined + 3 * DAY + 2 * MINUTE, joined + 30 * DAY):
        assert tick(config, store, when) == []
    assert mailed(letter, "welcome_01-welcome") == ["ann@example.org"]
    assert mailed(letter, "welcome_02-three-posts") == ["ann@example.org"]
    assert t0 <= joined


def test_the_email_is_the_step_with_the_sign_off_and_unsubscribe_link(letter_seq, letter):
    config, store = letter_seq
    started(config, store)
    subs.add(store, "ann@example.org", confirmed=True)
    tick(config, store, dt.datetime.now(UTC) + MINUTE)
    (path,) = (letter / "outbox").glob("*-welcome_01-welcome/*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert message["Subject"] == "Welcome aboard"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<https://letter.example.com/unsubscribe/")
    text = message.get_body(("plain",)).get_content()
    assert "Reply and tell me what you sell." in text
    assert "Sell well" in text and "Unsubscribe: https://letter.example.com/unsubscribe/" in text
    assert "View in your browser" not in text  # a step has no web version
    html = message.get_body(("html",)).get_content()
    assert "One email a week." in html  # the preheader


def test_readers_who_were_members_before_the_sequence_started_get_nothing(letter_seq, letter):
    config, store = letter_seq
    subs.add(store, "old@example.org", confirmed=True)
    t0 = started(config, store)
    subs.add(store, "new@example.org", confirmed=True)
    tick(config, store, t0 + MINUTE)
    tick(config, store, t0 + 3 * DAY + dt.timedelta(hours=1))
    assert mailed(letter, "welcome_01-welcome") == ["new@example.org"]
    assert mailed(letter, "welcome_02-three-posts") == ["new@example.org"]


def test_pending_readers_join_when_they_confirm(letter_seq, letter):
    config, store = letter_seq
    t0 = started(config, store)
    subs.add(store, "ann@example.org")  # pending: not a member yet
    assert tick(config, store, t0 + MINUTE) == []
    assert subs.confirm(store, "ann@example.org")
    confirmed = dt.datetime.now(UTC)
    (event,) = tick(config, store, confirmed + MINUTE)
    assert event.outcome == "sent"
    assert mailed(letter, "welcome_01-welcome") == ["ann@example.org"]
    # Step 2 counts from the confirmation, not from the sign-up.
    assert tick(config, store, confirmed + 3 * DAY - MINUTE) == []
    assert tick(config, store, confirmed + 3 * DAY + MINUTE)[0].outcome == "sent"


def test_a_reader_who_leaves_between_steps_gets_no_further_step(letter_seq, letter):
    config, store = letter_seq
    t0 = started(config, store)
    for address in ("stays@example.org", "leaves@example.org", "bounces@example.org"):
        subs.add(store, address, confirmed=True)
    tick(config, store, t0 + 2 * MINUTE)
    assert sorted(mailed(letter, "welcome_01-welcome")) == [
        "bounces@example.org", "leaves@example.org", "stays@example.org"]
    subs.unsubscribe(store, "leaves@example.org")
    subs.suppress(store, "bounces@example.org", "bounced")
    tick(config, store, t0 + 3 * DAY + dt.timedelta(hours=1))
    assert mailed(letter, "welcome_02-three-posts") == ["stays@example.org"]


def test_an_import_enrolls_nobody_unless_asked(letter_seq, letter, tmp_path):
    config, store = letter_seq
    t0 = started(config, store)
    plain = tmp_path / "plain.csv"
    plain.write_text("email\n" + "".join(f"p{n}@example.org\n" for n in range(100)), encoding="utf-8")
    summary = subs.import_file(store, plain)
    assert summary.added == 100 and summary.welcomed is None
    assert tick(config, store, t0 + 5 * MINUTE) == []
    assert tick(config, store, t0 + 4 * DAY) == []
    assert mailed(letter, "welcome_01-welcome") == []
    asked = tmp_path / "asked.csv"
    asked.write_text("email\n" + "".join(f"w{n}@example.org\n" for n in range(5)), encoding="utf-8")
    summary = subs.import_file(store, asked, welcome=True)
    assert summary.welcomed == 5
    tick(config, store, dt.datetime.now(UTC) + MINUTE)
    assert sorted(mailed(letter, "welcome_01-welcome")) == sorted(f"w{n}@example.org" for n in range(5))


def test_an_edited_step_sends_the_new_text_to_the_rest(letter_seq, letter, write):
    config, store = letter_seq
    t0 = started(config, store)
    subs.add(store, "first@example.org", confirmed=True)
    tick(config, store, t0 + MINUTE)
    write("sequences/welcome/01-welcome.md", WELCOME.replace("what you sell", "who you sell to"))
    subs.add(store, "second@example.org", confirmed=True)
    tick(config, store, dt.datetime.now(UTC) + MINUTE)
    first, second = texts(letter, "welcome_01-welcome")
    assert "what you sell" in first and "who you sell to" in second
    assert mailed(letter, "welcome_01-welcome") == ["first@example.org", "second@example.org"]


def test_a_removed_step_is_no_longer_sent(letter_seq, letter):
    config, store = letter_seq
    t0 = started(config, store)
    subs.add(store, "ann@example.org", confirmed=True)
    tick(config, store, t0 + MINUTE)
    (letter / "sequences/welcome/02-three-posts.md").unlink()
    assert tick(config, store, t0 + 4 * DAY) == []
    assert mailed(letter, "welcome_02-three-posts") == []
    (report,) = seq.report(config, store, t0 + 4 * DAY)
    assert [s.step.name for s in report.steps] == ["01-welcome"]
    assert [name for name, _counts in report.orphans] == ["02-three-posts"]


def test_a_step_missed_while_the_machine_was_off_is_skipped_and_reported_once(letter_seq, letter):
    config, store = letter_seq  # [schedule] grace: 6h by default
    t0 = started(config, store)
    subs.add(store, "ann@example.org", confirmed=True)
    joined = dt.datetime.now(UTC)
    # The first tick after joining comes two days later: step 1 is past its grace.
    events = tick(config, store, joined + 2 * DAY)
    (event,) = events
    assert (event.step, event.outcome, event.problem, event.new) == ("01-welcome", "missed", True, True)
    assert "1 reader skipped" in event.detail
    missed = event.detail
    assert mailed(letter, "welcome_01-welcome") == []
    # Step 2 falls due on the third day and is sent within the grace, late but sent.
    (event,) = tick(config, store, joined + 3 * DAY + dt.timedelta(hours=5))
    assert (event.step, event.outcome) == ("02-three-posts", "sent")
    assert mailed(letter, "welcome_02-three-posts") == ["ann@example.org"]
    (report,) = seq.report(config, store, joined + 4 * DAY)
    first = report.steps[0]
    assert first.counts["skipped"] == 1 and first.skipped_reasons["late"] == 1
    assert t0 <= joined
    # Another reader missed the same way later is news again, though the words are the same.
    subs.add(store, "bo@example.org", confirmed=True)
    (again,) = tick(config, store, dt.datetime.now(UTC) + 2 * DAY)
    assert (again.step, again.outcome, again.new, again.detail) == ("01-welcome", "missed", True, missed)


def test_a_step_added_later_is_not_sent_to_readers_whose_time_had_passed(letter_seq, letter, write):
    config, store = letter_seq
    t0 = started(config, store)
    subs.add(store, "early@example.org", confirmed=True)
    tick(config, store, t0 + MINUTE)
    later = t0 + 2 * DAY
    write("sequences/welcome/03-one-question.md",
          "---\nsubject: One question\ndelay: 1d\n---\nWhat did your last manager miss?\n")
    # The new step was due for early@ a day ago, before it existed: not sent, not reported.
    assert [e for e in tick(config, store, later) if e.step == "03-one-question"] == []
    subs.add(store, "late@example.org", confirmed=True)
    tick(config, store, dt.datetime.now(UTC) + DAY + MINUTE)
    assert mailed(letter, "welcome_03-one-question") == ["late@example.org"]
    (report,) = seq.report(config, store, t0 + 10 * DAY)
    third = next(s for s in report.steps if s.step.name == "03-one-question")
    assert third.skipped_reasons[seq.ADDED_LATE] == 1


def test_a_disabled_sequence_sends_nothing(letter_seq, letter, write):
    config, store = letter_seq
    write("sequences/welcome/sequence.md", "---\nenabled: false\n---\n")
    now = dt.datetime.now(UTC)
    tick(config, store, now)
    subs.add(store, "ann@example.org", confirmed=True)
    assert tick(config, store, now + 4 * DAY) == []
    assert seq.started(store, "welcome") is None


def test_a_sequence_for_another_list_mails_that_lists_readers(letter_seq, letter, write):
    config, store = letter_seq
    subs.create_list(store, "leaders")
    write("sequences/welcome/sequence.md", "---\nlist: leaders\n---\n")
    t0 = started(config, store)
    subs.add(store, "main@example.org", confirmed=True)
    subs.add(store, "lead@example.org", confirmed=True, list_name="leaders")
    tick(config, store, t0 + 2 * MINUTE)
    assert mailed(letter, "welcome_01-welcome") == ["lead@example.org"]


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("01-a.md", "---\nsubject: S\ndelay: soon\n---\nBody\n",
     r"01-a\.md line 3: delay 'soon' is not a delay; write e\.g\. delay: 0, 30m, 1h, 2d or 1w"),
    ("01-a.md", "---\nsubject: S\ndelay: 3\n---\nBody\n",
     r"01-a\.md line 3: delay 3 is not a delay; write the unit, e\.g\. delay: 3d"),
    ("01-a.md", "---\ndelay: 0\n---\nBody\n", r"01-a\.md.*subject"),
    ("01-a.md", "---\nsubject: S\n---\nBody\n", r"01-a\.md: delay is missing"),
    ("01-a.md", "---\nsubject: S\ndelay: 0\nsend_at: 2026-12-01\n---\nBody\n", r"01-a\.md.*send_at"),
    ("welcome.md", "---\nsubject: S\ndelay: 0\n---\nBody\n", r"welcome\.md: a step's file name is its number"),
    ("01-a.md", "---\nsubject: S\ndelay: 0\n---\n\n", r"01-a\.md: the step has no text"),
])
def test_a_bad_step_file_is_one_line_naming_it(tmp_path, name, text, expected):
    folder = tmp_path / "sequences" / "welcome"
    folder.mkdir(parents=True)
    (folder / name).write_text(text, encoding="utf-8")
    with pytest.raises(ContentError, match=expected) as caught:
        seq.load_sequence(folder)
    assert "\n" not in str(caught.value)


def test_two_steps_with_the_same_number_are_refused(tmp_path):
    folder = tmp_path / "welcome"
    folder.mkdir()
    (folder / "01-hello.md").write_text("---\nsubject: A\ndelay: 0\n---\nA\n", encoding="utf-8")
    (folder / "01-again.md").write_text("---\nsubject: B\ndelay: 1d\n---\nB\n", encoding="utf-8")
    with pytest.raises(ContentError, match=r"01-hello\.md: step number 1 is also 01-again\.md"):
        seq.load_sequence(folder)


def test_delays_read_as_written():
    where = "x.md"
    assert seq.parse_delay(0, where) == dt.timedelta(0)
    assert seq.parse_delay("30m", where) == dt.timedelta(minutes=30)
    assert seq.parse_delay("1h", where) == dt.timedelta(hours=1)
    assert seq.parse_delay("2d", where) == dt.timedelta(days=2)
    assert seq.parse_delay("1w", where) == dt.timedelta(weeks=1)
    assert [seq.show_delay(d) for d in (dt.timedelta(0), dt.timedelta(days=3), dt.timedelta(weeks=2),
                                        dt.timedelta(minutes=90))] == ["0", "3d", "2w", "90m"]


def test_a_broken_sequence_is_reported_once_and_the_others_still_send(letter_seq, letter, write):
    config, store = letter_seq
    write("sequences/broken/01-a.md", "---\nsubject: S\ndelay: later\n---\nBody\n")
    t0 = dt.datetime.now(UTC)
    (event,) = tick(config, store, t0)
    assert (event.sequence, event.outcome, event.problem, event.new) == ("broken", "failed", True, True)
    assert "01-a.md line 3: delay 'later' is not a delay" in event.detail
    subs.add(store, "ann@example.org", confirmed=True)
    events = tick(config, store, dt.datetime.now(UTC) + MINUTE)
    assert [(e.sequence, e.outcome, e.new) for e in events] == [("broken", "failed", False), ("welcome", "sent", True)]
    assert mailed(letter, "welcome_01-welcome") == ["ann@example.org"]


def test_a_step_failing_its_checks_is_not_sent_and_reported_once(letter_seq, letter, write):
    config, store = letter_seq
    t0 = started(config, store)
    write("sequences/welcome/01-welcome.md", WELCOME.replace("Reply", "[Reply](reply.html)"))
    subs.add(store, "ann@example.org", confirmed=True)
    (event,) = tick(config, store, t0 + MINUTE)
    assert (event.outcome, event.new) == ("failed", True)
    assert "fails its pre-flight checks" in event.detail
    (again,) = tick(config, store, t0 + 2 * MINUTE)
    assert (again.outcome, again.new) == ("failed", False)
    assert mailed(letter, "welcome_01-welcome") == []
    write("sequences/welcome/01-welcome.md", WELCOME)
    (fixed,) = tick(config, store, t0 + 3 * MINUTE)
    assert fixed.outcome == "sent"
    assert mailed(letter, "welcome_01-welcome") == ["ann@example.org"]


def test_the_sequences_command_shows_each_step(letter_seq, letter, cli):
    config, store = letter_seq
    result = cli("sequences")
    assert result.exit_code == 0, result.output
    assert "welcome → list main: readers who joined since" in result.output
    subs.add(store, "ann@example.org", confirmed=True)
    subs.add(store, "bo@example.org", confirmed=True)
    tick(config, store, dt.datetime.now(UTC) + MINUTE)
    subs.unsubscribe(store, "bo@example.org")
    result = cli("sequences")
    lines = result.output.splitlines()
    first = next(line for line in lines if line.strip().startswith("01-welcome"))
    second = next(line for line in lines if line.strip().startswith("02-three-posts"))
    assert first.split()[:7] == ["01-welcome", "0", "2", "0", "0", "0", "0"]
    assert second.split()[:7] == ["02-three-posts", "3d", "0", "1", "0", "0", "0"]


def test_the_sequences_command_names_a_broken_file_and_exits_1(letter, cli, write):
    write("sequences/welcome/01-a.md", "---\nsubject: S\ndelay: 3\n---\nBody\n")
    result = cli("sequences")
    assert result.exit_code == 1
    assert "01-a.md line 3: delay 3 is not a delay; write the unit, e.g. delay: 3d" in result.output


def test_the_preview_shows_each_step_with_its_checks(letter, write):
    from werkzeug.test import Client

    from newsletter.web.preview import PreviewApp, SequenceWorkspace

    write("sequences/welcome/01-welcome.md", WELCOME)
    write("sequences/welcome/02-three-posts.md", THREE_POSTS.replace("https://blog.example.com/quota", "quota.html"))
    app = PreviewApp(SequenceWorkspace(letter / "newsletter.toml", "welcome"))
    app.live.poll()
    client = Client(app)
    index = client.get("/").get_data(as_text=True)
    assert "01-welcome" in index and "sent on joining" in index and "sent 3d after joining" in index
    first = client.get("/issue/01-welcome/")
    assert first.status_code == 200 and "Welcome aboard" in first.get_data(as_text=True)
    second = client.get("/issue/02-three-posts/").get_data(as_text=True)
    assert "is not absolute" in second  # the checks run on steps too
    assert client.get("/issue/03-nothing/").status_code == 404


def test_check_runs_on_a_sequences_steps(letter, write, cli):
    write("sequences/welcome/01-welcome.md", WELCOME)
    result = cli("check", "--sequence", "welcome")
    assert result.exit_code == 0 and "checked welcome/01-welcome" in result.output
    write("sequences/welcome/02-bad.md", THREE_POSTS.replace("https://blog.example.com/quota", "quota.html"))
    result = cli("check", "--sequence", "welcome")
    assert result.exit_code == 1
    assert "'quota.html' is not absolute" in result.output
