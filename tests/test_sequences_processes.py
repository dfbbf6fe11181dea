"""Welcome sequences with real `newsletter` processes, on SQLite and PostgreSQL, mailed
through a local Postmark (which counts every message it takes, so a second copy shows):

1. readers who join (through a real `newsletter serve`, or `subscribers add --confirmed`)
   get each step its delay after joining, walked forward with `tick --now`; a reader who
   was active before the sequence started gets nothing;
2. two ticks started at the same moment mail each (reader, step) once, and what they print
   adds up to what went out;
3. a tick killed (SIGKILL) while a batch of a step is in flight: the readers in it are
   `unknown` (also in `newsletter sequences` before the next tick) and not mailed again,
   the others are mailed by the next tick;
4. an import enrolls nobody, unless `--welcome` says so.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from newsletter.store import open_store
from newsletter.store.schema import campaigns, deliveries, memberships, subscribers

from . import test_send_cli
from .test_send_cli import make_letter, newsletter, postmark, start, wait_for
from .test_web_server import request, start_server, stop_server

fake = test_send_cli.fake  # the fixture: a local Postmark

SEQUENCE = "welcome"
# Step file name -> (subject, delay)
STEPS = {"01-hello": ("Welcome aboard", "0"), "02-three-posts": ("Three posts to start with", "3d")}
FIRST, SECOND = STEPS
DELAY = dt.timedelta(days=3)  # the second step's
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def write_sequence(root: Path) -> None:
    folder = root / "sequences" / SEQUENCE
    folder.mkdir(parents=True)
    for name, (subject, delay) in STEPS.items():
        (folder / f"{name}.md").write_text(
            f"---\nsubject: {subject}\npreheader: P\ndelay: {delay}\n---\nHello from step {name}.\n")


def setup_letter(root: Path, fake, db_url: str, batch: int = 3, start_sequence: bool = True) -> None:
    """test_send_cli's letter (no readers) with the two-step sequence; started, unless told
    otherwise, by `newsletter sequences` (as a first tick would)."""
    make_letter(root, postmark(fake, batch=batch), 0, db_url)
    write_sequence(root)
    if start_sequence:
        shown = newsletter(root, "sequences", db_url=db_url)
        assert shown.returncode == 0, shown.stderr
        assert "welcome → list main: readers who joined since" in shown.stdout, shown.stdout


def addresses(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:03d}@example.com" for i in range(n)]


def import_readers(root: Path, db_url: str, name: str, emails: list[str], *options: str):
    (root / name).write_text("email,name\n" + "".join(f"{a},Reader {a[:4]}\n" for a in emails))
    done = newsletter(root, "subscribers", "import", name, *options, db_url=db_url)
    assert done.returncode == 0, done.stderr
    return done


def tick(root: Path, db_url: str, now: dt.datetime | None = None):
    result = newsletter(root, "tick", *(["--now", now.isoformat()] if now else []), db_url=db_url)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result


def mailed(fake, step: str) -> Counter:
    """Copies of ``step`` the service took, per address."""
    subject = STEPS[step][0]
    return Counter(address(m["To"]) for m in list(fake.messages) if m["Subject"] == subject)


def address(to: str) -> str:
    """The address of a Postmark ``To``: ``Reader r001 <r001@example.com>`` -> r001@example.com."""
    return to.rsplit("<", 1)[-1].rstrip(">")


def batch_requests(fake) -> list:
    return [r for r in list(fake.requests) if r.path == "/email/batch"]


def journal(db_url: str) -> Counter:
    """The sequence's journal, as (step, address, status) -> rows."""
    with open_store(db_url) as store, store.read() as conn:
        rows = conn.execute(
            select(campaigns.c.issue, subscribers.c.email, deliveries.c.status)
            .select_from(deliveries.join(campaigns, campaigns.c.id == deliveries.c.campaign_id)
                         .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
            .where(campaigns.c.sequence == SEQUENCE)
        ).all()
    return Counter((issue.partition("/")[2], email, status) for issue, email, status in rows)


def joined_at(db_url: str) -> dict[str, dt.datetime | None]:
    """Each address's welcome_from: when it joined, as far as sequences go."""
    with open_store(db_url) as store, store.read() as conn:
        return dict(conn.execute(
            select(subscribers.c.email, memberships.c.welcome_from)
            .select_from(memberships.join(subscribers, subscribers.c.id == memberships.c.subscriber_id))
        ).all())


def step_row(shown: str, step: str) -> list[int]:
    """sent, waiting, skipped, failed, unknown from the step's line of `newsletter sequences`."""
    found = re.search(rf"^  {step}\s+\S+\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)  ", shown, re.M)
    assert found, shown
    return [int(n.replace(",", "")) for n in found.groups()]


def sent_in(output: str, step: str) -> int:
    """How many a tick's line for ``step`` says it sent ("sequence welcome/01-hello: 2 sent")."""
    found = re.search(rf"^sequence {SEQUENCE}/{step}: ([\d,]+) sent", output, re.M)
    return int(found[1].replace(",", "")) if found else 0


# -- 1. each step its delay after joining -----------------------------------------------------


def test_readers_who_join_get_each_step_its_delay_after_joining(tmp_path, db_url, fake):
    early, site, added = "early@example.com", "site.reader@example.com", "added@example.com"
    setup_letter(tmp_path, fake, db_url, start_sequence=False)
    assert newsletter(tmp_path, "subscribers", "add", early, "--confirmed", db_url=db_url).returncode == 0
    first = tick(tmp_path, db_url)  # starts the sequence: readers who join from now on
    assert first.stdout == "" and fake.messages == []

    server, base = start_server(tmp_path, db_url=db_url)
    try:
        body = urlencode({"email": site, "name": "Sia", "list": "main", "website": ""}).encode()
        status, _, page = request(base, "POST", "/subscribe", body=body, headers=FORM)
        assert status == 200 and b"Check your inbox" in page
        wait_for(lambda: len(fake.messages) == 1)
        [confirmation] = fake.messages
        assert confirmation["To"] == site
        link = re.search(r"https://letter\.example\.com(/confirm/[A-Za-z0-9_.-]+)", confirmation["TextBody"])
        assert link, confirmation["TextBody"]
        assert tick(tmp_path, db_url).stdout == ""  # pending: not a member yet
        status, _, page = request(base, "POST", link[1], body=b"", headers=FORM)
        assert status == 200 and b"You are subscribed" in page
    finally:
        stop_server(server)
    assert newsletter(tmp_path, "subscribers", "add", added, "--confirmed", db_url=db_url).returncode == 0

    welcomed = tick(tmp_path, db_url)
    assert sent_in(welcomed.stdout, FIRST) == 2, welcomed.stdout
    assert mailed(fake, FIRST) == Counter({site: 1, added: 1})
    assert mailed(fake, SECOND) == Counter()

    joined = joined_at(db_url)
    assert joined[site] is not None and joined[added] is not None
    margin = dt.timedelta(milliseconds=10)
    assert joined[added] - joined[site] > 2 * margin  # so each reader's walk is its own
    expected: Counter = Counter()
    for reader in (site, added):
        almost = tick(tmp_path, db_url, joined[reader] + DELAY - margin)
        assert almost.stdout == "" and mailed(fake, SECOND) == expected, (reader, almost.stdout)
        due = tick(tmp_path, db_url, joined[reader] + DELAY + margin)
        expected[reader] = 1
        assert sent_in(due.stdout, SECOND) == 1, due.stdout
        assert mailed(fake, SECOND) == expected, reader
    # A week on, nothing more goes out, and the early reader never got a thing.
    assert tick(tmp_path, db_url, joined[added] + dt.timedelta(days=7)).stdout == ""
    assert mailed(fake, FIRST) == Counter({site: 1, added: 1})
    assert mailed(fake, SECOND) == Counter({site: 1, added: 1})
    assert journal(db_url) == Counter({(step, reader, "sent"): 1 for step in STEPS for reader in (site, added)})
    shown = newsletter(tmp_path, "sequences", db_url=db_url).stdout
    assert step_row(shown, FIRST) == [2, 0, 0, 0, 0] and step_row(shown, SECOND) == [2, 0, 0, 0, 0], shown


# -- 2. two ticks at once -----------------------------------------------------------------------


def test_two_ticks_at_once_mail_each_reader_each_step_once(tmp_path, db_url, fake):
    """20 readers due, a service that answers each batch of 2 late: two ticks started
    together share (or one leaves alone) the step; nobody gets a step twice. Then the same
    for the second step, three days on."""
    setup_letter(tmp_path, fake, db_url, batch=2)
    readers = addresses("r", 20)
    import_readers(tmp_path, db_url, "readers.csv", readers, "--welcome")
    fake.latency = 0.1
    latest = max(j for j in joined_at(db_url).values() if j is not None)
    for step, now in ((FIRST, None), (SECOND, latest + DELAY + dt.timedelta(minutes=1))):
        command = ["tick", *(["--now", now.isoformat()] if now else [])]
        procs = [start(tmp_path, *command, db_url=db_url) for _ in range(2)]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert mailed(fake, step) == Counter({a: 1 for a in readers}), outputs
    assert journal(db_url) == Counter({(step, a, "sent"): 1 for step in STEPS for a in readers})
    assert len(fake.messages) == 40


def test_two_ticks_at_once_each_say_only_what_they_sent(tmp_path, db_url, fake):
    """The lines two overlapping ticks print add up to what went out: a tick that sent part
    of a step does not also count the part the other tick sent."""
    setup_letter(tmp_path, fake, db_url, batch=2)
    readers = addresses("r", 20)
    import_readers(tmp_path, db_url, "readers.csv", readers, "--welcome")
    fake.latency = 0.1
    procs = [start(tmp_path, "tick", db_url=db_url) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert mailed(fake, FIRST) == Counter({a: 1 for a in readers}), outputs
    assert sum(sent_in(out, FIRST) for out, _ in outputs) == 20, outputs


# -- 3. killed mid-step ----------------------------------------------------------------------


def kill_mid_step(root: Path, db_url: str, fake, fault: str) -> set[str]:
    """12 readers due, batches of 3: SIGKILL a tick while the service holds its second
    batch, as test_send_cli does it. ``accepted``: the service took the batch and has not
    answered; ``hung``: it hangs without taking it. Returns the addresses of that batch."""
    setup_letter(root, fake, db_url, batch=3)
    import_readers(root, db_url, "readers.csv", addresses("r", 12), "--welcome")
    if fault == "accepted":
        fake.faults = [None, ("delay", 30)]
    else:
        fake.hang_seconds = 30
        fake.faults = [None, "hang"]
    proc = start(root, "tick", db_url=db_url)
    if fault == "accepted":
        wait_for(lambda: fake.batches == 2)
    else:
        wait_for(lambda: len(batch_requests(fake)) == 2)
    proc.kill()
    proc.wait()
    fake.faults = []
    in_flight = {address(m["To"]) for m in batch_requests(fake)[1].json()}
    assert len(in_flight) == 3
    return in_flight


@pytest.mark.parametrize("fault", ["accepted", "hung"])
def test_a_tick_killed_mid_step_mails_nobody_twice(tmp_path, db_url, fake, fault):
    """Postmark keeps no idempotency key: the three readers of the batch in flight when the
    tick was killed are `unknown` and not mailed again; the next tick mails the six not yet
    claimed."""
    readers = addresses("r", 12)
    in_flight = kill_mid_step(tmp_path, db_url, fake, fault)
    assert mailed(fake, FIRST) == Counter(
        {a: 1 for a in readers[:3] + (readers[3:6] if fault == "accepted" else [])})

    second = tick(tmp_path, db_url)
    assert sent_in(second.stdout, FIRST) == 6, second.stdout
    assert "3 unknown" in second.stdout, second.stdout
    expected = Counter({a: 1 for a in readers if fault == "accepted" or a not in in_flight})
    assert mailed(fake, FIRST) == expected
    shown = newsletter(tmp_path, "sequences", db_url=db_url)
    assert step_row(shown.stdout, FIRST) == [9, 0, 0, 0, 3], shown.stdout
    assert "unknown: 3 readers whose email may or may not have gone out" in shown.stderr, shown.stderr
    assert journal(db_url) == Counter(
        {(FIRST, a, "unknown" if a in in_flight else "sent"): 1 for a in readers})
    # Later ticks do not resend them either.
    assert tick(tmp_path, db_url).stdout == ""
    assert mailed(fake, FIRST) == expected


def test_right_after_the_kill_the_dead_ticks_in_flight_readers_are_not_waiting(tmp_path, db_url, fake):
    """Before any other tick runs, `newsletter sequences` must not count the readers the
    killed tick had in flight as waiting for the step: no tick will mail them (the provider
    keeps no idempotency key); they are unknown (or at least shown in flight)."""
    kill_mid_step(tmp_path, db_url, fake, "accepted")
    shown = newsletter(tmp_path, "sequences", db_url=db_url)
    sent, waiting, _, _, unknown = step_row(shown.stdout, FIRST)
    # 3 answered, 6 never claimed (the next tick mails them), 3 in the dead tick's call.
    assert (sent, waiting) == (3, 6), shown.stdout
    assert unknown == 3 or "3 in flight" in shown.stdout + shown.stderr, shown.stdout + shown.stderr


# -- 4. imports ------------------------------------------------------------------------------


def test_an_import_enrolls_nobody_unless_welcome(tmp_path, db_url, fake):
    setup_letter(tmp_path, fake, db_url, batch=50)
    plain, welcomed = addresses("p", 100), addresses("w", 100)
    done = import_readers(tmp_path, db_url, "plain.csv", plain)
    assert "welcomed" not in done.stdout
    assert tick(tmp_path, db_url).stdout == ""
    assert fake.messages == [] and journal(db_url) == Counter()
    shown = newsletter(tmp_path, "sequences", db_url=db_url).stdout
    assert step_row(shown, FIRST) == [0, 0, 0, 0, 0] and step_row(shown, SECOND) == [0, 0, 0, 0, 0], shown

    done = import_readers(tmp_path, db_url, "welcome.csv", welcomed, "--welcome")
    assert re.search(r"welcomed\s+100\b", done.stdout), done.stdout
    sent = tick(tmp_path, db_url)
    assert sent_in(sent.stdout, FIRST) == 100, sent.stdout
    assert mailed(fake, FIRST) == Counter({a: 1 for a in welcomed})
    assert len(fake.messages) == 100
    assert journal(db_url) == Counter({(FIRST, a, "sent"): 1 for a in welcomed})

