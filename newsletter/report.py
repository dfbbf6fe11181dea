"""How an issue did: delivery, who left because of it, clicks per link, and the weeks around it.

Everything here is counted from what the database already holds: the campaign's journal
(sent, failed, unknown), the events the email services reported by webhook (delivered,
bounces, complaints, clicks, opens; attributed to a campaign by message id, else to the last
campaign that mailed the address), the unsubscribes made through an issue's own link (its
token names the campaign) and the click counters of tracked links. Clicks and opens are
counted per link and per issue, never per reader: no row says who clicked or opened.

Opens are shown only when an email service reports them, and always as unreliable: Apple
Mail Privacy Protection (and some corporate filters) load every image of every message, so
an "open" may be a machine, and readers who block images are never counted.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, select

from .store import Store
from .store.schema import LEFT_BY_LINK, events, lists, memberships, suppressions
from .store.schema import subscribers as subscribers_t

if TYPE_CHECKING:
    from .campaign import CampaignRow

# The kinds of event the webhooks record (newsletter.web.webhooks names them too).
DELIVERED, BOUNCE, SOFT_BOUNCE, COMPLAINT = "delivered", "bounce", "soft_bounce", "complaint"
UNSUBSCRIBE, CLICKED, OPENED = "unsubscribe", "clicked", "opened"

OPENS_CAVEAT = ("unreliable: Apple Mail Privacy Protection and some mail filters open every "
                "message, and readers who block images are never counted")


@dataclass
class IssueReport:
    issue: str
    list_name: str
    subject: str
    status: str
    started: dt.datetime
    finished: dt.datetime | None
    total: int  # readers in the journal
    sent: int
    failed: Counter  # by reason
    unknown: int
    skipped: int
    waiting: int  # queued or in flight
    delivered: int | None  # None: the service reports no deliveries (none came by webhook)
    bounced_hard: int
    bounced_soft: int
    complained: int
    left_by_link: int  # through this issue's unsubscribe link (one-click or the button)
    left_by_service: int  # the email service's own unsubscribe (its list-unsubscribe handling)
    clicks: list[tuple[str, int]] = field(default_factory=list)  # per link, the email's order
    tracked: bool = False  # [tracking] clicks was on when the issue went out
    opens: int = 0

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def bounced(self) -> int:
        return self.bounced_hard + self.bounced_soft

    @property
    def total_clicks(self) -> int:
        return sum(n for _url, n in self.clicks)

    def rate(self, n: int) -> str:
        """``n`` as a share of the readers sent the issue."""
        return f"{100 * n / self.sent:.1f}%" if self.sent else "–"

    def headline(self) -> str:
        """One line for `status` and the preview's index."""
        parts = [f"{self.sent:,} sent"]
        if self.delivered is not None:
            parts.append(f"{self.delivered:,} delivered")
        if self.bounced:
            parts.append(f"{self.bounced:,} bounced")
        if self.complained:
            parts.append(f"{self.complained:,} complained")
        left = self.left_by_link + self.left_by_service
        parts.append(f"{left:,} unsubscribed")
        if self.tracked or self.clicks:
            parts.append(f"{self.total_clicks:,} clicks")
        return ", ".join(parts)


def issue_report(store: Store, campaign: CampaignRow) -> IssueReport:
    """The figures of one campaign (an issue sent to one list)."""
    from .campaign import counts
    from .tracking import clicks as tracked_clicks

    c = counts(store, campaign.id)
    with store.read() as conn:
        kinds = Counter(dict(conn.execute(
            select(events.c.kind, func.count()).where(events.c.campaign_id == campaign.id)
            .group_by(events.c.kind)).all()))
        # A soft bounce may be reported once per retry of one message: one per reader.
        soft = conn.execute(
            select(func.count(func.distinct(events.c.email_hash))).where(
                events.c.campaign_id == campaign.id, events.c.kind == SOFT_BOUNCE)).scalar_one()
        soft += conn.execute(select(func.count()).where(
            events.c.campaign_id == campaign.id, events.c.kind == SOFT_BOUNCE,
            events.c.email_hash.is_(None))).scalar_one()
        by_service = Counter(dict(conn.execute(
            select(events.c.detail, func.count()).where(
                events.c.campaign_id == campaign.id, events.c.kind == CLICKED)
            .group_by(events.c.detail)).all()))
    ours = tracked_clicks(store, campaign.issue)
    links: dict[str, int] = {url: n for url, n in ours}
    for url, n in by_service.items():
        if url:
            links[url] = links.get(url, 0) + n
    return IssueReport(
        issue=campaign.issue, list_name=campaign.list_name, subject=campaign.subject,
        status=campaign.status, started=campaign.created_at, finished=campaign.finished_at,
        total=c.total, sent=c["sent"], failed=Counter(c.failed_reasons), unknown=c["unknown"],
        skipped=c["skipped"], waiting=c["queued"] + c["sending"],
        delivered=kinds[DELIVERED] if kinds[DELIVERED] else None,
        bounced_hard=kinds[BOUNCE], bounced_soft=soft, complained=kinds[COMPLAINT],
        left_by_link=kinds[LEFT_BY_LINK], left_by_service=kinds[UNSUBSCRIBE],
        clicks=list(links.items()),
        tracked=bool(ours), opens=kinds[OPENED],
    )


def find(store: Store, issue: str, list_name: str | None = None) -> CampaignRow:
    """The campaign of ``issue``; a ReportError saying what to do when it has none."""
    from .campaign import CampaignError, find_campaign

    found = find_campaign(store, issue, list_name)
    if found is None:
        raise CampaignError(f"{issue} has not been sent, so there is nothing to report yet; "
                            f"`newsletter send {issue}` sends it")
    return found


def headlines(config: Any) -> dict[str, str]:
    """Each sent issue's headline figures by slug (its campaigns' lines joined), or {} when
    there is no database to ask. Read only: a database not made yet is not created."""
    from .campaign import all_campaigns
    from .store import ask_existing

    def ask(store: Store) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for campaign in all_campaigns(store):
            r = issue_report(store, campaign)
            if r.sent:
                found.setdefault(campaign.issue, []).append(r.headline())
        return found

    found = ask_existing(config, ask, {})
    return {slug: "; ".join(lines) for slug, lines in found.items()}


# ---------------------------------------------------------------------------------------------
# The weeks


@dataclass(frozen=True, slots=True)
class Week:
    start: dt.date  # Monday
    joined: int
    left: int  # unsubscribed, bounced, complained or suppressed
    size: int  # active, unsuppressed members at the end of the week


@dataclass
class WeeksReport:
    list_name: str
    weeks: list[Week]
    issues: list[IssueReport]


def weeks_report(store: Store, weeks: int, now: dt.datetime, tz: dt.tzinfo,
                 list_name: str | None = None) -> WeeksReport:
    """The last ``weeks`` weeks (Monday to Sunday in ``tz``, this one included): each issue
    sent in them, and the list's joins, leaves and size week by week."""
    from .campaign import all_campaigns
    from .subscribers import list_id as resolve_list_id

    lid = resolve_list_id(store, list_name)
    with store.read() as conn:
        name = conn.execute(select(lists.c.name).where(lists.c.id == lid)).scalar_one()
    local = now.astimezone(tz)
    monday = local.date() - dt.timedelta(days=local.weekday())
    starts = [monday - dt.timedelta(weeks=i) for i in range(weeks - 1, -1, -1)]
    edges = [dt.datetime.combine(d, dt.time(), tz).astimezone(dt.UTC) for d in starts]
    edges.append(dt.datetime.combine(monday + dt.timedelta(weeks=1), dt.time(), tz).astimezone(dt.UTC))
    rows = []
    with store.read() as conn:
        for i, day in enumerate(starts):
            lo, hi = edges[i], min(edges[i + 1], now)
            rows.append(Week(day, _joined(conn, lid, lo, hi), _left(conn, lid, lo, hi), _size(conn, lid, hi)))
    first = edges[0]
    issues = [issue_report(store, c) for c in all_campaigns(store)
              if c.list_id == lid and c.created_at >= first and c.created_at < edges[-1]]
    return WeeksReport(name, rows, issues)


def _joined(conn: Any, list_id: int, lo: dt.datetime, hi: dt.datetime) -> int:
    return conn.execute(select(func.count()).where(
        memberships.c.list_id == list_id, memberships.c.confirmed_at >= lo,
        memberships.c.confirmed_at < hi)).scalar_one()


def _left(conn: Any, list_id: int, lo: dt.datetime, hi: dt.datetime) -> int:
    unsubscribed = conn.execute(select(func.count()).where(
        memberships.c.list_id == list_id, memberships.c.unsubscribed_at >= lo,
        memberships.c.unsubscribed_at < hi)).scalar_one()
    suppressed = conn.execute(
        select(func.count()).select_from(
            memberships.join(subscribers_t, subscribers_t.c.id == memberships.c.subscriber_id)
            .join(suppressions, suppressions.c.email_hash == subscribers_t.c.email_hash))
        .where(memberships.c.list_id == list_id, memberships.c.status == "active",
               suppressions.c.created_at >= lo, suppressions.c.created_at < hi)).scalar_one()
    return unsubscribed + suppressed


def _size(conn: Any, list_id: int, at: dt.datetime) -> int:
    """Members at ``at``: confirmed before it, not left by then, not suppressed by then."""
    suppressed_by_then = exists().where(suppressions.c.email_hash == subscribers_t.c.email_hash,
                                        suppressions.c.created_at < at)
    return conn.execute(
        select(func.count()).select_from(
            memberships.join(subscribers_t, subscribers_t.c.id == memberships.c.subscriber_id))
        .where(memberships.c.list_id == list_id, memberships.c.confirmed_at < at,
               (memberships.c.unsubscribed_at.is_(None)) | (memberships.c.unsubscribed_at >= at),
               ~suppressed_by_then)).scalar_one()


# ---------------------------------------------------------------------------------------------
# The page


def delivery_rows(r: IssueReport) -> list[tuple[str, str, int | None]]:
    """(key, label, number) of the delivery table, as the command and the page show it;
    None: not known (no email service reported it)."""
    rows: list[tuple[str, str, int | None]] = [
        ("total", "readers in the campaign", r.total), ("sent", "sent", r.sent)]
    rows += [(f"failed:{why}", f"failed: {why}", n) for why, n in sorted(r.failed.items())]
    if not r.failed:
        rows.append(("failed", "failed", 0))
    rows += [("unknown", "unknown (the sending process stopped mid-call)", r.unknown),
             ("skipped", "skipped (left before their turn)", r.skipped)]
    if r.waiting:
        rows.append(("waiting", "still to send", r.waiting))
    rows.append(("delivered", "delivered (reported by the email service)", r.delivered))
    rows += [("bounced_hard", "bounced: hard", r.bounced_hard), ("bounced_soft", "bounced: soft", r.bounced_soft),
             ("complained", "complained (marked as spam)", r.complained),
             ("left_by_link", "unsubscribed through this issue's link", r.left_by_link),
             ("left_by_service", "unsubscribed through the email service", r.left_by_service)]
    if r.opens:
        rows.append(("opens", "opens (unreliable)", r.opens))
    return rows


def page(config: Any, report: IssueReport | None = None, weeks: WeeksReport | None = None,
         now: dt.datetime | None = None) -> str:
    """The report as one HTML page with its charts inline: no script, nothing fetched."""
    from markupsafe import Markup

    from . import charts
    from .render import render_template

    tz = config.newsletter.timezone
    context: dict[str, Any] = {"newsletter": config.newsletter, "report": None, "weeks": None,
                               "made": (now or dt.datetime.now(dt.UTC)).astimezone(tz),
                               "opens_caveat": OPENS_CAVEAT, "tz": tz}
    if report is not None:
        funnel = [("In the campaign", report.total), ("Sent", report.sent)]
        if report.delivered is not None:
            funnel.append(("Delivered", report.delivered))
        context["report"] = report
        context["rows"] = delivery_rows(report)
        context["funnel"] = Markup(charts.funnel(funnel, f"Delivery of {report.issue}"))
        context["clicks_chart"] = Markup(charts.bars(report.clicks, f"Clicks per link in {report.issue}", "clicks"))
    if weeks is not None:
        labels = [f"{w.start:%d %b}" for w in weeks.weeks]
        context["weeks"] = weeks
        context["weeks_chart"] = Markup(charts.weeks(
            labels, [w.size for w in weeks.weeks], [w.joined for w in weeks.weeks],
            [w.left for w in weeks.weeks], f"List {weeks.list_name} over {len(weeks.weeks)} weeks"))
    return render_template(config, "report.html", context)
