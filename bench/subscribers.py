"""Subscriber import and export: speed, and whether memory stays flat as the list grows.

    .venv/bin/python bench/subscribers.py [--rows 100000] [--small 10000] [--postgres URL]

Each measurement runs in a fresh child process, so one phase's peak memory cannot hide
another's. Memory is the peak resident set size of that child (``resource.getrusage``,
``ru_maxrss``): everything the process held at its largest, interpreter and libraries
included. "growth" is that peak minus the resident size just before the phase began, which
is the part that could grow with the list. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST = ["Maria", "Jonas", "Priya", "Sofie", "Tomáš", "Aisha", "Erik", "Lena", "Wei", "Ingrid"]
LAST = ["Lund", "Berg", "Raman", "Haugen", "Novák", "Okafor", "Dahl", "Fischer", "Chen", "Ødegård"]
DOMAINS = ["example.com", "example.org", "example.net"] + [f"mail{i}.example" for i in range(40)]


def make_csv(path: Path, rows: int, seed: int = 7) -> None:
    """A Mailchimp-shaped export with a few extra columns, 1 % duplicate rows and 0.5 % bad
    addresses, as real exports have."""
    rnd = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Email Address", "First Name", "Last Name", "Company", "MEMBER_RATING",
                      "OPTIN_TIME"])
        for i in range(rows):
            n = rnd.randrange(i) if i and rnd.random() < 0.01 else i  # 1 %: an earlier row again
            email = f"reader{n}@{DOMAINS[n % len(DOMAINS)]}"
            if rnd.random() < 0.005:
                email = f"reader{n}@@broken"
            out.writerow([email, FIRST[n % 10], LAST[(n // 10) % 10], f"Company {n % 997}",
                          str(n % 5 + 1), "2026-01-05 10:00:00"])


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_mb()


def peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# -- child phases -----------------------------------------------------------------------------


def phase(name: str, url: str, csv_path: str) -> dict:
    from newsletter import subscribers as subs
    from newsletter.cli.subscribers import _write_members
    from newsletter.store import open_store

    store = open_store(url)
    before = rss_mb()
    started = time.perf_counter()
    result: dict = {}
    if name == "import":
        # The rejected rows go beside the generated file (in the bench's temporary folder),
        # not into the folder the bench was started from.
        rejects = Path(csv_path).with_suffix(".rejected.csv")
        summary = subs.import_csv(store, csv_path, rejects=rejects)
        result = {"rows": summary.rows, "added": summary.added, "rejected": summary.rejected,
                  "duplicates": summary.duplicates}
    elif name == "export":
        # The export command's own writer, into /dev/null.
        count = 0

        def counted():
            nonlocal count
            for member in subs.iter_members(store):
                count += 1
                yield member

        saved = sys.stdout
        with open(os.devnull, "w", encoding="utf-8") as sink:
            sys.stdout = sink
            try:
                _write_members(counted(), "csv", None, False)
            finally:
                sys.stdout = saved
        result = {"rows": count}
    elif name == "list":
        count = 0
        for _member in subs.iter_members(store):
            count += 1
        result = {"rows": count}
    elif name == "audience":
        count = sum(len(batch) for batch in subs.iter_audience(store, batch_size=1000))
        result = {"rows": count}
    seconds = time.perf_counter() - started
    store.close()
    result.update(seconds=seconds, rss_before_mb=before, peak_mb=peak_mb())
    return result


def run_child(name: str, url: str, csv_path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--url", url, "--csv", str(csv_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- driver -----------------------------------------------------------------------------------


def fresh_postgres(base: str) -> tuple[str, object]:
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"newsletter_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def bench(rows: int, small: int, postgres: str | None) -> None:
    print(f"python {sys.version.split()[0]}; memory = peak RSS of a fresh child process "
          "(getrusage ru_maxrss); growth = peak minus RSS just before the phase")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        targets = [("sqlite", lambda n: (f"sqlite:///{folder / f'bench-{n}.db'}", None))]
        if postgres:
            targets.append(("postgresql", lambda n: fresh_postgres(postgres)))
        for label, make_url_for in targets:
            print(f"\n== {label} ==")
            print(f"{'phase':<10}{'rows':>9}{'seconds':>9}{'rows/s':>10}{'peak MB':>9}"
                  f"{'growth MB':>11}")
            for n in (small, rows):
                csv_path = folder / f"readers-{n}.csv"
                if not csv_path.exists():
                    make_csv(csv_path, n)
                url, cleanup = make_url_for(n)
                try:
                    for name in ("import", "list", "export", "audience"):
                        r = run_child(name, url, csv_path)
                        count = r["rows"]
                        extra = ""
                        if name == "import":
                            extra = (f"   ({r['added']:,} added, {r['duplicates']:,} duplicates, "
                                     f"{r['rejected']:,} rejected; file "
                                     f"{csv_path.stat().st_size / 2**20:.1f} MB)")
                        print(f"{name:<10}{count:>9,}{r['seconds']:>9.2f}"
                              f"{count / r['seconds']:>10,.0f}{r['peak_mb']:>9.1f}"
                              f"{r['peak_mb'] - r['rss_before_mb']:>11.1f}{extra}")
                finally:
                    if cleanup:
                        cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000,
                        help="a smaller run, to show memory does not grow with the list")
    parser.add_argument("--postgres", default=os.environ.get("NEWSLETTER_TEST_POSTGRES_URL"),
                        help="also bench PostgreSQL (a database is made and dropped)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.url, args.csv)))
        return
    bench(args.rows, args.small, args.postgres)


if __name__ == "__main__":
    main()
