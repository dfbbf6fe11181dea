"""`newsletter serve` as a real server process on 127.0.0.1 (waitress), spoken to with plain
HTTP clients: the one-click unsubscribe exactly as a mailbox provider sends it, a sign-up
and its confirmation, a signed webhook, the body cap, and a clean stop on SIGTERM."""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .fakes.webhooks import MailgunSigner
from .webutil import ISSUE, confirm_path, outbox, unsubscribe_path, write_letter

EXE = str(Path(sys.executable).with_name("newsletter"))
SIGNER = MailgunSigner()


def env_for(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "MAILGUN_"))}
    env["NEWSLETTER_DATABASE_URL"] = f"sqlite:///{root / 'newsletter.db'}"
    return env


def newsletter(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=root, env=env_for(root), capture_output=True, text=True, timeout=60)


def start_server(root: Path, *args: str, db_url: str | None = None) -> tuple[subprocess.Popen, str]:
    """`newsletter serve` on a free port, on the folder's SQLite file or ``db_url``."""
    env = env_for(root)
    if db_url:
        env["NEWSLETTER_DATABASE_URL"] = db_url
    process = subprocess.Popen([EXE, "serve", "--port", "0", *args], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    found = re.search(r" at (http://127\.0\.0\.1:\d+)/", line)
    if not found:
        process.kill()
        pytest.fail(f"the server did not start: {line}{process.stderr.read()}")
    return process, found[1]


def stop_server(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return process.returncode, out


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[Path, str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("served")
    write_letter(root, web="max_body_bytes = 4096\n", env=f"MAILGUN_WEBHOOK_SIGNING_KEY={SIGNER.key}\n")
    (root / "readers.csv").write_text("email,name\nann@example.com,Ann\nbob@example.com,Bob\ncat@example.com,Cat\n")
    assert newsletter(root, "subscribers", "import", "readers.csv").returncode == 0
    sent = newsletter(root, "send", ISSUE, "--yes")
    assert sent.returncode == 0, sent.stderr
    [label] = [p.name for p in (root / "outbox").iterdir()]
    messages = {m["To"].addresses[0].addr_spec: m for m in outbox(root, label)}
    process, base = start_server(root)
    yield root, base, {a: unsubscribe_path(m) for a, m in messages.items()}
    stop_server(process)


def request(base: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def status_of(root: Path, address: str) -> str:
    """The address's row of `subscribers list --format csv`, its cells joined by commas."""
    listed = newsletter(root, "subscribers", "list", "--format", "csv")
    for row in csv.reader(io.StringIO(listed.stdout)):
        if row and row[0] == address:
            return ",".join(row)
    return ""


def test_health_and_headers(server):
    root, base, _ = server
    status, headers, body = request(base, "GET", "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    for name in ("x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy"):
        assert name in headers
    assert headers["server"] == "newsletter"


def test_one_click_unsubscribe_exactly_as_a_mailbox_provider_sends_it(server):
    root, base, links = server
    path = links["ann@example.com"]
    # Link scanners fetch the URL first; that must change nothing.
    status, headers, page = request(base, "GET", path, headers={"User-Agent": "LinkScanner/1.0"})
    assert status == 200 and b"<button" in page
    assert ",active," in status_of(root, "ann@example.com")

    # RFC 8058: POST, form-encoded body List-Unsubscribe=One-Click, no cookies, no referrer.
    body = b"List-Unsubscribe=One-Click"
    status, headers, page = request(base, "POST", path, body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(len(body)),
        "User-Agent": "GoogleOneClick/1.0",
    })
    assert status == 200 and b"You are unsubscribed" in page
    assert "set-cookie" not in headers
    assert ",unsubscribed," in status_of(root, "ann@example.com")
    assert ",active," in status_of(root, "bob@example.com")

    again = request(base, "POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert again[0] == 200


def test_sign_up_and_confirm_through_the_server(server):
    root, base, _ = server
    body = b"email=new.reader%40example.com&name=New&list=main&website="
    status, _, page = request(base, "POST", "/subscribe", body=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and b"Check your inbox" in page
    deadline = time.monotonic() + 15
    while not outbox(root, "confirm") and time.monotonic() < deadline:
        time.sleep(0.05)
    [mail] = outbox(root, "confirm")
    assert ",pending," in status_of(root, "new.reader@example.com")
    path = confirm_path(mail)
    # Mail scanners open every link in a new message: neither HEAD nor GET may confirm.
    assert request(base, "HEAD", path, headers={"User-Agent": "SafeLinks/1.0"})[0] == 200
    status, _, page = request(base, "GET", path, headers={"User-Agent": "SafeLinks/1.0"})
    assert status == 200 and b"<button" in page and b'method="post"' in page
    assert ",pending," in status_of(root, "new.reader@example.com")
    status, _, page = request(base, "POST", path, body=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and b"You are subscribed" in page
    assert ",active," in status_of(root, "new.reader@example.com")
    status, _, page = request(base, "POST", path, body=b"")
    assert status == 200 and b"This link has been used" in page


def test_head_on_an_unsubscribe_link_changes_nothing(server):
    root, base, links = server
    path = links["bob@example.com"]
    for _ in range(2):  # what `curl -I` and link scanners send
        status, headers, body = request(base, "HEAD", path, headers={"User-Agent": "LinkScanner/1.0"})
        assert status == 200 and body == b""
    assert ",active," in status_of(root, "bob@example.com")


def test_the_host_header_is_never_reflected(server):
    root, base, _ = server
    for host in ("evil.example", "evil.example:8080", "127.0.0.1"):
        status, headers, _ = request(base, "GET", "/archive", headers={"Host": host})
        assert status in (301, 308) and headers["location"] == "https://letter.example.com/archive/", host
        status, headers, _ = request(base, "GET", "/", headers={"Host": host})
        assert status == 302 and headers["location"] == "https://letter.example.com/archive/", host


def test_a_signed_webhook_through_the_server(server):
    root, base, _ = server
    event = {"event": "failed", "severity": "permanent", "id": "srv-1", "timestamp": time.time(),
             "recipient": "cat@example.com", "message": {"headers": {"message-id": "x@example.com"}}}
    body = SIGNER.body(event)
    status, _, answer = request(base, "POST", "/webhooks/mailgun", body=body,
                                headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer)["new"] == 1
    assert ",bounced," in status_of(root, "cat@example.com")
    forged = body.replace(b"cat@example.com", b"bob@example.com").replace(b'"srv-1"', b'"srv-2"')
    forged = re.sub(rb'"signature": "[0-9a-f]+"', b'"signature": "' + b"0" * 64 + b'"', forged)
    assert request(base, "POST", "/webhooks/mailgun", body=forged,
                   headers={"Content-Type": "application/json"})[0] == 401
    assert ",active," in status_of(root, "bob@example.com")


def test_bodies_over_the_cap_are_refused(server):
    root, base, _ = server
    body = b"email=big%40example.com&name=" + b"x" * 8000
    status, headers, _ = request(base, "POST", "/subscribe", body=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 413
    assert status_of(root, "big@example.com") == ""


def test_sigterm_stops_the_server_cleanly(tmp_path):
    write_letter(tmp_path)
    process, base = start_server(tmp_path)
    assert request(base, "GET", "/healthz")[0] == 200
    code, out = stop_server(process)
    assert code == 0 and "stopped" in out


def test_a_busy_port_is_a_clear_error(tmp_path):
    write_letter(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = newsletter(tmp_path, "serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("trusted", [False, True])
def test_client_addresses_come_from_the_trusted_proxy_only(tmp_path, trusted):
    web = "ip_signups_per_hour = 1\n" + ('trusted_proxy = "127.0.0.1"\n' if trusted else "")
    write_letter(tmp_path, web=web)
    process, base = start_server(tmp_path)
    try:
        answers = []
        for n, client in enumerate(("198.51.100.1", "198.51.100.2")):
            body = f"email=r{n}%40example.com".encode()
            status, headers, _ = request(base, "POST", "/subscribe", body=body, headers={
                "Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": client,
                "X-Forwarded-Proto": "https", "X-Forwarded-Host": "letter.example.com",
            })
            answers.append(status)
        hsts = "strict-transport-security" in headers
    finally:
        stop_server(process)
    # Behind the configured proxy each reader has their own limit, and HTTPS is known;
    # without one, a forged X-Forwarded-For buys nothing.
    assert answers == ([200, 200] if trusted else [200, 429])
    assert hsts is trusted


# ---------------------------------------------------------------------------------------------
# Slow clients (127.0.0.1 only, bounded in count and time)

TRICKLE_EVERY = 2.0  # seconds between the bytes a slow client sends


class SlowClients:
    """``count`` connections that each start a request and then send one byte of it every
    TRICKLE_EVERY seconds: half never finish their headers, half never finish their body."""

    def __init__(self, base: str, count: int) -> None:
        parts = urlsplit(base)
        self.sockets: list[socket.socket] = []
        self.opened: list[float] = []
        self.closed: dict[int, float] = {}
        self.answers: dict[int, bytes] = {}
        for n in range(count):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            if n % 2:
                start = b"GET /archive/ HTTP/1.1\r\nHost: letter.example.com\r\nX-Slow: "
            else:
                start = (b"POST /subscribe HTTP/1.1\r\nHost: letter.example.com\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\nname=")
            sock.sendall(start)
            sock.setblocking(False)
            self.sockets.append(sock)
            self.opened.append(time.monotonic())

    def open(self) -> list[int]:
        return [n for n in range(len(self.sockets)) if n not in self.closed]

    def check(self) -> None:
        """Note the connections the server has closed, and what it said before."""
        for n in self.open():
            try:
                data = self.sockets[n].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                self.answers[n] = self.answers.get(n, b"") + data
            else:
                self.closed[n] = time.monotonic()

    def trickle(self) -> None:
        self.check()
        for n in self.open():
            try:
                self.sockets[n].send(b"x")
            except OSError:
                self.closed[n] = time.monotonic()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def timed_health(base: str) -> float:
    started = time.monotonic()
    status, _, body = request(base, "GET", "/healthz", timeout=2.0)
    assert status == 200 and json.loads(body) == {"status": "ok"}
    return time.monotonic() - started


def test_slow_clients_cannot_take_the_site_down(tmp_path):
    cap = 4
    write_letter(tmp_path)
    process, base = start_server(tmp_path, "--request-timeout", str(cap))
    slow = SlowClients(base, 120)  # more than waitress's default connection limit of 100
    try:
        started = time.monotonic()
        waits = []
        for _ in range(2):  # while every slow client is still connected and sending
            slow.trickle()
            waits.append(timed_health(base))
            time.sleep(max(0.0, started + TRICKLE_EVERY * len(waits) - time.monotonic()))
        assert len(slow.open()) == 120  # still within the cap
        while slow.open() and time.monotonic() < started + cap + 4:
            slow.trickle()
            time.sleep(0.2)
        waits.append(timed_health(base))
    finally:
        slow.close()
        stop_server(process)
    assert max(waits) < 2.0, waits
    assert not slow.open(), f"{len(slow.open())} slow clients still connected after {cap + 4} s"
    lived = [slow.closed[n] - slow.opened[n] for n in range(120)]
    assert min(lived) > cap - 1 and max(lived) < cap + 3, (min(lived), max(lived))
    assert all(slow.answers.get(n, b"").startswith(b"HTTP/1.1 408 ") for n in range(120))


def test_at_the_connection_limit_the_slowest_connections_make_room(tmp_path):
    write_letter(tmp_path)
    process, base = start_server(tmp_path, "--connection-limit", "50", "--request-timeout", "60")
    slow = SlowClients(base, 60)
    try:
        wait = timed_health(base)
        time.sleep(0.5)
        slow.check()
    finally:
        slow.close()
        stop_server(process)
    assert wait < 2.0
    # The longest waiting went first; the newest are still being heard.
    assert len(slow.closed) >= 10 and max(slow.closed) < 30, sorted(slow.closed)


def test_the_serve_defaults_are_the_servers():
    from newsletter.cli import web
    from newsletter.web import serving

    assert (web.REQUEST_TIMEOUT, web.CONNECTION_LIMIT) == (serving.REQUEST_TIMEOUT, serving.CONNECTION_LIMIT)


def _mail_process(pid: int) -> int:
    """The server's child that sends confirmation emails (multiprocessing's spawn worker;
    the other child is multiprocessing's resource tracker)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
    (mailer,) = found
    return mailer


def _sign_up_many(base: str, count: int) -> None:
    for i in range(count):
        body = f"email=queued{i}%40example.org".encode()
        status, _, _ = request(base, "POST", "/subscribe", body,
                               {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_confirmations_go_out_from_a_process_of_their_own_and_sigterm_sends_the_queue(tmp_path):
    write_letter(tmp_path, web="ip_signups_per_hour = 1000\n")
    process, base = start_server(tmp_path)
    mailer = _mail_process(process.pid)
    _sign_up_many(base, 40)
    code, out = stop_server(process)  # SIGTERM right after the last answer
    assert code == 0 and "stopped" in out
    assert len(outbox(tmp_path, "confirm")) == 40, "every queued email went out before the stop"
    assert not _running(mailer)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_the_mail_process_does_not_outlive_a_killed_server(tmp_path):
    write_letter(tmp_path)
    process, base = start_server(tmp_path)
    mailer = _mail_process(process.pid)
    process.kill()
    process.communicate(timeout=15)
    deadline = time.monotonic() + 10
    while _running(mailer) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(mailer), "the confirmation sender noticed its server was gone and stopped"


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
