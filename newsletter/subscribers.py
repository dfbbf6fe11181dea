"""Subscribers and lists: adding, leaving, forgetting, importing, exporting, and the
suppression rules that keep people who left off every list.

The rules, in the order they are checked (invariant 3: nobody who left is mailed again
without an explicit, confirmed opt-in):

* A suppression (bounced, complained, manual, forgotten) is global, kept by address hash,
  and outranks every membership: a suppressed address is never in an audience.
* An import never changes that. Rows for suppressed addresses, for members who
  unsubscribed, and rows the file itself marks as unsubscribed, bounced or complained are
  "kept out"; the last are recorded as such, so a later import of an older export cannot
  bring them back. Everyone else in the file joins the list as active (the file is an
  existing, consented list from another tool), or as pending when the file says so.
* ``add`` of a new address makes a pending membership (active with ``confirmed``). An
  unsubscribed member comes back only with ``confirmed=True`` (they opted in again and
  confirmed). A suppressed address comes back only with ``confirmed=True`` *and*
  ``resubscribe=True``, which lifts the suppression; their other lists go back to pending,
  because a confirmation covers only the list it was given for.
* ``forget`` erases the subscriber row and every membership and keeps only the hash, as a
  ``forgotten`` suppression.

For the campaign engine: :func:`audience_select` is the SQL for "active members of a list
whose address is not suppressed" (freeze it with INSERT ... SELECT), :func:`iter_audience`
streams it in batches, and :func:`not_suppressed` / :func:`is_mailable` re-check a
subscriber just before sending.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    null,
    select,
    update,
)

from .addresses import ParsedAddress, clean_name, parse_address, single_line
from .errors import ImportFileError, InvalidAddress, ListError, ListNotFound, SubscriberError
from .store import BulkInsert, Store
from .store.schema import MEMBERSHIP_STATUSES, SUPPRESSION_REASONS, lists, memberships, suppressions
from .store.schema import subscribers as subscribers_t
from .subscriber_file import (
    JsonSubscriberFile,
    Record,
    Rejection,
    SubscriberFile,
    open_subscriber_file,
)

LIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# What `subscribers list --status` accepts: a membership status, or a suppression reason
# (which outranks it). Forgotten addresses have no row left to list.
STATUSES = ("active", "pending", "unsubscribed", "bounced", "complained", "manual")
# Rows per batch of statements. Each chunk's addresses go into IN (...) lists, which SQLite
# before 3.32 caps at 999 parameters; larger chunks were no faster and held more memory.
IMPORT_CHUNK = 500
SUMMARY_REJECTIONS = 20  # rejected rows kept in memory for the summary; the file has all


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------------------------
# Lists


@dataclass(frozen=True, slots=True)
class ListInfo:
    id: int
    name: str
    title: str
    created_at: dt.datetime
    counts: dict[str, int] = field(default_factory=dict)  # effective status -> members

    @property
    def active(self) -> int:
        return self.counts.get("active", 0)


def check_list_name(name: str) -> str:
    if not LIST_NAME.fullmatch(name):
        raise ListError(
            f"{name!r} is not a list name: use lowercase letters, digits, - and _ "
            "(up to 63 characters), e.g. weekly"
        )
    return name


def _list_names(conn: Connection) -> list[str]:
    return list(conn.scalars(select(lists.c.name).order_by(lists.c.name)))


def _not_found(conn: Connection, name: str) -> ListNotFound:
    names = _list_names(conn)
    existing = ", ".join(names) if names else "none yet"
    return ListNotFound(
        f"no list named {name!r} (lists: {existing}); create it with "
        f"`newsletter lists create {name}`"
    )


def _find_list(conn: Connection, name: str) -> ListInfo | None:
    row = conn.execute(select(lists).where(lists.c.name == name)).one_or_none()
    return ListInfo(row.id, row.name, row.title, row.created_at) if row else None


def _resolve_list(conn: Connection, store: Store, name: str | None) -> ListInfo:
    """The named list, or the default list (created on first use) when no name is given."""
    name = name or store.default_list
    found = _find_list(conn, name)
    if found:
        return found
    if name != store.default_list:
        raise _not_found(conn, name)
    return _insert_list(conn, name, "")


def _resolve_list_readonly(conn: Connection, store: Store, name: str | None) -> ListInfo | None:
    """Like _resolve_list, for queries: a default list not made yet is simply empty."""
    name = name or store.default_list
    found = _find_list(conn, name)
    if found is None and name != store.default_list:
        raise _not_found(conn, name)
    return found


def find_list(store: Store, name: str | None = None) -> ListInfo | None:
    """The named list (the default list when no name is given); None for a default list
    not made yet, ListNotFound for any other unknown name."""
    with store.read() as conn:
        return _resolve_list_readonly(conn, store, name)


def _insert_list(conn: Connection, name: str, title: str) -> ListInfo:
    now = utcnow()
    list_id = conn.execute(
        insert(lists).values(name=name, title=title, created_at=now).returning(lists.c.id)
    ).scalar_one()
    return ListInfo(list_id, name, title, now)


def create_list(store: Store, name: str, title: str = "") -> ListInfo:
    check_list_name(name)
    with store.write() as conn:
        if _find_list(conn, name):
            raise ListError(f"list {name!r} exists already; `newsletter lists list` shows all lists")
        return _insert_list(conn, name, single_line(title))


def get_lists(store: Store) -> list[ListInfo]:
    """Every list with its member counts by effective status."""
    with store.read() as conn:
        counts: dict[int, dict[str, int]] = {}
        status = _status_expr()
        stmt = (
            select(memberships.c.list_id, status, func.count())
            .select_from(_members_join())
            .group_by(memberships.c.list_id, status)
        )
        for list_id, status, count in conn.execute(stmt):
            counts.setdefault(list_id, {})[status] = count
        return [
            ListInfo(r.id, r.name, r.title, r.created_at, counts.get(r.id, {}))
            for r in conn.execute(select(lists).order_by(lists.c.name))
        ]


def rename_list(store: Store, old: str, new: str, title: str | None = None) -> ListInfo:
    check_list_name(new)
    with store.write() as conn:
        found = _find_list(conn, old)
        if found is None:
            raise _not_found(conn, old)
        if new != old and _find_list(conn, new):
            raise ListError(f"cannot rename {old!r} to {new!r}: a list named {new!r} exists")
        values: dict[str, Any] = {"name": new}
        if title is not None:
            values["title"] = single_line(title)
        conn.execute(update(lists).where(lists.c.id == found.id).values(**values))
        return ListInfo(found.id, new, values.get("title", found.title), found.created_at)


def delete_list(store: Store, name: str) -> int:
    """Delete a list and its memberships (subscribers stay); refuse while any campaign
    refers to it, since its history would lose its audience. Returns members removed."""
    with store.write() as conn:
        found = _find_list(conn, name)
        if found is None:
            raise _not_found(conn, name)
        used = campaigns_using(conn, found.id)
        if used:
            raise ListError(
                f"list {name!r} is used by {used} campaign{'s' if used != 1 else ''} and cannot "
                f"be deleted; rename it instead (`newsletter lists rename {name} NEW`)"
            )
        removed = conn.execute(
            delete(memberships).where(memberships.c.list_id == found.id)
        ).rowcount
        conn.execute(delete(lists).where(lists.c.id == found.id))
        return removed


def campaigns_using(conn: Connection, list_id: int) -> int:
    """Campaigns referring to a list."""
    from .store.schema import campaigns

    return conn.execute(
        select(func.count()).select_from(campaigns).where(campaigns.c.list_id == list_id)
    ).scalar_one()


# ---------------------------------------------------------------------------------------------
# One subscriber at a time


@dataclass(frozen=True, slots=True)
class Suppression:
    reason: str
    detail: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AddResult:
    email: str
    list: str
    status: str  # the membership status afterwards: pending or active
    outcome: str  # added | confirmed | resubscribed | unchanged


def add(
    store: Store,
    email: str,
    *,
    name: str = "",
    list_name: str | None = None,
    confirmed: bool = False,
    resubscribe: bool = False,
    source: str = "manual",
    attributes: dict[str, Any] | None = None,
    check_deliverability: bool = False,
) -> AddResult:
    """Add an address to a list, pending its confirmation unless ``confirmed``.

    Refuses an unsubscribed member without ``confirmed``, and a suppressed address without
    both ``confirmed`` and ``resubscribe`` (see the module docstring)."""
    address = parse_address(email, check_deliverability=check_deliverability)
    name = clean_name(name)
    if resubscribe and not confirmed:
        raise SubscriberError(
            f"{address.email}: --resubscribe lifts a suppression only together with "
            "--confirmed, once they have opted in again and confirmed"
        )
    now = utcnow()
    with store.write() as conn:
        lst = _resolve_list(conn, store, list_name)
        lifted = False
        found = suppression_of(conn, address.hash)
        if found is not None:
            if not resubscribe:
                raise SubscriberError(
                    f"{address.email} is suppressed ({_describe(found)}) and is never mailed "
                    "again; only if they have opted in again and confirmed, rerun with "
                    "--confirmed --resubscribe"
                )
            conn.execute(delete(suppressions).where(suppressions.c.email_hash == address.hash))
            lifted = True
        sub_id = _upsert_subscriber(conn, address, name, attributes or {}, source, now)
        if lifted:
            # A confirmation covers the list it was given for; the others wait for theirs.
            conn.execute(
                update(memberships)
                .where(
                    memberships.c.subscriber_id == sub_id,
                    memberships.c.list_id != lst.id,
                    memberships.c.status == "active",
                )
                .values(status="pending", confirmed_at=None)
            )
        status = conn.execute(
            select(memberships.c.status, memberships.c.unsubscribed_at).where(
                memberships.c.list_id == lst.id, memberships.c.subscriber_id == sub_id
            )
        ).one_or_none()
        if status is None:
            new_status = "active" if confirmed else "pending"
            conn.execute(
                insert(memberships).values(
                    list_id=lst.id,
                    subscriber_id=sub_id,
                    status=new_status,
                    source=source,
                    created_at=now,
                    confirmed_at=now if confirmed else None,
                    welcome_from=now if confirmed else None,
                )
            )
            return AddResult(address.email, lst.name, new_status, "added")
        if status.status == "unsubscribed" and not confirmed:
            when = f" on {status.unsubscribed_at:%Y-%m-%d}" if status.unsubscribed_at else ""
            raise SubscriberError(
                f"{address.email} unsubscribed from list {lst.name!r}{when}; add them back only "
                "with their confirmed opt-in: rerun with --confirmed once they have confirmed"
            )
        if status.status == "active" or not confirmed:
            outcome = "resubscribed" if lifted else "unchanged"
            return AddResult(address.email, lst.name, status.status, outcome)
        conn.execute(
            _set_status(lst.id, sub_id).values(
                status="active", confirmed_at=now, unsubscribed_at=None, welcome_from=now
            )
        )
        outcome = "confirmed" if status.status == "pending" and not lifted else "resubscribed"
        return AddResult(address.email, lst.name, "active", outcome)


def confirm(store: Store, email: str, list_name: str | None = None) -> bool:
    """Turn a pending membership active (the double opt-in link). False when there was
    nothing pending, e.g. the link was clicked twice; never revives an unsubscribe."""
    address = parse_address(email)
    now = utcnow()
    with store.write() as conn:
        lst = _resolve_list(conn, store, list_name)
        if suppression_of(conn, address.hash) is not None:
            return False
        sub_id = _subscriber_id(conn, address)
        if sub_id is None:
            return False
        result = conn.execute(
            _set_status(lst.id, sub_id)
            .where(memberships.c.status == "pending")
            .values(status="active", confirmed_at=now, welcome_from=now)
        )
        return result.rowcount == 1


def unsubscribe(
    store: Store, email: str, list_name: str | None = None, *, all_lists: bool = False
) -> list[str]:
    """Unsubscribe from one list (or all); return the lists left, empty when there was
    nothing to leave (already unsubscribed)."""
    address = parse_address(email)
    now = utcnow()
    with store.write() as conn:
        sub_id = _subscriber_id(conn, address)
        if sub_id is None:
            raise SubscriberError(
                f"{address.email} is not a subscriber; `newsletter subscribers list` shows who is"
            )
        where = [memberships.c.subscriber_id == sub_id]
        if not all_lists:
            lst = _resolve_list(conn, store, list_name)
            member = conn.execute(
                select(memberships.c.status).where(
                    memberships.c.list_id == lst.id, memberships.c.subscriber_id == sub_id
                )
            ).one_or_none()
            if member is None:
                on = _lists_of(conn, sub_id)
                raise SubscriberError(
                    f"{address.email} is not on list {lst.name!r} (their lists: "
                    f"{', '.join(on) or 'none'}); pass --list NAME or --all-lists"
                )
            where.append(memberships.c.list_id == lst.id)
        left = list(
            conn.scalars(
                select(lists.c.name)
                .join(memberships, memberships.c.list_id == lists.c.id)
                .where(*where, memberships.c.status != "unsubscribed")
                .order_by(lists.c.name)
            )
        )
        conn.execute(
            update(memberships)
            .where(*where, memberships.c.status != "unsubscribed")
            .values(status="unsubscribed", unsubscribed_at=now)
        )
        return left


@dataclass(frozen=True, slots=True)
class ForgetResult:
    email: str
    found: bool  # False: the address was unknown; its hash is recorded all the same
    lists: list[str]


def forget(store: Store, email: str) -> ForgetResult:
    """Erase everything about an address but its hash (a ``forgotten`` suppression), so no
    import or form adds it back without a new, confirmed opt-in."""
    address = parse_address(email)
    now = utcnow()
    with store.write() as conn:
        sub_id = _subscriber_id(conn, address)
        on: list[str] = []
        if sub_id is not None:
            on = _lists_of(conn, sub_id)
            conn.execute(delete(memberships).where(memberships.c.subscriber_id == sub_id))
            conn.execute(delete(subscribers_t).where(subscribers_t.c.id == sub_id))
        if suppression_of(conn, address.hash) is None:
            conn.execute(
                insert(suppressions).values(
                    email_hash=address.hash, reason="forgotten", detail="", created_at=now
                )
            )
        else:
            # The detail of a bounce can quote the address; keep nothing but the hash.
            conn.execute(
                update(suppressions)
                .where(suppressions.c.email_hash == address.hash)
                .values(reason="forgotten", detail="")
            )
        return ForgetResult(address.email, sub_id is not None, on)


def suppress(store: Store, email: str, reason: str, detail: str = "") -> bool:
    """Suppress an address everywhere (bounce and complaint webhooks, or by hand). False
    when it already was; the first reason stays."""
    if reason not in SUPPRESSION_REASONS or reason == "forgotten":
        raise SubscriberError(
            f"{reason!r} is not a suppression reason; use bounced, complained or manual "
            "(to erase an address, use forget)"
        )
    address = parse_address(email)
    with store.write() as conn:
        return suppress_hash(conn, address.hash, reason, detail)


def suppress_hash(conn: Connection, email_hash: str, reason: str, detail: str = "") -> bool:
    """Suppress by hash inside the caller's transaction; False when already suppressed."""
    if suppression_of(conn, email_hash) is not None:
        return False
    conn.execute(
        insert(suppressions).values(
            email_hash=email_hash, reason=reason, detail=detail[:2000], created_at=utcnow()
        )
    )
    return True


def suppression_of(conn: Connection, email_hash: str) -> Suppression | None:
    row = conn.execute(
        select(suppressions.c.reason, suppressions.c.detail, suppressions.c.created_at).where(
            suppressions.c.email_hash == email_hash
        )
    ).one_or_none()
    return Suppression(row.reason, row.detail, row.created_at) if row else None


def get_suppression(store: Store, email: str) -> Suppression | None:
    """Why an address is suppressed, or None when it is not."""
    with store.read() as conn:
        return suppression_of(conn, parse_address(email).hash)


def _describe(found: Suppression) -> str:
    words = {"bounced": "it bounced", "complained": "they marked it as spam",
             "manual": "suppressed by hand", "forgotten": "erased on request"}
    return f"{words.get(found.reason, found.reason)} on {found.created_at:%Y-%m-%d}"


def _subscriber_id(conn: Connection, address: ParsedAddress) -> int | None:
    return conn.execute(
        select(subscribers_t.c.id).where(subscribers_t.c.email_key == address.key)
    ).scalar_one_or_none()


def _lists_of(conn: Connection, sub_id: int) -> list[str]:
    return list(
        conn.scalars(
            select(lists.c.name)
            .join(memberships, memberships.c.list_id == lists.c.id)
            .where(memberships.c.subscriber_id == sub_id)
            .order_by(lists.c.name)
        )
    )


def _upsert_subscriber(
    conn: Connection,
    address: ParsedAddress,
    name: str,
    attributes: dict[str, Any],
    source: str,
    now: dt.datetime,
) -> int:
    row = conn.execute(
        select(subscribers_t.c.id, subscribers_t.c.name, subscribers_t.c.attributes).where(
            subscribers_t.c.email_key == address.key
        )
    ).one_or_none()
    if row is None:
        return conn.execute(
            insert(subscribers_t)
            .values(
                email=address.email,
                email_key=address.key,
                email_hash=address.hash,
                name=name,
                attributes=attributes,
                source=source,
                created_at=now,
                updated_at=now,
            )
            .returning(subscribers_t.c.id)
        ).scalar_one()
    merged = {**(row.attributes or {}), **attributes}
    if (name and name != row.name) or merged != row.attributes:
        conn.execute(
            update(subscribers_t)
            .where(subscribers_t.c.id == row.id)
            .values(name=name or row.name, attributes=merged, updated_at=now)
        )
    return row.id


def _set_status(list_id: int, sub_id: int) -> Any:
    return update(memberships).where(
        memberships.c.list_id == list_id, memberships.c.subscriber_id == sub_id
    )


# ---------------------------------------------------------------------------------------------
# Queries: members, audience, stats


@dataclass(frozen=True, slots=True)
class Member:
    subscriber_id: int
    email: str
    name: str
    list: str
    status: str  # effective: a suppression reason outranks the membership status
    source: str
    attributes: dict[str, Any]
    created_at: dt.datetime
    confirmed_at: dt.datetime | None
    unsubscribed_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class AudienceMember:
    subscriber_id: int
    email: str
    name: str
    attributes: dict[str, Any]


def _members_join() -> Any:
    return memberships.join(
        subscribers_t, subscribers_t.c.id == memberships.c.subscriber_id
    ).outerjoin(suppressions, suppressions.c.email_hash == subscribers_t.c.email_hash)


def _status_expr() -> ColumnElement[str]:
    return case(
        (suppressions.c.reason.is_not(None), suppressions.c.reason),
        else_=memberships.c.status,
    )


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise SubscriberError(f"{status!r} is not a status; use one of {', '.join(STATUSES)}")
    return status


def members_select(list_id: int | None, status: str | None = None) -> Select[Any]:
    """Members of a list (or of every list) with their effective status, in a stable order."""
    stmt = select(
        memberships.c.subscriber_id,
        subscribers_t.c.email,
        subscribers_t.c.name,
        lists.c.name.label("list"),
        _status_expr().label("status"),
        memberships.c.source,
        subscribers_t.c.attributes,
        memberships.c.created_at,
        memberships.c.confirmed_at,
        memberships.c.unsubscribed_at,
    ).select_from(_members_join().join(lists, lists.c.id == memberships.c.list_id))
    if list_id is not None:
        stmt = stmt.where(memberships.c.list_id == list_id)
    if status in MEMBERSHIP_STATUSES:
        stmt = stmt.where(memberships.c.status == status, suppressions.c.email_hash.is_(None))
    elif status is not None:
        stmt = stmt.where(suppressions.c.reason == status)
    return stmt.order_by(memberships.c.list_id, memberships.c.subscriber_id)


def iter_members(
    store: Store,
    list_name: str | None = None,
    *,
    status: str | None = None,
    all_lists: bool = False,
    batch_size: int = 1000,
) -> Iterator[Member]:
    """Stream the members of a list (or of all lists), ``batch_size`` rows at a time from a
    server-side cursor, so memory stays flat however long the list is. A bad status or an
    unknown list is raised here, before the first row, so no output has started."""
    check_status(status)
    list_id = None
    if not all_lists:
        with store.read() as conn:
            lst = _resolve_list_readonly(conn, store, list_name)
        if lst is None:
            return iter(())
        list_id = lst.id
    return _stream_members(store, members_select(list_id, status), batch_size)


def _stream_members(store: Store, stmt: Select[Any], batch_size: int) -> Iterator[Member]:
    with store.read() as conn:
        for row in conn.execution_options(yield_per=batch_size).execute(stmt):
            yield Member(*row)


def not_suppressed() -> ColumnElement[bool]:
    """True for a subscriber row whose address is not suppressed (correlates on
    subscribers.email_hash; an anti-join on the suppressions primary key)."""
    return ~exists().where(suppressions.c.email_hash == subscribers_t.c.email_hash)


def audience_select(list_id: int) -> Select[Any]:
    """Active members of a list whose address is not suppressed: subscriber_id, email,
    name, attributes, ordered by subscriber_id. Use it in INSERT ... SELECT to freeze a
    campaign's audience in one statement."""
    return (
        select(
            memberships.c.subscriber_id,
            subscribers_t.c.email,
            subscribers_t.c.name,
            subscribers_t.c.attributes,
        )
        .select_from(
            memberships.join(subscribers_t, subscribers_t.c.id == memberships.c.subscriber_id)
        )
        .where(
            memberships.c.list_id == list_id,
            memberships.c.status == "active",
            not_suppressed(),
        )
        .order_by(memberships.c.subscriber_id)
    )


def list_id(store: Store, list_name: str | None = None) -> int:
    """The id of a list (the default list, created on first use, when no name is given)."""
    with store.write() as conn:
        return _resolve_list(conn, store, list_name).id


def iter_audience(
    store: Store, list_name: str | None = None, *, batch_size: int = 1000
) -> Iterator[list[AudienceMember]]:
    """The audience in batches, each read in its own short transaction (keyset paging on
    subscriber_id), so a long send never holds a read snapshot open."""
    with store.read() as conn:
        lst = _resolve_list_readonly(conn, store, list_name)
    if lst is None:
        return
    last = 0
    while True:
        with store.read() as conn:
            rows = conn.execute(
                audience_select(lst.id)
                # Both sides of the join bounded: PostgreSQL does not carry the bound across
                # the join, and a plan it keeps for the prepared statement (a merge join)
                # would otherwise read the subscribers from the first one on every page.
                .where(memberships.c.subscriber_id > last, subscribers_t.c.id > last)
                .limit(batch_size)
            ).all()
        if not rows:
            return
        yield [AudienceMember(*row) for row in rows]
        last = rows[-1].subscriber_id


def is_mailable(conn: Connection, subscriber_id: int, list_id: int) -> bool:
    """The last check before sending: still an active member and not suppressed."""
    return (
        conn.execute(
            select(memberships.c.subscriber_id)
            .join(subscribers_t, subscribers_t.c.id == memberships.c.subscriber_id)
            .where(
                memberships.c.subscriber_id == subscriber_id,
                memberships.c.list_id == list_id,
                memberships.c.status == "active",
                not_suppressed(),
            )
        ).first()
        is not None
    )


@dataclass(frozen=True, slots=True)
class WeekStats:
    start: dt.date  # the Monday that begins the week, in the newsletter's time zone
    joins: int  # memberships confirmed (became active)
    leaves: int  # memberships unsubscribed
    suppressed: int  # addresses bounced, complained, suppressed or forgotten


@dataclass(frozen=True, slots=True)
class Stats:
    lists: list[ListInfo]
    weeks: list[WeekStats]
    subscribers: int
    suppressions: dict[str, int]


def stats(
    store: Store,
    *,
    weeks: int = 8,
    now: dt.datetime | None = None,
    tz: dt.tzinfo = dt.UTC,
) -> Stats:
    """Members per list and status, and joins and leaves per week (Monday to Sunday in
    ``tz``) for the last ``weeks`` weeks, this one included. Counted in SQL: one pass."""
    now = (now or utcnow()).astimezone(tz)
    monday = now.date() - dt.timedelta(days=now.weekday())
    starts = [monday - dt.timedelta(weeks=i) for i in range(weeks - 1, -1, -1)]
    bounds = [
        (
            dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC),
            dt.datetime.combine(day + dt.timedelta(weeks=1), dt.time(), tz).astimezone(dt.UTC),
        )
        for day in starts
    ]

    def in_week(column: Any, lo: dt.datetime, hi: dt.datetime) -> Any:
        return func.coalesce(func.sum(case((and_(column >= lo, column < hi), 1), else_=0)), 0)

    all_lists = get_lists(store)
    with store.read() as conn:
        joins_leaves = conn.execute(
            select(
                *(in_week(memberships.c.confirmed_at, lo, hi) for lo, hi in bounds),
                *(in_week(memberships.c.unsubscribed_at, lo, hi) for lo, hi in bounds),
            )
        ).one()
        suppressed = conn.execute(
            select(*(in_week(suppressions.c.created_at, lo, hi) for lo, hi in bounds))
        ).one()
        total = conn.execute(select(func.count()).select_from(subscribers_t)).scalar_one()
        by_reason = dict(
            conn.execute(
                select(suppressions.c.reason, func.count()).group_by(suppressions.c.reason)
            ).all()
        )
    return Stats(
        lists=all_lists,
        weeks=[
            WeekStats(day, int(joins_leaves[i]), int(joins_leaves[weeks + i]), int(suppressed[i]))
            for i, day in enumerate(starts)
        ],
        subscribers=total,
        suppressions=by_reason,
    )


# ---------------------------------------------------------------------------------------------
# Import


@dataclass(slots=True)
class ImportSummary:
    path: Path
    list: str  # the list the import names (or the default list)
    dry_run: bool
    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_out: int = 0
    rejected: int = 0
    duplicates: int = 0  # rows merged into an earlier row for the same address (and list)
    rejections: list[Rejection] = field(default_factory=list)  # the first few, for display
    rejected_path: Path | None = None  # where every rejected row was written
    lists: list[str] = field(default_factory=list)  # the lists rows went into, in order
    created_lists: list[str] = field(default_factory=list)  # named by a JSON file, made now
    welcomed: int | None = None  # with --welcome: readers who joined the welcome sequences

    def count(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


def rejected_path_for(path: Path, rejects: Path | str | None = None) -> Path:
    """Where the rejected rows of importing ``path`` go: ``rejects`` when given, else
    readers.csv -> readers.rejected.csv (backup.json -> backup.rejected.json) in the current
    folder (not beside the input, whose folder may be read-only or someone else's)."""
    if rejects is not None:
        return Path(rejects)
    suffix = ".json" if path.suffix.lower() == ".json" else ".csv"
    return Path.cwd() / f"{path.stem}.rejected{suffix}"


def import_file(
    store: Store,
    source: SubscriberFile | JsonSubscriberFile | Path | str,
    *,
    list_name: str | None = None,
    email_column: str | None = None,
    dry_run: bool = False,
    check_deliverability: bool = False,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = IMPORT_CHUNK,
    rejects: Path | str | None = None,
    welcome: bool = False,
) -> ImportSummary:
    """Import a subscriber file (a CSV, or this tool's JSON export) in one transaction: all
    valid rows go in, or (on any error, or a kill) nothing does. ``dry_run`` does the same
    work and rolls back, so its summary is exactly what a real run would report.

    A CSV goes into one list (``list_name``, or the default list). Each item of a JSON file
    joins the list it names (made when missing; items naming none join the default list),
    unless ``list_name`` puts them all into that one. Rows for the same address (on the same
    list) are merged: the later row wins for every field it fills in, except the status,
    where the stricter wins (see :meth:`Record.merge`).

    Rejected rows are written to ``rejects``, by default ``<name>.rejected.csv`` (or
    ``.json``) in the current folder (not on a dry run). ``progress`` is called with the
    bytes read so far. ``source`` may be a path or an already opened file (then
    ``email_column`` and ``check_deliverability`` were given when opening it)."""
    if not isinstance(source, SubscriberFile | JsonSubscriberFile):
        with open_subscriber_file(
            source, email_column=email_column, check_deliverability=check_deliverability
        ) as opened:
            return import_file(
                store, opened, list_name=list_name, dry_run=dry_run, progress=progress,
                chunk_size=chunk_size, rejects=rejects, welcome=welcome,
            )
    path = source.path
    rejected_path = rejected_path_for(path, rejects)
    if rejected_path.resolve() == path.resolve():
        raise ImportFileError(
            f"{rejected_path}: is the file being imported; name another file for the "
            "rejected rows"
        )
    per_row = source.lists_in_file and list_name is None
    rejects_out = _RejectedWriter(
        rejected_path, source.header, enabled=not dry_run, kind=source.kind
    )
    try:
        with store.write(rollback=dry_run) as conn:
            summary = ImportSummary(path=path, list=list_name or store.default_list,
                                    dry_run=dry_run)
            targets = _ImportLists(conn, store, summary)
            if not per_row:
                targets.get(list_name)  # an unknown list fails before any row is read
            run = _ImportRun(conn, f"import:{path.name}"[:200], summary)
            for chunk in _chunks(source, chunk_size):
                groups: dict[str | None, dict[str, Record]] = {}
                for item in chunk:
                    summary.rows += 1
                    if isinstance(item, Rejection):
                        summary.rejected += 1
                        if len(summary.rejections) < SUMMARY_REJECTIONS:
                            summary.rejections.append(item)
                        rejects_out.write(item)
                        continue
                    records = groups.setdefault(item.list if per_row else list_name, {})
                    if item.key in records:
                        records[item.key].merge(item)
                        summary.duplicates += 1
                    else:
                        records[item.key] = item
                for target, records in groups.items():
                    run.apply(targets.get(target).id, list(records.values()))
                if progress:
                    progress(source.bytes_read)
            if not summary.lists:
                summary.lists.append(summary.list)
            if welcome:
                summary.welcomed = run.welcome([lst.id for lst in targets.known.values()])
            run.finish()
    except BaseException:
        rejects_out.discard()
        raise
    summary.rejected_path = rejects_out.finish()
    return summary


import_csv = import_file  # the name it had when it read CSV only


class _ImportLists:
    """The lists an import puts rows into, looked up once each. The default list is made on
    first use, as everywhere; a list a JSON file names is made too (and reported)."""

    def __init__(self, conn: Connection, store: Store, summary: ImportSummary) -> None:
        self.conn = conn
        self.store = store
        self.summary = summary
        self.known: dict[str | None, ListInfo] = {}

    def get(self, name: str | None) -> ListInfo:
        found = self.known.get(name)
        if found is not None:
            return found
        if name is None or name == self.store.default_list or name == self.summary.list:
            found = _resolve_list(self.conn, self.store, name or self.summary.list)
        else:
            found = _find_list(self.conn, name)
            if found is None:
                found = _insert_list(self.conn, name, "")
                self.summary.created_lists.append(name)
        self.known[name] = found
        if found.name not in self.summary.lists:
            self.summary.lists.append(found.name)
        return found


def _chunks(items: Iterable[Record | Rejection], size: int) -> Iterator[list[Record | Rejection]]:
    chunk: list[Record | Rejection] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _RejectedWriter:
    """Writes rejected rows (with row number and reason) to a file the user can fix and
    import again (a CSV for a CSV, a JSON array for JSON); removes a stale one from an
    earlier run when nothing was rejected."""

    def __init__(self, path: Path, header: list[str] | None, *, enabled: bool,
                 kind: str = "csv") -> None:
        self.path = path
        self.header = header
        self.enabled = enabled
        self.kind = kind
        self._file: Any = None
        self._writer: Any = None
        self._items = 0

    def _open(self) -> None:
        try:
            self._file = self.path.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise ImportFileError(
                f"{self.path}: cannot write the rejected rows there ({exc.strerror}); "
                "nothing was imported; name a file in a folder you can write to with "
                "--rejects FILE"
            ) from None

    def write(self, rejection: Rejection) -> None:
        if not self.enabled:
            return
        if self.kind == "json":
            self._write_json(rejection)
            return
        if self._file is None:
            from .csvsafe import SafeWriter

            self._open()
            self._writer = SafeWriter(self._file)
            if self.header is not None:
                self._writer.writerow(["rejected_row", "rejected_reason", *self.header])
        self._writer.writerow([rejection.row, rejection.reason, *rejection.values])

    def _write_json(self, rejection: Rejection) -> None:
        import json

        if self._file is None:
            self._open()
            self._file.write("[")
        given = rejection.item if isinstance(rejection.item, dict) else {"item": rejection.item}
        item = {"rejected_line": rejection.row, "rejected_reason": rejection.reason, **given}
        self._file.write(("\n  " if not self._items else ",\n  ") + json.dumps(item, ensure_ascii=False))
        self._items += 1

    def finish(self) -> Path | None:
        if not self.enabled:
            return None
        if self._file is None:
            self.path.unlink(missing_ok=True)
            return None
        if self.kind == "json":
            self._file.write("\n]\n")
        self._file.close()
        return self.path

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)


class _ImportRun:
    """Applies an import chunk by chunk inside one transaction, with a handful of
    set-based statements per chunk and list (never one per row). Addresses already handled
    by this import are remembered per list in a temporary table, not in memory, so a
    duplicate far down the file is merged and counted as a duplicate, and memory stays flat
    however large the file.

    A duplicate far down the file is applied as the rules for one merged row say (the later
    row's fields, the stricter status) for the readers this import added; the statuses of
    members already on file follow the same rules as any other row."""

    def __init__(self, conn: Connection, source: str, summary: ImportSummary):
        self.conn = conn
        self.source = source
        self.summary = summary
        self.now = utcnow()
        self.seen = _seen_table(conn)
        self._statements()
        self.handled = 0
        self.next_analyze = 1000

    def _statements(self) -> None:
        now = bindparam("now", type_=subscribers_t.c.created_at.type)
        self.insert_subscribers = BulkInsert(
            self.conn,
            subscribers_t,
            ["email", "email_key", "email_hash", "name", "attributes"],
            constants={"source": self.source, "created_at": self.now, "updated_at": self.now},
        )
        self.insert_seen = BulkInsert(self.conn, self.seen, ["list_id", "email_key"])
        self.update_subscribers = (
            update(subscribers_t)
            .where(subscribers_t.c.id == bindparam("sid"))
            .values(
                email=bindparam("new_email"),
                name=bindparam("new_name"),
                attributes=bindparam("new_attributes", type_=subscribers_t.c.attributes.type),
                updated_at=now,
            )
        )
        self.insert_suppressions = insert(suppressions).values(
            email_hash=bindparam("email_hash"),
            reason=bindparam("reason"),
            detail=bindparam("detail"),
            created_at=now,
        )

        # The lookups, built once; each chunk passes its keys as one expanding parameter.
        keys = bindparam("keys", expanding=True)
        list_id = bindparam("list_id")
        self.select_seen = select(self.seen.c.email_key).where(
            self.seen.c.list_id == list_id, self.seen.c.email_key.in_(keys)
        )
        self.select_existing = select(
            subscribers_t.c.id,
            subscribers_t.c.email,
            subscribers_t.c.email_key,
            subscribers_t.c.name,
            subscribers_t.c.attributes,
            subscribers_t.c.source,
            subscribers_t.c.created_at,
        ).where(subscribers_t.c.email_key.in_(keys))
        self.select_members = select(
            memberships.c.subscriber_id,
            memberships.c.status,
            memberships.c.created_at,
            memberships.c.confirmed_at,
        ).where(
            memberships.c.list_id == list_id,
            memberships.c.subscriber_id.in_(bindparam("ids", expanding=True)),
        )
        self.select_suppressed = select(
            suppressions.c.email_hash, suppressions.c.detail, suppressions.c.created_at
        ).where(suppressions.c.email_hash.in_(bindparam("hashes", expanding=True)))

    def welcome(self, list_ids: list[int]) -> int:
        """Readers this import made active members join the lists' welcome sequences
        (``--welcome``); how many."""
        return self.conn.execute(
            update(memberships).where(
                memberships.c.list_id.in_(list_ids), memberships.c.status == "active",
                memberships.c.confirmed_at == self.now,
            ).values(welcome_from=self.now)
        ).rowcount

    def finish(self) -> None:
        if self.conn.dialect.name == "sqlite":
            self.seen.drop(self.conn)
        # PostgreSQL drops it at commit or rollback (ON COMMIT DROP).

    def _ours(self, row: Any) -> bool:
        """True for a subscriber or suppression row this import made."""
        return row.created_at == self.now and (
            getattr(row, "source", None) == self.source
            or getattr(row, "detail", None) == f"from {self.source}"
        )

    def apply(self, list_id: int, records: list[Record]) -> None:
        if not records:
            return
        conn = self.conn
        keys = [r.key for r in records]
        seen = set(conn.scalars(self.select_seen, {"list_id": list_id, "keys": keys}))
        fresh = [k for k in keys if k not in seen]
        self.insert_seen(conn, ({"list_id": list_id, "email_key": k} for k in fresh))
        existing = {row.email_key: row for row in conn.execute(self.select_existing, {"keys": keys})}
        ids = [row.id for row in existing.values()]
        members: dict[int, Any] = (
            {row.subscriber_id: row for row in
             conn.execute(self.select_members, {"list_id": list_id, "ids": ids})}
            if ids else {}
        )
        suppressed = {
            row.email_hash: row
            for row in conn.execute(self.select_suppressed, {"hashes": [r.hash for r in records]})
        }

        new_subscribers: list[dict[str, Any]] = []
        join: dict[str, list[str]] = {}  # membership status -> keys of people to add to the list
        subscriber_updates: list[dict[str, Any]] = []
        activate: list[int] = []
        demote: list[int] = []
        leave: list[int] = []
        suppress_rows: list[dict[str, Any]] = []

        for rec in records:
            sub = existing.get(rec.key)
            member = members.get(sub.id) if sub is not None else None
            current = member.status if member is not None else None
            duplicate = rec.key in seen
            # A later row for a reader this import added: its fields win, as they would
            # had both rows come in one chunk.
            merged = duplicate and sub is not None and self._ours(sub)
            if merged:
                self._merge(sub, rec, subscriber_updates, respell=True)
            found = suppressed.get(rec.hash)
            if found is not None:
                if (self._ours(found) and sub is not None and current is None
                        and rec.status in ("bounced", "complained", "manual")):
                    # Suppressed by this import, from the same reader's row on another
                    # list: their membership here is recorded as that one was.
                    join.setdefault("active", []).append(rec.key)
                outcome = "kept_out"
            elif rec.status in ("bounced", "complained", "manual"):
                # Recorded as the old tool knew it: a member whose address is suppressed.
                suppress_rows.append(
                    {"email_hash": rec.hash, "reason": rec.status, "detail": f"from {self.source}",
                     "now": self.now}
                )
                if sub is None:
                    new_subscribers.append(self._row(rec))
                if current is None:
                    join.setdefault("active", []).append(rec.key)
                outcome = "kept_out"
            elif current == "unsubscribed":
                outcome = "kept_out"
            elif rec.status == "unsubscribed":
                if sub is None:
                    new_subscribers.append(self._row(rec))
                if current is None:
                    join.setdefault("unsubscribed", []).append(rec.key)
                else:
                    leave.append(sub.id)
                outcome = "kept_out"
            elif sub is None:
                new_subscribers.append(self._row(rec))
                join.setdefault(rec.status or "active", []).append(rec.key)
                outcome = "added"
            else:
                changed = merged or self._merge(sub, rec, subscriber_updates)
                if current is None:
                    join.setdefault(rec.status or "active", []).append(rec.key)
                    outcome = "added"
                elif duplicate:
                    # The stricter status stands: pending outranks active.
                    if (rec.status == "pending" and current == "active"
                            and self.now in (member.created_at, member.confirmed_at)):
                        demote.append(sub.id)
                    outcome = "unchanged"
                elif current == "pending" and rec.status in (None, "active"):
                    activate.append(sub.id)
                    outcome = "updated"
                else:
                    outcome = "updated" if changed else "unchanged"
            if duplicate:
                self.summary.duplicates += 1
            else:
                self.summary.count(outcome)

        self.insert_subscribers(conn, new_subscribers)
        if subscriber_updates:
            conn.execute(self.update_subscribers, subscriber_updates)
        for status, status_keys in join.items():
            self._join(list_id, status, status_keys)
        if activate:
            conn.execute(
                self._members(list_id, activate).values(status="active", confirmed_at=self.now)
            )
        if demote:
            conn.execute(
                self._members(list_id, demote).values(status="pending", confirmed_at=None)
            )
        if leave:
            conn.execute(
                self._members(list_id, leave).values(status="unsubscribed", unsubscribed_at=self.now)
            )
        if suppress_rows:
            conn.execute(self.insert_suppressions, suppress_rows)
        self._refresh_statistics(len(records))

    def _refresh_statistics(self, handled: int) -> None:
        """PostgreSQL plans the lookups from table statistics, which autovacuum cannot
        update while this transaction is still filling the tables (and never does for the
        temporary one): without a fresh ANALYZE now and then, a big import into an empty
        table turns every lookup into a full scan. Doubling the interval keeps it to a
        handful of runs."""
        self.handled += handled
        if self.conn.dialect.name != "postgresql" or self.handled < self.next_analyze:
            return
        self.conn.exec_driver_sql(
            f"ANALYZE {subscribers_t.name}, {memberships.name}, {self.seen.name}"
        )
        self.next_analyze *= 2

    @staticmethod
    def _row(rec: Record) -> dict[str, Any]:
        return {
            "email": rec.email,
            "email_key": rec.key,
            "email_hash": rec.hash,
            "name": rec.name,
            "attributes": rec.attributes,
        }

    def _join(self, list_id: int, status: str, keys: list[str]) -> None:
        """Memberships for people already in subscribers, in one INSERT ... SELECT."""
        now = literal(self.now, memberships.c.created_at.type)
        none = null()
        self.conn.execute(
            insert(memberships).from_select(
                ["list_id", "subscriber_id", "status", "source", "created_at", "confirmed_at",
                 "unsubscribed_at"],
                select(
                    literal(list_id),
                    subscribers_t.c.id,
                    literal(status),
                    literal(self.source),
                    now,
                    now if status == "active" else none,
                    now if status == "unsubscribed" else none,
                ).where(subscribers_t.c.email_key.in_(keys)),
            )
        )

    @staticmethod
    def _members(list_id: int, ids: list[int]) -> Any:
        return update(memberships).where(
            memberships.c.list_id == list_id, memberships.c.subscriber_id.in_(ids)
        )

    def _merge(self, sub: Any, rec: Record, updates: list[dict[str, Any]], *,
               respell: bool = False) -> bool:
        """Queue an update when the row brings a new name or attributes (and, with
        ``respell``, its spelling of the address); True if so."""
        old_attributes = sub.attributes or {}
        attributes = {**old_attributes, **rec.attributes}
        name = rec.name or sub.name
        email = rec.email if respell else sub.email
        if name == sub.name and attributes == old_attributes and email == sub.email:
            return False
        updates.append(
            {"sid": sub.id, "new_email": email, "new_name": name, "new_attributes": attributes,
             "now": self.now}
        )
        return True


def _seen_table(conn: Connection) -> Table:
    """A temporary table of the addresses this import has handled, per list."""
    md = MetaData()
    columns = (
        Column("list_id", Integer, primary_key=True),
        Column("email_key", String(320), primary_key=True),
    )
    if conn.dialect.name == "postgresql":
        table = Table(
            "newsletter_import_seen",
            md,
            *columns,
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        conn.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.newsletter_import_seen")
    else:
        table = Table("newsletter_import_seen", md, *columns, prefixes=["TEMPORARY"])
        conn.exec_driver_sql("DROP TABLE IF EXISTS temp.newsletter_import_seen")
    table.create(conn)
    return table


__all__ = [
    "STATUSES",
    "AddResult",
    "AudienceMember",
    "ForgetResult",
    "ImportSummary",
    "InvalidAddress",
    "ListInfo",
    "Member",
    "Stats",
    "Suppression",
    "WeekStats",
    "add",
    "audience_select",
    "check_list_name",
    "confirm",
    "create_list",
    "delete_list",
    "find_list",
    "forget",
    "get_lists",
    "get_suppression",
    "import_csv",
    "import_file",
    "is_mailable",
    "iter_audience",
    "iter_members",
    "list_id",
    "members_select",
    "not_suppressed",
    "parse_address",
    "rename_list",
    "stats",
    "suppress",
    "suppress_hash",
    "suppression_of",
    "unsubscribe",
]
