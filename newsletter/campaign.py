"""The campaign engine: freeze the audience, send in batches, journal every outcome.

Starting a campaign writes one delivery row per recipient (active members of the list, less
every suppressed address) in the same transaction that creates the campaign, and records the
rendered issue's content hash. From then on the journal, not a counter, says who is done:

- every process sending the campaign is a *worker* with a row of its own and a lease that a
  thread renews every few seconds, also while the process waits or a call hangs;
- a batch is *claimed* (its rows marked ``sending`` with the worker's token and a fresh claim
  token) and committed before the provider is called; its outcomes are written in one
  transaction after, and only to rows that still carry both tokens. Ownership is fenced,
  not timed: a worker that lost its claim can change nothing, whatever the clock does;
- only a proven refusal goes back to the queue, with a not-before time: nobody holds a
  claim while waiting out a Retry-After or a backoff, and a reader the service refused "for
  now" is retried in the same run until the retry policy gives up on them (``failed``);
- rows left ``sending`` by a worker that died (its lease ran out, or its process is gone)
  turn ``unknown``: the request may have gone out. They are resent only when the provider
  honours idempotency keys (same claim, same key) or the user asks (``--resend-unknown``);
- a recipient who left since the freeze is *skipped*, never mailed;
- the campaign is finished only when no reader is queued or in flight. Several workers, on
  several machines sharing a PostgreSQL database, may send one campaign: claims take rows
  with ``FOR UPDATE SKIP LOCKED`` there, and one writer at a time on SQLite.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from . import tracking
from .config import Config
from .errors import NewsletterError
from .message import (
    HeaderInjection,
    MessageTemplate,
    Recipient,
    ascii_address,
    message_id,
    unsubscribe_url,
)
from .providers import (
    Batch,
    BatchError,
    Envelope,
    FatalError,
    Outcome,
    Provider,
    TransientError,
    UnknownOutcome,
    get_provider,
)
from .store import BulkUpdate, Store
from .store.schema import (
    campaign_workers,
    campaigns,
    deliveries,
    events,
    lists,
    memberships,
    suppressions,
)
from .store.schema import subscribers as subscribers_t
from .subscribers import audience_select
from .subscribers import list_id as resolve_list_id
from .tokens import Signer, sign

if TYPE_CHECKING:
    from .render import Rendered

LEASE_SECONDS = 30  # a worker not heard from for this long is taken for dead
HEARTBEAT_EVERY = 3.0  # seconds between lease renewals (which also notice a cancel)
POLL = 0.5  # seconds between looks while other workers' batches are in flight
WAIT_SLICE = 10.0  # longest single wait for readers due later (others may free some sooner)
MAX_BATCH_ATTEMPTS = 6  # whole batches refused this many times in a row pause the run
MAX_RECIPIENT_ATTEMPTS = 5  # a recipient refused "for now" this often is failed for good
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0

# Delivery statuses. queued → sending → sent | failed | queued (refused for now, with a
# not-before time) | unknown; queued → skipped (left since the freeze) | cancelled;
# unknown → queued only with --resend-unknown.
DONE = ("sent", "failed", "skipped", "cancelled")


class CampaignError(NewsletterError):
    pass


class CampaignExists(CampaignError):
    """A campaign for this issue and list exists already."""


class ContentChanged(CampaignError):
    """The issue files changed since the campaign started."""


class Stopped(CampaignError):
    """The run stopped before the end (Ctrl-C, SIGTERM, provider outage, fatal error)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: int
    uid: str
    issue: str
    list_id: int
    list_name: str
    status: str
    subject: str
    content_hash: str
    source_hashes: dict[str, str]
    provider: str
    total: int
    created_at: dt.datetime
    finished_at: dt.datetime | None
    last_error: str


def _campaign_select():
    return select(
        campaigns.c.id, campaigns.c.uid, campaigns.c.issue, campaigns.c.list_id,
        lists.c.name, campaigns.c.status, campaigns.c.subject, campaigns.c.content_hash,
        campaigns.c.source_hashes, campaigns.c.provider, campaigns.c.total,
        campaigns.c.created_at, campaigns.c.finished_at, campaigns.c.last_error,
    ).select_from(campaigns.join(lists, lists.c.id == campaigns.c.list_id))


def _row(r: Any) -> CampaignRow:
    hashes = r.source_hashes if isinstance(r.source_hashes, dict) else json.loads(r.source_hashes or "{}")
    return CampaignRow(
        id=r.id, uid=r.uid, issue=r.issue, list_id=r.list_id, list_name=r.name, status=r.status,
        subject=r.subject, content_hash=r.content_hash, source_hashes=hashes, provider=r.provider,
        total=r.total, created_at=r.created_at, finished_at=r.finished_at, last_error=r.last_error or "",
    )


def find_campaign(store: Store, issue: str, list_name: str | None = None) -> CampaignRow | None:
    """The campaign of ``issue`` (for ``list_name`` when given); None when there is none."""
    with store.read() as conn:
        stmt = _campaign_select().where(campaigns.c.issue == issue)
        if list_name:
            stmt = stmt.where(lists.c.name == list_name)
        rows = [_row(r) for r in conn.execute(stmt.order_by(campaigns.c.id))]
    if len(rows) > 1 and not list_name:
        names = ", ".join(r.list_name for r in rows)
        raise CampaignError(f"{issue} was sent to several lists ({names}); pass --list")
    return rows[0] if rows else None


def all_campaigns(store: Store, issue: str | None = None) -> list[CampaignRow]:
    """The issues' campaigns (welcome steps are `newsletter sequences`' to show)."""
    with store.read() as conn:
        stmt = _campaign_select().where(campaigns.c.sequence.is_(None))
        if issue:
            stmt = stmt.where(campaigns.c.issue == issue)
        return [_row(r) for r in conn.execute(stmt.order_by(campaigns.c.id))]


# ---------------------------------------------------------------------------------------------
# Counting


@dataclass
class Counts:
    by_status: Counter = field(default_factory=Counter)
    failed_reasons: Counter = field(default_factory=Counter)

    def __getitem__(self, status: str) -> int:
        return self.by_status.get(status, 0)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def done(self) -> int:
        return sum(self.by_status.get(s, 0) for s in DONE)


def counts(store: Store, campaign_id: int) -> Counts:
    with store.read() as conn:
        result = Counts()
        for status, n in conn.execute(
            select(deliveries.c.status, func.count())
            .where(deliveries.c.campaign_id == campaign_id)
            .group_by(deliveries.c.status)
        ):
            result.by_status[status] = n
        for reason, n in conn.execute(
            select(deliveries.c.reason, func.count())
            .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == "failed")
            .group_by(deliveries.c.reason)
        ):
            result.failed_reasons[reason or "?"] = n
    return result


def unknown_recipients(store: Store, campaign_id: int, limit: int = 1000) -> list[str]:
    """Addresses whose outcome is unknown (a call died after the message may have left)."""
    with store.read() as conn:
        return [
            r.email or "(forgotten)" for r in conn.execute(
                select(subscribers_t.c.email)
                .select_from(deliveries.outerjoin(subscribers_t, subscribers_t.c.id == deliveries.c.subscriber_id))
                .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status == "unknown")
                .order_by(deliveries.c.id).limit(limit)
            )
        ]


def event_summary(store: Store, campaign_id: int) -> list[str]:
    """Provider events (bounces, complaints, ...) recorded for a campaign, counted by kind."""
    with store.read() as conn:
        rows = conn.execute(
            select(events.c.kind, func.count()).where(events.c.campaign_id == campaign_id)
            .group_by(events.c.kind).order_by(events.c.kind)
        ).all()
    return [f"{kind}: {n:,}" for kind, n in rows]


def audience_size(store: Store, list_name: str) -> int:
    lid = resolve_list_id(store, list_name)
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(audience_select(lid).order_by(None).subquery())).scalar_one()


def audience_sample(store: Store, list_name: str, limit: int = 10) -> list[str]:
    lid = resolve_list_id(store, list_name)
    with store.read() as conn:
        return [r.email for r in conn.execute(audience_select(lid).limit(limit))]


# ---------------------------------------------------------------------------------------------
# Starting


def start(store: Store, rendered: Rendered, list_name: str, provider_name: str) -> CampaignRow:
    """Create the campaign and freeze its audience into the journal, in one transaction."""
    lid = resolve_list_id(store, list_name)
    now = utcnow()
    uid = os.urandom(8).hex()
    with store.write() as conn:
        existing = conn.execute(
            select(campaigns.c.id).where(campaigns.c.issue == rendered.slug, campaigns.c.list_id == lid)
        ).first()
        if existing:
            raise CampaignExists(f"{rendered.slug} already has a campaign for list {list_name}")
        try:
            campaign_id = conn.execute(
                insert(campaigns).values(
                    uid=uid, issue=rendered.slug, list_id=lid, status="sending",
                    subject=rendered.subject, content_hash=rendered.content_hash,
                    source_hashes=rendered.source_hashes, provider=provider_name, total=0,
                    web_html=rendered.web_html, created_at=now, updated_at=now, last_error="",
                )
            ).inserted_primary_key[0]
        except IntegrityError as exc:
            # Lost a race: on PostgreSQL two processes can both pass the check above; the
            # unique (issue, list) index lets one insert and refuses the other.
            if not _is_issue_list_conflict(exc):
                raise
            raise CampaignExists(
                f"{rendered.slug} already has a campaign for list {list_name} "
                "(another process started it just now)"
            ) from None
        audience = audience_select(lid).order_by(None).subquery()
        conn.execute(
            insert(deliveries).from_select(
                ["campaign_id", "subscriber_id", "status", "attempts", "updated_at"],
                select(literal(campaign_id), audience.c.subscriber_id, literal("queued"),
                       literal(0), literal(now, type_=deliveries.c.updated_at.type))
                .order_by(audience.c.subscriber_id),
            )
        )
        total = conn.execute(
            select(func.count()).where(deliveries.c.campaign_id == campaign_id)
        ).scalar_one()
        conn.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(total=total))
        tracking.record(conn, rendered.slug, rendered.tracked, now)
    found = find_campaign(store, rendered.slug, list_name)
    assert found is not None
    return found


def _is_issue_list_conflict(exc: IntegrityError) -> bool:
    """Whether ``exc`` is the unique (issue, list) constraint of campaigns refusing a row."""
    message = str(exc.orig or exc)
    return "uq_campaigns_issue_list" in message or "campaigns.issue, campaigns.list_id" in message


def changed_files(campaign: CampaignRow, rendered: Rendered) -> list[str]:
    old, new = campaign.source_hashes, rendered.source_hashes
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_content(campaign: CampaignRow, rendered: Rendered) -> None:
    """Refuse to go on when the issue no longer renders to what the campaign froze."""
    if rendered.content_hash == campaign.content_hash:
        return
    files = changed_files(campaign, rendered)
    listed = ", ".join(files) if files else "the rendered issue"
    raise ContentChanged(
        f"{campaign.issue} changed since the campaign started ({listed}); undo the changes, "
        f"or run `newsletter send {campaign.issue} --resume --rerender` to send the new "
        "version to the recipients not yet sent"
    )


def accept_content(store: Store, campaign: CampaignRow, rendered: Rendered) -> None:
    """--rerender: the recipients not yet sent get the issue as it is now."""
    with store.write() as conn:
        tracking.record(conn, rendered.slug, rendered.tracked, utcnow())
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign.id).values(
                content_hash=rendered.content_hash, source_hashes=rendered.source_hashes,
                subject=rendered.subject, web_html=rendered.web_html, updated_at=utcnow(),
            )
        )


# ---------------------------------------------------------------------------------------------
# Senders: who is sending a campaign now


@dataclass(frozen=True, slots=True)
class Worker:
    """A process sending a campaign (from ``campaign_workers``)."""

    token: str
    host: str
    pid: int
    sent: int
    started_at: dt.datetime
    last_seen: dt.datetime
    expires: dt.datetime

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    def alive(self, now: dt.datetime | None = None) -> bool:
        """Unexpired, and (on this machine) its process still running."""
        if self.expires <= (now or utcnow()):
            return False
        return _process_alive(self.host, self.pid)


def _process_alive(host: str, pid: int) -> bool:
    if host != socket.gethostname():
        return True  # another machine: trust the lease's expiry
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _workers(conn: Connection, campaign_id: int) -> list[Worker]:
    return [
        Worker(r.token, r.host, r.pid, r.sent, r.started_at, r.last_seen, r.expires)
        for r in conn.execute(
            select(campaign_workers.c.token, campaign_workers.c.host, campaign_workers.c.pid,
                   campaign_workers.c.sent, campaign_workers.c.started_at,
                   campaign_workers.c.last_seen, campaign_workers.c.expires)
            .where(campaign_workers.c.campaign_id == campaign_id)
            .order_by(campaign_workers.c.id)
        )
    ]


def live_workers(store: Store, campaign_id: int) -> list[Worker]:
    """The processes sending ``campaign_id`` right now."""
    now = utcnow()
    with store.read() as conn:
        return [w for w in _workers(conn, campaign_id) if w.alive(now)]


def running_campaigns(store: Store) -> set[int]:
    """Ids of the campaigns some live process is sending."""
    now = utcnow()
    with store.read() as conn:
        rows = conn.execute(
            select(campaign_workers.c.campaign_id, campaign_workers.c.host, campaign_workers.c.pid,
                   campaign_workers.c.expires)
        ).all()
    return {r.campaign_id for r in rows if r.expires > now and _process_alive(r.host, r.pid)}


def state(store: Store, campaign: CampaignRow) -> str:
    """What a person should read for a campaign's status: ``sending`` only while some
    process is; a campaign whose senders all died is ``interrupted``."""
    if campaign.status == "sending" and not live_workers(store, campaign.id):
        return "interrupted"
    return campaign.status


def _orphaned(campaign_id: int, live: list[str]) -> Any:
    """Rows of the campaign in flight with no live sender (tokens ``live``) behind them."""
    return and_(
        deliveries.c.campaign_id == campaign_id, deliveries.c.status == "sending",
        or_(deliveries.c.worker.is_(None), deliveries.c.worker.not_in(live)) if live else literal(True),
    )


def stopped_mid_call(store: Store, campaign_id: int) -> int:
    """Rows left in flight by senders that are gone: unknown in truth, before the next
    sender's reap writes it into the journal."""
    live = [w.token for w in live_workers(store, campaign_id)]
    with store.read() as conn:
        return conn.execute(select(func.count()).where(_orphaned(campaign_id, live))).scalar_one()


def _reap(conn: Connection, campaign_id: int, keep: str | None = None) -> list[str]:
    """Settle the rows left in flight by senders that are gone: ``unknown`` (the request may
    have gone out), their sender's row removed. Returns the claims left behind, for a
    sender that may resend them under the same idempotency key; ``keep`` is the caller."""
    now = utcnow()
    everyone = _workers(conn, campaign_id)
    live = [w.token for w in everyone if w.token == keep or w.alive(now)]
    dead = [w.token for w in everyone if w.token not in live]
    orphaned = _orphaned(campaign_id, live)
    claims = list(conn.execute(select(deliveries.c.claim).where(orphaned).distinct()).scalars())
    if claims:
        conn.execute(
            update(deliveries).where(orphaned).values(
                status="unknown", reason="the sending process stopped mid-call", updated_at=now)
        )
    if dead:
        conn.execute(delete(campaign_workers).where(campaign_workers.c.token.in_(dead)))
    return [c for c in claims if c]


# ---------------------------------------------------------------------------------------------
# Cancelling


@dataclass
class Cancelled:
    """What a cancel left: the journal's counts once the batches in flight had answered,
    and how many were still in flight when it stopped waiting."""

    counts: Counts
    cancelled: int
    in_flight: int


def cancel(store: Store, campaign: CampaignRow, wait: float = 30.0,
           sleep: Callable[[float], None] = time.sleep) -> Cancelled:
    """Stop a campaign for good: no reader still queued gets it. Batches already handed to
    the service are not recalled; this waits (up to ``wait`` seconds) for their answers, so
    the figures say what the service received."""
    now = utcnow()
    with store.write() as conn:
        n = conn.execute(
            update(deliveries)
            .where(deliveries.c.campaign_id == campaign.id, deliveries.c.status == "queued")
            .values(status="cancelled", reason="campaign cancelled", not_before=None, updated_at=now)
        ).rowcount
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign.id)
            .values(status="cancelled", finished_at=now, updated_at=now)
        )
    deadline = time.monotonic() + wait
    while True:
        with store.write() as conn:
            _reap(conn, campaign.id)
        c = counts(store, campaign.id)
        if not c["sending"] or time.monotonic() >= deadline:
            return Cancelled(c, n, c["sending"])
        sleep(POLL)


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass
class Progress:
    """What a run reports after every batch; ``done`` counts finished recipients (by every
    sender of the campaign), ``sent_now`` those this run sent."""

    total: int
    done: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    sent_now: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Messages per second sent by this run (earlier runs do not count)."""
        elapsed = time.monotonic() - self.started
        return self.sent_now / elapsed if elapsed > 0 else 0.0


@dataclass
class RunResult:
    campaign: CampaignRow
    counts: Counts
    finished: bool
    stopped_reason: str | None = None
    sent_now: int = 0  # sent by this run (other senders of the campaign not counted)


class _StopFlag:
    """Set by SIGINT/SIGTERM during a run: the batches in flight finish and are journalled."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.why = ""

    def set(self, why: str) -> None:
        self.why = self.why or why
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


@contextmanager
def _signals(flag: _StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, _frame):
        flag.set("interrupted" if signum == signal.SIGINT else "terminated")

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class _Claimed:
    claim: str
    envelopes: list[Envelope]
    attempts: dict[int, int]


def _backoff(attempt: int) -> float:
    """Seconds before try ``attempt + 1``: exponential, capped, with jitter."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    return delay * (0.5 + random.random() / 2)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _BatchStatements:
    """The statements a sender runs for every batch, built once per run with its campaign,
    token and batch size in them; a batch binds only what changes (its claim, the time, its
    rows). Building a SQLAlchemy statement costs about ten times what running a small one
    on SQLite does (0.2-0.3 ms against 0.02 ms), and each batch runs seven. The SQL is the
    same as when each was built afresh, so the journal's writes and locks are the same."""

    def __init__(self, campaign: CampaignRow, token: str, batch_size: int) -> None:
        d = deliveries
        self.mine = (select(campaign_workers.c.id).where(campaign_workers.c.token == token)
                     .with_for_update())
        self.status = (select(campaigns.c.status, campaigns.c.last_error)
                       .where(campaigns.c.id == campaign.id))
        # Two statements, not UPDATE … WHERE id IN (SELECT … LIMIT … FOR UPDATE SKIP
        # LOCKED): PostgreSQL may run such a subquery more than once and take more rows.
        self.due = (
            select(d.c.id)
            .where(d.c.campaign_id == campaign.id, d.c.status == "queued",
                   or_(d.c.not_before.is_(None), d.c.not_before <= bindparam("now")))
            .order_by(d.c.id).limit(batch_size)
            .with_for_update(skip_locked=True)
        )
        self.take = (
            update(d)
            .where(d.c.id.in_(bindparam("ids", expanding=True)), d.c.status == "queued")
            .values(status="sending", worker=token, claim=bindparam("the_claim"), not_before=None,
                    updated_at=bindparam("updated"))
        )
        active = and_(memberships.c.status == "active", suppressions.c.email_hash.is_(None))
        self.envelopes = (
            select(
                d.c.id, d.c.subscriber_id, d.c.attempts,
                subscribers_t.c.email, subscribers_t.c.name,
                case((active, literal(True)), else_=literal(False)).label("mailable"),
                suppressions.c.reason.label("suppressed"), memberships.c.status.label("membership"),
            )
            .select_from(
                d.outerjoin(subscribers_t, subscribers_t.c.id == d.c.subscriber_id)
                .outerjoin(memberships, and_(memberships.c.subscriber_id == d.c.subscriber_id,
                                             memberships.c.list_id == campaign.list_id))
                .outerjoin(suppressions, suppressions.c.email_hash == subscribers_t.c.email_hash)
            )
            .where(d.c.claim == bindparam("the_claim"), d.c.worker == token, d.c.status == "sending")
            .order_by(d.c.id)
        )
        self.held = (
            select(d.c.id)
            .where(d.c.claim == bindparam("the_claim"), d.c.worker == token,
                   d.c.status.in_(("sending", "unknown")))
            .with_for_update()
        )
        self.outcomes: BulkUpdate | None = None  # made on the first write: it needs the dialect

    def write_outcomes(self, conn: Connection, rows: list[dict], now: dt.datetime) -> None:
        if self.outcomes is None:
            self.outcomes = BulkUpdate(
                conn, deliveries, "id",
                ["status", "provider_id", "reason", "attempts", "not_before", "worker", "claim"],
                {"updated_at": now})
        self.outcomes(conn, rows, {"updated_at": now})


class Sender:
    """One process's share of one campaign: joins it as a worker, claims batches (fenced by
    the claim token), sends them in parallel, journals outcomes, and stays until no reader
    is queued or in flight, or until it is stopped."""

    def __init__(self, config: Config, store: Store, campaign: CampaignRow, rendered: Rendered,
                 provider: Provider, *, resend_unknown: bool = False,
                 on_progress: Callable[[Progress], None] | None = None,
                 sleep: Callable[[float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.campaign = campaign
        self.provider = provider
        self.template = MessageTemplate(config, rendered, campaign.list_name)
        self.resend_unknown = resend_unknown
        self.on_progress = on_progress or (lambda p: None)
        self.stop = _StopFlag()
        # Waiting ends early when the run is asked to stop.
        self.sleep = sleep or self.stop.event.wait
        self.clock = clock
        secret = config.secret("NEWSLETTER_SECRET")
        if not secret:
            raise CampaignError(
                "NEWSLETTER_SECRET is not set; it signs every unsubscribe link. Put one in .env "
                "(`newsletter init` makes one; or python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        self.secret = secret
        self.signer = Signer(secret, "unsubscribe")
        self.batch_size = provider.batch_size
        self.rate = config.provider.rate_limit
        self._next_slot = 0.0
        self.token = os.urandom(8).hex()
        self._sql = _BatchStatements(campaign, self.token, self.batch_size)
        self._seq = 0
        # Not-before times are wall-clock (other senders read them) but advance with
        # ``clock``, so a test's clock moves them too.
        self._wall0, self._clock0 = utcnow(), clock()
        self._hold_until: dt.datetime | None = None  # after a refused batch: no claims until then
        self._refused_in_a_row = 0
        self._refreshed = 0.0

    def _now(self) -> dt.datetime:
        return self._wall0 + dt.timedelta(seconds=self.clock() - self._clock0)

    # -- joining and leaving ---------------------------------------------------------------

    def _join(self) -> None:
        now = utcnow()
        with self.store.write() as conn:
            status = conn.execute(
                select(campaigns.c.status).where(campaigns.c.id == self.campaign.id).with_for_update()
            ).scalar_one()
            if status == "cancelled":
                raise CampaignError(f"the campaign for {self.campaign.issue} was cancelled; nothing more is sent")
            conn.execute(insert(campaign_workers).values(
                campaign_id=self.campaign.id, token=self.token, host=socket.gethostname(),
                pid=os.getpid(), sent=0, started_at=now, last_seen=now,
                expires=now + dt.timedelta(seconds=LEASE_SECONDS),
            ))
            conn.execute(update(campaigns).where(campaigns.c.id == self.campaign.id).values(
                status="sending", finished_at=None, updated_at=now))

    def _heartbeat(self, done: threading.Event) -> None:
        """Renews this sender's lease every few seconds, also while it waits or a call
        hangs; notices a cancel, a pause by another sender, or a lease taken away."""
        while not done.wait(HEARTBEAT_EVERY):
            try:
                now = utcnow()
                with self.store.write() as conn:
                    mine = conn.execute(
                        update(campaign_workers).where(campaign_workers.c.token == self.token)
                        .values(last_seen=now, expires=now + dt.timedelta(seconds=LEASE_SECONDS),
                                sent=self.progress.sent_now)
                    ).rowcount
                    status, why = conn.execute(
                        select(campaigns.c.status, campaigns.c.last_error)
                        .where(campaigns.c.id == self.campaign.id)
                    ).one()
            except NewsletterError:
                continue  # the database is away for now; the lease says how long that may last
            if not mine:
                self.stop.set("this sender was taken for dead (its lease ran out); run the command again")
            elif status == "cancelled":
                self.stop.set("cancelled")
            elif status == "paused":
                self.stop.set(why or "paused by another sender")

    def _leave(self, fatal: str | None, paused: str | None) -> RunResult:
        """Remove this sender and settle the campaign's status: finished when no reader is
        queued or in flight; paused when the run stopped and nobody else is sending."""
        now = utcnow()
        why = fatal or paused or self.stop.why or ""
        with self.store.write() as conn:
            conn.execute(delete(campaign_workers).where(campaign_workers.c.token == self.token))
            others = [w for w in _workers(conn, self.campaign.id) if w.alive(now)]
            if not others:
                _reap(conn, self.campaign.id)
            status = conn.execute(
                select(campaigns.c.status).where(campaigns.c.id == self.campaign.id).with_for_update()
            ).scalar_one()
            open_rows = conn.execute(
                select(func.count()).where(deliveries.c.campaign_id == self.campaign.id,
                                           deliveries.c.status.in_(("queued", "sending")))
            ).scalar_one()
            finished = False
            values: dict[str, Any] = {}
            if status == "cancelled":
                pass
            elif not open_rows:
                finished = True
                if status != "finished":  # the last sender out says so
                    values = {"status": "finished", "finished_at": now, "last_error": ""}
            elif fatal or paused or not others:
                values = {"status": "paused", "last_error": why}
            elif not why:  # readers came back to the queue just now, for the others to send
                why = f"{', '.join(w.name for w in others)} will finish it"
            if values:
                conn.execute(update(campaigns).where(campaigns.c.id == self.campaign.id)
                             .values(updated_at=now, **values))
        final = counts(self.store, self.campaign.id)
        if status == "cancelled":
            why = "cancelled"
        return RunResult(self.campaign, final, finished=finished, stopped_reason=None if finished else why,
                         sent_now=self.progress.sent_now)

    # -- journal -------------------------------------------------------------------------

    def _recover(self) -> list[_Claimed]:
        """Rows left in flight by senders that died turn ``unknown``; when the provider
        honours idempotency keys they are resent instead, as the same batches under the same
        keys. Unknown rows go back to the queue when the user asked for it."""
        now = utcnow()
        again: list[_Claimed] = []
        with self.store.write() as conn:
            claims = _reap(conn, self.campaign.id, keep=self.token)
            if self.provider.idempotent:
                for claim in sorted(claims):
                    conn.execute(
                        update(deliveries).where(
                            deliveries.c.campaign_id == self.campaign.id, deliveries.c.claim == claim,
                            deliveries.c.status == "unknown")
                        .values(status="sending", worker=self.token, reason=None, updated_at=now)
                    )
                    again.append(self._envelopes(conn, claim))
            if self.resend_unknown:
                conn.execute(
                    update(deliveries).where(
                        deliveries.c.campaign_id == self.campaign.id, deliveries.c.status == "unknown"
                    ).values(status="queued", reason=None, worker=None, claim=None, not_before=None,
                             updated_at=now)
                )
        return [c for c in again if c.envelopes]

    def _envelopes(self, conn: Connection, claim: str) -> _Claimed:
        """Envelopes for the rows of ``claim``; rows whose reader left since the freeze are
        skipped, and addresses no message can carry fail here."""
        c = self.campaign
        rows = conn.execute(self._sql.envelopes, {"the_claim": claim}).all()
        envelopes, attempts, skipped, refused = [], {}, [], []
        unsubscribe_prefix = unsubscribe_url(self.config, "")
        domain = self.config.newsletter.sender.domain
        for key, subscriber_id, tries, email, name, mailable, suppressed, membership in rows:
            if email is None or not mailable:
                why = ("forgotten since the campaign started" if email is None
                       else f"suppressed since the campaign started ({suppressed})" if suppressed
                       else f"{membership or 'removed'} since the campaign started")
                skipped.append({"i": key, "r": why})
                continue
            try:
                recipient = Recipient(email, name or "")
                ascii_address(email)
            except HeaderInjection as exc:
                refused.append({"i": key, "r": str(exc)})
                continue
            # The canonical JSON of {"c": campaign, "l": list, "s": subscriber}, written out:
            # one per reader. The campaign lets an unsubscribe count against this issue.
            token = self.signer.sign_encoded(f'{{"c":{c.id},"l":{c.list_id},"s":{subscriber_id}}}')
            envelopes.append(Envelope(key, recipient, unsubscribe_prefix + token, f"<{c.uid}.{key}@{domain}>"))
            attempts[key] = tries
        if skipped:
            self._close_rows(conn, "skipped", skipped)
        if refused:
            self._close_rows(conn, "failed", refused)
        return _Claimed(claim=claim, envelopes=envelopes, attempts=attempts)

    def _close_rows(self, conn: Connection, status: str, rows: list[dict]) -> None:
        """Rows settled without a provider call: skipped, or failed before sending."""
        conn.execute(
            update(deliveries).where(deliveries.c.id == bindparam("i"))
            .values(status=status, reason=bindparam("r"), updated_at=utcnow()),
            rows,
        )
        if status == "skipped":
            self.progress.skipped += len(rows)
        else:
            self.progress.failed += len(rows)
        self.progress.done += len(rows)

    def _claim(self) -> _Claimed | None:
        """Take the next due queued rows under a new claim, and commit. Concurrent senders
        skip each other's locked rows (PostgreSQL) or wait their turn (SQLite)."""
        now = self._now()
        sql = self._sql
        with self.store.write() as conn:
            mine = conn.execute(sql.mine).first()
            status, why = conn.execute(sql.status).one()
            if mine is None:
                self.stop.set("this sender was taken for dead (its lease ran out); run the command again")
                return None
            if status == "cancelled":
                self.stop.set("cancelled")
                return None
            if status == "paused":
                self.stop.set(why or "paused by another sender")
                return None
            self._seq += 1
            claim = f"{self.token}.{self._seq}"
            due = list(conn.execute(sql.due, {"now": now}).scalars())
            if not due:
                return None
            conn.execute(sql.take, {"ids": due, "the_claim": claim, "updated": utcnow()})
            return self._envelopes(conn, claim)

    def _record(self, claimed: _Claimed, outcomes: list[Outcome], rest: str | None, rest_reason: str,
                not_before: dt.datetime | None = None) -> None:
        """Write a batch's outcomes in one transaction, only for the rows this sender still
        holds under this claim (or that were turned ``unknown`` meanwhile: the answer that
        came is better than a guess). ``rest`` is the status for recipients the outcomes do
        not cover (queued, unknown); queued ones wait until ``not_before``."""
        now = self._now()
        covered = {o.key for o in outcomes}
        rows: dict[str, list[dict]] = {}

        def row(key: int, status: str, reason: str | None, attempts: int, provider_id=None,
                wait: dt.datetime | None = None) -> None:
            held = status == "queued"
            rows.setdefault(status, []).append({
                "id": key, "status": status, "provider_id": provider_id, "reason": reason,
                "attempts": attempts, "not_before": wait if held else None,
                "worker": None if held else self.token, "claim": None if held else claimed.claim,
            })

        for o in outcomes:
            attempts = claimed.attempts.get(o.key, 0) + 1
            if o.status == "retry":
                if attempts >= MAX_RECIPIENT_ATTEMPTS:
                    row(o.key, "failed", f"gave up after {attempts} tries: {o.reason}", attempts)
                else:
                    wait = max(_backoff(attempts), o.retry_after or 0.0)
                    row(o.key, "queued", f"try {attempts} refused for now: {o.reason}", attempts,
                        wait=now + dt.timedelta(seconds=wait))
            else:
                row(o.key, o.status, o.reason, attempts, o.provider_id)
        if rest:
            for env in claimed.envelopes:
                if env.key not in covered:
                    row(env.key, rest, rest_reason, claimed.attempts.get(env.key, 0), wait=not_before)
        with self.store.write() as conn:
            held = set(conn.execute(self._sql.held, {"the_claim": claimed.claim}).scalars())
            written = utcnow()
            for status in rows:
                rows[status] = [r for r in rows[status] if r["id"] in held]
                self._sql.write_outcomes(conn, rows[status], written)
        p = self.progress
        for status, params in rows.items():
            n = len(params)
            if status == "sent":
                p.sent += n
                p.sent_now += n
            elif status == "failed":
                p.failed += n
            elif status == "unknown":
                p.unknown += n
            if status in DONE:
                p.done += n

    def _refresh(self) -> None:
        """The figures of every sender of the campaign, at most once a second."""
        if time.monotonic() - self._refreshed < 1.0:
            return
        self._refreshed = time.monotonic()
        c = counts(self.store, self.campaign.id)
        p = self.progress
        p.done, p.sent, p.failed, p.skipped = c.done, c["sent"], c["failed"], c["skipped"]
        p.unknown = c["unknown"]

    # -- provider calls ------------------------------------------------------------------

    def _throttle(self, n: int) -> None:
        """Hold a batch of ``n`` back until the rate limit allows it."""
        if not self.rate:
            return
        now = self.clock()
        if self._next_slot > now:
            self.sleep(self._next_slot - now)
            now = self._next_slot
        self._next_slot = now + n / self.rate

    def _send(self, claimed: _Claimed) -> list[Outcome]:
        """Call the provider once. Only where the service honours the batch's idempotency
        key is an unknown outcome tried again at once (the same key drops a second copy);
        every other failure goes back to the run, which decides."""
        batch = Batch(self.template, claimed.envelopes, f"{self.campaign.uid}-{claimed.claim}",
                      label=f"{self.campaign.id}-{self.campaign.issue}")
        done: list[Outcome] = []
        for attempt in range(1, MAX_BATCH_ATTEMPTS + 1):
            try:
                return done + self.provider.send_batch(batch)
            except UnknownOutcome as exc:
                done += exc.partial
                if self.provider.idempotent and attempt < MAX_BATCH_ATTEMPTS and not self.stop:
                    covered = {o.key for o in exc.partial}
                    batch = Batch(self.template, [e for e in batch.envelopes if e.key not in covered],
                                  batch.idempotency_key, batch.label)
                    self.sleep(_backoff(attempt))  # the claim stays ours: the heartbeat renews it
                    continue
                exc.partial = done
                raise
            except BatchError as exc:
                exc.partial = done + exc.partial
                raise
            except Exception as exc:  # a fault in the adapter: the request may have gone out
                raise UnknownOutcome(
                    f"{self.provider.name}: unexpected {type(exc).__name__}: {_one_line(str(exc), 200)}",
                    partial=done,
                ) from exc
        raise AssertionError("unreachable")

    def _settle(self, claimed: _Claimed, future: Future) -> tuple[str | None, str | None]:
        """Journal a finished call; returns (fatal, paused) reasons when the run must stop."""
        try:
            self._record(claimed, future.result(), None, "")
            self._refused_in_a_row = 0
        except FatalError as exc:
            self._record(claimed, exc.partial, "queued", "not sent: the campaign stopped")
            return _one_line(str(exc)), None
        except TransientError as exc:
            # A proven refusal: nobody holds these readers while we wait; they go back to
            # the queue, due again after the backoff (or the service's Retry-After).
            self._refused_in_a_row += 1
            wait = max(_backoff(self._refused_in_a_row), exc.retry_after or 0.0)
            until = self._now() + dt.timedelta(seconds=wait)
            self._hold_until = max(self._hold_until or until, until)
            self._record(claimed, exc.partial, "queued", f"not sent yet: {_one_line(str(exc))}", until)
            if self._refused_in_a_row >= MAX_BATCH_ATTEMPTS:
                return None, _one_line(str(exc))
        except UnknownOutcome as exc:
            self._record(claimed, exc.partial, "unknown", _one_line(str(exc)))
            if exc.__cause__ is not None:  # the adapter failed in a way nobody foresaw
                return _one_line(str(exc)), None
        except BatchError as exc:
            self._record(claimed, exc.partial, "queued", _one_line(str(exc)))
            return _one_line(str(exc)), None
        return None, None

    def _next_due(self) -> tuple[dt.datetime | None, bool]:
        """(when the earliest queued reader is due, None when none is queued; whether some
        sender still has rows in flight). Rows of senders that died are settled first."""
        with self.store.write() as conn:
            _reap(conn, self.campaign.id, keep=self.token)
            queued, waiting, earliest = conn.execute(
                select(func.count(), func.count(deliveries.c.not_before), func.min(deliveries.c.not_before))
                .where(deliveries.c.campaign_id == self.campaign.id, deliveries.c.status == "queued")
            ).one()
            in_flight = conn.execute(
                select(func.count()).where(deliveries.c.campaign_id == self.campaign.id,
                                           deliveries.c.status == "sending")
            ).scalar_one()
        if not queued:
            return None, bool(in_flight)
        return (self._now() if waiting < queued else earliest), bool(in_flight)

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        self._join()
        c = counts(self.store, self.campaign.id)
        self.progress = Progress(total=c.total, done=c.done, sent=c["sent"], failed=c["failed"],
                                 skipped=c["skipped"], unknown=c["unknown"])
        beat_done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(beat_done,), daemon=True,
                                name=f"heartbeat-{self.campaign.id}")
        beat.start()
        fatal: str | None = None
        paused: str | None = None
        workers = max(1, self.provider.concurrency)
        try:
            with _signals(self.stop), ThreadPoolExecutor(max_workers=workers) as pool:
                pending: list[_Claimed] = self._recover()
                in_flight: dict[Future, _Claimed] = {}
                while True:
                    while not self.stop and not fatal and not paused and len(in_flight) < workers:
                        if pending:
                            claimed: _Claimed | None = pending.pop(0)
                        elif self._hold_until and self._now() < self._hold_until:
                            break
                        else:
                            claimed = self._claim()
                        if claimed is None:
                            break
                        if not claimed.envelopes:
                            self.on_progress(self.progress)
                            continue
                        self._throttle(len(claimed.envelopes))
                        in_flight[pool.submit(self._send, claimed)] = claimed
                    if in_flight:
                        finished, _ = wait(in_flight, timeout=POLL, return_when=FIRST_COMPLETED)
                        for future in finished:
                            f, p = self._settle(in_flight.pop(future), future)
                            fatal, paused = fatal or f, paused or p
                            self._refresh()
                            self.on_progress(self.progress)
                        continue
                    if self.stop or fatal or paused:
                        break
                    # Nothing of ours in flight and nothing to claim now: wait for readers the
                    # service asked us to try later, and for other senders' batches.
                    due, others_busy = self._next_due()
                    if due is None and not others_busy:
                        break
                    pause = POLL
                    if due is not None:
                        until = max(due, self._hold_until or due)
                        pause = min(WAIT_SLICE, max(0.0, (until - self._now()).total_seconds()))
                        if others_busy:
                            pause = min(pause, POLL)
                    if pause > 0:
                        self.sleep(pause)
                    self._refresh()
        finally:
            beat_done.set()
            beat.join()
            self.provider.close()
        return self._leave(fatal, paused)


def send_campaign(config: Config, store: Store, campaign: CampaignRow, rendered: Rendered,
                  provider: Provider | None = None, **options: Any) -> RunResult:
    """Send (or resume, or join) ``campaign``; the rendered issue must be the one it froze.
    Several processes, on several machines sharing a PostgreSQL database, may run this for
    the same campaign at once: each reader is still mailed at most once."""
    check_content(campaign, rendered)
    if campaign.status == "cancelled":
        raise CampaignError(f"the campaign for {campaign.issue} was cancelled; nothing more is sent")
    if campaign.status == "finished" and not (
        options.get("resend_unknown") and counts(store, campaign.id)["unknown"]
    ):
        raise CampaignError(f"the campaign for {campaign.issue} is finished; nothing to send")
    provider = provider or get_provider(config)
    return Sender(config, store, campaign, rendered, provider, **options).run()

# ---------------------------------------------------------------------------------------------
# Test sends


def send_test(config: Config, rendered: Rendered, addresses: list[str],
              provider: Provider | None = None, list_name: str | None = None) -> list[Outcome]:
    """Proof copies to named addresses only; the list and the journal are untouched."""
    from .subscribers import parse_address

    provider = provider or get_provider(config)
    name = list_name or rendered.issue.list_name or config.newsletter.default_list
    template = MessageTemplate(config, rendered, name, subject_prefix="[Test] ")
    secret = config.secret("NEWSLETTER_SECRET") or ""
    envelopes = []
    for n, address in enumerate(addresses, start=1):
        parsed = parse_address(address)
        token = sign(secret, "unsubscribe", {"s": 0, "l": 0}) if secret else "test"
        envelopes.append(Envelope(
            key=n, recipient=Recipient(parsed.email, ""),
            unsubscribe_url=unsubscribe_url(config, token),
            message_id=message_id(config),
        ))
    try:
        return provider.send_batch(Batch(template, envelopes, os.urandom(8).hex(), label="test"))
    finally:
        provider.close()


def send_proofs(config: Config, rendered: Rendered) -> str:
    """Proofs to ``[preview] test_recipients`` through the configured provider; one line
    saying what happened, or a CampaignError naming what failed."""
    recipients = list(config.preview.test_recipients)
    if not recipients:
        raise CampaignError(
            "no test recipients; add test_recipients = [\"you@example.com\"] to [preview] in newsletter.toml"
        )
    outcomes = send_test(config, rendered, recipients)
    failed = [f"{a}: {o.status} ({o.reason})" for a, o in zip(recipients, outcomes, strict=False) if o.status != "sent"]
    if failed:
        raise CampaignError(f"test send via {config.provider.name} failed for " + "; ".join(failed))
    return f"test sent to {', '.join(recipients)} via {config.provider.name}"
