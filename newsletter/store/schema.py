"""The current database schema as SQLAlchemy Core tables, the one vocabulary for queries.

The tables are created and changed only by the ordered steps in :mod:`.migrations`; a test
checks that a database built by those steps matches the tables declared here.

Every timestamp is stored as naive UTC (:class:`UtcDateTime`) so SQLite and PostgreSQL hold,
compare and return the same values.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

# Constraint names are part of the schema; a fixed convention keeps them the same on both
# databases so later migrations can refer to them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MEMBERSHIP_STATUSES = ("pending", "active", "unsubscribed")
SUPPRESSION_REASONS = ("bounced", "complained", "manual", "forgotten")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime in Python, naive UTC in the database (the same on both)."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware datetimes, got {value!r}")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Json(TypeDecorator[Any]):
    """JSON on SQLite, JSONB on PostgreSQL (indexable, compact). The PostgreSQL type is
    loaded only when a PostgreSQL database is opened: SQLite users do not pay for it."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


def json_type() -> Json:
    return Json()


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData(naming_convention=NAMING)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

lists = Table(
    "lists",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("title", String(200), nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    # The address as given; email_key is its normalised, lowercased form (unique), and
    # email_hash the sha256 of email_key, the only thing suppressions keep.
    Column("email", String(320), nullable=False),
    Column("email_key", String(320), nullable=False, unique=True),
    Column("email_hash", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False, server_default=""),
    Column("attributes", json_type(), nullable=False),
    Column("source", String(200), nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # Ids are never reused (SQLite would reuse the highest after a `forget`), so an
    # old unsubscribe link can never name a later reader.
    sqlite_autoincrement=True,
)

memberships = Table(
    "memberships",
    metadata,
    Column(
        "list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
    ),
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("status", String(16), nullable=False),
    Column("source", String(200), nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime, nullable=True),
    Column("unsubscribed_at", UtcDateTime, nullable=True),
    # When the reader joined as far as welcome sequences go (confirmed through the site,
    # added --confirmed, imported --welcome); NULL: no sequence mails them.
    Column("welcome_from", UtcDateTime, nullable=True),
    CheckConstraint(_one_of("status", MEMBERSHIP_STATUSES), name="status"),
    # The audience query walks (list, status) and joins on subscriber_id.
    Index("ix_memberships_list_status", "list_id", "status", "subscriber_id"),
    Index("ix_memberships_subscriber", "subscriber_id"),
    Index("ix_memberships_welcome", "list_id", "welcome_from"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("email_hash", String(64), primary_key=True),
    Column("reason", String(16), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint(_one_of("reason", SUPPRESSION_REASONS), name="reason"),
)

CAMPAIGN_STATUSES = ("sending", "paused", "finished", "cancelled")
DELIVERY_STATUSES = ("queued", "sending", "sent", "failed", "skipped", "unknown", "cancelled")

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True),
    # A random id for message ids and idempotency keys, unique across databases.
    Column("uid", String(32), nullable=False, unique=True),
    Column("issue", String(200), nullable=False),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="RESTRICT"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("subject", Text, nullable=False),
    # The frozen issue: a resume sends exactly this, or refuses.
    Column("content_hash", String(64), nullable=False),
    Column("source_hashes", json_type(), nullable=False),
    Column("web_html", Text, nullable=False, server_default=""),
    Column("provider", String(32), nullable=False),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    # A step of a welcome sequence: the sequence's name (``issue`` is then "<name>/<step>"),
    # and readers are added to its journal as each one's step falls due. NULL for an issue.
    Column("sequence", String(100), nullable=True),
    CheckConstraint(_one_of("status", CAMPAIGN_STATUSES), name="status"),
    UniqueConstraint("issue", "list_id", name="uq_campaigns_issue_list"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="SET NULL"), nullable=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("provider_id", String(200), nullable=True),
    Column("reason", Text, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    # While a row is in flight (and after, for the record): the sender that claimed it and
    # the claim, the batch's token. Whoever writes an outcome proves both in the same
    # statement, so a sender that lost its claim can change nothing.
    Column("worker", String(32), nullable=True),
    Column("claim", String(64), nullable=True),
    # A queued reader the service asked us to try later is not claimed before this.
    Column("not_before", UtcDateTime, nullable=True),
    CheckConstraint(_one_of("status", DELIVERY_STATUSES), name="status"),
    UniqueConstraint("campaign_id", "subscriber_id", name="uq_deliveries_campaign_subscriber"),
    Index("ix_deliveries_campaign_status", "campaign_id", "status", "id"),
    Index("ix_deliveries_provider_id", "provider_id"),
    Index("ix_deliveries_claim", "claim"),
)

# The processes sending a campaign now, one row each, on any machine that reaches the
# database. A sender renews ``expires`` every few seconds from a thread of its own, also
# while it waits; a row past ``expires`` (or, on the same machine, whose process is gone)
# is a dead sender, whose rows in flight another sender turns ``unknown``.
campaign_workers = Table(
    "campaign_workers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("token", String(32), nullable=False, unique=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("sent", Integer, nullable=False, server_default="0"),  # by this sender, this run
    Column("started_at", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("expires", UtcDateTime, nullable=False),
    Index("ix_campaign_workers_campaign", "campaign_id"),
)

# The event a reader leaving through an issue's unsubscribe link (one-click or the page's
# button) leaves, with the campaign and without the reader: the report counts them.
LEFT_BY_LINK = "left_by_link"

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("email_hash", String(64), nullable=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True),
    Column("provider_event_id", String(200), nullable=True),
    Column("detail", Text, nullable=False, server_default=""),
    Column("occurred_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    UniqueConstraint("provider", "provider_event_id", name="uq_events_provider_event"),
    Index("ix_events_email_hash", "email_hash"),
    Index("ix_events_campaign", "campaign_id"),
)

# The public sign-up form's rate limits: one fixed-window counter per key. Keys are
# "address:<email hash>" and "ip:<keyed hash of the IP>", never an address or an IP.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("window_start", UtcDateTime, nullable=False),
    Column("hits", Integer, nullable=False),
    Index("ix_rate_limits_window_start", "window_start"),
)

# Signature tokens a webhook has already used (Mailgun signs only timestamp + token, not the
# event): a token is good once. A row can go once its signed timestamp is past the tolerance,
# when the timestamp check alone refuses the token.
webhook_tokens = Table(
    "webhook_tokens",
    metadata,
    Column("provider", String(32), primary_key=True),
    Column("token", String(200), primary_key=True),
    Column("signed_at", UtcDateTime, nullable=False),
    Index("ix_webhook_tokens_signed_at", "signed_at"),
)

SCHEDULE_OUTCOMES = ("sent", "stopped", "failed", "missed")

schedule_outcomes = Table(
    "schedule_outcomes",
    metadata,
    Column("id", Integer, primary_key=True),
    # The last thing a scheduler tick found for an issue that was due: sent, stopped
    # (the campaign paused), failed (checks or set-up; detail says why) or missed (past
    # its grace). The schedule itself lives in the issue files; this says what came of it.
    Column("issue", String(200), nullable=False),
    Column("list_name", String(63), nullable=False),
    Column("send_at", UtcDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("first_seen", UtcDateTime, nullable=False),  # since when this outcome holds
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint(_one_of("outcome", SCHEDULE_OUTCOMES), name="outcome"),
    UniqueConstraint("issue", name="uq_schedule_outcomes_issue"),
)

FEED_DRAFT_OUTCOMES = ("drafting", "drafted", "nothing", "failed")

# What `tick` did about the blog's feed for each weekly slot ([feed] auto): the row is the
# claim that makes one tick, of any number running at once, draft the slot's issue.
feed_drafts = Table(
    "feed_drafts",
    metadata,
    Column("slot", UtcDateTime, primary_key=True),
    Column("outcome", String(16), nullable=False),
    Column("issue", String(200), nullable=False, server_default=""),  # the folder drafted
    Column("detail", Text, nullable=False, server_default=""),
    Column("first_seen", UtcDateTime, nullable=False),  # since when this outcome holds
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint(_one_of("outcome", FEED_DRAFT_OUTCOMES), name="outcome"),
)

# Welcome sequences (sequences/<name>/ in the newsletter folder), from the first tick that
# saw each: readers who join the list from ``started_at`` on are mailed its steps.
sequences = Table(
    "sequences",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=True),
    Column("started_at", UtcDateTime, nullable=True),  # NULL: its files have not loaded yet
    # The problems the last tick reported for it, so that one that goes on is told once.
    Column("problem", Text, nullable=False, server_default=""),
)

# The links of sent issues when [tracking] clicks is on: the email links to
# <site_url>/l/<id>, the same address for every reader, and `serve` redirects to ``url`` and
# adds one to ``clicks``. Nothing about who clicked is kept.
links = Table(
    "links",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("issue", String(200), nullable=False),
    Column("url", Text, nullable=False),
    Column("position", Integer, nullable=False, server_default="0"),  # order in the email
    Column("clicks", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_links_issue", "issue"),
)

# Names of the tables this release creates, for spotting a database that belongs to
# something else.
TABLE_NAMES = tuple(metadata.tables)
