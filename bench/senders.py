"""How much faster do three senders sharing one campaign on PostgreSQL go than one?

Against a local Postmark in a process of its own that takes 50 ms over every answer, with
batches of 500 (Postmark's most) and two requests in flight per sender: first one
`newsletter send --resume` process sends a fresh 50,000-reader campaign alone, then three
started together send another, on a fresh database each time. The campaign is frozen
beforehand (in this process, as `newsletter send` would), so the times are of the sending
alone. Both runs are checked against what the server accepted: each reader exactly once.
Prints both times and rates, each sender's share and the speed-up; exits 1 when a check
fails. Needs PostgreSQL (NEWSLETTER_TEST_POSTGRES_URL or --postgres; `. .ci/postgres.sh`
starts one); without it, says so and exits 0.

    python bench/senders.py [--readers 50000] [--senders 3] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from soak import (
    EXE,
    ISSUE,
    Processes,
    address,
    clean_env,
    fetch,
    fresh_postgres,
    make_letter,
    postgres_problem,
    start_fake,
)
from sqlalchemy import func, select

from newsletter import build
from newsletter import campaign as engine
from newsletter import config as cfg
from newsletter.store import open_store
from newsletter.store.schema import deliveries


def children_cpu() -> float:
    """CPU seconds of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds a running process has used so far (Linux's /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (Linux's /proc/stat; zeros
    elsewhere): whatever else runs here shows in the difference from our own processes."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = ticks[3] + ticks[4]  # idle, iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


@dataclass
class Run:
    senders: int
    seconds: float = 0.0  # from starting the processes to the last one's exit
    window: float = 0.0  # from the first batch journalled to the last
    freeze: float = 0.0
    cpu_senders: float = 0.0  # CPU seconds of the sender processes
    cpu_server: float = 0.0  # CPU seconds of the local Postmark while they sent
    cpu_machine: float = 0.0  # CPU seconds the whole machine was busy meanwhile (PostgreSQL, others)
    shares: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def run(senders: int, base: str, root: Path, args: argparse.Namespace) -> Run:
    result = Run(senders)
    folder = root / f"senders-{senders}"
    folder.mkdir()
    procs = Processes()
    with fresh_postgres(base, "newsletter_senders") as db_url:
        try:
            fake, url = start_fake(procs, folder / "fake.log", "--latency", str(args.latency))
            imported = make_letter(folder, url, args.readers, db_url, batch_size=args.batch_size,
                                   concurrency=args.concurrency, timeout=30)
            env = clean_env(db_url)
            config = cfg.load(folder / "newsletter.toml", environ=env)
            with open_store(db_url) as store:
                start = time.perf_counter()
                campaign = engine.start(store, build.render(config, ISSUE), "main", "postmark")
                result.freeze = time.perf_counter() - start
                print(f"  {senders} sender(s): {args.readers:,} readers imported in {imported:.1f} s, "
                      f"campaign frozen in {result.freeze:.1f} s; sending...", flush=True)
                logs = [folder / f"sender-{n}.log" for n in range(senders)]
                running = []
                cpu_before, server_before = children_cpu(), process_cpu(fake.pid)
                machine_before = machine_cpu()[0]
                start = time.perf_counter()
                for log in logs:
                    with log.open("w") as out:
                        running.append(procs.popen([EXE, "send", ISSUE, "--resume", "--yes"], cwd=folder, env=env,
                                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
                deadline = time.monotonic() + args.budget
                while any(p.poll() is None for p in running) and time.monotonic() < deadline:
                    time.sleep(0.05)
                result.seconds = time.perf_counter() - start
                result.cpu_senders = children_cpu() - cpu_before
                result.cpu_server = process_cpu(fake.pid) - server_before
                result.cpu_machine = machine_cpu()[0] - machine_before
                for n, (proc, log) in enumerate(zip(running, logs, strict=True), start=1):
                    if proc.poll() is None:
                        result.problems.append(f"sender {n} still running after {args.budget:.0f} s")
                    elif proc.returncode != 0:
                        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                        result.problems.append(f"sender {n} exited {proc.returncode}: {tail}")
                accepted = Counter(fetch(url, "/_accepted"))
                with store.read() as conn:
                    statuses = dict(conn.execute(
                        select(deliveries.c.status, func.count()).where(deliveries.c.campaign_id == campaign.id)
                        .group_by(deliveries.c.status)).all())
                    result.shares = sorted((n for _, n in conn.execute(
                        select(deliveries.c.worker, func.count())
                        .where(deliveries.c.campaign_id == campaign.id, deliveries.c.status == "sent")
                        .group_by(deliveries.c.worker))), reverse=True)
                    first, last = conn.execute(
                        select(func.min(deliveries.c.updated_at), func.max(deliveries.c.updated_at))
                        .where(deliveries.c.campaign_id == campaign.id, deliveries.c.status == "sent")).one()
                    result.window = (last - first).total_seconds() if first and last else 0.0
        finally:
            procs.stop_all()  # before the database is dropped
    everyone = Counter({address(i): 1 for i in range(args.readers)})
    if accepted != everyone:
        twice = sum(1 for n in accepted.values() if n > 1)
        never = len(set(everyone) - set(accepted))
        result.problems.append(f"not each reader once: {twice} got more than one copy, {never} none, "
                               f"{len(set(accepted) - set(everyone))} strangers")
    if statuses != {"sent": args.readers}:
        result.problems.append(f"the journal says {statuses}, not {args.readers:,} sent")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=50_000)
    parser.add_argument("--senders", type=int, default=3, help="senders in the shared run")
    parser.add_argument("--postgres", default=os.environ.get("NEWSLETTER_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server URL (default: NEWSLETTER_TEST_POSTGRES_URL)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server takes per answer")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--budget", type=float, default=900.0, help="most seconds per run")
    args = parser.parse_args()
    problem = None if args.postgres else "no NEWSLETTER_TEST_POSTGRES_URL and no --postgres"
    problem = problem or postgres_problem(args.postgres)
    if problem:
        print(f"PostgreSQL not available ({problem}); no figures. Run `. .ci/postgres.sh` to start a local server.")
        return 0
    print(f"{args.readers:,} readers on PostgreSQL, batches of {args.batch_size}, concurrency {args.concurrency}, "
          f"{args.latency * 1000:.0f} ms per answer; {os.cpu_count()} CPU(s) shared by the senders, the server "
          "and PostgreSQL")
    root = Path(tempfile.mkdtemp(prefix="newsletter-senders-"))
    try:
        alone = run(1, args.postgres, root, args)
        shared = run(args.senders, args.postgres, root, args)
    except KeyboardInterrupt:
        print("interrupted; the processes this script started were killed")
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'':<14}{'senders':>8}{'seconds':>9}{'readers/s':>11}{'window s':>10}{'readers/s':>11}  "
          f"{'each once':<10} sent per sender")
    for label, r in (("one sender", alone), (f"{args.senders} senders", shared)):
        print(f"{label:<14}{r.senders:>8}{r.seconds:>9.1f}{args.readers / r.seconds:>11,.0f}"
              f"{r.window:>10.1f}{args.readers / r.window if r.window else 0:>11,.0f}  "
              f"{'FAILED' if r.problems else 'yes':<10} {' / '.join(f'{n:,}' for n in r.shares)}")
    print(f"speed-up with {args.senders} senders: {alone.seconds / shared.seconds:.2f}x wall time "
          f"(start of the processes to the last exit, start-up included), "
          f"{alone.window / shared.window if shared.window else 0:.2f}x window (first batch journalled to last)")
    for label, r in (("one sender", alone), (f"{args.senders} senders", shared)):
        ours = r.cpu_senders + r.cpu_server
        print(f"CPU while sending, {label}: senders {r.cpu_senders:.1f} s + local Postmark {r.cpu_server:.1f} s "
              f"= {ours / r.seconds:.2f} CPUs; the machine was busy {r.cpu_machine / r.seconds:.2f} of "
              f"{os.cpu_count()} (the rest: PostgreSQL and anything else running)")
    failed = False
    for label, r in (("one sender", alone), (f"{args.senders} senders", shared)):
        for p in r.problems:
            failed = True
            print(f"{label}: {p}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
