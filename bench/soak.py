"""Does every reader get the issue at most once while senders are killed and the service
misbehaves? A randomized soak of `newsletter send`, on SQLite and on PostgreSQL.

For each database: a letter folder with N readers (default 5,000), a local Postmark in a
process of its own that answers a share of the batch requests with a fault (Postmark's 500,
a 429 with Retry-After, a hang, a batch taken but its answer lost or replaced by a gateway's
502 page, per-message 429s, a slow answer), and two or three `newsletter send` processes
sharing the campaign. At random moments one of them is killed (SIGKILL) and a `--resume`
started in its place; when none is left and the campaign is not finished, another resumes.
Then the journal is held against what the server accepted, address by address: sent means
accepted exactly once, unknown at most once, anything else never; nobody is left queued or
in flight, and `newsletter status` adds up. Prints a table of figures; exits 1 when a check
fails, with the details.

The seed fixes the fault draws (in the order requests reach the server) and the kill
schedule, not the timing: a rerun with the same seed misbehaves the same way, not at the
same instants. PostgreSQL runs when NEWSLETTER_TEST_POSTGRES_URL or --postgres names a
server (`. .ci/postgres.sh` starts one); each run makes a database of its own and drops it.

    python bench/soak.py [--readers 5000] [--seed N] [--postgres URL] [--databases sqlite,postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from newsletter.store import open_store
from newsletter.store.schema import campaigns, deliveries, subscribers

REPO = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).with_name("newsletter"))
ISSUE = "2026-12-01-soak"
TOKEN = "postmark-test-token"
SECRET = "soak-secret"

LETTER = """\
[newsletter]
name = "Soak Letter"
description = "A letter for soaking the sender."
site_url = "https://letter.example.com"
language = "en"
author = "Ann Berg"
from = {{ name = "Ann Berg", address = "ann@example.com" }}
postal_address = "1 Test Street, Oslo"
timezone = "Europe/Oslo"
{allow_examples}
[schedule]
weekday = "tuesday"
time = "09:00"

[provider]
name = "postmark"
base_url = "{url}"
batch_size = {batch_size}
concurrency = {concurrency}
timeout = {timeout}
"""


# -- set-up ------------------------------------------------------------------------------------


def allow_examples() -> str:
    """The setting that lets a letter on example.com pass the pre-flight checks, in the
    releases that have it (older ones pass such a letter as it is, and refuse the key)."""
    from dataclasses import fields

    from newsletter.config import NewsletterSettings

    known = {f.name for f in fields(NewsletterSettings)}
    return "allow_example_domains = true\n" if "allow_example_domains" in known else ""


def clean_env(db_url: str) -> dict[str, str]:
    """The environment of every `newsletter` process: none of the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "POSTMARK_"))}
    env["NEWSLETTER_DATABASE_URL"] = db_url
    return env


def make_letter(root: Path, url: str, readers: int, db_url: str, *, batch_size: int,
                concurrency: int, timeout: float) -> float:
    """A letter folder with one short issue and ``readers`` subscribers imported into
    ``db_url``; returns the seconds the import took."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "newsletter.toml").write_text(LETTER.format(url=url, batch_size=batch_size, concurrency=concurrency,
                                                        timeout=timeout, allow_examples=allow_examples()))
    (root / ".env").write_text(f"NEWSLETTER_SECRET={SECRET}\nPOSTMARK_SERVER_TOKEN={TOKEN}\n")
    issue = root / "issues" / ISSUE
    issue.mkdir(parents=True, exist_ok=True)
    (issue / "issue.md").write_text("---\nsubject: Soak test\npreheader: Still here\n---\n")
    (issue / "01-a.md").write_text("---\ntitle: A\n---\nEach of you gets this once.\n")
    csv = root / "readers.csv"
    with csv.open("w") as f:
        f.write("email,name\n")
        for i in range(readers):
            f.write(f"{address(i)},Reader {i}\n")
    start = time.perf_counter()
    done = subprocess.run([EXE, "subscribers", "import", str(csv)], cwd=root, env=clean_env(db_url),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"importing the readers failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    csv.unlink()
    return time.perf_counter() - start


def address(i: int) -> str:
    return f"reader{i:06d}@example.com"


@contextmanager
def fresh_postgres(base: str, prefix: str) -> Iterator[str]:
    """A database of its own on the server of ``base``, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def postgres_problem(base: str) -> str | None:
    """Why the server of ``base`` cannot be used, or None when it can."""
    try:
        engine = create_engine(base, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # any failure means "not available"
        return " ".join(str(exc).split())[:200]
    return None


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Every process this script starts, so that all of them are killed at the end (also on
    Ctrl-C or an exception)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
        for proc in self.started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"process {proc.pid} did not exit after SIGKILL", file=sys.stderr)


def start_fake(procs: Processes, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """The local Postmark in a process of its own; returns it and its URL."""
    with log.open("w") as err:
        proc = procs.popen([sys.executable, "-m", "tests.fakes.postmark", *options], cwd=REPO,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    url = proc.stdout.readline().strip() if proc.stdout else ""
    if not url.startswith("http://127.0.0.1:"):
        raise SystemExit(f"the local Postmark did not start (said {url!r}); see {log}")
    return proc, url


def fetch(url: str, path: str):
    with urllib.request.urlopen(f"{url}{path}", timeout=30) as answer:
        return json.load(answer)


@dataclass
class Sender:
    n: int
    resume: bool
    proc: subprocess.Popen
    log: Path
    started: float
    killed: bool = False
    outcome: str = ""  # once it exited: finished, stopped, late, killed, or "exit N: ..."

    def tail(self, lines: int = 3) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])


def start_sender(procs: Processes, folder: Path, env: dict[str, str], n: int, resume: bool) -> Sender:
    args = ["send", ISSUE, "--yes", *(["--resume"] if resume else [])]
    log = folder / f"sender-{n:02d}.log"
    with log.open("w") as out:
        proc = procs.popen([EXE, *args], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                           stdout=out, stderr=subprocess.STDOUT)
    return Sender(n, resume, proc, log, time.monotonic())


def classify(sender: Sender) -> str:
    """What a sender's exit means: finished (0), stopped (exit 1, the campaign paused or was
    stopped; resume it), late (it found the campaign finished already), or unexpected."""
    code = sender.proc.returncode
    text = sender.log.read_text(errors="replace")
    if code == 0 and "done: " in text:
        return "finished"
    if code == 1 and "campaign stopped after" in text:
        return "stopped"
    if code == 1 and "is finished; nothing to send" in text:
        return "late"
    return f"exit {code}: {sender.tail()}"


# -- one database ------------------------------------------------------------------------------


@dataclass
class Soak:
    database: str
    readers: int
    seed: int
    figures: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def campaign_status(store) -> tuple[int | None, str | None]:
    with store.read() as conn:
        row = conn.execute(select(campaigns.c.id, campaigns.c.status).where(campaigns.c.issue == ISSUE)).first()
    return (row.id, row.status) if row else (None, None)


def soak_one(kind: str, db_url: str, args: argparse.Namespace, seed: int, root: Path) -> Soak:
    rng = random.Random(seed)
    result = Soak(kind, args.readers, seed)
    procs = Processes()
    folder = root / kind
    folder.mkdir(parents=True)
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"  [{kind} {time.monotonic() - t0:6.1f} s] {text}", flush=True)

    store = None
    try:
        fake_seed = rng.getrandbits(31)
        _, url = start_fake(procs, folder / "fake.log", "--chaos", str(args.chaos), "--seed", str(fake_seed),
                            "--latency", str(args.latency), "--hang", str(args.timeout + 1))
        imported = make_letter(folder, url, args.readers, db_url, batch_size=args.batch_size,
                               concurrency=args.concurrency, timeout=args.timeout)
        t0 = time.monotonic()  # the clock of the lines below starts with the first sender
        say(f"{args.readers:,} readers imported in {imported:.1f} s; local Postmark at {url}, "
            f"chaos {args.chaos} (fake seed {fake_seed}), latency {args.latency} s")
        store = open_store(db_url, upgrade=False)
        env = clean_env(db_url)
        senders: list[Sender] = []
        kills = 0

        def launch(resume: bool) -> Sender:
            sender = start_sender(procs, folder, env, len(senders) + 1, resume)
            senders.append(sender)
            say(f"sender {sender.n} started (pid {sender.proc.pid}{', --resume' if resume else ''})")
            return sender

        first = launch(resume=False)
        deadline = t0 + args.budget
        campaign_id = None
        while campaign_id is None:  # the --resume ones need the campaign to exist
            campaign_id, _ = campaign_status(store)
            if campaign_id is None and (first.proc.poll() is not None or time.monotonic() > t0 + 60):
                if first.proc.poll() is None:
                    first.proc.kill()
                first.proc.wait()
                result.problems.append(f"the first sender did not start the campaign: {first.tail()}")
                return result
            time.sleep(0.05)
        for _ in range(rng.choice((1, 2))):
            launch(resume=True)
        next_kill = time.monotonic() + rng.uniform(*args.kill_every)
        status = "sending"
        while True:
            now = time.monotonic()
            for sender in senders:
                if not sender.outcome and sender.proc.poll() is not None:
                    sender.outcome = classify(sender)
                    why = f" ({sender.tail(1)})" if sender.outcome == "stopped" else ""
                    say(f"sender {sender.n} exited: {sender.outcome}{why}")
                    if sender.outcome.startswith("exit"):
                        result.problems.append(f"sender {sender.n} exited unexpectedly ({sender.outcome}); "
                                               f"log {sender.log}")
            running = [s for s in senders if not s.outcome]
            _, status = campaign_status(store)
            if not running and status == "finished":
                break
            if now > deadline:
                result.problems.append(f"the campaign was not finished after {args.budget:.0f} s "
                                       f"(status {status}); stopping its senders")
                break
            if running and kills < args.kills and now >= next_kill:
                victim = rng.choice(running)
                victim.proc.kill()
                victim.proc.wait()  # reaped at once: a zombie would look alive to the engine
                victim.killed, victim.outcome = True, "killed"
                kills += 1
                say(f"killed sender {victim.n} (pid {victim.proc.pid}), kill {kills} of {args.kills}")
                next_kill = now + rng.uniform(*args.kill_every)
                if status != "finished":
                    launch(resume=True)
            elif not running and status != "finished":
                if len(senders) >= args.max_senders:
                    result.problems.append(f"the campaign was not finished after {len(senders)} senders "
                                           f"(status {status})")
                    break
                launch(resume=True)
            time.sleep(0.1)
        wall = time.monotonic() - t0
        for sender in senders:
            if not sender.outcome:
                sender.proc.kill()
                sender.proc.wait()
                sender.outcome = "killed (budget)"
        check(result, store, campaign_id, folder, env, url)
        exits = Counter(s.outcome if not s.outcome.startswith("exit") else "unexpected" for s in senders)
        stats = fetch(url, "/_stats")
        faults = stats.get("chaos", {})
        result.figures.update({
            "senders started": f"{len(senders)}",
            "kills (SIGKILL)": f"{kills}",
            "sender exits": ", ".join(f"{n} {what}" for what, n in sorted(exits.items())),
            "batch requests": f"{stats['requests']:,}",
            "faults injected": f"{sum(faults.values()):,}",
            "  by kind": ", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "-",
            "wall time": f"{wall:.1f} s",
        })
        server_errors = (folder / "fake.log").read_text(errors="replace").count("Exception occurred")
        result.figures["server tracebacks"] = f"{server_errors}"
        return result
    finally:
        if store is not None:
            store.close()
        procs.stop_all()


def check(result: Soak, store, campaign_id: int, folder: Path, env: dict[str, str], url: str) -> None:
    """Hold the journal against what the server accepted, and `newsletter status` against
    the journal."""
    problems = result.problems
    accepted = Counter({a.lower(): n for a, n in fetch(url, "/_accepted").items()})
    with store.read() as conn:
        rows = conn.execute(
            select(subscribers.c.email, deliveries.c.status)
            .select_from(deliveries.outerjoin(subscribers, subscribers.c.id == deliveries.c.subscriber_id))
            .where(deliveries.c.campaign_id == campaign_id)
        ).all()
        final = conn.execute(select(campaigns.c.status).where(campaigns.c.id == campaign_id)).scalar_one()
    statuses = Counter(status for _, status in rows)
    by_address = {(email or "").lower(): status for email, status in rows}
    duplicates = {a: n for a, n in accepted.items() if n > 1}
    missing = sorted(a for a, s in by_address.items() if s == "sent" and accepted[a] != 1)
    unknown_got = sum(1 for a, s in by_address.items() if s == "unknown" and accepted[a] == 1)
    wrongly = sorted(a for a, s in by_address.items() if s not in ("sent", "unknown") and accepted[a])
    strangers = sorted(set(accepted) - set(by_address))
    open_rows = statuses["queued"] + statuses["sending"]

    def listed(addresses) -> str:
        items = list(addresses)
        return ", ".join(items[:10]) + (f" and {len(items) - 10} more" if len(items) > 10 else "")

    if len(rows) != result.readers:
        problems.append(f"the journal has {len(rows):,} rows for {result.readers:,} readers")
    if duplicates:
        problems.append(f"{len(duplicates)} reader(s) accepted more than once: "
                        + listed(f"{a} ×{n} ({by_address.get(a)})" for a, n in sorted(duplicates.items())))
    if missing:
        problems.append(f"{len(missing)} reader(s) marked sent but not accepted exactly once: "
                        + listed(f"{a} ×{accepted[a]}" for a in missing))
    if wrongly:
        problems.append(f"{len(wrongly)} reader(s) accepted but marked failed/skipped/cancelled: "
                        + listed(f"{a} ({by_address[a]})" for a in wrongly))
    if strangers:
        problems.append(f"{len(strangers)} address(es) accepted that are not in the campaign: {listed(strangers)}")
    if open_rows:
        problems.append(f"{statuses['queued']} reader(s) left queued and {statuses['sending']} in flight")
    if final != "finished":
        problems.append(f"the campaign's status is {final!r}, not 'finished'")

    shown = subprocess.run([EXE, "status", ISSUE], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    line = next((ln for ln in shown.stdout.splitlines() if re.match(r"^\s+[\d,]+ sent", ln)), None)
    if shown.returncode != 0 or line is None:
        problems.append(f"`newsletter status` said ({shown.returncode}): {shown.stdout} {shown.stderr}")
    else:
        figures, _, total = line.strip().rpartition(" of ")
        parts = {name.replace("in flight", "sending"): int(n.replace(",", ""))
                 for n, name in re.findall(r"([\d,]+) ([a-z ]+?)(?:,|$)", figures)}
        total_n = int(total.replace(",", ""))
        if sum(parts.values()) != total_n or total_n != len(rows):
            problems.append(f"`newsletter status` figures do not add up: {line.strip()!r} "
                            f"(sum {sum(parts.values()):,}, journal {len(rows):,})")
        journal = {s: n for s, n in statuses.items() if n}
        if parts != journal:
            problems.append(f"`newsletter status` says {parts}, the journal {journal}")

    result.figures.update({
        "readers": f"{result.readers:,}",
        "sent": f"{statuses['sent']:,}",
        "unknown": f"{statuses['unknown']:,} ({unknown_got:,} of them accepted)",
        "failed": f"{statuses['failed']:,}",
        "skipped/cancelled": f"{statuses['skipped'] + statuses['cancelled']:,}",
        "queued/sending": f"{open_rows:,}",
        "server accepted": f"{sum(accepted.values()):,}",
        "duplicates": f"{sum(n - 1 for n in duplicates.values()):,}",
        "missing (sent, not accepted)": f"{len(missing):,}",
        "campaign status": final,
    })


# -- the run -----------------------------------------------------------------------------------


ROWS = ["readers", "senders started", "kills (SIGKILL)", "sender exits", "batch requests", "faults injected",
        "  by kind", "sent", "unknown", "failed", "skipped/cancelled", "queued/sending", "server accepted",
        "duplicates", "missing (sent, not accepted)", "campaign status", "server tracebacks", "wall time"]
# "server tracebacks": the fake writing to clients that were killed or gave up (broken pipes).


def print_table(results: list[Soak]) -> None:
    width = max(len(r) for r in ROWS)
    columns = [max([len(r.database), *(len(v) for v in r.figures.values())]) for r in results]
    print()
    print(f"{'':<{width}}  " + "  ".join(f"{r.database:<{w}}" for r, w in zip(results, columns, strict=True)))
    for row in [*ROWS, "checks"]:
        cells = [("FAILED" if r.problems else "ok") if row == "checks" else r.figures.get(row, "-")
                 for r in results]
        print(f"{row:<{width}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells, columns, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--postgres", default=os.environ.get("NEWSLETTER_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server URL (default: NEWSLETTER_TEST_POSTGRES_URL)")
    parser.add_argument("--databases", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--chaos", type=float, default=0.15, help="share of batch requests that misbehave")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before every answer")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=2.0, help="the provider's read timeout")
    parser.add_argument("--kills", type=int, default=8, help="most senders killed per database")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(0.5, 3.0), metavar=("MIN", "MAX"),
                        help="seconds between kills, drawn uniformly")
    parser.add_argument("--max-senders", type=int, default=40, help="most senders started per database")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per database")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big") >> 1
    print(f"soak seed {seed} (rerun with --seed {seed}); {args.readers:,} readers, batch {args.batch_size}, "
          f"concurrency {args.concurrency}, timeout {args.timeout} s, chaos {args.chaos}, "
          f"up to {args.kills} kills, {args.budget:.0f} s per database")
    wanted = [d for d in args.databases.split(",") if d]
    results: list[Soak] = []
    skipped = ""
    root = Path(tempfile.mkdtemp(prefix="newsletter-soak-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    try:
        for index, kind in enumerate(("sqlite", "postgres")):
            if kind not in wanted:
                continue
            if kind == "postgres":
                problem = None if args.postgres else "no NEWSLETTER_TEST_POSTGRES_URL and no --postgres"
                problem = problem or postgres_problem(args.postgres)
                if problem:
                    skipped = f"PostgreSQL SKIPPED: {problem}. Run `. .ci/postgres.sh` to start a local server."
                    print(skipped)
                    continue
                print("PostgreSQL:")
                with fresh_postgres(args.postgres, "newsletter_soak") as url:
                    results.append(soak_one(kind, url, args, seed * 2 + index, root))
            else:
                print("SQLite:")
                results.append(soak_one(kind, f"sqlite:///{root / 'soak.db'}", args, seed * 2 + index, root))
    except KeyboardInterrupt:
        print(f"interrupted (seed {seed}); the processes this script started were killed")
        return 130
    finally:
        failed = [r for r in results if r.problems]
        if failed:
            print(f"(logs and the SQLite database kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)
    if skipped:
        print(skipped)
    for r in failed:
        print(f"\n{r.database}: FAILED (seed {seed}; reproduce with `python bench/soak.py --seed {seed} "
              f"--databases {r.database}`)")
        for problem in r.problems:
            print(f"  - {problem}")
    if not results:
        print("nothing ran")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
