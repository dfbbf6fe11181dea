"""Schema versions: ordered migration steps and the bookkeeping table that records them.

A database remembers every step applied to it in ``schema_migrations``; opening it runs the
steps it lacks, in order, in one transaction, so an upgrade happens completely or not at
all. A fresh database is built by the same steps, which keeps one path for both.

To change the schema, append a step to :data:`STEPS` (never edit a released one: databases
in the field were made by it) and update :mod:`.schema` to match. A step writes its DDL
out in full, as it stood on the day it shipped, rather than pointing at the current tables;
``tests/test_store.py`` checks that the steps and :mod:`.schema` agree.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
    text,
)

from ..errors import SchemaVersionError
from .schema import NAMING, TABLE_NAMES, Json, UtcDateTime, schema_migrations

# Any constant will do; it keys the PostgreSQL advisory lock that serialises upgrades when
# two processes open a fresh database at once.
_PG_LOCK_KEY = 0x6E6C5F6D6967  # "nl_mig"


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    """Lists, subscribers, memberships and the global suppression list."""
    md = MetaData(naming_convention=NAMING)
    json = Json()
    Table(
        "lists",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(63), nullable=False, unique=True),
        Column("title", String(200), nullable=False, server_default=""),
        Column("created_at", UtcDateTime, nullable=False),
    )
    Table(
        "subscribers",
        md,
        Column("id", Integer, primary_key=True),
        Column("email", String(320), nullable=False),
        Column("email_key", String(320), nullable=False, unique=True),
        Column("email_hash", String(64), nullable=False, unique=True),
        Column("name", String(200), nullable=False, server_default=""),
        Column("attributes", json, nullable=False),
        Column("source", String(200), nullable=False, server_default=""),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
            # Ids are never reused (SQLite would reuse the highest after a `forget`), so an
        # old unsubscribe link can never name a later reader.
        sqlite_autoincrement=True,
)
    Table(
        "memberships",
        md,
        Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True),
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
        CheckConstraint("status IN ('pending', 'active', 'unsubscribed')", name="status"),
        Index("ix_memberships_list_status", "list_id", "status", "subscriber_id"),
        Index("ix_memberships_subscriber", "subscriber_id"),
    )
    Table(
        "suppressions",
        md,
        Column("email_hash", String(64), primary_key=True),
        Column("reason", String(16), nullable=False),
        Column("detail", Text, nullable=False, server_default=""),
        Column("created_at", UtcDateTime, nullable=False),
        CheckConstraint(
            "reason IN ('bounced', 'complained', 'manual', 'forgotten')", name="reason"
        ),
    )
    md.create_all(conn)


def _v2_campaigns(conn: Connection) -> None:
    """Campaigns, their per-recipient delivery journal, and provider events."""
    md = MetaData(naming_convention=NAMING)
    json = Json()
    # Stand-ins for the tables the foreign keys point at (they exist already).
    Table("lists", md, Column("id", Integer, primary_key=True))
    Table("subscribers", md, Column("id", Integer, primary_key=True))
    campaigns = Table(
        "campaigns",
        md,
        Column("id", Integer, primary_key=True),
        Column("uid", String(32), nullable=False, unique=True),
        Column("issue", String(200), nullable=False),
        Column("list_id", Integer, ForeignKey("lists.id", ondelete="RESTRICT"), nullable=False),
        Column("status", String(16), nullable=False),
        Column("subject", Text, nullable=False),
        Column("content_hash", String(64), nullable=False),
        Column("source_hashes", json, nullable=False),
        Column("web_html", Text, nullable=False, server_default=""),
        Column("provider", String(32), nullable=False),
        Column("total", Integer, nullable=False, server_default="0"),
        Column("lease_owner", String(200), nullable=True),
        Column("lease_expires", UtcDateTime, nullable=True),
        Column("last_error", Text, nullable=False, server_default=""),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Column("finished_at", UtcDateTime, nullable=True),
        CheckConstraint("status IN ('sending', 'paused', 'finished', 'cancelled')", name="status"),
        UniqueConstraint("issue", "list_id", name="uq_campaigns_issue_list"),
    )
    Table(
        "deliveries",
        md,
        Column("id", Integer, primary_key=True),
        Column("campaign_id", Integer, ForeignKey(campaigns.c.id, ondelete="CASCADE"), nullable=False),
        # SET NULL: `forget` deletes the subscriber; the journal keeps no address.
        Column("subscriber_id", Integer, ForeignKey("subscribers.id", ondelete="SET NULL"), nullable=True),
        Column("status", String(16), nullable=False),
        Column("batch", Integer, nullable=True),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("provider_id", String(200), nullable=True),
        Column("reason", Text, nullable=True),
        Column("updated_at", UtcDateTime, nullable=False),
        CheckConstraint(
            "status IN ('queued', 'sending', 'sent', 'failed', 'skipped', 'unknown', 'cancelled')",
            name="status",
        ),
        UniqueConstraint("campaign_id", "subscriber_id", name="uq_deliveries_campaign_subscriber"),
        Index("ix_deliveries_campaign_status", "campaign_id", "status", "id"),
        Index("ix_deliveries_provider_id", "provider_id"),
    )
    Table(
        "events",
        md,
        Column("id", Integer, primary_key=True),
        Column("provider", String(32), nullable=False),
        Column("kind", String(32), nullable=False),
        Column("email_hash", String(64), nullable=True),
        Column("campaign_id", Integer, ForeignKey(campaigns.c.id, ondelete="SET NULL"), nullable=True),
        Column("provider_event_id", String(200), nullable=True),
        Column("detail", Text, nullable=False, server_default=""),
        Column("occurred_at", UtcDateTime, nullable=True),
        Column("created_at", UtcDateTime, nullable=False),
        UniqueConstraint("provider", "provider_event_id", name="uq_events_provider_event"),
        Index("ix_events_email_hash", "email_hash"),
        Index("ix_events_campaign", "campaign_id"),
    )
    for name in ("campaigns", "deliveries", "events"):
        md.tables[name].create(conn)


def _v3_rate_limits(conn: Connection) -> None:
    """Counters for the public sign-up form's rate limits, keyed by hashes only."""
    md = MetaData(naming_convention=NAMING)
    Table(
        "rate_limits",
        md,
        Column("key", String(100), primary_key=True),
        Column("window_start", UtcDateTime, nullable=False),
        Column("hits", Integer, nullable=False),
        Index("ix_rate_limits_window_start", "window_start"),
    )
    md.create_all(conn)


def _v4_schedule_outcomes(conn: Connection) -> None:
    """What the last scheduler tick found for each scheduled issue (failed checks, missed)."""
    md = MetaData(naming_convention=NAMING)
    Table(
        "schedule_outcomes",
        md,
        Column("id", Integer, primary_key=True),
        Column("issue", String(200), nullable=False),
        Column("list_name", String(63), nullable=False),
        Column("send_at", UtcDateTime, nullable=False),
        Column("outcome", String(16), nullable=False),
        Column("detail", Text, nullable=False, server_default=""),
        Column("first_seen", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        CheckConstraint("outcome IN ('sent', 'stopped', 'failed', 'missed')", name="outcome"),
        UniqueConstraint("issue", name="uq_schedule_outcomes_issue"),
    )
    md.create_all(conn)


def _v5_campaign_workers(conn: Connection) -> None:
    """Fenced claims: the senders of a campaign as rows of their own, each delivery in flight
    tagged with its sender and claim, and a not-before time for readers to retry later. The
    campaign-wide lease and the per-campaign batch numbers go."""
    md = MetaData(naming_convention=NAMING)
    Table("campaigns", md, Column("id", Integer, primary_key=True))
    Table(
        "campaign_workers",
        md,
        Column("id", Integer, primary_key=True),
        Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        Column("token", String(32), nullable=False, unique=True),
        Column("host", String(200), nullable=False),
        Column("pid", Integer, nullable=False),
        Column("sent", Integer, nullable=False, server_default="0"),
        Column("started_at", UtcDateTime, nullable=False),
        Column("last_seen", UtcDateTime, nullable=False),
        Column("expires", UtcDateTime, nullable=False),
        Index("ix_campaign_workers_campaign", "campaign_id"),
    )
    md.tables["campaign_workers"].create(conn)
    # Rows a release before this one left in flight have no sender any more: their outcome
    # is unknown, as that release would have said on its next run.
    conn.execute(text(
        "UPDATE deliveries SET status = 'unknown', reason = 'the sending process stopped mid-call' "
        "WHERE status = 'sending'"
    ))
    conn.execute(text("ALTER TABLE deliveries ADD COLUMN worker VARCHAR(32)"))
    conn.execute(text("ALTER TABLE deliveries ADD COLUMN claim VARCHAR(64)"))
    timestamp = "TIMESTAMP WITHOUT TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    conn.execute(text(f"ALTER TABLE deliveries ADD COLUMN not_before {timestamp}"))
    conn.execute(text("ALTER TABLE deliveries DROP COLUMN batch"))
    conn.execute(text("CREATE INDEX ix_deliveries_claim ON deliveries (claim)"))
    conn.execute(text("ALTER TABLE campaigns DROP COLUMN lease_owner"))
    conn.execute(text("ALTER TABLE campaigns DROP COLUMN lease_expires"))


def _v6_webhook_tokens(conn: Connection) -> None:
    """Webhook signature tokens already used: Mailgun's signature covers the timestamp and a
    token but not the event, so each token is accepted once."""
    md = MetaData(naming_convention=NAMING)
    Table(
        "webhook_tokens",
        md,
        Column("provider", String(32), primary_key=True),
        Column("token", String(200), primary_key=True),
        Column("signed_at", UtcDateTime, nullable=False),
        Index("ix_webhook_tokens_signed_at", "signed_at"),
    )
    md.create_all(conn)


def _v7_feed_drafts(conn: Connection) -> None:
    """What `tick` did about the blog's feed for each slot, and its claim on drafting it."""
    md = MetaData(naming_convention=NAMING)
    Table(
        "feed_drafts",
        md,
        Column("slot", UtcDateTime, primary_key=True),
        Column("outcome", String(16), nullable=False),
        Column("issue", String(200), nullable=False, server_default=""),
        Column("detail", Text, nullable=False, server_default=""),
        Column("first_seen", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        CheckConstraint("outcome IN ('drafting', 'drafted', 'nothing', 'failed')", name="outcome"),
    )
    md.create_all(conn)


def _v8_sequences(conn: Connection) -> None:
    """Welcome sequences: when each started, when each reader joined, and which campaigns
    are a sequence's steps."""
    md = MetaData(naming_convention=NAMING)
    Table("lists", md, Column("id", Integer, primary_key=True))
    Table(
        "sequences",
        md,
        Column("name", String(100), primary_key=True),
        Column("list_id", Integer, ForeignKey("lists.id", ondelete="CASCADE"), nullable=True),
        Column("started_at", UtcDateTime, nullable=True),
        Column("problem", Text, nullable=False, server_default=""),
    )
    md.create_all(conn, tables=[md.tables["sequences"]])
    kind = "TIMESTAMP WITHOUT TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
    conn.execute(text(f"ALTER TABLE memberships ADD COLUMN welcome_from {kind}"))
    conn.execute(text("ALTER TABLE campaigns ADD COLUMN sequence VARCHAR(100)"))
    conn.execute(text("CREATE INDEX ix_memberships_welcome ON memberships (list_id, welcome_from)"))


def _v9_links(conn: Connection) -> None:
    """The tracked links of sent issues ([tracking] clicks), one click counter each."""
    md = MetaData(naming_convention=NAMING)
    Table(
        "links",
        md,
        Column("id", String(32), primary_key=True),
        Column("issue", String(200), nullable=False),
        Column("url", Text, nullable=False),
        Column("position", Integer, nullable=False, server_default="0"),
        Column("clicks", Integer, nullable=False, server_default="0"),
        Column("created_at", UtcDateTime, nullable=False),
        Index("ix_links_issue", "issue"),
    )
    md.create_all(conn)


STEPS: tuple[Step, ...] = (
    Step(1, "lists, subscribers, memberships, suppressions", _v1_initial),
    Step(2, "campaigns, deliveries, events", _v2_campaigns),
    Step(3, "rate limits for the public sign-up form", _v3_rate_limits),
    Step(4, "schedule outcomes", _v4_schedule_outcomes),
    Step(5, "campaign workers and fenced claims", _v5_campaign_workers),
    Step(6, "webhook signature tokens already used", _v6_webhook_tokens),
    Step(7, "what tick drafted from the blog's feed", _v7_feed_drafts),
    Step(8, "welcome sequences", _v8_sequences),
    Step(9, "tracked links and their clicks", _v9_links),
)

LATEST = STEPS[-1].version


def current_version(conn: Connection) -> int | None:
    """The newest step applied, 0 for an empty database, None for one that is not ours."""
    names = set(inspect(conn).get_table_names())
    if schema_migrations.name not in names:
        return None if names & set(TABLE_NAMES) else 0
    return conn.execute(select(schema_migrations.c.version).order_by(
        schema_migrations.c.version.desc()).limit(1)).scalar_one_or_none() or 0


def check_version(version: int | None, where: str) -> None:
    """Refuse a database this release cannot read: too new, or made by something else."""
    if version is None:
        raise SchemaVersionError(
            f"database {where} has tables named like this newsletter's but no "
            "schema_migrations table, so it was not made by newsletter; point [database] url "
            "(or NEWSLETTER_DATABASE_URL) at an empty or newsletter database"
        )
    if version > LATEST:
        raise SchemaVersionError(
            f"database {where} is at schema version {version}, newer than this release of "
            f"newsletter understands (up to {LATEST}); upgrade newsletter "
            "(pip install -U newsletter) before using this database"
        )


def upgrade(conn: Connection, where: str, target: int | None = None) -> list[int]:
    """Apply the missing steps up to ``target`` (default: all) inside the caller's
    transaction; return the versions applied. ``where`` names the database in errors."""
    target = LATEST if target is None else target
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    version = current_version(conn)
    check_version(version, where)
    assert version is not None
    if version == 0 and schema_migrations.name not in inspect(conn).get_table_names():
        schema_migrations.create(conn)
    applied = []
    for step in STEPS:
        if version < step.version <= target:
            step.apply(conn)
            conn.execute(
                schema_migrations.insert().values(
                    version=step.version, name=step.name, applied_at=dt.datetime.now(dt.UTC)
                )
            )
            applied.append(step.version)
    return applied
