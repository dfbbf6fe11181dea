"""A reader's path through the public pages: sign up, confirm, leave.

Signing up is double opt-in. The form makes (or keeps) a *pending* membership and a
confirmation email goes out through the configured provider, carrying a signed link that
expires after seven days; only that link makes the membership active. Whatever the address
(new, pending, active, unsubscribed, suppressed), the form answers the same, and the email
is sent from a background thread, so neither the answer nor its timing tells a visitor
whether an address is on the list. What does differ, out of sight:

* new, pending or unsubscribed on that list: a confirmation email (the link revives an
  unsubscribed membership: clicking it is a confirmed opt-in);
* active: nothing is sent;
* suppressed (bounced, complained, suppressed by hand): nothing is sent; an address that
  was *forgotten* may sign up again, as a new reader, and the confirmation lifts that.

A per-IP and a per-address limit (fixed windows kept in ``rate_limits``, by hash only) stop
anyone using the form to flood an inbox; a hidden honeypot field catches simple bots. The
per-address limit is shared with the command line (``subscribers add`` and
``subscribers confirm-request`` send the same email): the email, its token and that limit
live in the core module :mod:`newsletter.optin`; this module adds what only the site needs.

Links carry ids, never addresses: a confirmation token names the subscriber, the list and
the moment the subscriber row was made (so a link cannot confirm a later reader who got the
same id); an unsubscribe token (made by the campaign engine) names subscriber and list.

A confirmation token is good for the one sign-up it was made for, and once. It carries a
fingerprint of the membership as it stood when the email was sent (status, when it was made,
confirmed and left); confirming changes the membership, and so does leaving, so after either
the fingerprint no longer matches and the link confirms nothing. Nothing needs storing for
that. Opening the link (GET or HEAD, as mail scanners do) only shows a page whose button
POSTs the confirmation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from ..addresses import clean_name, parse_address
from ..config import Config
from ..errors import InvalidAddress, NewsletterError
from ..optin import (
    ADDRESS_WINDOW,
    CONFIRM_TTL,
    ConfirmJob,
    ListRef,
    address_limited,
    confirm_token,
    confirm_url,
    confirmation_message,
    list_label,
    membership_mark,
    over_limit,
    prune_counters,
    read_confirm_token,
    send_confirmation,
)
from ..providers import BatchError, Provider, get_provider
from ..store import Store
from ..store.schema import (
    LEFT_BY_LINK,
    campaigns,
    events,
    lists,
    memberships,
    subscribers,
    suppressions,
)
from ..subscribers import suppression_of
from ..tokens import BadToken, verify

log = logging.getLogger("newsletter.web")

HONEYPOT = "website"  # the hidden form field only a bot fills in
IP_WINDOW = dt.timedelta(hours=1)


class SignupError(NewsletterError):
    """The form was filled in wrongly (an invalid address, an unknown list): say so."""


class RateLimited(NewsletterError):
    """Too many sign-ups from one client."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------------------------
# Rate limits


def ip_key(secret: str, ip: str) -> str:
    """The counter key of a client IP: keyed, so the table holds no IP addresses."""
    digest = hmac.new(secret.encode("utf-8"), f"ip\n{ip}".encode(), hashlib.sha256).hexdigest()
    return f"ip:{digest[:40]}"


def check_ip(store: Store, secret: str, ip: str, per_hour: int, now: dt.datetime | None = None) -> None:
    """Raise RateLimited when ``ip`` has posted the form ``per_hour`` times this hour."""
    with store.write() as conn:
        wait = over_limit(conn, ip_key(secret, ip), per_hour, IP_WINDOW, now or utcnow())
    if wait:
        raise RateLimited("too many sign-ups from your network; try again later", wait)


# ---------------------------------------------------------------------------------------------
# Signing up


def public_list(config: Config, name: str | None) -> str:
    """The list a form may join: one of ``[web] public_lists`` (the first by default)."""
    allowed = config.web.public_lists
    wanted = (name or "").strip() or allowed[0]
    if wanted not in allowed:
        raise SignupError("there is no such list to subscribe to")
    return wanted


def _list(conn: Connection, config: Config, name: str, create: bool) -> ListRef | None:
    row = conn.execute(select(lists.c.id, lists.c.name, lists.c.title).where(lists.c.name == name)).first()
    if row is not None:
        return ListRef(row.id, row.name, row.title)
    if not create or name != config.newsletter.default_list:
        return None
    new_id = conn.execute(
        insert(lists).values(name=name, title="", created_at=utcnow()).returning(lists.c.id)
    ).scalar_one()
    return ListRef(new_id, name, "")


def request_signup(store: Store, config: Config, email: str, name: str = "",
                   list_name: str | None = None, now: dt.datetime | None = None) -> ConfirmJob | None:
    """Record a sign-up; returns the confirmation email to send, or None when none goes out
    (already active, suppressed, or this address has had its emails for today). Raises
    SignupError for an invalid address or list, the same for every valid one."""
    try:
        address = parse_address(email)
        name = clean_name(name)
    except InvalidAddress as exc:
        raise SignupError(str(exc)) from None
    wanted = public_list(config, list_name)
    now = now or utcnow()
    with store.write() as conn:
        lst = _list(conn, config, wanted, create=True)
        if lst is None:
            raise SignupError("there is no such list to subscribe to")
        if address_limited(conn, config, address.hash, now):
            return None
        found = suppression_of(conn, address.hash)
        if found is not None and found.reason != "forgotten":
            return None
        row = conn.execute(
            select(subscribers.c.id).where(subscribers.c.email_key == address.key)
        ).first()
        if row is None:
            sub_id = conn.execute(
                insert(subscribers).values(
                    email=address.email, email_key=address.key, email_hash=address.hash, name=name,
                    attributes={}, source="web", created_at=now, updated_at=now,
                ).returning(subscribers.c.id)
            ).scalar_one()
        else:
            sub_id = row.id  # a name typed by a stranger never replaces the one on record
        status = conn.execute(
            select(memberships.c.status).where(
                memberships.c.list_id == lst.id, memberships.c.subscriber_id == sub_id
            )
        ).scalar_one_or_none()
        if status is None:
            conn.execute(insert(memberships).values(
                list_id=lst.id, subscriber_id=sub_id, status="pending", source="web", created_at=now,
            ))
        elif status == "active" and found is None:
            return None
        return ConfirmJob(sub_id, lst.id)


# ---------------------------------------------------------------------------------------------
# Confirming


@dataclass(frozen=True, slots=True)
class Confirmed:
    # ready: the link would confirm (a GET shows the button); confirmed: it just did;
    # used: its sign-up is confirmed already; left: the reader left after it was sent;
    # blocked: the address is suppressed; gone: the subscriber or list no longer exists
    status: str
    list: ListRef | None


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadToken("this link is damaged; copy the whole link from the email")
    return value


def confirm(store: Store, secret: str, token: str, now: dt.datetime | None = None, *,
            apply: bool = True) -> Confirmed:
    """Make active the membership a confirmation link was made for, if it is still in the
    state the link was sent in; with ``apply=False`` only say what confirming would do
    (status ``ready`` instead of ``confirmed``), changing nothing. Raises BadToken for a
    forged, damaged or expired link (nothing changes then)."""
    claim = read_confirm_token(secret, token, now)
    sub_id, list_id, made, mark = claim.subscriber_id, claim.list_id, claim.made, claim.mark
    now = now or utcnow()
    with (store.write() if apply else store.read()) as conn:
        sub = conn.execute(
            select(subscribers.c.email_hash, subscribers.c.created_at).where(subscribers.c.id == sub_id)
        ).first()
        lst = conn.execute(select(lists.c.id, lists.c.name, lists.c.title).where(lists.c.id == list_id)).first()
        if sub is None or lst is None or int(sub.created_at.timestamp()) != made:
            return Confirmed("gone", None)
        ref = ListRef(lst.id, lst.name, lst.title)
        query = select(memberships.c.status, memberships.c.created_at, memberships.c.confirmed_at,
                       memberships.c.unsubscribed_at).where(
            memberships.c.list_id == list_id, memberships.c.subscriber_id == sub_id
        )
        row = conn.execute(query.with_for_update() if apply else query).first()
        if row is None:
            return Confirmed("gone", ref)
        found = suppression_of(conn, sub.email_hash)
        if found is not None and found.reason != "forgotten":
            return Confirmed("blocked", ref)
        current = membership_mark(row.status, row.created_at, row.confirmed_at, row.unsubscribed_at)
        fresh = current == mark if mark is not None else row.status == "pending"
        if not fresh or (row.status == "active" and found is None):
            return Confirmed("used" if row.status == "active" else "left", ref)
        if not apply:
            return Confirmed("ready", ref)
        if found is not None:
            # They asked to be forgotten once and have now opted in again and confirmed.
            conn.execute(delete(suppressions).where(suppressions.c.email_hash == sub.email_hash))
        conn.execute(
            update(memberships)
            .where(memberships.c.list_id == list_id, memberships.c.subscriber_id == sub_id)
            .values(status="active", confirmed_at=now, unsubscribed_at=None, welcome_from=now)
        )
        return Confirmed("confirmed", ref)


# ---------------------------------------------------------------------------------------------
# Leaving


@dataclass(frozen=True, slots=True)
class UnsubscribeTarget:
    subscriber_id: int
    list: ListRef | None  # None: the list is gone, or a test copy
    test: bool  # a proof or sample copy: nobody to unsubscribe
    campaign_id: int | None = None  # the issue whose link it is (links made before: None)


def read_unsubscribe(store: Store, secret: str, token: str) -> UnsubscribeTarget:
    """What an unsubscribe link names; raises BadToken for a forged or damaged one."""
    data = verify(secret, "unsubscribe", token)
    sub_id = data.get("s")
    if sub_id == 0:
        return UnsubscribeTarget(0, None, test=True)
    sub_id, list_id = _int(data, "s"), _int(data, "l")
    campaign_id = _int(data, "c") if "c" in data else None
    with store.read() as conn:
        row = conn.execute(select(lists.c.id, lists.c.name, lists.c.title).where(lists.c.id == list_id)).first()
        if campaign_id is not None and conn.execute(
                select(campaigns.c.id).where(campaigns.c.id == campaign_id)).first() is None:
            campaign_id = None  # the campaign was deleted since: the unsubscribe still counts
    return UnsubscribeTarget(sub_id, ListRef(row.id, row.name, row.title) if row else None, test=False,
                             campaign_id=campaign_id)


def unsubscribe(store: Store, target: UnsubscribeTarget, now: dt.datetime | None = None) -> bool:
    """Leave the list at once; True when this changed something (False: already left, or
    nothing to leave). Pending memberships are closed too."""
    if target.test or target.list is None:
        return False
    now = now or utcnow()
    with store.write() as conn:
        left = conn.execute(
            update(memberships)
            .where(memberships.c.list_id == target.list.id,
                   memberships.c.subscriber_id == target.subscriber_id,
                   memberships.c.status != "unsubscribed")
            .values(status="unsubscribed", unsubscribed_at=now)
        ).rowcount > 0
        if left:
            # Counted against the issue whose link it was; who left is not part of it.
            conn.execute(insert(events).values(
                provider="site", kind=LEFT_BY_LINK, email_hash=None, campaign_id=target.campaign_id,
                provider_event_id=None, detail="", occurred_at=now, created_at=now))
        return left


# ---------------------------------------------------------------------------------------------
# Sending the confirmation email (made and sent by newsletter.optin)


def deliver(config: Config, store: Store, secret: str, job: ConfirmJob,
            provider_factory: Callable[[Config], Provider] = get_provider) -> bool | None:
    """Send one confirmation email: True when it went out, False when it failed (logged,
    never raised: a bug in one must not stop the sender), None when there is no longer
    anyone to send it to."""
    try:
        outcome = send_confirmation(config, store, secret, job, provider_factory(config))
    except (BatchError, NewsletterError) as exc:
        log.error("confirmation email for subscriber %s not sent: %s", job.subscriber_id, exc)
        return False
    except Exception:
        log.exception("confirmation email for subscriber %s not sent", job.subscriber_id)
        return False
    if outcome is None:
        return None
    if outcome.status != "sent":
        log.error("confirmation email for subscriber %s %s: %s", job.subscriber_id,
                  outcome.status, outcome.reason)
    return outcome.status == "sent"


class Mailer:
    """Sends confirmation emails from a background thread, so a sign-up's answer (and how
    long it takes) is the same whether or not an email goes out. Failures are logged."""

    def __init__(self, config: Config, store: Store, secret: str,
                 provider_factory: Callable[[Config], Provider] = get_provider) -> None:
        self.config = config
        self.store = store
        self.secret = secret
        self.provider_factory = provider_factory
        self.jobs: queue.Queue[ConfirmJob | None] = queue.Queue()
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="confirmations", daemon=True)
        self._thread.start()

    def submit(self, job: ConfirmJob) -> None:
        self.jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                went = deliver(self.config, self.store, self.secret, job, self.provider_factory)
                if went is True:
                    self.sent += 1
                elif went is False:
                    self.failed += 1
            finally:
                self.jobs.task_done()

    def wait(self) -> None:
        """Block until every email submitted so far is handled (for tests and shutdown)."""
        self.jobs.join()

    def close(self, timeout: float = 10.0) -> None:
        self.jobs.put(None)
        self._thread.join(timeout)


class ProcessMailer:
    """Sends confirmation emails from a process of its own, as `newsletter serve` does.

    Building an email takes a few milliseconds of Python; in a thread of the server, every
    request waits for those turns of the interpreter lock at each of its database calls,
    which under load made the slowest sign-ups ten times slower than the rest. The process
    reads the same settings and database; it stops when told to (after the emails queued so
    far) or when the server's process is gone."""

    def __init__(self, config: Config, secret: str) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.jobs: Any = context.JoinableQueue()
        self._process = context.Process(
            target=_mail_from_process, name="confirmations", daemon=True,
            args=(str(config.path), dict(config.env), secret, self.jobs, os.getpid()),
        )
        self._process.start()

    def submit(self, job: ConfirmJob) -> None:
        self.jobs.put((job.subscriber_id, job.list_id))

    def wait(self) -> None:
        self.jobs.join()

    def close(self, timeout: float = 10.0) -> None:
        if self._process.is_alive():
            self.jobs.put(None)
            self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()


def _mail_from_process(config_path: str, environ: dict[str, str], secret: str, jobs: Any,
                       parent: int) -> None:
    """The confirmation sender's process: one email per job until told to stop."""
    import signal

    from ..config import load
    from ..store import open_store

    # Ctrl-C and SIGTERM reach the whole process group; the server decides when this stops,
    # so that what was queued still goes out.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load(config_path, environ=environ)
        store = open_store(config)
    except NewsletterError as exc:
        log.error("confirmation emails cannot be sent: %s", exc)
        config = store = None
    try:
        while True:
            try:
                item = jobs.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # the server was killed without telling
                continue
            try:
                if item is None:
                    return
                if store is None:
                    log.error("confirmation email for subscriber %s not sent: the settings or "
                              "the database could not be opened (logged above)", item[0])
                else:
                    deliver(config, store, secret, ConfirmJob(*item))
            finally:
                jobs.task_done()
    finally:
        if store is not None:
            store.close()


# What the site's modules and tests use from here, including the names it shares with the
# command line through newsletter.optin.
__all__ = [
    "ADDRESS_WINDOW",
    "CONFIRM_TTL",
    "HONEYPOT",
    "IP_WINDOW",
    "ConfirmJob",
    "Confirmed",
    "ListRef",
    "Mailer",
    "ProcessMailer",
    "RateLimited",
    "SignupError",
    "UnsubscribeTarget",
    "check_ip",
    "confirm",
    "confirm_token",
    "confirm_url",
    "confirmation_message",
    "ip_key",
    "list_label",
    "over_limit",
    "prune_counters",
    "public_list",
    "read_unsubscribe",
    "request_signup",
    "send_confirmation",
    "unsubscribe",
]
