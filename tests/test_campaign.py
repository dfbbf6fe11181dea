"""The campaign engine: the frozen audience, the journal, retries, stops and resumes."""

from __future__ import annotations

import email
import socket
from collections import Counter
from email import policy

import pytest
from sqlalchemy import delete, select, update

from newsletter import build, tokens
from newsletter import campaign as engine
from newsletter import subscribers as subs
from newsletter.providers import get_provider
from newsletter.store import open_store
from newsletter.store.schema import campaign_workers, deliveries

from .engine_util import FakeClock, add_worker, hand_to
from .fakes.postmark import TOKEN, FakePostmark

SECRET = "campaign-test-secret"


@pytest.fixture
def fake():
    with FakePostmark() as service:
        service.hang_seconds = 2.0
        yield service


@pytest.fixture
def setup(configure, sample_issue, db_url):
    """setup(provider_toml, readers=5) -> (config, store, rendered) with active readers."""
    opened = []

    def make(provider: str = 'name = "outbox"', readers: int = 5, env: dict | None = None):
        environ = {"NEWSLETTER_SECRET": SECRET, "NEWSLETTER_DATABASE_URL": db_url,
                   "POSTMARK_SERVER_TOKEN": TOKEN, **(env or {})}
        config = configure(provider, env=environ)
        store = open_store(config)
        opened.append(store)
        for i in range(readers):
            subs.add(store, f"r{i}@example.com", name=f"Reader {i}", confirmed=True)
        return config, store, build.render(config, sample_issue)

    yield make
    for store in opened:
        store.close()


def postmark_toml(fake, batch_size=2, concurrency=1, extra=""):
    return (f'name = "postmark"\nbase_url = "{fake.url}"\ntimeout = 1\nbatch_size = {batch_size}\n'
            f"concurrency = {concurrency}\n{extra}")


def run(config, store, rendered, list_name="main", sleeps=None, **options):
    """Send (or resume) on a clock that waits no real time; ``sleeps`` gets the waits."""
    found = engine.find_campaign(store, rendered.slug, list_name)
    if found is None:
        found = engine.start(store, rendered, list_name, config.provider.name)
    clock = FakeClock()
    try:
        return engine.send_campaign(config, store, found, rendered, sleep=clock.sleep, clock=clock, **options)
    finally:
        if sleeps is not None:
            sleeps.extend(clock.sleeps)


def delivered(fake) -> Counter:
    return Counter(m["To"].rsplit("<", 1)[-1].rstrip(">") for m in fake.messages)


# -- freezing -------------------------------------------------------------------------------


def test_start_freezes_active_unsuppressed_members(setup):
    config, store, rendered = setup(readers=3)
    subs.add(store, "pending@example.com")  # not confirmed
    subs.add(store, "left@example.com", confirmed=True)
    subs.unsubscribe(store, "left@example.com")
    subs.add(store, "bounced@example.com", confirmed=True)
    subs.suppress(store, "bounced@example.com", "bounced")
    started = engine.start(store, rendered, "main", "outbox")
    assert started.total == 3
    assert started.content_hash == rendered.content_hash
    subs.add(store, "late@example.com", confirmed=True)  # joins after the freeze
    result = run(config, store, rendered)
    assert result.finished and result.counts["sent"] == 3
    files = sorted(p.name for p in (config.root / "outbox").rglob("*.eml"))
    assert [f.split("-", 1)[1] for f in files] == ["r0@example.com.eml", "r1@example.com.eml", "r2@example.com.eml"]


def test_a_second_campaign_for_the_same_issue_and_list_is_refused(setup):
    _, store, rendered = setup(readers=1)
    engine.start(store, rendered, "main", "outbox")
    with pytest.raises(engine.CampaignExists):
        engine.start(store, rendered, "main", "outbox")


def test_each_message_carries_its_own_signed_unsubscribe_link(setup):
    config, store, rendered = setup(readers=3)
    result = run(config, store, rendered)
    assert result.finished
    list_id = subs.list_id(store, "main")
    seen_ids = set()
    for path in (config.root / "outbox").rglob("*.eml"):
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        url = msg["List-Unsubscribe"].strip("<>")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = url.rsplit("/", 1)[1]
        data = tokens.verify(SECRET, "unsubscribe", token)
        assert data["l"] == list_id
        assert url in msg.get_body(("html",)).get_content()
        assert msg["Message-ID"] not in seen_ids
        seen_ids.add(msg["Message-ID"])
        assert msg["Message-ID"].endswith("@example.com>")
    assert len(seen_ids) == 3


def test_readers_who_left_since_the_freeze_are_skipped(setup):
    config, store, rendered = setup(readers=5)
    engine.start(store, rendered, "main", "outbox")
    subs.unsubscribe(store, "r1@example.com")
    subs.suppress(store, "r2@example.com", "complained")
    subs.forget(store, "r3@example.com")
    result = run(config, store, rendered)
    c = result.counts
    assert (c["sent"], c["skipped"]) == (2, 3)
    names = {p.name.split("-", 1)[1] for p in (config.root / "outbox").rglob("*.eml")}
    assert names == {"r0@example.com.eml", "r4@example.com.eml"}


# -- provider answers ------------------------------------------------------------------------


def test_per_recipient_failures_are_recorded_and_the_campaign_goes_on(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=5)
    fake.inactive = {"r1@example.com", "r3@example.com"}
    result = run(config, store, rendered)
    assert result.finished
    assert (result.counts["sent"], result.counts["failed"]) == (3, 2)
    (reason,) = result.counts.failed_reasons
    assert reason.startswith("postmark 406:")
    assert set(delivered(fake)) == {"r0@example.com", "r2@example.com", "r4@example.com"}


def test_rate_limited_batches_wait_as_told_and_everyone_gets_it_once(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=5)
    fake.retry_after = "7"
    fake.faults = [429, 429, 503]
    sleeps: list[float] = []
    result = run(config, store, rendered, sleeps=sleeps)
    assert result.finished and result.counts["sent"] == 5
    assert sleeps[:2] == [7.0, 7.0]  # Retry-After honoured
    assert 0 < sleeps[2] <= 4.0  # exponential backoff with jitter after the 503
    assert delivered(fake) == Counter({f"r{i}@example.com": 1 for i in range(5)})


def test_a_lasting_outage_pauses_the_campaign_and_resume_finishes_it(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=5)
    fake.faults = [None, 500, 500, 500, 500, 500, 500]  # the second batch fails every try
    result = run(config, store, rendered)
    assert not result.finished and "server error 500" in result.stopped_reason
    assert result.counts["sent"] == 2 and result.counts["queued"] == 3
    assert engine.find_campaign(store, rendered.slug).status == "paused"
    result = run(config, store, rendered)
    assert result.finished and result.counts["sent"] == 5
    assert delivered(fake) == Counter({f"r{i}@example.com": 1 for i in range(5)})


def test_refused_credentials_stop_at_once_with_nothing_marked_sent(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=5, env={"POSTMARK_SERVER_TOKEN": "nope"})
    result = run(config, store, rendered)
    assert not result.finished
    assert "POSTMARK_SERVER_TOKEN" in result.stopped_reason and "nope" not in result.stopped_reason
    assert result.counts["queued"] == 5 and result.counts["sent"] == 0
    assert len(fake.requests) == 1
    row = engine.find_campaign(store, rendered.slug)
    assert row.status == "paused" and "POSTMARK_SERVER_TOKEN" in row.last_error


def test_unknown_outcomes_are_not_resent_unless_asked(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=5)
    fake.faults = ["hang"]
    result = run(config, store, rendered)
    assert result.finished
    assert (result.counts["unknown"], result.counts["sent"]) == (2, 3)
    assert sorted(engine.unknown_recipients(store, result.campaign.id)) == ["r0@example.com", "r1@example.com"]
    with pytest.raises(engine.CampaignError, match="finished"):
        run(config, store, rendered)
    result = run(config, store, rendered, resend_unknown=True)
    assert result.finished and result.counts["sent"] == 5 and result.counts["unknown"] == 0


def test_many_batches_in_parallel_reach_everyone_once(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=3, concurrency=4), readers=40)
    result = run(config, store, rendered)
    assert result.finished and result.counts["sent"] == 40
    assert delivered(fake) == Counter({f"r{i}@example.com": 1 for i in range(40)})
    assert fake.batches == 14


def test_rate_limit_spaces_the_batches(setup, fake):
    config, store, rendered = setup(postmark_toml(fake, batch_size=1, extra="rate_limit = 10\n"), readers=5)
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds):
        sleeps.append(seconds)
        now[0] += seconds

    started = engine.start(store, rendered, "main", "postmark")
    result = engine.send_campaign(config, store, started, rendered, sleep=sleep, clock=lambda: now[0])
    assert result.finished
    assert sleeps == pytest.approx([0.1, 0.1, 0.1, 0.1])  # 5 messages at 10/s


# -- the issue and the campaign's lifecycle ---------------------------------------------------


def test_changed_files_refuse_the_resume_and_rerender_accepts_them(setup, sample_issue, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=5)
    fake.faults = [None, 401]  # stop after the first batch
    assert not run(config, store, rendered).finished
    post = config.issues_dir / sample_issue / "01-a.md"
    post.write_text(post.read_text() + "\nA late addition.\n")
    changed = build.render(config, sample_issue)
    with pytest.raises(engine.ContentChanged) as caught:
        run(config, store, changed)
    assert f"issues/{sample_issue}/01-a.md" in str(caught.value)
    assert "--rerender" in str(caught.value)
    engine.accept_content(store, engine.find_campaign(store, rendered.slug), changed)
    result = run(config, store, changed)
    assert result.finished and result.counts["sent"] == 5
    late = [m for m in fake.messages if "A late addition." in m["TextBody"]]
    assert len(late) == 3


def test_cancel_stops_for_good(setup):
    config, store, rendered = setup(readers=3)
    started = engine.start(store, rendered, "main", "outbox")
    cancelled = engine.cancel(store, started)
    assert (cancelled.cancelled, cancelled.in_flight, cancelled.counts["sent"]) == (3, 0, 0)
    found = engine.find_campaign(store, rendered.slug)
    assert found.status == "cancelled"
    with pytest.raises(engine.CampaignError, match="cancelled"):
        engine.send_campaign(config, store, found, rendered)
    assert not (config.root / "outbox").exists()


def test_a_second_sender_joins_and_leaves_the_other_senders_batch_alone(setup):
    config, store, rendered = setup(readers=4)
    started = engine.start(store, rendered, "main", "outbox")
    ids = [r.id for r in store_rows(store, started.id)]
    elsewhere = add_worker(store, started.id, "elsewhere.example", 4242)
    hand_to(store, elsewhere, ids[:2])
    status = engine.state(store, started)
    assert status == "sending" and [w.name for w in engine.live_workers(store, started.id)] == ["elsewhere.example:4242"]
    clock = FakeClock()
    sender = engine.Sender(config, store, started, rendered, get_provider(config), sleep=clock.sleep, clock=clock)

    def the_other_one_answers(seconds):  # while this one waits, the other records its batch
        clock.sleep(seconds)
        with store.write() as conn:
            conn.execute(update(deliveries).where(deliveries.c.worker == elsewhere).values(status="sent"))
            conn.execute(delete(campaign_workers).where(campaign_workers.c.token == elsewhere))

    sender.sleep = the_other_one_answers
    result = sender.run()
    assert result.finished and result.counts["sent"] == 4
    mailed = sorted(p.name for p in (config.root / "outbox").rglob("*.eml"))
    assert len(mailed) == 2  # only the two rows that were not the other sender's


def test_rows_of_a_sender_that_died_turn_unknown_and_are_not_resent(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=3)
    started = engine.start(store, rendered, "main", "postmark")
    ids = [r.id for r in store_rows(store, started.id)]
    dead = add_worker(store, started.id, socket.gethostname(), 2**22 + 12345)  # no such process
    hand_to(store, dead, ids[:1])
    assert engine.state(store, started) == "interrupted"
    result = run(config, store, rendered)
    assert result.finished and (result.counts["sent"], result.counts["unknown"]) == (2, 1)
    assert engine.live_workers(store, started.id) == []
    assert delivered(fake) == Counter({"r1@example.com": 1, "r2@example.com": 1})


def store_rows(store, campaign_id):
    with store.read() as conn:
        return conn.execute(select(deliveries.c.id).where(deliveries.c.campaign_id == campaign_id)
                            .order_by(deliveries.c.id)).all()


def test_a_stop_request_lets_batches_in_flight_finish(setup, fake):
    config, store, rendered = setup(postmark_toml(fake), readers=6)
    started = engine.start(store, rendered, "main", "postmark")
    provider = get_provider(config)
    sender = engine.Sender(config, store, started, rendered, provider)
    original = provider.send_batch

    def send_then_interrupt(batch):
        outcomes = original(batch)
        sender.stop.set("interrupted")  # as the SIGINT handler does
        return outcomes

    provider.send_batch = send_then_interrupt
    result = sender.run()
    assert not result.finished and result.stopped_reason == "interrupted"
    assert (result.counts["sent"], result.counts["queued"]) == (2, 4)
    result = run(config, store, rendered)
    assert result.finished
    assert delivered(fake) == Counter({f"r{i}@example.com": 1 for i in range(6)})


def test_an_address_the_message_cannot_carry_fails_alone(setup):
    config, store, rendered = setup(readers=2)
    subs.add(store, "åsa@example.com", confirmed=True)
    result = run(config, store, rendered)
    assert result.finished and (result.counts["sent"], result.counts["failed"]) == (2, 1)
    assert any("non-ASCII" in r for r in result.counts.failed_reasons)


def test_sending_needs_the_signing_secret(setup):
    config, store, rendered = setup(readers=1, env={"NEWSLETTER_SECRET": ""})
    with pytest.raises(engine.CampaignError, match="NEWSLETTER_SECRET is not set"):
        run(config, store, rendered)
