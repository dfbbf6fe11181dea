"""Double opt-in: the confirmation email that turns a pending membership active.

Two clients send it. The public site (:mod:`newsletter.web.signup`) sends one when someone
fills in the form; the command line sends one when ``subscribers add`` makes a pending
membership, and again on ``subscribers confirm-request``. Both go through this module, so
the email, its link and the limits are the same whoever asks.

The link carries a signed token naming the subscriber (and the moment the subscriber row
was made, so the link cannot confirm a later reader who got the same id), the list, and a
fingerprint of the membership as it stood when the email went out (status and the times it
was made, confirmed and left). Confirming changes the membership, and so does leaving, so
after either the fingerprint no longer matches and the link confirms nothing; nothing has
to be stored for that. The link expires after :data:`CONFIRM_TTL`.

No address gets more than ``[web] address_signups_per_day`` confirmation emails a day,
however they were asked for: the form and the command line count against the same
fixed-window counter in ``rate_limits``, kept by address hash only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html as html_lib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, or_, select, update

from .addresses import parse_address
from .config import Config
from .content import Issue
from .errors import ConfigError, SubscriberError
from .message import MessageTemplate, Recipient, message_id, unsubscribe_url
from .providers import (
    Batch,
    BatchError,
    Envelope,
    FatalError,
    Outcome,
    Provider,
    TransientError,
    get_provider,
)
from .render import Rendered, inline_css, render_template
from .store import Store
from .store.schema import lists, memberships, rate_limits, subscribers, suppressions
from .subscribers import find_list
from .tokens import BadToken, sign, verify

CONFIRM_TTL = 7 * 24 * 3600  # seconds a confirmation link stays valid
ADDRESS_WINDOW = dt.timedelta(days=1)  # the per-address limit counts emails per this window
PAGE = 100  # pending readers handled per transaction by request_confirmations


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class ListRef:
    id: int
    name: str
    title: str


@dataclass(frozen=True, slots=True)
class ConfirmJob:
    """A confirmation email to send: to whom (by id only) and for which list."""

    subscriber_id: int
    list_id: int


def signing_secret(config: Config) -> str:
    """NEWSLETTER_SECRET, which signs the confirmation link; a ConfigError saying where to
    put it when it is not set."""
    secret = config.secret("NEWSLETTER_SECRET")
    if not secret:
        raise ConfigError(
            "NEWSLETTER_SECRET is not set; it signs the confirmation link. Put one in .env beside "
            "newsletter.toml (`newsletter init` makes one)",
            "environment",
        )
    return secret


# ---------------------------------------------------------------------------------------------
# Rate limits (fixed windows, one row per key in rate_limits)


def _upsert_counter(conn: Connection, key: str, now: dt.datetime) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    conn.execute(
        dialect_insert(rate_limits).values(key=key, window_start=now, hits=0)
        .on_conflict_do_nothing(index_elements=["key"])
    )


def over_limit(conn: Connection, key: str, limit: int, window: dt.timedelta,
               now: dt.datetime) -> int:
    """Count one hit on ``key``; 0 when it is within ``limit`` per ``window``, else the
    seconds until the window ends (and the hit is not counted)."""
    _upsert_counter(conn, key, now)
    row = conn.execute(
        select(rate_limits.c.window_start, rate_limits.c.hits)
        .where(rate_limits.c.key == key).with_for_update()
    ).one()
    start, hits = row.window_start, row.hits
    if start + window <= now:
        start, hits = now, 0
    if hits >= limit:
        return max(1, int((start + window - now).total_seconds()))
    conn.execute(update(rate_limits).where(rate_limits.c.key == key)
                 .values(window_start=start, hits=hits + 1))
    return 0


def address_limited(conn: Connection, config: Config, email_hash: str, now: dt.datetime) -> int:
    """Count one confirmation email to an address against ``[web] address_signups_per_day``;
    0 when it may go, else the seconds until it may."""
    return over_limit(conn, f"address:{email_hash}", config.web.address_signups_per_day,
                      ADDRESS_WINDOW, now)


def prune_counters(store: Store, now: dt.datetime | None = None) -> int:
    """Forget counters whose window ended long ago."""
    cutoff = (now or utcnow()) - 2 * ADDRESS_WINDOW
    with store.write() as conn:
        return conn.execute(delete(rate_limits).where(rate_limits.c.window_start < cutoff)).rowcount


# ---------------------------------------------------------------------------------------------
# The link


def membership_mark(status: str, created_at: dt.datetime, confirmed_at: dt.datetime | None,
                    unsubscribed_at: dt.datetime | None) -> str:
    """A short fingerprint of a membership's state: any confirmation or leaving changes it."""
    stamps = [status, *(t.isoformat() if t else "" for t in (created_at, confirmed_at, unsubscribed_at))]
    return hashlib.sha256("|".join(stamps).encode()).hexdigest()[:16]


def confirm_token(secret: str, subscriber_id: int, list_id: int, created_at: dt.datetime,
                  mark: str) -> str:
    """The link's token for one sign-up: the subscriber (and when the row was made), the
    list, and the membership's :func:`membership_mark` when the email was sent."""
    return sign(secret, "confirm",
                {"s": subscriber_id, "l": list_id, "c": int(created_at.timestamp()), "m": mark},
                ttl=CONFIRM_TTL)


@dataclass(frozen=True, slots=True)
class ConfirmClaim:
    """What a genuine confirmation token says."""

    subscriber_id: int
    list_id: int
    made: int  # when the subscriber row was made (Unix seconds)
    mark: str | None  # links sent before marks existed have none


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadToken("this link is damaged; copy the whole link from the email")
    return value


def read_confirm_token(secret: str, token: str, now: dt.datetime | None = None) -> ConfirmClaim:
    """The claim in a confirmation token; raises BadToken for a forged, damaged or expired one."""
    data = verify(secret, "confirm", token, now=now.timestamp() if now else None)
    mark = data.get("m")
    if mark is not None and not isinstance(mark, str):
        raise BadToken("this link is damaged; copy the whole link from the email")
    return ConfirmClaim(_int(data, "s"), _int(data, "l"), _int(data, "c"), mark)


def confirm_url(config: Config, token: str) -> str:
    return f"{config.newsletter.site_url}/confirm/{token}"


# ---------------------------------------------------------------------------------------------
# The email


def list_label(config: Config, lst: ListRef | None) -> str:
    """How pages and emails name a list: its title, else the newsletter's name (with the
    list's name when it is not the default list)."""
    n = config.newsletter
    if lst is None:
        return n.name
    if lst.title:
        return lst.title
    return n.name if lst.name == n.default_list else f"{n.name} ({lst.name})"


# The confirmation email is the same for every reader of a list on a given day but for its
# link: it is rendered (templates and CSS inlining, tens of milliseconds) once per list and
# day with this marker where the link goes, and each reader's link is put in its place.
_LINK_MARK = "https://confirm.invalid/NEWSLETTER-CONFIRM-LINK"
_rendered_cache: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
_cache_lock = threading.Lock()


def confirmation_message(config: Config, lst: ListRef, link: str) -> Rendered:
    """The confirmation email for one reader (it is one message, so nothing is left to
    personalise but the link, and the unsubscribe link in its headers)."""
    n = config.newsletter
    today = dt.datetime.now(n.timezone).date()
    key = (config.path, config.templates_dir, n, lst, today)
    with _cache_lock:
        cached = _rendered_cache.get(key)
    if cached is None:
        subject = f"Confirm your subscription to {list_label(config, lst)}"
        preheader = "Open the link and press the button to join. Not you? Ignore this email."
        context = {
            "newsletter": n, "list_label": list_label(config, lst), "confirm_url": _LINK_MARK,
            "subject": subject, "preheader": preheader, "date": today,
            "days": CONFIRM_TTL // 86400, "postal_address": n.postal_address,
            "archive_url": f"{n.site_url}/archive/", "sign_off": n.sign_off, "author": n.author,
        }
        html = inline_css(render_template(config, "web/confirm-email.html", context))
        text = render_template(config, "web/confirm-email.txt", context)
        cached = (subject, preheader, html, text)
        with _cache_lock:
            if len(_rendered_cache) >= 32:
                _rendered_cache.clear()
            _rendered_cache[key] = cached
    subject, preheader, html, text = cached
    issue = Issue(path=config.root, slug="confirm", subject=subject, preheader=preheader,
                  list_name=lst.name, send_at=None, date=today, note="", note_line=1, posts=())
    return Rendered(issue=issue, subject=subject, preheader=preheader,
                    html=html.replace(_LINK_MARK, html_lib.escape(link)),
                    text=text.replace(_LINK_MARK, link), web_html="", web_url=link, assets=(),
                    links=())


def _send(config: Config, store: Store, secret: str, job: ConfirmJob,
          provider: Provider) -> Outcome | None:
    """Send one confirmation email through ``provider`` (left open); None when there is no
    longer anyone to send it to. The link's fingerprint is taken now, just before sending."""
    with store.read() as conn:
        sub = conn.execute(
            select(subscribers.c.email, subscribers.c.created_at).where(subscribers.c.id == job.subscriber_id)
        ).first()
        lst = conn.execute(
            select(lists.c.id, lists.c.name, lists.c.title).where(lists.c.id == job.list_id)
        ).first()
        member = conn.execute(
            select(memberships.c.status, memberships.c.created_at, memberships.c.confirmed_at,
                   memberships.c.unsubscribed_at).where(
                memberships.c.list_id == job.list_id, memberships.c.subscriber_id == job.subscriber_id
            )
        ).first()
    if sub is None or lst is None or member is None:
        return None
    ref = ListRef(lst.id, lst.name, lst.title)
    mark = membership_mark(member.status, member.created_at, member.confirmed_at, member.unsubscribed_at)
    link = confirm_url(config, confirm_token(secret, job.subscriber_id, job.list_id, sub.created_at, mark))
    rendered = confirmation_message(config, ref, link)
    template = MessageTemplate(config, rendered, ref.name)
    leave = unsubscribe_url(config, sign(secret, "unsubscribe", {"s": job.subscriber_id, "l": job.list_id}))
    envelope = Envelope(key=job.subscriber_id, recipient=Recipient(sub.email, ""),
                        unsubscribe_url=leave, message_id=message_id(config))
    outcomes = provider.send_batch(Batch(template, [envelope], os.urandom(8).hex(), label="confirm"))
    return outcomes[0] if outcomes else None


def send_confirmation(config: Config, store: Store, secret: str, job: ConfirmJob,
                      provider: Provider | None = None) -> Outcome | None:
    """Send one confirmation email now (through ``provider``, closed afterwards, or the
    configured one); None when there is no longer anyone to send it to."""
    provider = provider or get_provider(config)
    try:
        return _send(config, store, secret, job, provider)
    finally:
        provider.close()


# ---------------------------------------------------------------------------------------------
# Asking again: for the command line


@dataclass(frozen=True, slots=True)
class Requested:
    """What became of one reader's confirmation email."""

    email: str
    list: str
    # sent | would_send (dry run) | limited (the per-address limit) | skipped (not pending,
    # or suppressed) | failed (the service refused it) | unknown (it may have gone out)
    outcome: str
    detail: str = ""  # why, for every outcome but sent and would_send


def _pending_filter() -> Any:
    # A reader who asked to be forgotten and signed up again may confirm (that lifts it).
    return or_(suppressions.c.email_hash.is_(None), suppressions.c.reason == "forgotten")


def count_pending(store: Store, list_name: str | None = None) -> int:
    """Pending members of a list who may be sent a confirmation email."""
    lst = find_list(store, list_name)
    if lst is None:
        return 0
    with store.read() as conn:
        return conn.execute(
            select(func.count()).select_from(_members())
            .where(memberships.c.list_id == lst.id, memberships.c.status == "pending",
                   _pending_filter())
        ).scalar_one()


def _members() -> Any:
    return memberships.join(subscribers, subscribers.c.id == memberships.c.subscriber_id).outerjoin(
        suppressions, suppressions.c.email_hash == subscribers.c.email_hash
    )


def _hours(seconds: int) -> str:
    hours = max(1, round(seconds / 3600))
    return f"{hours} hour" if hours == 1 else f"{hours} hours"


def request_confirmations(
    config: Config,
    store: Store,
    emails: Sequence[str] | None = None,
    list_name: str | None = None,
    *,
    dry_run: bool = False,
    provider: Provider | None = None,
    now: dt.datetime | None = None,
) -> Iterator[Requested]:
    """Send the confirmation email to pending members of a list: the addresses in
    ``emails``, or every pending member when ``emails`` is None. Yields one
    :class:`Requested` per reader as it goes.

    Everything that would stop every email is checked before the first one: the signing
    secret, the provider's settings, every named address (invalid, or not on the list: a
    SubscriberError, nothing sent). Members who are not pending, or whose address is
    suppressed, are skipped; each email counts against the per-address daily limit the
    sign-up form uses, and an address over it is skipped until the window ends. A service
    that refuses for good (bad credentials) stops the run with its error."""
    secret = signing_secret(config)
    lst = find_list(store, list_name)
    if lst is None:  # the default list, not made yet: nobody is on it
        if emails:
            first = parse_address(emails[0]).email
            raise SubscriberError(
                f"{first} is not on list {store.default_list!r}; add them with "
                f"`newsletter subscribers add {first}` (nothing was sent)"
            )
        return
    ref = ListRef(lst.id, lst.name, lst.title)
    named = _named_ids(store, ref, emails) if emails is not None else None
    provider = provider if provider is not None else get_provider(config)
    try:
        cursor = 0
        while True:
            with store.write(rollback=dry_run) as conn:
                rows, cursor = _page(conn, ref, named, cursor)
                if rows is None:
                    return
                claimed = [_claim(conn, config, ref, row, now or utcnow(), dry_run) for row in rows]
            for item in claimed:
                if isinstance(item, Requested):
                    yield item
                else:
                    job, email = item
                    yield _deliver(config, store, secret, job, email, ref, provider)
    finally:
        provider.close()


def _named_ids(store: Store, ref: ListRef, emails: Sequence[str]) -> list[int]:
    """The subscriber ids of ``emails`` on the list, in the order given; a SubscriberError
    for an address that is invalid or not on the list."""
    ids: list[int] = []
    with store.read() as conn:
        for raw in emails:
            address = parse_address(raw)
            sub_id = conn.execute(
                select(memberships.c.subscriber_id)
                .join(subscribers, subscribers.c.id == memberships.c.subscriber_id)
                .where(subscribers.c.email_key == address.key, memberships.c.list_id == ref.id)
            ).scalar_one_or_none()
            if sub_id is None:
                raise SubscriberError(
                    f"{address.email} is not on list {ref.name!r}; add them with "
                    f"`newsletter subscribers add {address.email}` (nothing was sent)"
                )
            if sub_id not in ids:
                ids.append(sub_id)
    return ids


def _page(conn: Connection, ref: ListRef, named: list[int] | None,
          cursor: int) -> tuple[list[Any] | None, int]:
    """The next readers to handle and the cursor after them; None when all are done.
    Every pending member: keyset paging on subscriber_id (the cursor). Named readers: in
    the order given (the cursor counts how many are done)."""
    query = select(
        memberships.c.subscriber_id, memberships.c.status, subscribers.c.email,
        subscribers.c.email_hash, suppressions.c.reason,
    ).select_from(_members()).where(memberships.c.list_id == ref.id)
    if named is None:
        rows = conn.execute(
            query.where(memberships.c.status == "pending", _pending_filter(),
                        memberships.c.subscriber_id > cursor)
            .order_by(memberships.c.subscriber_id).limit(PAGE)
        ).all()
        return (list(rows), rows[-1].subscriber_id) if rows else (None, cursor)
    wanted = named[cursor:cursor + PAGE]
    if not wanted:
        return None, cursor
    found = {row.subscriber_id: row
             for row in conn.execute(query.where(memberships.c.subscriber_id.in_(wanted)))}
    return [found[i] for i in wanted if i in found], cursor + len(wanted)


def _claim(conn: Connection, config: Config, ref: ListRef, row: Any, now: dt.datetime,
           dry_run: bool) -> Requested | tuple[ConfirmJob, str]:
    """Decide about one reader, counting the email against the address's daily limit."""
    if row.reason is not None and row.reason != "forgotten":
        return Requested(row.email, ref.name, "skipped", f"suppressed ({row.reason}); never mailed")
    if row.status == "active":
        return Requested(row.email, ref.name, "skipped", "already active")
    if row.status != "pending":
        return Requested(row.email, ref.name, "skipped",
                         "unsubscribed; they come back only by signing up again")
    wait = address_limited(conn, config, row.email_hash, now)
    if wait:
        per_day = config.web.address_signups_per_day
        return Requested(
            row.email, ref.name, "limited",
            f"had {per_day} confirmation email{'s' if per_day != 1 else ''} today "
            f"([web] address_signups_per_day); try again in {_hours(wait)}",
        )
    if dry_run:
        return Requested(row.email, ref.name, "would_send")
    return ConfirmJob(row.subscriber_id, ref.id), row.email


def _deliver(config: Config, store: Store, secret: str, job: ConfirmJob, email: str,
             ref: ListRef, provider: Provider) -> Requested:
    try:
        outcome = _send(config, store, secret, job, provider)
    except FatalError:
        raise
    except TransientError as exc:
        return Requested(email, ref.name, "failed", str(exc))
    except BatchError as exc:  # UnknownOutcome: the email may have gone out
        return Requested(email, ref.name, "unknown", str(exc))
    if outcome is None:
        return Requested(email, ref.name, "skipped", "no longer on the list")
    if outcome.status == "sent":
        return Requested(email, ref.name, "sent")
    return Requested(email, ref.name, "unknown" if outcome.status == "unknown" else "failed",
                     outcome.reason or outcome.status)


__all__ = [
    "ADDRESS_WINDOW",
    "CONFIRM_TTL",
    "ConfirmClaim",
    "ConfirmJob",
    "ListRef",
    "Requested",
    "address_limited",
    "confirm_token",
    "confirm_url",
    "confirmation_message",
    "count_pending",
    "list_label",
    "membership_mark",
    "over_limit",
    "prune_counters",
    "read_confirm_token",
    "request_confirmations",
    "send_confirmation",
    "signing_secret",
]
