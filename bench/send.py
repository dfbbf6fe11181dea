"""How fast does a campaign go out, and how much memory does the sending process use?

For each list size (default 100,000 synthetic subscribers), sends the sample issue with
`newsletter send --yes` (a separate process, whose peak memory is read from the kernel when
it exits) through the outbox and through local Postmark-, SendGrid- and Mailgun-style
servers in processes of their own, and prints recipients per second. Then sends to Postfix's
smtp-sink (or, without Postfix, an aiosmtpd sink) with 1, 4 and 8 connections, printing the
sink's CPU, and sends the first 2,000 recipients to the same sink with mailmerge (from PyPI)
and with this project's SMTP provider, and prints the ratio.

    python bench/send.py [--subscribers 100000,1000000] [--smtp-subscribers 20000]
                         [--providers outbox,postmark,smtp] [--skip-mailmerge]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from launcher import run as launch

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "postmark-test-token"


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Run a command; return (seconds, peak RSS in MB of that process, its output's last line).
    It is started from the small launcher process (launcher.py), so the peak is the
    command's own, not this script's, which grows while it lists a million outbox files."""
    ran = launch(cmd, cwd, env)
    if ran.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({ran.returncode}):\n{ran.stdout}\n{ran.stderr}")
    return ran.seconds, ran.peak_mb, (ran.stdout + ran.stderr).strip().splitlines()[-1]


def start_server(module: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().strip() if proc.stdout else ""
    return proc, first


def start_smtp_sink() -> tuple[subprocess.Popen, str, str]:
    """Postfix's smtp-sink (C, made for benchmarks) when installed, else the aiosmtpd sink."""
    sink = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None)
    if sink:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "256"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return proc, str(port), "Postfix smtp-sink"
    proc, port = start_server("tests.fakes.smtp")
    return proc, port, "aiosmtpd (install postfix for smtp-sink, a faster sink)"


def make_letter(root: Path, provider: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
    text = (root / "newsletter.toml").read_text()
    head, _, _ = text.partition("[provider]")
    tail = text.split("[database]", 1)[1]
    (root / "newsletter.toml").write_text(head + "[provider]\n" + provider + "\n[database]" + tail)
    if not (root / "issues").exists():
        shutil.copytree(REPO / "issues", root / "issues")
    (root / ".env").write_text(f"NEWSLETTER_SECRET=bench-secret\nPOSTMARK_SERVER_TOKEN={TOKEN}\n")


def env_for(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NEWSLETTER_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["NEWSLETTER_DATABASE_URL"] = f"sqlite:///{db}"
    # Bytecode as an installed copy has it (mailmerge's, from PyPI, has it too), kept beside
    # the database rather than in the repository.
    env["PYTHONPYCACHEPREFIX"] = str(db.parent.parent / ".pycache")
    return env


def make_database(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    csv = root / "readers.csv"
    with csv.open("w") as f:
        f.write("email,name\n")
        for i in range(n):
            f.write(f"reader{i:07d}@example.com,Reader {i}\n")
    db = root / "base.db"
    make_letter(root / "import", 'name = "outbox"')
    seconds, _, _ = sh([str(BIN / "newsletter"), "subscribers", "import", str(csv)], root / "import", env_for(db))
    print(f"set-up: imported {n:,} subscribers in {seconds:.1f} s")
    csv.unlink()
    return db


def files_per_second(folder: Path, size: int, n: int = 20_000) -> float:
    """How fast this machine's file system takes files of ``size`` bytes the outbox's way,
    without building any message: the ceiling the outbox's rate is to be read against."""
    from newsletter.files import write_atomically

    target = folder / "files-alone"
    target.mkdir()
    data = b"x" * size
    start = time.perf_counter()
    for i in range(n):
        write_atomically(target / f"{i:08d}-reader{i:07d}@example.com.eml", data)
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return n / seconds


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SinkCpu:
    """How busy the SMTP sink was during a run: its CPU seconds over the run's wall time,
    so a reader can see whether the sender or the sink set the pace."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> SinkCpu:
        self.cpu, self.wall = cpu_seconds(self.pid), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        cpu, wall = cpu_seconds(self.pid) - self.cpu, time.perf_counter() - self.wall
        print(f"  the sink used {cpu:.1f} s of CPU in {wall:.1f} s ({100 * cpu / wall:.0f}% of one core)")


def send(root: Path, name: str, provider: str, base_db: Path, n: int, secrets: str = "",
         dry_run_first: bool = False) -> float:
    """One timed `newsletter send --yes` in a fresh folder; with ``dry_run_first``, after an
    untimed `send --dry-run`, as a writer runs it (it leaves the inlined email in .cache/)."""
    folder = root / name
    make_letter(folder, provider)
    if secrets:
        with (folder / ".env").open("a") as env:
            env.write(secrets)
    db = folder / "newsletter.db"
    shutil.copy(base_db, db)
    if dry_run_first:
        sh([str(BIN / "newsletter"), "send", "--dry-run", "the-quota-is-not-the-goal"], folder, env_for(db))
    seconds, peak, last = sh([str(BIN / "newsletter"), "send", "--yes", "the-quota-is-not-the-goal"], folder, env_for(db))
    rate = n / seconds
    print(f"{name:<22} {n:>9,} recipients in {seconds:7.1f} s = {rate:>8,.0f} recipients/s, "
          f"peak memory {peak:6.1f} MB   ({last})")
    return rate


def mailmerge_rate(root: Path, port: int, n: int) -> float:
    from newsletter import build
    from newsletter import config as cfg

    folder = root / "mailmerge"
    folder.mkdir()
    config = cfg.load(REPO / "newsletter.toml", environ={})
    rendered = build.render(config, "the-quota-is-not-the-goal")
    to_jinja = {"[[nl:name]]": "{{name}}", "[[nl:email]]": "{{email}}",
                "[[nl:unsubscribe_url]]": "https://letter.example.com/unsubscribe/{{email}}",
                "[[nl:web_url]]": rendered.web_url}
    html, text = rendered.html, rendered.text
    for marker, value in to_jinja.items():
        html, text = html.replace(marker, value), text.replace(marker, value)
    html = html.replace("{%", "{ %").replace("{#", "{ #")
    template = (
        "TO: {{name}} <{{email}}>\nFROM: Martin Hale <martin@letter.example.com>\n"
        f"SUBJECT: {rendered.subject}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="outer"\n\n'
        "--outer\nContent-Type: text/plain; charset=utf-8\n\n" + text +
        "\n--outer\nContent-Type: text/html; charset=utf-8\n\n" + html + "\n--outer--\n"
    )
    (folder / "mailmerge_template.txt").write_text(template)
    rows = "".join(f"reader{i:07d}@example.com,Reader {i}\n" for i in range(n))
    (folder / "mailmerge_database.csv").write_text("email,name\n" + rows)
    (folder / "mailmerge_server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {port}\nratelimit = 0\n"
    )
    start = time.perf_counter()
    subprocess.run([str(BIN / "mailmerge"), "--no-dry-run", "--no-limit", "--output-format", "raw"],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    rate = n / seconds
    print(f"{'mailmerge (SMTP)':<22} {n:>9,} recipients in {seconds:7.1f} s = {rate:>8,.0f} recipients/s")
    return rate


# name -> (fake server module, its [provider] settings, the .env lines it needs)
HTTP_SERVICES = {
    "postmark": ("tests.fakes.postmark", 'name = "postmark"\n', "POSTMARK_SERVER_TOKEN=postmark-test-token\n"),
    "sendgrid": ("tests.fakes.sendgrid", 'name = "sendgrid"\n', "SENDGRID_API_KEY=SG.test-key.for-the-local-server\n"),
    "mailgun": ("tests.fakes.mailgun", 'name = "mailgun"\ndomain = "mg.example.com"\n',
                "MAILGUN_API_KEY=key-mailgun-test-0123456789\n"),
    "resend": ("tests.fakes.resend", 'name = "resend"\n', "RESEND_API_KEY=re_test_full_access_key\n"),
    "ses": ("tests.fakes.ses", 'name = "ses"\nregion = "eu-west-1"\n',
            "AWS_ACCESS_KEY_ID=AKIDNEWSLETTERTEST01\nAWS_SECRET_ACCESS_KEY=test/Secret+Key/For/The/Local/SES/0123\n"
            "AWS_REGION=eu-west-1\n"),
}


def stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/_stats") as answer:
        return json.load(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="100000",
                        help="list sizes for the HTTP services and the outbox, comma-separated "
                        "(100000,1000000 shows whether memory stays flat)")
    parser.add_argument("--smtp-subscribers", type=int, default=20_000,
                        help="list size for the SMTP runs (1, 4 and 8 connections)")
    parser.add_argument("--providers", default="outbox,postmark,sendgrid,mailgun,smtp",
                        help="any of outbox, postmark, sendgrid, mailgun, resend, ses, smtp (resend and ses are "
                        "paced at the services' rate limits: use small --subscribers)")
    parser.add_argument("--compare", type=int, default=2000, help="recipients for the mailmerge comparison")
    parser.add_argument("--skip-mailmerge", action="store_true")
    args = parser.parse_args()
    sizes = [int(n) for n in args.subscribers.replace("_", "").split(",") if n]
    providers = [p for p in args.providers.split(",") if p]
    unknown = set(providers) - set(HTTP_SERVICES) - {"smtp", "outbox"}
    if unknown:
        raise SystemExit(f"unknown provider(s): {', '.join(sorted(unknown))}")
    print(f"cores: {os.cpu_count()}, load average at start: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))

    servers: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        smtp, port, sink_name = start_smtp_sink()
        servers.append(smtp)
        print(f"SMTP sink: {sink_name}")
        from newsletter import build
        from newsletter import config as cfg

        rendered = build.render(cfg.load(REPO / "newsletter.toml", environ={}), "the-quota-is-not-the-goal")
        issue_bytes = len(rendered.html.encode()) + len(rendered.text.encode())
        running: dict[str, str] = {}  # provider -> its local server's URL
        for n in sizes:
            base = make_database(tmp / f"list-{n}", n)
            for name in providers:
                if name == "smtp":
                    continue
                if name == "outbox":
                    send(tmp, "outbox", 'name = "outbox"\n', base, n)
                    files = tmp / "outbox" / "outbox"
                    written = sum(len(os.listdir(d)) for d in files.iterdir())
                    size = sum(e.stat().st_size for d in files.iterdir() for e in os.scandir(d))
                    print(f"  {written:,} .eml files, {size / written:,.0f} bytes each")
                    shutil.rmtree(tmp / "outbox")  # a million files take room: gone before the next
                    (tmp / "outbox").mkdir()
                    print(f"  the file system alone: {files_per_second(tmp / 'outbox', size // written):,.0f} "
                          "files/s of that size, written the same way (one process, temporary name, rename)")
                    continue
                module, settings, secrets = HTTP_SERVICES[name]
                if name not in running:
                    server, running[name] = start_server(module)
                    servers.append(server)
                url = running[name]
                before = stats(url)
                send(tmp, name, settings + f'base_url = "{url}"\n', base, n, secrets)
                counted = stats(url)
                line = (f"  {(counted['bytes'] - before['bytes']) / n:,.0f} bytes sent per recipient "
                        f"(the issue is {issue_bytes:,} bytes of HTML and text)")
                if "accepted" in counted:
                    line += f"; the server accepted {counted['accepted'] - before['accepted']:,} messages"
                print(line)
                shutil.rmtree(tmp / name)
            base.unlink()

        # On loopback the sink answers in microseconds: one connection often beats several
        # contending for the interpreter lock. Across a network, raise concurrency.
        def smtp_settings(connections: int) -> str:
            return (f'name = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
                    f"concurrency = {connections}\n")

        if "smtp" in providers:
            base = make_database(tmp / "list-smtp", args.smtp_subscribers)
            for connections in (1, 4, 8):
                with SinkCpu(smtp.pid):
                    send(tmp, f"smtp, {connections} connection{'s' if connections > 1 else ''}",
                         smtp_settings(connections), base, args.smtp_subscribers)
        if not args.skip_mailmerge:
            small = make_database(tmp / "small", args.compare)
            with SinkCpu(smtp.pid):
                cold = send(tmp, f"smtp (first {args.compare:,})", smtp_settings(1), small, args.compare)
            with SinkCpu(smtp.pid):
                warm = send(tmp, "smtp, after --dry-run", smtp_settings(1), small, args.compare,
                            dry_run_first=True)
            with SinkCpu(smtp.pid):
                theirs = mailmerge_rate(tmp, int(port), args.compare)
            print(f"SMTP, the same {args.compare:,} readers, one connection each, whole processes: "
                  f"this project / mailmerge = {cold / theirs:.1f}x for a first send in a fresh folder, "
                  f"{warm / theirs:.1f}x after `send --dry-run` (the inlined email cached); mailmerge is "
                  "given the finished HTML, this project renders the issue from its Markdown in both")
    finally:
        for proc in servers:
            proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
