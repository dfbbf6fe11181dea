"""`newsletter schedule`, `unschedule`, `calendar`, `tick` and `scheduler` as a user runs them:
in-process for output and errors, and as real processes for the exactly-once guarantees
(two ticks at the same moment, a scheduler beside a manual tick, SIGTERM mid-batch) on
SQLite and PostgreSQL against the local Postmark."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import BASIC_TOML
from .fakes.postmark import TOKEN, FakePostmark

SECRET = "schedule-cli-secret"
EXE = str(Path(sys.executable).with_name("newsletter"))


def make_issue(root: Path, slug: str, send_at: str | None = None, post: str = "Sell well.\n") -> Path:
    folder = root / "issues" / slug
    folder.mkdir(parents=True, exist_ok=True)
    meta = f"---\nsubject: Subject of {slug}\npreheader: Pre\n" + (f"send_at: {send_at}\n" if send_at else "") + "---\n"
    (folder / "issue.md").write_text(meta, encoding="utf-8")
    (folder / "01-a.md").write_text(f"---\ntitle: A\n---\n{post}", encoding="utf-8")
    return folder


# -- in-process: output and errors -----------------------------------------------------------


@pytest.fixture
def outbox_letter(letter: Path, letter_db: str, cli) -> Path:
    """The letter folder with the outbox provider, a secret and three active readers."""
    (letter / "newsletter.toml").write_text(BASIC_TOML + '\n[provider]\nname = "outbox"\n')
    (letter / ".env").write_text(f"NEWSLETTER_SECRET={SECRET}\n")
    for i in range(3):
        assert cli("subscribers", "add", f"r{i}@example.com", "--confirmed").exit_code == 0
    return letter


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_schedule_writes_the_slot_and_unschedule_takes_it_back(outbox_letter, cli):
    folder = make_issue(outbox_letter, "2026-12-15-plan")
    before = (folder / "issue.md").read_text()
    result = cli("schedule", "plan", "--now", "2026-12-01 12:00")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "scheduled 2026-12-15-plan for Tue 15 Dec 2026, 09:00 CET → list main",
        "  issues/2026-12-15-plan/issue.md: send_at written",
    ]
    assert (folder / "issue.md").read_text() == before.replace(
        "preheader: Pre\n", "preheader: Pre\nsend_at: 2026-12-15 09:00\n")
    moved = cli("schedule", "plan", "--at", "2026-12-16 07:15", "--now", "2026-12-01 12:00")
    assert moved.exit_code == 0, moved.stderr
    assert "rescheduled 2026-12-15-plan for Wed 16 Dec 2026, 07:15 CET → list main" in moved.stdout
    assert "(was Tue 15 Dec 2026, 09:00 CET)" in moved.stdout
    gone = cli("unschedule", "plan")
    assert gone.exit_code == 0
    assert gone.stdout.strip() == "unscheduled 2026-12-15-plan (was Wed 16 Dec 2026, 07:15 CET); it is a draft again"
    assert (folder / "issue.md").read_text() == before
    assert cli("unschedule", "plan").stdout.strip() == "2026-12-15-plan was not scheduled; nothing changed"


def test_schedule_notes_another_issue_on_the_same_day(outbox_letter, cli):
    make_issue(outbox_letter, "2026-12-15-one", send_at="2026-12-15 09:00")
    make_issue(outbox_letter, "2026-12-20-two")
    result = cli("schedule", "two", "--at", "2026-12-15 18:00", "--now", "2026-12-01 12:00")
    assert result.exit_code == 0
    assert "note: 2026-12-15-one is planned for the same day" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--at", "2026-12-01 09:00"], "error: --at Tue 01 Dec 2026, 09:00 CET is in the past (it is Wed 02 Dec 2026, 12:00 CET now); pick a later time"),
    (["--at", "tuesday morning"], "error: --at 'tuesday morning' is not a date and time; write e.g. 2026-12-08 09:00"),
    (["--at", "2026-12-09 09:00 Mars/Olympus"], "error: 'Mars/Olympus' is not a known time zone; use a name such as Europe/Oslo or UTC"),
    (["--at", "2027-03-28 02:15"], "error: --at '2027-03-28 02:15': 2027-03-28 02:15 does not exist in Europe/Oslo"),
])
def test_bad_times_are_one_line_exit_1_and_change_nothing(outbox_letter, cli, args, message):
    folder = make_issue(outbox_letter, "2026-12-08-x")
    before = (folder / "issue.md").read_bytes()
    line = one_line_error(cli("schedule", "2026-12-08-x", *args, "--now", "2026-12-02 12:00"))
    assert line.startswith(message)
    assert (folder / "issue.md").read_bytes() == before


@pytest.mark.parametrize(("old", "new", "message"), [
    ('weekday = "tuesday"', 'weekday = "tusday"', "error: newsletter.toml: [schedule] weekday: 'tusday' is not a weekday (monday..sunday)"),
    ('timezone = "Europe/Oslo"', 'timezone = "Europe/Olso"', "error: newsletter.toml: [newsletter] timezone: 'Europe/Olso' is not a known time zone"),
])
@pytest.mark.parametrize("command", [["schedule", "2026-12-08-x"], ["calendar"], ["tick"]])
def test_a_bad_weekday_or_time_zone_stops_every_schedule_command(outbox_letter, cli, old, new, message, command):
    folder = make_issue(outbox_letter, "2026-12-08-x")
    before = (folder / "issue.md").read_bytes()
    toml = outbox_letter / "newsletter.toml"
    toml.write_text(toml.read_text().replace(old, new))
    assert one_line_error(cli(*command)).startswith(message)
    assert (folder / "issue.md").read_bytes() == before


def test_an_already_sent_issue_cannot_be_scheduled(outbox_letter, cli):
    folder = make_issue(outbox_letter, "2026-12-08-x", send_at="2026-12-08 09:00")
    assert cli("tick", "--now", "2026-12-08 09:01").exit_code == 0
    before = (folder / "issue.md").read_bytes()
    line = one_line_error(cli("schedule", "2026-12-08-x", "--at", "2026-12-22 09:00", "--now", "2026-12-09 09:00"))
    assert line.startswith("error: 2026-12-08-x was sent to main on ")
    assert line.endswith("; it cannot be scheduled again")
    assert (folder / "issue.md").read_bytes() == before


def test_tick_prints_what_it_sent_and_a_problem_once(outbox_letter, cli):
    folder = make_issue(outbox_letter, "2026-12-08-x", send_at="2026-12-08 09:00", post="![](gone.png)\n")
    quiet = cli("tick", "--now", "2026-12-08 08:59")
    assert (quiet.exit_code, quiet.output) == (0, "")
    assert cli("tick", "--now", "2026-12-08 08:59", "-v").stdout.strip() == (
        "nothing due; next: 2026-12-08-x at Tue 08 Dec 2026, 09:00 CET")
    failed = cli("tick", "--now", "2026-12-08 09:00")
    assert one_line_error(failed).startswith(
        "error: 2026-12-08-x → main: not sent: 2026-12-08-x fails its pre-flight checks (")
    again = cli("tick", "--now", "2026-12-08 09:01")
    assert (again.exit_code, again.output) == (0, "")  # already reported; cron stays quiet
    assert cli("tick", "--now", "2026-12-08 09:01", "--verbose").exit_code == 1
    (folder / "01-a.md").write_text("---\ntitle: A\n---\nFixed.\n")
    sent = cli("tick", "--now", "2026-12-08T09:02:00+01:00")
    assert sent.exit_code == 0, sent.stderr
    assert sent.stdout.strip() == "2026-12-08-x → main: sent: 3 sent of 3"
    assert len(list((outbox_letter / "outbox").rglob("*.eml"))) == 3
    status = cli("status", "2026-12-08-x").stdout
    assert "finished" in status and "3 sent of 3" in status


def test_calendar_lists_slots_statuses_and_empty_weeks(outbox_letter, cli):
    make_issue(outbox_letter, "2026-12-01-sent", send_at="2026-12-01 09:00")
    assert cli("tick", "--now", "2026-12-01 09:01").exit_code == 0
    make_issue(outbox_letter, "2026-11-24-old", send_at="2026-11-24 09:00")
    make_issue(outbox_letter, "2026-12-08-next", send_at="2026-12-08 09:00")
    make_issue(outbox_letter, "2026-12-15-idea")
    make_issue(outbox_letter, "2026-12-10-extra", send_at="2026-12-10 12:00", post="![](nope.png)\n")
    assert cli("tick", "--now", "2026-12-10 12:01").exit_code == 1  # fails its checks
    result = cli("calendar", "--weeks", "3", "--now", "2026-12-10 12:05")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Weekly on Tuesday at 09:00 Europe/Oslo (grace 6h); now Thu 10 Dec 2026, 12:05 CET"
    earlier = lines[lines.index("Not sent yet:") + 1:]
    assert earlier[0].startswith("  Tue 2026-11-24 09:00 CET  2026-11-24-old    missed (was due Tue 24 Nov 2026, 09:00 CET")
    assert earlier[1].startswith("  Tue 2026-12-08 09:00 CET  2026-12-08-next   missed (")
    assert earlier[2].startswith("  Thu 2026-12-10 12:00 CET  2026-12-10-extra  failed (2026-12-10-extra fails its pre-flight checks")
    assert "  Tue 2026-12-15 09:00 CET  2026-12-15-idea   draft (not scheduled)" in lines
    assert "  Tue 2026-12-22 09:00 CET  — empty: nothing planned" in lines
    assert "  Tue 2026-12-29 09:00 CET  — empty: nothing planned" in lines
    assert lines[-1].startswith("nothing planned in 2 of the next 3 weeks; ")
    empty = cli("calendar", "--weeks", "1", "--now", "2026-12-16 12:00").stdout.splitlines()
    assert empty[-1].startswith("nothing planned in the next week; ")
    before = cli("calendar", "--weeks", "2", "--now", "2026-11-30 12:00").stdout
    assert re.search(r"^  Tue 2026-12-01 09:00 CET  2026-12-01-sent +sent \(\w{3} \d\d \w{3} \d{4}, \d\d:\d\d \w+ to main\)$",
                     before, flags=re.M), before


def test_schedule_and_calendar_do_not_create_a_database(letter, cli):
    make_issue(letter, "2026-12-08-x")
    assert cli("schedule", "2026-12-08-x", "--now", "2026-12-01 12:00").exit_code == 0
    assert cli("calendar", "--now", "2026-12-01 12:00").exit_code == 0
    assert not (letter / "newsletter.db").exists()


# -- real processes --------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakePostmark() as service:
        yield service


def env_for(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "POSTMARK_"))}
    env["NEWSLETTER_DATABASE_URL"] = db_url
    return env


def newsletter(root: Path, db_url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=root, env=env_for(db_url), capture_output=True, text=True,
                          timeout=timeout)


def start(root: Path, db_url: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    err = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 (closed by the process's end)
    return subprocess.Popen([EXE, *args], cwd=root, env=env_for(db_url), stdout=subprocess.PIPE,
                            stderr=err, text=True)


def make_letter(root: Path, db_url: str, fake, readers: int, batch: int = 3) -> None:
    provider = f'name = "postmark"\nbase_url = "{fake.url}"\nbatch_size = {batch}\nconcurrency = 1\ntimeout = 60\n'
    (root / "newsletter.toml").write_text(BASIC_TOML + "\n[provider]\n" + provider)
    (root / ".env").write_text(f"NEWSLETTER_SECRET={SECRET}\nPOSTMARK_SERVER_TOKEN={TOKEN}\n")
    (root / "issues").mkdir(exist_ok=True)
    rows = "\n".join(f"r{i:03d}@example.com,Reader {i}" for i in range(readers))
    (root / "readers.csv").write_text("email,name\n" + rows + "\n")
    result = newsletter(root, db_url, "subscribers", "import", "readers.csv")
    assert result.returncode == 0, result.stderr


def deliveries(fake) -> Counter:
    """(subject, address) -> copies accepted by the service."""
    return Counter((m["Subject"], m["To"].rsplit("<", 1)[-1].rstrip(">")) for m in fake.messages)


def everyone(subject: str, n: int) -> Counter:
    return Counter({(subject, f"r{i:03d}@example.com"): 1 for i in range(n)})


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def just_now(minutes_ago: int = 1) -> str:
    """A send time a little in the past, for the processes that read the real clock."""
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)
    return moment.replace(microsecond=0).isoformat()


def test_two_ticks_started_at_the_same_moment_send_every_issue_exactly_once(tmp_path, fake, db_url):
    make_letter(tmp_path, db_url, fake, readers=24)
    make_issue(tmp_path, "2026-12-08-first", send_at="2026-12-08 08:30")
    make_issue(tmp_path, "2026-12-08-second", send_at="2026-12-08 09:00")
    fake.faults = [("delay", 0.3)]  # the first batch answers late, so the two runs overlap
    now = "2026-12-08T09:05:00+01:00"
    procs = [start(tmp_path, db_url, "tick", "--now", now) for _ in range(2)]
    results = [(*proc.communicate(timeout=120), proc.returncode) for proc in procs]
    for _out, err, code in results:
        assert code == 0, err
    expected = everyone("Subject of 2026-12-08-first", 24) + everyone("Subject of 2026-12-08-second", 24)
    assert deliveries(fake) == expected
    said = "".join(out for out, _, _ in results)
    for slug in ("2026-12-08-first", "2026-12-08-second"):
        assert said.count(f"{slug} → main: sent: 24 sent of 24") == 1, said
    status = newsletter(tmp_path, db_url, "status").stdout
    assert status.count("finished") == 2
    again = newsletter(tmp_path, db_url, "tick", "--now", now)
    assert (again.returncode, again.stdout) == (0, "")
    assert sum(deliveries(fake).values()) == 48


def test_the_scheduler_sends_what_is_due_beside_a_manual_tick_and_stops_on_sigterm(tmp_path, fake, db_url):
    make_letter(tmp_path, db_url, fake, readers=12)
    make_issue(tmp_path, "2026-12-08-due", send_at=just_now())
    fake.faults = [("delay", 0.5)]
    log = tmp_path / "scheduler.log"
    proc = start(tmp_path, db_url, "scheduler", "--interval", "0.2", log=log)
    try:
        manual = newsletter(tmp_path, db_url, "tick")
        assert manual.returncode == 0, manual.stderr
        wait_for(lambda: "nothing due" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert deliveries(fake) == everyone("Subject of 2026-12-08-due", 12)
    lines = log.read_text().splitlines()
    assert "scheduler started: ticking every 0.2s for newsletter.toml" in lines[0]
    sent = [line for line in lines + manual.stdout.splitlines() if "→ main: sent: 12 sent of 12" in line]
    assert len(sent) == 1, lines
    assert lines[-1].endswith("scheduler stopped (terminated)")


def test_sigterm_lets_the_batch_in_flight_finish_and_the_next_tick_resumes(tmp_path, fake, db_url):
    make_letter(tmp_path, db_url, fake, readers=12)
    make_issue(tmp_path, "2026-12-08-long", send_at=just_now())
    fake.faults = [None, ("delay", 1.5)]
    log = tmp_path / "scheduler.log"
    proc = start(tmp_path, db_url, "scheduler", "--interval", "0.2", log=log)
    try:
        wait_for(lambda: fake.batches == 2)  # the second batch is accepted, its answer late
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "2026-12-08-long → main: stopped: stopped after 6 of 12 (terminated); the next tick resumes it" in text
    assert text.rstrip().endswith("scheduler stopped (terminated)")
    assert len(fake.messages) == 6
    calendar = newsletter(tmp_path, db_url, "calendar").stdout
    assert "2026-12-08-long" in calendar and "paused (interrupted (terminated); the next tick resumes it)" in calendar
    resumed = newsletter(tmp_path, db_url, "tick")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "2026-12-08-long → main: resumed and finished: 12 sent of 12"
    assert deliveries(fake) == everyone("Subject of 2026-12-08-long", 12)


def test_the_scheduler_survives_a_failing_tick(tmp_path, fake, db_url):
    make_letter(tmp_path, db_url, fake, readers=3)
    toml = tmp_path / "newsletter.toml"
    good = toml.read_text()
    log = tmp_path / "scheduler.log"
    proc = start(tmp_path, db_url, "scheduler", "--interval", "0.2", log=log)
    try:
        wait_for(lambda: "nothing due" in log.read_text())
        toml.write_text(good.replace('weekday = "tuesday"', 'weekday = "tusday"'))
        wait_for(lambda: "tick failed: newsletter.toml: [schedule] weekday: 'tusday' is not a weekday" in log.read_text())
        make_issue(tmp_path, "2026-12-08-after", send_at=just_now())
        toml.write_text(good)
        wait_for(lambda: len(fake.messages) == 3)
        wait_for(lambda: "2026-12-08-after → main: sent: 3 sent of 3" in log.read_text())
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert log.read_text().rstrip().endswith("scheduler stopped (interrupted)")
