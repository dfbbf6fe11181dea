"""The store: opening, schema versions and upgrades, connection settings, errors."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import insert, inspect, select, text

from newsletter import subscribers as subs
from newsletter.errors import SchemaVersionError, StoreError
from newsletter.store import _driver_url, migrations, open_store, schema

DATA = Path(__file__).parent / "data"


def _version_rows(store) -> list[int]:
    with store.read() as conn:
        return list(conn.scalars(select(schema.schema_migrations.c.version)))


def _unqualified(default: str | None) -> str | None:
    return default.replace('"declared".', "") if default else default


def _describe(conn, schema_name: str | None = None) -> dict:
    """Tables, columns, keys, constraints and indexes, as the database reports them."""
    insp = inspect(conn)
    shape = {}
    for table in sorted(insp.get_table_names(schema=schema_name)):
        def get(what: str, table: str = table):
            return getattr(insp, f"get_{what}")(table, schema=schema_name)

        shape[table] = {
            "columns": {
                # A sequence default names its schema: compare without it.
                c["name"]: (str(c["type"]), c["nullable"], _unqualified(c.get("default")))
                for c in get("columns")
            },
            "pk": sorted(get("pk_constraint")["constrained_columns"]),
            "unique": sorted(tuple(u["column_names"]) for u in get("unique_constraints")),
            "checks": sorted(c["name"] for c in get("check_constraints")),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in get("indexes")
            ),
            "fks": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], f["options"].get("ondelete"))
                for f in get("foreign_keys")
            ),
        }
    return shape


def test_a_new_database_is_built_at_the_latest_version(store):
    assert _version_rows(store) == [step.version for step in migrations.STEPS]
    with store.read() as conn:
        assert migrations.current_version(conn) == migrations.LATEST
        assert set(schema.TABLE_NAMES) <= set(inspect(conn).get_table_names())


def test_opening_again_applies_nothing(db_url):
    open_store(db_url).close()
    again = open_store(db_url)
    try:
        assert _version_rows(again) == [step.version for step in migrations.STEPS]
    finally:
        again.close()


def test_the_migration_steps_build_exactly_the_declared_schema(store, db_url, tmp_path):
    """schema.py (used by queries) and the steps (which make databases) must agree."""
    with store.read() as conn:
        migrated = _describe(conn)
    declared_url = (
        f"sqlite:///{tmp_path / 'declared.db'}" if db_url.startswith("sqlite") else None
    )
    if declared_url is None:
        # On PostgreSQL build the declared schema in a separate schema of the same database.
        with store.write() as conn:
            conn.exec_driver_sql("CREATE SCHEMA declared")
            conn.exec_driver_sql("SET LOCAL search_path TO declared")
            schema.metadata.create_all(conn)
            declared = _describe(conn, "declared")
    else:
        from sqlalchemy import create_engine

        engine = create_engine(declared_url)
        with engine.begin() as conn:
            schema.metadata.create_all(conn)
            declared = _describe(conn)
        engine.dispose()
    assert migrated == declared


def test_a_database_made_by_the_first_step_alone_upgrades_in_place(db_url):
    """Build a database with step 1 only, fill it, then open it with the current code."""
    from sqlalchemy import create_engine

    engine = create_engine(_driver_url(db_url))
    with engine.begin() as conn:
        assert migrations.upgrade(conn, "test", target=1) == [1]
    engine.dispose()
    # Rows written at version 1, through the tables as they were then.
    engine = create_engine(_driver_url(db_url))
    now = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(schema.lists).values(id=7, name="weekly", title="W", created_at=now))
        conn.execute(
            insert(schema.subscribers).values(
                id=11, email="Ann@Example.com", email_key="ann@example.com", email_hash="a" * 64,
                name="Ann", attributes={"plan": "free"}, source="test", created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            insert(schema.memberships).values(
                list_id=7, subscriber_id=11, status="active", source="test", created_at=now,
                confirmed_at=now,
            )
        )
        conn.execute(
            insert(schema.suppressions).values(
                email_hash="b" * 64, reason="complained", detail="", created_at=now
            )
        )
    engine.dispose()

    store = open_store(db_url)
    try:
        assert _version_rows(store)[-1] == migrations.LATEST
        members = list(subs.iter_members(store, "weekly"))
        assert [(m.email, m.name, m.status, m.attributes, m.confirmed_at) for m in members] == [
            ("Ann@Example.com", "Ann", "active", {"plan": "free"}, now)
        ]
        with store.read() as conn:
            assert conn.execute(select(schema.suppressions.c.reason)).scalars().all() == [
                "complained"
            ]
    finally:
        store.close()


def test_a_version_6_database_gains_the_feed_drafts_table(db_url):
    """Step 7: one row per weekly slot that `tick` drafted (or tried to) from the feed."""
    from sqlalchemy import create_engine

    engine = create_engine(_driver_url(db_url))
    with engine.begin() as conn:
        assert migrations.upgrade(conn, "test", target=6) == [1, 2, 3, 4, 5, 6]
        assert "feed_drafts" not in inspect(conn).get_table_names()
    engine.dispose()
    store = open_store(db_url)
    try:
        assert _version_rows(store)[-1] == migrations.LATEST
        now = dt.datetime.now(dt.UTC)
        row = dict(slot=now, outcome="drafting", first_seen=now, updated_at=now)
        with store.write() as conn:
            conn.execute(insert(schema.feed_drafts).values(**row))
        with pytest.raises(StoreError, match="conflicted"), store.write() as conn:
            conn.execute(insert(schema.feed_drafts).values(**row))
        with pytest.raises(StoreError), store.write() as conn:
            conn.execute(insert(schema.feed_drafts).values(
                **{**row, "slot": now + dt.timedelta(days=7), "outcome": "maybe"}))
    finally:
        store.close()


def test_a_version_7_database_gains_welcome_sequences(db_url):
    """Step 8: the sequences table, when each membership joined for them, and which
    campaigns are a sequence's steps; rows made before keep working."""
    from sqlalchemy import create_engine

    engine = create_engine(_driver_url(db_url))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        assert migrations.upgrade(conn, "test", target=7) == [1, 2, 3, 4, 5, 6, 7]
        conn.execute(text("INSERT INTO lists (id, name, title, created_at) VALUES (1, 'main', '', :t)"),
                     {"t": now})
        conn.execute(text(
            "INSERT INTO campaigns (uid, issue, list_id, status, subject, content_hash, source_hashes, "
            "provider, created_at, updated_at) VALUES ('u1', '2026-12-01-x', 1, 'finished', 'S', 'h', "
            "'{}', 'outbox', :t, :t)"), {"t": now})
    engine.dispose()
    store = open_store(db_url)
    try:
        assert _version_rows(store)[-1] == migrations.LATEST
        with store.read() as conn:
            names = inspect(conn).get_table_names()
            assert "sequences" in names
            columns = {c["name"] for c in inspect(conn).get_columns("memberships")}
            assert "welcome_from" in columns
            assert conn.execute(select(schema.campaigns.c.issue, schema.campaigns.c.sequence)).all() == [
                ("2026-12-01-x", None)]
        with store.write() as conn:
            conn.execute(insert(schema.sequences).values(name="welcome", list_id=1, started_at=dt.datetime.now(dt.UTC)))
        with pytest.raises(StoreError, match="conflicted"), store.write() as conn:
            conn.execute(insert(schema.sequences).values(name="welcome", problem=""))
    finally:
        store.close()


def test_a_version_5_database_gains_the_webhook_token_table(db_url):
    """Step 6: the tokens webhooks have used, one row per provider and token."""
    from sqlalchemy import create_engine

    engine = create_engine(_driver_url(db_url))
    with engine.begin() as conn:
        assert migrations.upgrade(conn, "test", target=5) == [1, 2, 3, 4, 5]
        assert "webhook_tokens" not in inspect(conn).get_table_names()
    engine.dispose()
    store = open_store(db_url)
    try:
        assert _version_rows(store) == list(range(1, migrations.LATEST + 1))
        now = dt.datetime.now(dt.UTC)
        row = dict(provider="mailgun", token="t" * 50, signed_at=now)
        with store.write() as conn:
            assert inspect(conn).get_pk_constraint("webhook_tokens")["constrained_columns"] == [
                "provider", "token"
            ]
            conn.execute(insert(schema.webhook_tokens).values(**row))
            conn.execute(insert(schema.webhook_tokens).values(**{**row, "provider": "other"}))
        with pytest.raises(StoreError, match="conflicted"), store.write() as conn:
            conn.execute(insert(schema.webhook_tokens).values(**row))
    finally:
        store.close()


def test_the_checked_in_version_1_sqlite_database_opens_and_keeps_every_row(tmp_path):
    path = tmp_path / "v1.db"
    con = sqlite3.connect(path)
    con.executescript((DATA / "schema_v1.sql").read_text(encoding="utf-8"))
    before = {}
    for table in ("lists", "subscribers", "memberships", "suppressions"):
        cursor = con.execute(f"SELECT * FROM {table}")
        before[table] = ([d[0] for d in cursor.description], sorted(cursor.fetchall()))
    con.close()

    store = open_store(f"sqlite:///{path}")
    try:
        assert _version_rows(store)[-1] == migrations.LATEST
        with store.read() as conn:
            for table, (columns, rows) in before.items():
                assert len(rows) >= 1
                after = conn.exec_driver_sql(f"SELECT {', '.join(columns)} FROM {table}")
                assert sorted(tuple(r) for r in after) == rows, table
        # And it works as a store: the people in it are where they were.
        main = {m.email: m.status for m in subs.iter_members(store, "main")}
        assert main == {
            "ann@example.com": "active",
            "bob@example.org": "pending",
            "Cara@Example.net": "active",
            "dan@example.com": "bounced",
        }
        weekly = {m.email: m.status for m in subs.iter_members(store, "weekly")}
        assert weekly == {"ann@example.com": "unsubscribed"}
        assert subs.get_suppression(store, "erin@example.org").reason == "forgotten"
    finally:
        store.close()


def test_a_database_from_a_newer_release_is_refused(db_url):
    store = open_store(db_url)
    with store.write() as conn:
        conn.execute(
            insert(schema.schema_migrations).values(
                version=migrations.LATEST + 1, name="from the future",
                applied_at=dt.datetime.now(dt.UTC),
            )
        )
    store.close()
    with pytest.raises(SchemaVersionError) as caught:
        open_store(db_url)
    message = str(caught.value)
    assert f"schema version {migrations.LATEST + 1}" in message
    assert "upgrade newsletter" in message


def test_a_database_belonging_to_something_else_is_refused(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE subscribers (id INTEGER PRIMARY KEY, mail TEXT)")
    con.close()
    with pytest.raises(SchemaVersionError, match="not made by newsletter"):
        open_store(f"sqlite:///{path}")
    con = sqlite3.connect(path)
    assert con.execute("SELECT name FROM sqlite_master").fetchall() == [("subscribers",)]


def test_an_empty_database_with_unrelated_tables_gets_ours_beside_them(tmp_path):
    path = tmp_path / "shared.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY)")
    con.close()
    store = open_store(f"sqlite:///{path}")
    store.close()
    con = sqlite3.connect(path)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"notes", *schema.TABLE_NAMES} <= names


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with store.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        store.close()


def test_foreign_keys_are_enforced(store):
    now = dt.datetime.now(dt.UTC)
    refused = pytest.raises(StoreError, match="nothing was changed, run the command again")
    with refused, store.write() as conn:
        conn.execute(
            insert(schema.memberships).values(
                list_id=999, subscriber_id=999, status="active", created_at=now
            )
        )


def test_a_conflicting_write_is_a_clear_error_and_changes_nothing(store):
    """Two processes adding the same address at once: the loser gets a message, not a
    traceback (PostgreSQL lets both try; the unique key decides)."""
    now = dt.datetime.now(dt.UTC)
    row = dict(email="a@example.com", email_key="a@example.com", email_hash="f" * 64,
               attributes={}, created_at=now, updated_at=now)
    with store.write() as conn:
        conn.execute(insert(schema.subscribers).values(**row))
    with pytest.raises(StoreError, match="conflicted with another one"), store.write() as conn:
        conn.execute(insert(schema.lists).values(name="lost", created_at=now))
        conn.execute(insert(schema.subscribers).values(**row))
    with store.read() as conn:
        assert conn.execute(select(schema.lists.c.name)).scalars().all() == []


def test_sqlite_writers_queue_instead_of_failing(tmp_path):
    """A second writer waits for the first (busy timeout, write lock taken up front)."""
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'busy.db'}"
    first, second = open_store(url), open_store(url)
    holding = threading.Event()
    done: list[float] = []

    def hold() -> None:
        with first.write() as conn:
            conn.execute(insert(schema.lists).values(name="one", created_at=dt.datetime.now(dt.UTC)))
            holding.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    started = time.monotonic()
    with second.write() as conn:
        conn.execute(insert(schema.lists).values(name="two", created_at=dt.datetime.now(dt.UTC)))
    done.append(time.monotonic() - started)
    thread.join()
    with second.read() as conn:
        assert sorted(conn.execute(select(schema.lists.c.name)).scalars()) == ["one", "two"]
    assert done[0] > 0.2  # it really waited for the first writer
    first.close()
    second.close()


def test_timestamps_are_stored_and_returned_as_utc(store):
    oslo = dt.timezone(dt.timedelta(hours=2))
    when = dt.datetime(2026, 6, 1, 10, 0, tzinfo=oslo)
    with store.write() as conn:
        conn.execute(insert(schema.lists).values(name="tz", created_at=when))
    with store.read() as conn:
        back = conn.execute(select(schema.lists.c.created_at)).scalar_one()
        raw = conn.execute(text("SELECT created_at FROM lists")).scalar_one()
    assert back == when and back.tzinfo == dt.UTC and back.hour == 8
    assert str(raw).startswith("2026-06-01 08:00:00")  # naive UTC on disk, on both databases


def test_naive_timestamps_are_refused(store):
    from sqlalchemy.exc import StatementError

    with pytest.raises(StatementError, match="timezone-aware"), store.write() as conn:
        conn.execute(insert(schema.lists).values(name="naive", created_at=dt.datetime(2026, 1, 1)))


def test_a_write_block_commits_rolls_back_on_error_and_on_request(store):
    with store.write() as conn:
        conn.execute(insert(schema.lists).values(name="kept", created_at=dt.datetime.now(dt.UTC)))
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute(insert(schema.lists).values(name="lost", created_at=dt.datetime.now(dt.UTC)))
        raise RuntimeError("boom")
    with store.write(rollback=True) as conn:
        conn.execute(insert(schema.lists).values(name="dry", created_at=dt.datetime.now(dt.UTC)))
    with store.read() as conn:
        assert conn.execute(select(schema.lists.c.name)).scalars().all() == ["kept"]


def test_an_unreachable_server_is_one_clear_error_with_the_password_masked():
    with pytest.raises(StoreError) as caught:
        open_store("postgresql+psycopg://letter:hunter2@127.0.0.1:1/letters")
    message = str(caught.value)
    assert "hunter2" not in message
    assert "postgresql+psycopg://letter:***@127.0.0.1:1/letters" in message
    assert "check that the server is running" in message
    assert "\n" not in message


def test_a_sqlite_file_in_a_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(StoreError, match="check that the folder exists"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}")


def test_an_unknown_driver_is_named():
    with pytest.raises(StoreError, match="unknown database driver"):
        open_store("postgresql+nosuchdriver://u:p@127.0.0.1/x")


def test_plain_postgresql_urls_use_psycopg_3():
    assert _driver_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert _driver_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert _driver_url("sqlite:///x.db") == "sqlite:///x.db"


def test_open_store_takes_a_configuration(letter):
    from newsletter.config import load

    config = load(letter / "newsletter.toml")
    store = open_store(config)
    try:
        assert store.url == f"sqlite:///{letter / 'newsletter.db'}"
        assert store.default_list == "main"
    finally:
        store.close()
    assert (letter / "newsletter.db").exists()


def test_upgrade_refuses_when_told_not_to_change_the_database(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(StoreError, match="open it once with newsletter"):
        open_store(f"sqlite:///{path}", upgrade=False)
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_a_scratch_store_stands_in_for_a_sqlite_file_not_made_yet(tmp_path, db_url):
    from newsletter.store import open_store_or_scratch

    missing = tmp_path / "later.db"
    with open_store_or_scratch(f"sqlite:///{missing}") as scratch:
        assert scratch.url != f"sqlite:///{missing}"
        folder = Path(scratch.scratch.name)
        assert folder.exists()
        subs.add(scratch, "ann@example.com")
    assert not missing.exists() and not folder.exists()
    # An existing database (SQLite file or server) is the real one.
    open_store(db_url).close()
    with open_store_or_scratch(db_url) as real:
        assert real.url.endswith(db_url.split("://", 1)[1]) and real.scratch is None


def test_bulk_insert_converts_like_sqlalchemy_does(store):
    from newsletter.store import BulkInsert

    when = dt.datetime(2026, 5, 4, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with store.write() as conn:
        bulk = BulkInsert(
            conn,
            schema.subscribers,
            ["email", "email_key", "email_hash", "name", "attributes"],
            constants={"source": "bulk", "created_at": when, "updated_at": when},
        )
        bulk(conn, [
            {"email": f"R{i}@example.com", "email_key": f"r{i}@example.com",
             "email_hash": f"{i:064x}", "name": "Åse", "attributes": {"n": i, "tags": ["a"]}}
            for i in range(3)
        ])
        bulk(conn, [])  # nothing to do is fine
    with store.read() as conn:
        rows = conn.execute(
            select(schema.subscribers).order_by(schema.subscribers.c.email_key)
        ).all()
    assert [(r.email, r.name, r.attributes, r.source) for r in rows] == [
        (f"R{i}@example.com", "Åse", {"n": i, "tags": ["a"]}, "bulk") for i in range(3)
    ]
    assert {r.created_at for r in rows} == {when} and rows[0].created_at.tzinfo == dt.UTC


def test_bulk_update_takes_new_constants_on_each_call(store):
    # the engine makes one BulkUpdate per run and gives each batch its own time
    from newsletter.store import BulkInsert, BulkUpdate

    first = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.UTC)
    later = dt.datetime(2026, 5, 4, 14, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with store.write() as conn:
        BulkInsert(conn, schema.subscribers, ["email", "email_key", "email_hash"],
                   constants={"source": "bulk", "attributes": {}, "created_at": first,
                              "updated_at": first})(conn, [
            {"email": f"r{i}@example.com", "email_key": f"r{i}@example.com", "email_hash": f"{i:064x}"}
            for i in range(3)])
        ids = conn.execute(select(schema.subscribers.c.id).order_by(schema.subscribers.c.id)).scalars().all()
        rename = BulkUpdate(conn, schema.subscribers, "id", ["name"], {"updated_at": first})
        rename(conn, [{"id": ids[0], "name": "Ann"}])
        rename(conn, [{"id": ids[1], "name": "Bo"}], {"updated_at": later})
        with pytest.raises(ValueError, match="expected"):
            rename(conn, [{"id": ids[2], "name": "Cy"}], {"created_at": later})
    with store.read() as conn:
        rows = conn.execute(select(schema.subscribers).order_by(schema.subscribers.c.id)).all()
    assert [(r.name, r.updated_at) for r in rows] == [("Ann", first), ("Bo", later), ("", first)]
