"""Exactly once, by construction: the faults that used to send twice or leave a reader
behind, each against a local service that misbehaves on cue, on SQLite and PostgreSQL.

1. a Retry-After longer than a lease: the sender holds no reader while it waits, and a
   second sender that starts meanwhile joins the campaign instead of taking it over;
2. a per-recipient "try later" in the last batch: retried in the same run, never left
   queued in a finished campaign;
3. an answer that may hide an acceptance (a gateway's 502): unknown, never resent;
4. a failure before anything was sent (a login the server refuses): the readers stay
   queued, not unknown.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select, update

from newsletter import campaign as engine
from newsletter.providers import get_provider
from newsletter.store.schema import campaign_workers, deliveries

from . import test_campaign
from .engine_util import FakeClock, add_worker
from .fakes.httpbase import text_reply
from .fakes.smtp import port_of, start_auth_sink
from .test_campaign import delivered, postmark_toml, run
from .test_send_cli import delivered as got
from .test_send_cli import everyone as all_of
from .test_send_cli import make_letter, newsletter, postmark, start, wait_for

# The local SMTP server asks for a login over plain TCP, on 127.0.0.1 only.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

setup = test_campaign.setup  # the fixtures: a letter with readers, and a local Postmark
fake = test_campaign.fake


def statuses(store, campaign_id) -> Counter:
    with store.read() as conn:
        return Counter(conn.execute(
            select(deliveries.c.status).where(deliveries.c.campaign_id == campaign_id)).scalars())


def everyone(n: int) -> Counter:
    return Counter({f"r{i}@example.com": 1 for i in range(n)})


# -- 1. a long Retry-After -------------------------------------------------------------------


def test_waiting_out_a_long_retry_after_holds_no_reader(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=5)
    fake.retry_after = "65"
    fake.faults = [429]
    started = engine.start(store, rendered, "main", "postmark")
    clock = FakeClock()
    seen: list[Counter] = []

    def sleep(seconds):
        seen.append(statuses(store, started.id))
        clock.sleep(seconds)

    result = engine.send_campaign(config, store, started, rendered, sleep=sleep, clock=clock)
    assert result.finished and result.counts["sent"] == 5
    assert sum(clock.sleeps) >= 65.0  # the service's wait, honoured
    assert seen and all(s["sending"] == 0 for s in seen)  # nobody was held while waiting
    assert delivered(fake) == everyone(5)


def test_a_second_sender_that_starts_during_the_wait_joins_and_nobody_gets_two(setup, fake):
    """The first sender sleeps 65 s on a Retry-After (its lease would have run out in 60);
    a second `send --resume` starts then. Both finish; each reader has one copy."""
    config, store, rendered = setup(postmark_toml(fake, batch_size=2, concurrency=2), readers=12)
    fake.retry_after = "65"
    fake.faults = [429, 429]
    started = engine.start(store, rendered, "main", "postmark")
    first_clock, second_clock = FakeClock(), FakeClock()
    start = first_clock.now
    second: list[engine.RunResult] = []

    def first_sleeps(seconds):
        if first_clock.now - start + seconds >= 61 and not second:
            # 61 s into the wait (past a 60 s lease) another process resumes the campaign.
            second.append(engine.send_campaign(
                config, store, engine.find_campaign(store, rendered.slug), rendered,
                get_provider(config), sleep=second_clock.sleep, clock=second_clock))
        first_clock.sleep(seconds)

    first = engine.send_campaign(config, store, started, rendered, sleep=first_sleeps, clock=first_clock)
    assert second and second[0].finished and first.finished
    assert first.counts["sent"] == 12 and first.counts.total == 12
    assert delivered(fake) == everyone(12)
    assert fake.accepted == 12
    with store.read() as conn:
        assert conn.execute(select(campaign_workers.c.id)).all() == []  # both left


def test_two_sender_threads_share_one_campaign(setup, fake):
    """Two senders at once, each with two requests in flight: every reader exactly once."""
    config, store, rendered = setup(postmark_toml(fake, batch_size=3, concurrency=2), readers=60)
    fake.faults = [("delay", 0.05)] * 20
    started = engine.start(store, rendered, "main", "postmark")
    results: list[engine.RunResult] = []

    def one():
        results.append(engine.send_campaign(config, store, started, rendered, get_provider(config)))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and all(r.finished for r in results)
    assert delivered(fake) == everyone(60)
    assert statuses(store, started.id) == Counter({"sent": 60})


# -- 2. a per-recipient "try later" in a late batch --------------------------------------------


def test_a_reader_refused_for_now_in_the_last_batch_is_retried_before_the_campaign_finishes(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2, concurrency=2), readers=5)
    fake.retry_first = {"r4@example.com": 2}  # the last batch, claimed after the queue ran dry
    sleeps: list[float] = []
    result = run(config, store, rendered, sleeps=sleeps)
    assert result.finished and result.counts["sent"] == 5 and result.counts["queued"] == 0
    assert delivered(fake) == everyone(5)
    with store.read() as conn:
        attempts = conn.execute(select(deliveries.c.attempts).where(deliveries.c.id == 5)).scalar_one()
    assert attempts == 3
    assert sleeps  # it waited for the reader's not-before time, holding nothing


def test_a_reader_refused_for_now_too_often_fails_with_the_reason(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=3)
    fake.retry_first = {"r2@example.com": 99}
    result = run(config, store, rendered)
    assert result.finished
    assert (result.counts["sent"], result.counts["failed"], result.counts["queued"]) == (2, 1, 0)
    (reason,) = result.counts.failed_reasons
    assert reason.startswith(f"gave up after {engine.MAX_RECIPIENT_ATTEMPTS} tries: postmark 429")


def test_an_smtp_451_for_one_reader_is_retried_in_the_same_run(setup):
    controller, sink, _ = start_auth_sink("ann", "pässwörd")
    try:
        sink.greylist = {"r1@example.com": 1}
        config, store, rendered = setup(
            f'name = "smtp"\nhost = "127.0.0.1"\nport = {port_of(controller)}\nsecurity = "none"\n'
            'username = "ann"\nbatch_size = 3\n', readers=3, env={"SMTP_PASSWORD": "pässwörd"})
        result = run(config, store, rendered)
        assert result.finished and result.counts["sent"] == 3
        assert sorted(r for _, rcpts, _ in sink.messages for r in rcpts) == [
            "r0@example.com", "r1@example.com", "r2@example.com"]
    finally:
        controller.stop()


# -- 3. an answer that may hide an acceptance ------------------------------------------------


def test_a_gateways_502_after_the_service_took_the_batch_is_unknown_and_not_resent(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=6)
    fake.faults = [None, ("after", text_reply(502, "<html><body><h1>502 Bad Gateway</h1>\n</body></html>"))]
    result = run(config, store, rendered)
    assert result.finished
    assert (result.counts["sent"], result.counts["unknown"]) == (4, 2)
    assert delivered(fake) == everyone(6)  # the two behind the 502 were delivered, once
    assert sorted(engine.unknown_recipients(store, result.campaign.id)) == ["r2@example.com", "r3@example.com"]
    with store.read() as conn:
        reasons = set(conn.execute(select(deliveries.c.reason).where(deliveries.c.status == "unknown")).scalars())
    assert all("\n" not in r and "<html>" not in r for r in reasons)


def test_a_5xx_in_the_services_own_words_is_a_refusal_and_is_retried(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=4)
    fake.faults = [None, 500]  # Postmark's JSON error body: its application refused the batch
    result = run(config, store, rendered)
    assert result.finished and result.counts["sent"] == 4 and result.counts["unknown"] == 0
    assert delivered(fake) == everyone(4)


# -- 4. a failure before anything was sent -----------------------------------------------------


def test_a_non_ascii_smtp_password_logs_in_and_sends(setup):
    controller, sink, _ = start_auth_sink("ann", "pässwörd")
    try:
        config, store, rendered = setup(
            f'name = "smtp"\nhost = "127.0.0.1"\nport = {port_of(controller)}\nsecurity = "none"\n'
            'username = "ann"\n', readers=4, env={"SMTP_PASSWORD": "pässwörd"})
        result = run(config, store, rendered)
        assert result.finished and result.counts["sent"] == 4 and len(sink.messages) == 4
    finally:
        controller.stop()


def test_a_refused_login_leaves_every_reader_queued_and_the_fixed_password_sends_all(setup, configure):
    controller, sink, _ = start_auth_sink("ann", "pässwörd")
    try:
        toml = (f'name = "smtp"\nhost = "127.0.0.1"\nport = {port_of(controller)}\nsecurity = "none"\n'
                'username = "ann"\nconcurrency = 2\nbatch_size = 5\n')
        config, store, rendered = setup(toml, readers=12, env={"SMTP_PASSWORD": "passwörd"})
        result = run(config, store, rendered)
        assert not result.finished and "SMTP_PASSWORD" in result.stopped_reason
        assert "passwörd" not in result.stopped_reason
        assert (result.counts["queued"], result.counts["unknown"], result.counts["sent"]) == (12, 0, 0)
        assert sink.messages == []
        fixed = configure(toml, env={"NEWSLETTER_SECRET": "campaign-test-secret",
                                     "NEWSLETTER_DATABASE_URL": store.url, "SMTP_PASSWORD": "pässwörd"})
        result = run(fixed, store, rendered)
        assert result.finished and (result.counts["sent"], result.counts["unknown"]) == (12, 0)
        assert len(sink.messages) == 12
    finally:
        controller.stop()


# -- fencing ---------------------------------------------------------------------------------


def test_a_sender_that_lost_its_claim_cannot_overwrite_the_new_owner(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=2)
    started = engine.start(store, rendered, "main", "postmark")
    sender = engine.Sender(config, store, started, rendered, get_provider(config))
    sender._join()
    sender.progress = engine.Progress(total=2, done=0)
    claimed = sender._claim()
    assert [e.key for e in claimed.envelopes] == [1, 2]
    # Taken for dead meanwhile; another sender re-claimed the rows under its own claim.
    other = add_worker(store, started.id, "elsewhere.example", 7)
    with store.write() as conn:
        conn.execute(update(deliveries).values(worker=other, claim=f"{other}.1"))
    sender._record(claimed, [engine.Outcome(1, "sent"), engine.Outcome(2, "failed", reason="x")], None, "")
    assert statuses(store, started.id) == Counter({"sending": 2})  # untouched: not its rows now
    assert (sender.progress.sent, sender.progress.failed) == (0, 0)


def test_a_late_answer_corrects_unknown_when_nobody_reclaimed(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=2)
    started = engine.start(store, rendered, "main", "postmark")
    sender = engine.Sender(config, store, started, rendered, get_provider(config))
    sender._join()
    sender.progress = engine.Progress(total=2, done=0)
    claimed = sender._claim()
    with store.write() as conn:  # its lease ran out while the call hung; a reaper said unknown
        conn.execute(update(deliveries).values(status="unknown"))
    sender._record(claimed, [engine.Outcome(1, "sent"), engine.Outcome(2, "sent")], None, "")
    assert statuses(store, started.id) == Counter({"sent": 2})


# -- cancel, status and progress -------------------------------------------------------------


def test_cancel_waits_for_the_batch_in_flight_and_counts_what_the_service_took(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=3), readers=9)
    fake.faults = [("delay", 0.7)]  # answered late, within the 1 s timeout
    started = engine.start(store, rendered, "main", "postmark")
    results: list[engine.RunResult] = []
    thread = threading.Thread(target=lambda: results.append(
        engine.send_campaign(config, store, started, rendered, get_provider(config))))
    thread.start()
    deadline = time.monotonic() + 10
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    cancelled = engine.cancel(store, engine.find_campaign(store, rendered.slug))
    thread.join(30)
    assert cancelled.in_flight == 0, cancelled
    assert (cancelled.counts["sent"], cancelled.cancelled) == (3, 6), cancelled
    assert cancelled.counts["sent"] == fake.accepted == 3
    assert results and not results[0].finished and results[0].stopped_reason == "cancelled"
    assert engine.find_campaign(store, rendered.slug).status == "cancelled"


def test_a_campaign_whose_senders_all_died_reads_interrupted(setup):
    config, store, rendered = setup(readers=1)
    started = engine.start(store, rendered, "main", "outbox")
    assert engine.state(store, started) == "interrupted"  # started, nobody sending
    add_worker(store, started.id, "elsewhere.example", 1, expires_in=-1)  # its lease ran out
    assert engine.state(store, started) == "interrupted"
    add_worker(store, started.id, "elsewhere.example", 2)
    assert engine.state(store, started) == "sending"


def test_the_rate_counts_this_run_only(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=6)
    fake.faults = [None, 401]
    assert not run(config, store, rendered).finished
    seen: list[engine.Progress] = []
    result = engine.send_campaign(config, store, engine.find_campaign(store, rendered.slug), rendered,
                                  on_progress=seen.append)
    assert result.finished and seen[-1].sent == 6 and seen[-1].sent_now == 4


@pytest.mark.parametrize("kind", ["hang-after", "drop-after"])
def test_an_answer_that_never_came_is_unknown_and_not_resent(setup, fake, kind):
    config, store, rendered = setup(postmark_toml(fake, batch_size=2), readers=4)
    fake.hang_seconds = 2.0
    fake.faults = [kind]
    result = run(config, store, rendered)
    assert result.finished and (result.counts["sent"], result.counts["unknown"]) == (2, 2)
    assert delivered(fake) == everyone(4)


# -- real processes ----------------------------------------------------------------------------


def test_a_second_process_joins_a_campaign_waiting_out_a_retry_after(tmp_path, db_url, fake):
    """`send` gets 429 with Retry-After: 8 on its first batch; `send --resume` started
    meanwhile joins (no refusal, no takeover); both exit 0 and each reader has one copy."""
    make_letter(tmp_path, postmark(fake, batch=4), 24, db_url)
    fake.retry_after = "8"
    fake.faults = [429]
    first = start(tmp_path, "send", "--yes", db_url=db_url)
    wait_for(lambda: len([r for r in fake.requests if r.path == "/email/batch"]) >= 1)
    time.sleep(0.5)
    status = newsletter(tmp_path, "status", "2026-12-01-crash", db_url=db_url).stdout
    assert "sending" in status and "sender " in status, status
    second = newsletter(tmp_path, "send", "--resume", "--yes", db_url=db_url)
    assert "done: " in second.stdout  # it joined: no "busy", no "nothing to send"
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert got(fake) == Counter({a: 1 for a in all_of(24)})
    status = newsletter(tmp_path, "status", "2026-12-01-crash", db_url=db_url).stdout
    assert "finished" in status and "24 sent of 24" in status, status


def test_killed_midway_reads_interrupted_until_resumed(tmp_path, db_url, fake):
    make_letter(tmp_path, postmark(fake, batch=3), 9, db_url)
    fake.faults = [None, ("delay", 30)]
    proc = start(tmp_path, "send", "--yes", db_url=db_url)
    wait_for(lambda: fake.batches == 2)
    proc.kill()
    proc.wait()
    status = newsletter(tmp_path, "status", db_url=db_url).stdout
    assert "interrupted — run `newsletter send 2026-12-01-crash --resume`" in status, status
    assert "3 in flight" in status or "3 unknown" in status, status
    fake.faults = []
    resumed = newsletter(tmp_path, "send", "--resume", "--yes", db_url=db_url)
    assert resumed.returncode == 0, resumed.stderr
    assert got(fake) == Counter({a: 1 for a in all_of(9)})
    status = newsletter(tmp_path, "status", db_url=db_url).stdout
    assert "finished" in status and "6 sent, 3 unknown of 9" in status, status
