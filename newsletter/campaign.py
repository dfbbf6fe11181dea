"""The campaign engine: freeze the audience, send in batches, journal every outcome.

Starting a campaign writes one delivery row per recipient (active members of the list, less
every suppressed address) in the same transaction that creates the campaign, and records the
rendered issue's content hash. From then on the journal, not a counter, says who is done:

- a batch is *claimed* (its rows marked ``sending`` with a batch number) and committed before
  the provider is called, and its outcomes are written in one transaction after;
- rows still ``sending`` when a run starts belong to a run that died mid-call: their outcome
  is unknown. They are resent only when the provider honours idempotency keys (same batch,
  same key) or when the user asks (``--resend-unknown``);
- a recipient who left since the freeze is *skipped*, never mailed;
- one process sends a campaign at a time: a lease on the campaign row, renewed per batch.
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
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError

from .checks import has_errors, run_checks
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
from .render import Rendered
from .store import BulkUpdate, Store
from .store.schema import campaigns, deliveries, events, lists, memberships, suppressions
from .store.schema import subscribers as subscribers_t
from .subscribers import audience_select
from .subscribers import list_id as resolve_list_id
from .tokens import Signer, sign

LEASE_SECONDS = 60
RENEW_EVERY = 5.0  # seconds between lease renewals (which also notice a cancel)
MAX_BATCH_ATTEMPTS = 6  # a batch that keeps failing transiently is put back and the run pauses
MAX_RECIPIENT_ATTEMPTS = 5  # a recipient refused "for now" this often is failed for good
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0

# Delivery statuses. queued → sending → sent | failed | queued (retry) | unknown;
# queued → skipped (left since the freeze) | cancelled.
DONE = ("sent", "failed", "skipped", "cancelled")


class CampaignError(NewsletterError):
    pass


class CampaignExists(CampaignError):
    """A campaign for this issue and list exists already."""


class CampaignBusy(CampaignError):
    """Another process is sending this campaign right now."""


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
    with store.read() as conn:
        stmt = _campaign_select()
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
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign.id).values(
                content_hash=rendered.content_hash, source_hashes=rendered.source_hashes,
                subject=rendered.subject, web_html=rendered.web_html, updated_at=utcnow(),
            )
        )


def cancel(store: Store, campaign: CampaignRow) -> int:
    """Stop a campaign for good; returns how many queued recipients will not get it."""
    now = utcnow()
    with store.write() as conn:
        n = conn.execute(
            update(deliveries)
            .where(deliveries.c.campaign_id == campaign.id, deliveries.c.status.in_(("queued", "unknown")))
            .values(status="cancelled", reason="campaign cancelled", updated_at=now)
        ).rowcount
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign.id)
            .values(status="cancelled", finished_at=now, updated_at=now)
        )
    return n


# ---------------------------------------------------------------------------------------------
# Sending


@dataclass
class Progress:
    """What a run reports after every batch; ``done`` counts finished recipients."""

    total: int
    done: int
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.sent / elapsed if elapsed > 0 else 0.0


@dataclass
class RunResult:
    campaign: CampaignRow
    counts: Counts
    finished: bool
    stopped_reason: str | None = None


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


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: trust the lease's expiry
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_alive(owner: str | None, expires: dt.datetime | None, now: dt.datetime | None = None) -> bool:
    """Whether a lease still holds: unexpired, and (on this machine) its process alive."""
    if not owner or expires is None or expires <= (now or utcnow()):
        return False
    return _owner_alive(owner)


def _acquire(store: Store, campaign_id: int) -> str:
    owner = _owner()
    now = utcnow()
    with store.write() as conn:
        # FOR UPDATE: on PostgreSQL a second process asking at the same moment waits here and
        # then sees this one's lease, instead of overwriting it (SQLite's write lock does this).
        row = conn.execute(
            select(campaigns.c.lease_owner, campaigns.c.lease_expires)
            .where(campaigns.c.id == campaign_id).with_for_update()
        ).one()
        if row.lease_owner != owner and lease_alive(row.lease_owner, row.lease_expires, now):
            raise CampaignBusy(
                f"another process ({row.lease_owner}) is sending this campaign; wait for it to "
                "finish, or run `newsletter status` to follow it"
            )
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign_id).values(
                lease_owner=owner, lease_expires=now + dt.timedelta(seconds=LEASE_SECONDS)
            )
        )
    return owner


def _renew(conn: Connection, campaign_id: int, owner: str) -> str:
    """Extend the lease; returns the campaign's status (the user may have cancelled it)."""
    conn.execute(
        update(campaigns).where(campaigns.c.id == campaign_id, campaigns.c.lease_owner == owner).values(
            lease_expires=utcnow() + dt.timedelta(seconds=LEASE_SECONDS)
        )
    )
    return conn.execute(select(campaigns.c.status).where(campaigns.c.id == campaign_id)).scalar_one()


def _release(store: Store, campaign_id: int, owner: str, **values: Any) -> None:
    """Give the lease back and record how the run ended; a cancel made meanwhile stands."""
    with store.write() as conn:
        current = conn.execute(select(campaigns.c.status).where(campaigns.c.id == campaign_id)).scalar_one()
        if current == "cancelled":
            values.pop("status", None)
        conn.execute(
            update(campaigns).where(campaigns.c.id == campaign_id, campaigns.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires=None, updated_at=utcnow(), **values)
        )


@dataclass
class _Claimed:
    number: int
    envelopes: list[Envelope]
    attempts: dict[int, int]


class Sender:
    """One run of one campaign: claims batches, sends them in parallel, journals outcomes."""

    def __init__(self, config: Config, store: Store, campaign: CampaignRow, rendered: Rendered,
                 provider: Provider, *, resend_unknown: bool = False,
                 on_progress: Callable[[Progress], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.campaign = campaign
        self.provider = provider
        self.template = MessageTemplate(config, rendered, campaign.list_name)
        self.resend_unknown = resend_unknown
        self.on_progress = on_progress or (lambda p: None)
        self.sleep = sleep
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
        self.stop = _StopFlag()
        self.rate = config.provider.rate_limit
        self._next_slot = 0.0

    # -- journal -------------------------------------------------------------------------

    def _recover(self) -> list[_Claimed]:
        """Rows left ``sending`` by a run that died: resent as the same batches when the
        provider is idempotent, otherwise marked unknown. Unknown rows go back to the queue
        when the user asked for it."""
        now = utcnow()
        again: list[_Claimed] = []
        with self.store.write() as conn:
            stranded = conn.execute(
                select(deliveries.c.id, deliveries.c.batch).where(
                    deliveries.c.campaign_id == self.campaign.id, deliveries.c.status == "sending"
                ).order_by(deliveries.c.id)
            ).all()
            if stranded and not self.provider.idempotent:
                conn.execute(
                    update(deliveries).where(
                        deliveries.c.campaign_id == self.campaign.id, deliveries.c.status == "sending"
                    ).values(status="unknown", reason="the sending process stopped mid-call", updated_at=now)
                )
            if self.resend_unknown:
                conn.execute(
                    update(deliveries).where(
                        deliveries.c.campaign_id == self.campaign.id, deliveries.c.status == "unknown"
                    ).values(status="queued", reason=None, updated_at=now)
                )
            if stranded and self.provider.idempotent:
                for number in sorted({row.batch for row in stranded}):
                    again.append(self._envelopes(conn, number))
        return [c for c in again if c.envelopes]

    def _envelopes(self, conn: Connection, number: int) -> _Claimed:
        """Envelopes for the rows claimed as batch ``number``; rows whose reader left since
        the freeze are skipped, and addresses no message can carry fail here."""
        c = self.campaign
        active = and_(memberships.c.status == "active", suppressions.c.email_hash.is_(None))
        rows = conn.execute(
            select(
                deliveries.c.id, deliveries.c.subscriber_id, deliveries.c.attempts,
                subscribers_t.c.email, subscribers_t.c.name,
                case((active, literal(True)), else_=literal(False)).label("mailable"),
                suppressions.c.reason.label("suppressed"), memberships.c.status.label("membership"),
            )
            .select_from(
                deliveries.outerjoin(subscribers_t, subscribers_t.c.id == deliveries.c.subscriber_id)
                .outerjoin(memberships, and_(memberships.c.subscriber_id == deliveries.c.subscriber_id,
                                             memberships.c.list_id == c.list_id))
                .outerjoin(suppressions, suppressions.c.email_hash == subscribers_t.c.email_hash)
            )
            .where(deliveries.c.campaign_id == c.id, deliveries.c.status == "sending",
                   deliveries.c.batch == number)
            .order_by(deliveries.c.id)
        ).all()
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
            # The canonical JSON of {"l": list, "s": subscriber}, written out: one per reader.
            token = self.signer.sign_encoded(f'{{"l":{c.list_id},"s":{subscriber_id}}}')
            envelopes.append(Envelope(key, recipient, unsubscribe_prefix + token, f"<{c.uid}.{key}@{domain}>"))
            attempts[key] = tries
        if skipped:
            self._close_rows(conn, "skipped", skipped)
        if refused:
            self._close_rows(conn, "failed", refused)
        return _Claimed(number=number, envelopes=envelopes, attempts=attempts)

    def _close_rows(self, conn: Connection, status: str, rows: list[dict]) -> None:
        """Rows settled without a provider call: skipped, or failed before sending."""
        from sqlalchemy import bindparam

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
        """Mark the next queued rows ``sending`` under a new batch number, and commit."""
        with self.store.write() as conn:
            if time.monotonic() >= self._renew_at:
                self._renew_at = time.monotonic() + RENEW_EVERY
                if _renew(conn, self.campaign.id, self.owner) == "cancelled":
                    self.stop.set("cancelled")
                    return None
            number = self._batch_number + 1
            next_rows = (
                select(deliveries.c.id)
                .where(deliveries.c.campaign_id == self.campaign.id, deliveries.c.status == "queued")
                .order_by(deliveries.c.id).limit(self.batch_size).scalar_subquery()
            )
            claimed = conn.execute(
                update(deliveries).where(deliveries.c.id.in_(next_rows))
                .values(status="sending", batch=number, updated_at=utcnow())
            ).rowcount
            if not claimed:
                return None
            self._batch_number = number
            return self._envelopes(conn, number)

    def _record(self, claimed: _Claimed, outcomes: list[Outcome], rest: str | None, rest_reason: str) -> None:
        """Write a batch's outcomes in one transaction. ``rest`` is the status for recipients
        the outcomes do not cover (queued, unknown)."""
        covered = {o.key for o in outcomes}
        rows: dict[str, list[dict]] = {}
        for o in outcomes:
            attempts = claimed.attempts.get(o.key, 0) + 1
            status, reason = o.status, o.reason
            if status == "retry":
                if attempts >= MAX_RECIPIENT_ATTEMPTS:
                    status, reason = "failed", f"gave up after {attempts} tries: {o.reason}"
                else:
                    status = "queued"
            rows.setdefault(status, []).append(
                {"id": o.key, "status": status, "provider_id": o.provider_id, "reason": reason,
                 "attempts": attempts}
            )
        if rest:
            for env in claimed.envelopes:
                if env.key not in covered:
                    rows.setdefault(rest, []).append(
                        {"id": env.key, "status": rest, "provider_id": None, "reason": rest_reason,
                         "attempts": claimed.attempts.get(env.key, 0)}
                    )
        with self.store.write() as conn:
            write = BulkUpdate(conn, deliveries, "id", ["status", "provider_id", "reason", "attempts"],
                               {"updated_at": utcnow()})
            for params in rows.values():
                write(conn, params)
        p = self.progress
        for status, params in rows.items():
            n = len(params)
            if status == "sent":
                p.sent += n
            elif status == "failed":
                p.failed += n
            elif status == "unknown":
                p.unknown += n
            if status in DONE:
                p.done += n

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
        """Call the provider, retrying transient failures with backoff and jitter."""
        batch = Batch(self.template, claimed.envelopes, f"{self.campaign.uid}-{claimed.number}",
                      label=f"{self.campaign.id}-{self.campaign.issue}")
        done: list[Outcome] = []
        for attempt in range(1, MAX_BATCH_ATTEMPTS + 1):
            try:
                return done + self.provider.send_batch(batch)
            except TransientError as exc:
                done += exc.partial
                covered = {o.key for o in exc.partial}
                batch = Batch(self.template, [e for e in batch.envelopes if e.key not in covered],
                              batch.idempotency_key, batch.label)
                if attempt == MAX_BATCH_ATTEMPTS or self.stop or not batch.envelopes:
                    exc.partial = done
                    raise
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
                delay = delay * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                self.sleep(delay)
            except UnknownOutcome as exc:
                done += exc.partial
                if self.provider.idempotent and attempt < MAX_BATCH_ATTEMPTS:
                    # The same key makes the service drop a copy it already accepted.
                    covered = {o.key for o in exc.partial}
                    batch = Batch(self.template, [e for e in batch.envelopes if e.key not in covered],
                                  batch.idempotency_key, batch.label)
                    self.sleep(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))
                    continue
                exc.partial = done
                raise
            except BatchError as exc:
                exc.partial = done + exc.partial
                raise
        raise AssertionError("unreachable")

    # -- the run -------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.owner = _acquire(self.store, self.campaign.id)
        self._renew_at = time.monotonic() + RENEW_EVERY
        with self.store.read() as conn:  # batch numbers go on from the last run's
            self._batch_number = conn.execute(
                select(func.coalesce(func.max(deliveries.c.batch), 0))
                .where(deliveries.c.campaign_id == self.campaign.id)
            ).scalar_one()
        c = counts(self.store, self.campaign.id)
        self.progress = Progress(total=c.total, done=c.done, sent=c["sent"], failed=c["failed"],
                                 skipped=c["skipped"], unknown=c["unknown"])
        fatal: BatchError | None = None
        paused: str | None = None
        workers = max(1, self.provider.concurrency)
        try:
            with _signals(self.stop), ThreadPoolExecutor(max_workers=workers) as pool:
                pending: list[_Claimed] = self._recover()
                in_flight: dict[Future, _Claimed] = {}
                exhausted = False
                while True:
                    while not self.stop and not fatal and not paused and len(in_flight) < workers:
                        claimed = pending.pop(0) if pending else (None if exhausted else self._claim())
                        if claimed is None:
                            exhausted = True
                            break
                        if not claimed.envelopes:
                            self.on_progress(self.progress)
                            continue
                        self._throttle(len(claimed.envelopes))
                        in_flight[pool.submit(self._send, claimed)] = claimed
                    if not in_flight:
                        break
                    finished, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        claimed = in_flight.pop(future)
                        try:
                            self._record(claimed, future.result(), None, "")
                        except FatalError as exc:
                            self._record(claimed, exc.partial, "queued", "not sent: the campaign stopped")
                            fatal = fatal or exc
                        except TransientError as exc:
                            self._record(claimed, exc.partial, "queued", f"not sent yet: {exc}")
                            paused = paused or str(exc)
                        except UnknownOutcome as exc:
                            self._record(claimed, exc.partial, "unknown", str(exc))
                        except BatchError as exc:
                            self._record(claimed, exc.partial, "queued", str(exc))
                            fatal = fatal or FatalError(str(exc))
                        self.on_progress(self.progress)
        finally:
            self.provider.close()
        final = counts(self.store, self.campaign.id)
        remaining = final["queued"] + final["sending"]
        if fatal or paused or (self.stop and remaining):
            why = str(fatal) if fatal else paused if paused else self.stop.why
            status = "cancelled" if self.stop.why == "cancelled" else "paused"
            _release(self.store, self.campaign.id, self.owner, status=status, last_error=why or "")
            return RunResult(self.campaign, final, finished=False, stopped_reason=why)
        _release(self.store, self.campaign.id, self.owner, status="finished", finished_at=utcnow(), last_error="")
        return RunResult(self.campaign, final, finished=True)


def send_campaign(config: Config, store: Store, campaign: CampaignRow, rendered: Rendered,
                  provider: Provider | None = None, **options: Any) -> RunResult:
    """Send (or resume) ``campaign``; the rendered issue must be the one it froze."""
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


def preflight(config: Config, rendered: Rendered) -> list:
    """The checks; raises when any error-level check fails."""
    findings = run_checks(config, rendered)
    if has_errors(findings):
        from .errors import ChecksFailed

        first = next(f for f in findings if f.level == "error")
        raise ChecksFailed(
            f"{rendered.slug} fails its pre-flight checks ({first}); run `newsletter check "
            f"{rendered.slug}` for the full list"
        )
    return findings

