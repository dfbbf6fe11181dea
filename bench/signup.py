"""Latency of the public site under load: a real `newsletter serve` process on SQLite with the
outbox provider, and an open-loop load generator sending requests at a fixed rate (each on
its schedule, whether or not the earlier ones have been answered), bounded to RATE x SECONDS
requests. Prints p50, p99 and the slowest answer for /healthz, /archive/ and POST
/subscribe, and how many confirmation emails the outbox holds when the load stops and a
moment later (they go out from a background thread, never inside the request)."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
RATE = 100  # requests per second
SECONDS = 10
CLIENTS = 32  # connections the generator may have open at once


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    proc = subprocess.Popen([sys.executable, "-m", "newsletter", "serve", "--port", str(port)],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("newsletter serve did not start")


def load(base: str, method: str, path: str, rate: int, seconds: int) -> list[float]:
    """Latencies in ms of rate x seconds requests, each sent at its scheduled moment."""
    local = threading.local()
    start = time.perf_counter() + 0.2
    count = rate * seconds

    def one(i: int) -> float:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sent = time.perf_counter()
        if method == "POST":
            answer = session.post(base + path, data={"email": f"reader{i}.{os.getpid()}@example.org"},
                                  timeout=30)
        else:
            answer = session.get(base + path, timeout=30)
        if answer.status_code >= 400:
            raise SystemExit(f"{method} {path} answered {answer.status_code}")
        return (time.perf_counter() - sent) * 1000

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, range(count)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def outbox_count(root: Path) -> int:
    return sum(1 for _ in (root / "outbox").rglob("*.eml")) if (root / "outbox").exists() else 0


def main() -> None:
    print(f"cores: {os.cpu_count()}, load average at start: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        toml = (REPO / "newsletter.toml").read_text(encoding="utf-8")
        toml += "\n[web]\nip_signups_per_hour = 1000000\n"
        (root / "newsletter.toml").write_text(toml, encoding="utf-8")
        shutil.copytree(REPO / "issues", root / "issues")
        (root / ".env").write_text("NEWSLETTER_SECRET=" + "c" * 43 + "\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        subprocess.run([sys.executable, "-m", "newsletter", "subscribers", "import",
                        str(REPO / "samples" / "readers.csv")], cwd=root, env=env, check=True,
                       capture_output=True)
        port = free_port()
        server = start_server(root, port)
        base = f"http://127.0.0.1:{port}"
        try:
            for method, path in (("GET", "/healthz"), ("GET", "/archive/"), ("POST", "/subscribe")):
                times = load(base, method, path, RATE, SECONDS)
                print(f"{method:<4} {path:<11} {len(times):,} requests at {RATE}/s: "
                      f"p50 {statistics.median(times):5.1f} ms, p99 {pct(times, 0.99):6.1f} ms, "
                      f"slowest {max(times):6.1f} ms")
            sent_now = outbox_count(root)
            time.sleep(3)
            print(f"confirmation emails written: {sent_now:,} when the load stopped, "
                  f"{outbox_count(root):,} three seconds later (of {RATE * SECONDS:,} sign-ups)")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
