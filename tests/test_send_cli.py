"""`newsletter send`, `status` and `cancel` as a user runs them, including crashes: the sending
process is killed (SIGKILL) or interrupted (SIGINT) at chosen points and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import BASIC_TOML
from .fakes.postmark import TOKEN, FakePostmark
from .fakes.smtp import start_sink

SECRET = "send-cli-secret"
EXE = str(Path(sys.executable).with_name("newsletter"))


@pytest.fixture
def fake():
    with FakePostmark() as service:
        yield service


def make_letter(root: Path, provider: str, readers: int, db_url: str | None = None) -> None:
    (root / "newsletter.toml").write_text(BASIC_TOML + "\n[provider]\n" + provider)
    (root / ".env").write_text(f"NEWSLETTER_SECRET={SECRET}\nPOSTMARK_SERVER_TOKEN={TOKEN}\n")
    issue = root / "issues" / "2026-12-01-crash"
    issue.mkdir(parents=True)
    (issue / "issue.md").write_text("---\nsubject: Crash test\npreheader: P\n---\n")
    (issue / "01-a.md").write_text("---\ntitle: A\n---\nSell well.\n")
    rows = "\n".join(f"r{i:03d}@example.com,Reader {i}" for i in range(readers))
    (root / "readers.csv").write_text("email,name\n" + rows + "\n")
    assert newsletter(root, "subscribers", "import", "readers.csv", db_url=db_url).returncode == 0


def env_for(root: Path, db_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "POSTMARK_"))}
    env["NEWSLETTER_DATABASE_URL"] = db_url or f"sqlite:///{root / 'newsletter.db'}"
    return env


def newsletter(root: Path, *args: str, timeout: float = 60, db_url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=root, env=env_for(root, db_url), capture_output=True, text=True,
                          timeout=timeout)


def start(root: Path, *args: str, db_url: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], cwd=root, env=env_for(root, db_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def delivered(fake) -> Counter:
    return Counter(m["To"].rsplit("<", 1)[-1].rstrip(">") for m in fake.messages)


def everyone(n: int) -> set[str]:
    return {f"r{i:03d}@example.com" for i in range(n)}


def postmark(fake, batch=3) -> str:
    return f'name = "postmark"\nbase_url = "{fake.url}"\nbatch_size = {batch}\nconcurrency = 1\ntimeout = 60\n'


# -- plain use -------------------------------------------------------------------------------


def test_dry_run_sends_nothing(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 7)
    result = newsletter(tmp_path, "send", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Would send 'Crash test' to 7 subscribers of main via postmark, in 3 batches of up to 3." in result.stdout
    assert "r000@example.com" in result.stdout and "Nothing sent" in result.stdout
    assert fake.messages == []


def test_test_send_goes_to_named_addresses_only(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 7)
    result = newsletter(tmp_path, "send", "--test-to", "me@example.org", "--test-to", "you@example.org")
    assert result.returncode == 0, result.stderr
    assert set(delivered(fake)) == {"me@example.org", "you@example.org"}
    assert fake.messages[0]["Subject"] == "[Test] Crash test"
    assert "no campaigns" in newsletter(tmp_path, "status").stdout


def test_send_asks_first_and_refuses_a_second_campaign(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 4)
    declined = subprocess.run([EXE, "send"], cwd=tmp_path, env=env_for(tmp_path), input="n\n",
                              capture_output=True, text=True, timeout=60)
    assert "Send 'Crash test' to 4 subscribers of main via postmark? [y/N]" in declined.stdout
    assert declined.returncode == 1 and fake.messages == []
    result = newsletter(tmp_path, "send", "--yes")
    assert result.returncode == 0, result.stderr
    assert "done: 'Crash test' to main via postmark: 4 sent" in result.stdout
    again = newsletter(tmp_path, "send", "--yes")
    assert again.returncode == 1
    assert "already has a campaign for list main (finished: 4 sent); it will not be sent again" in again.stderr
    assert len(fake.messages) == 4
    status = newsletter(tmp_path, "status", "2026-12-01-crash").stdout
    assert "2026-12-01-crash → main via postmark: finished" in status and "4 sent of 4" in status


def test_failed_checks_stop_the_send(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 2)
    post = tmp_path / "issues" / "2026-12-01-crash" / "01-a.md"
    post.write_text(post.read_text() + "\n![](missing.png)\n")
    result = newsletter(tmp_path, "send", "--yes")
    assert result.returncode == 1
    assert result.stderr.startswith("error: 2026-12-01-crash fails its pre-flight checks")
    assert fake.messages == []


def test_cancel_then_nothing_more_is_sent(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 4)
    fake.faults = [None, 401]
    first = newsletter(tmp_path, "send", "--yes")
    assert first.returncode == 1 and "campaign stopped after 3 of 4" in first.stderr
    assert "POSTMARK_SERVER_TOKEN" in first.stderr and "--resume" in first.stderr
    declined = subprocess.run([EXE, "cancel", "2026-12-01-crash"], cwd=tmp_path, env=env_for(tmp_path),
                              input="n\n", capture_output=True, text=True, timeout=60)
    assert "Cancel 2026-12-01-crash → main? 1 recipient will not get it [y/N]" in declined.stdout
    result = newsletter(tmp_path, "cancel", "2026-12-01-crash", "--yes")
    assert result.returncode == 0 and "3 had it, 1 will not" in result.stdout
    again = newsletter(tmp_path, "send", "--resume", "--yes")
    assert again.returncode == 1 and "cancelled" in again.stderr
    assert len(fake.messages) == 3


def test_progress_is_a_line_per_batch_without_a_terminal(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 6)
    result = newsletter(tmp_path, "send", "--yes")
    assert "6/6 done · 6 sent · 0 failed" in result.stderr


# -- in-process, through the outbox ----------------------------------------------------------


@pytest.fixture
def one_reader(letter, write, monkeypatch, cli):
    """The letter with the outbox, a secret, one issue and a single reader."""
    write("newsletter.toml", BASIC_TOML + '\n[provider]\nname = "outbox"\n')
    write(".env", f"NEWSLETTER_SECRET={SECRET}\n")
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", f"sqlite:///{letter / 'newsletter.db'}")
    write("issues/2026-12-01-solo/issue.md", "---\nsubject: Solo\npreheader: P\n---\n")
    write("issues/2026-12-01-solo/01-a.md", "---\ntitle: A\n---\nSell well.\n")
    assert cli("subscribers", "add", "ann@example.com", "--confirmed").exit_code == 0
    return letter


def test_every_proof_to_the_same_address_is_kept(one_reader, cli):
    first = cli("send", "--test-to", "me@example.org")
    second = cli("send", "--test-to", "me@example.org", "--test-to", "me@example.org")
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    proofs = sorted((one_reader / "outbox" / "test").glob("*.eml"))
    assert len(proofs) == 3
    assert all(p.name.endswith("-me@example.org.eml") for p in proofs)
    for proof in proofs:  # each line names its own file
        assert f"({proof.name})" in first.stdout + second.stdout
    assert all(b"Subject: [Test] Solo" in p.read_bytes() for p in proofs)


def test_counts_of_one_are_singular(one_reader, cli):
    dry = cli("send", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Would send 'Solo' to 1 subscriber of main via outbox, in 1 batch of up to 200." in dry.stdout
    declined = cli("send", input="n\n")
    assert "Send 'Solo' to 1 subscriber of main via outbox? [y/N]" in declined.stdout
    sent = cli("send", "--yes")
    assert sent.exit_code == 0, sent.output
    assert "campaign started: 1 recipient frozen" in sent.stderr


# -- crashes and interruptions ---------------------------------------------------------------


def test_killed_while_a_batch_was_accepted_but_unanswered(tmp_path, fake):
    """SIGKILL after the service accepted batch 3 but before the answer came back: those
    three are reported unknown and not resent; everyone else gets the issue exactly once."""
    make_letter(tmp_path, postmark(fake), 15)
    fake.faults = [None, None, ("delay", 30)]
    proc = start(tmp_path, "send", "--yes")
    wait_for(lambda: fake.batches == 3)
    proc.kill()
    proc.wait()
    fake.faults = []
    resumed = newsletter(tmp_path, "send", "--resume", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "3 recipients with an unknown outcome (a call died after it left)" in resumed.stdout
    assert delivered(fake) == Counter({a: 1 for a in everyone(15)})
    status = newsletter(tmp_path, "status", "2026-12-01-crash").stdout
    assert "12 sent, 3 unknown of 15" in status
    assert "r006@example.com" in status.split("unknown outcome:")[1]


def test_killed_while_a_batch_hung_then_resend_unknown(tmp_path, fake):
    """SIGKILL while the service had not taken batch 2: unknown after the resume, and
    --resend-unknown delivers to them once."""
    make_letter(tmp_path, postmark(fake), 9)
    fake.hang_seconds = 30
    fake.faults = [None, "hang"]
    proc = start(tmp_path, "send", "--yes")
    wait_for(lambda: len([r for r in fake.requests if r.path == "/email/batch"]) == 2)
    proc.kill()
    proc.wait()
    fake.faults = []
    resumed = newsletter(tmp_path, "send", "--resume", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert set(delivered(fake)) == everyone(9) - {"r003@example.com", "r004@example.com", "r005@example.com"}
    again = newsletter(tmp_path, "send", "--resume", "--resend-unknown", "--yes")
    assert again.returncode == 0, again.stderr
    assert delivered(fake) == Counter({a: 1 for a in everyone(9)})


def test_killed_at_several_points_everyone_gets_it_at_most_once(tmp_path, fake):
    """Kill, resume, kill again, resume: nobody gets two copies, nobody is skipped silently."""
    make_letter(tmp_path, postmark(fake, batch=2), 20)
    fake.faults = [None, ("delay", 30)]
    proc = start(tmp_path, "send", "--yes")
    wait_for(lambda: fake.batches == 2)
    proc.kill()
    proc.wait()
    fake.faults = [None, None, ("delay", 30)]
    proc = start(tmp_path, "send", "--resume", "--yes")
    wait_for(lambda: fake.batches == 5)
    proc.kill()
    proc.wait()
    fake.faults = []
    final = newsletter(tmp_path, "send", "--resume", "--yes")
    assert final.returncode == 0, final.stderr
    counts = delivered(fake)
    assert set(counts) == everyone(20) and max(counts.values()) == 1
    assert "16 sent, 4 unknown of 20" in newsletter(tmp_path, "status", "2026-12-01-crash").stdout


def test_ctrl_c_finishes_the_batch_in_flight_and_says_how_to_resume(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 12)
    fake.faults = [None, ("delay", 1.5)]
    proc = start(tmp_path, "send", "--yes")
    wait_for(lambda: fake.batches == 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "campaign stopped after 6 of 12 (interrupted); run `newsletter send 2026-12-01-crash --resume`" in err
    resumed = newsletter(tmp_path, "send", "--resume", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "unknown" not in resumed.stdout
    assert delivered(fake) == Counter({a: 1 for a in everyone(12)})


@pytest.mark.parametrize("pipelining", [False, True])
def test_smtp_killed_mid_message(tmp_path, pipelining):
    """SMTP: SIGKILL while the server holds one message's DATA. The journal knows the batch
    was in flight, so its five recipients are reported unknown (four went out before, one
    was in DATA); the resume sends the rest, and nobody gets two copies. With PIPELINING the
    next message's envelope is already on the server when the sender dies."""
    import asyncio

    controller, sink = start_sink()
    sink.pipelining = pipelining
    slow = "r004@example.com"
    original = sink.handle_DATA

    async def handle_data(server, session, envelope):
        reply = await original(server, session, envelope)
        if slow in envelope.rcpt_tos and not getattr(sink, "slowed", False):
            sink.slowed = True
            await asyncio.sleep(30)
        return reply

    sink.handle_DATA = handle_data
    try:
        make_letter(tmp_path, f'name = "smtp"\nhost = "127.0.0.1"\nport = {controller.port}\nsecurity = "none"\nconcurrency = 1\ntimeout = 60\nbatch_size = 5\n', 10)
        proc = start(tmp_path, "send", "--yes")
        wait_for(lambda: any(slow in m[1] for m in sink.messages))
        proc.kill()
        proc.wait()
        resumed = newsletter(tmp_path, "send", "--resume", "--yes")
        assert resumed.returncode == 0, resumed.stderr
        got = Counter(m[1][0] for m in sink.messages)
        assert set(got) == everyone(10) and max(got.values()) == 1
        status = newsletter(tmp_path, "status", "2026-12-01-crash").stdout
        assert "5 sent, 5 unknown of 10" in status
    finally:
        controller.stop()


def test_changed_files_stop_a_resume_until_rerender(tmp_path, fake):
    make_letter(tmp_path, postmark(fake), 6)
    fake.faults = [None, 401]  # stops after the first batch
    assert newsletter(tmp_path, "send", "--yes").returncode == 1
    post = tmp_path / "issues" / "2026-12-01-crash" / "01-a.md"
    post.write_text(post.read_text() + "\nA late addition.\n")
    refused = newsletter(tmp_path, "send", "--resume", "--yes")
    assert refused.returncode == 1
    assert "issues/2026-12-01-crash/01-a.md" in refused.stderr and "--rerender" in refused.stderr
    assert len(fake.messages) == 3
    resumed = newsletter(tmp_path, "send", "--resume", "--rerender", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert delivered(fake) == Counter({a: 1 for a in everyone(6)})
    assert sum("A late addition." in m["TextBody"] for m in fake.messages) == 3
