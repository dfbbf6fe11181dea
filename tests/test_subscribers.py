"""Subscribers and lists in the core: the suppression rules, forgetting, the audience."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update

from newsletter import subscribers as subs
from newsletter.errors import InvalidAddress, ListError, ListNotFound, SubscriberError
from newsletter.store import schema


def _members(store, list_name=None, **kw) -> dict[str, str]:
    return {m.email: m.status for m in subs.iter_members(store, list_name, **kw)}


def _audience(store, list_name=None) -> list[str]:
    return [m.email for batch in subs.iter_audience(store, list_name) for m in batch]


# -- adding -----------------------------------------------------------------------------------


def test_a_new_address_is_pending_until_confirmed(store):
    result = subs.add(store, "ann@example.com", name="Ann Berg")
    assert (result.outcome, result.status, result.list) == ("added", "pending", "main")
    assert _audience(store) == []
    again = subs.add(store, "ann@example.com", confirmed=True)
    assert (again.outcome, again.status) == ("confirmed", "active")
    assert _audience(store) == ["ann@example.com"]


def test_adding_a_confirmed_address_makes_it_active_at_once(store):
    result = subs.add(store, "ann@example.com", confirmed=True)
    assert (result.outcome, result.status) == ("added", "active")
    member = next(subs.iter_members(store))
    assert member.confirmed_at is not None and member.confirmed_at.tzinfo == dt.UTC


def test_adding_twice_changes_nothing_but_the_name(store):
    subs.add(store, "Ann@Example.com", name="Ann", confirmed=True)
    result = subs.add(store, "ann@EXAMPLE.com", name="Ann Berg")
    assert (result.outcome, result.status) == ("unchanged", "active")
    (member,) = subs.iter_members(store)
    assert member.email == "Ann@Example.com"  # kept as first given
    assert member.name == "Ann Berg"


def test_addresses_are_unique_case_insensitively_and_across_idn_spellings(store):
    subs.add(store, "Ann@Bücher.example", confirmed=True)
    assert subs.add(store, "ann@xn--bcher-kva.example").outcome == "unchanged"
    assert subs.add(store, "ANN@BÜCHER.EXAMPLE").outcome == "unchanged"
    assert list(_members(store)) == ["Ann@Bücher.example"]


def test_the_default_list_is_created_on_first_use(store):
    assert subs.get_lists(store) == []
    subs.add(store, "ann@example.com")
    assert [item.name for item in subs.get_lists(store)] == ["main"]


def test_an_unknown_list_is_refused_naming_the_lists_there_are(store):
    subs.create_list(store, "weekly")
    with pytest.raises(ListNotFound) as caught:
        subs.add(store, "ann@example.com", list_name="daily")
    assert "no list named 'daily'" in str(caught.value)
    assert "lists: main, weekly" not in str(caught.value)  # main was never made
    assert "lists: weekly" in str(caught.value)
    assert "newsletter lists create daily" in str(caught.value)
    with store.read() as conn:
        assert conn.execute(select(schema.subscribers)).all() == []


@pytest.mark.parametrize(
    "address",
    ["ann@example.com\r\nBcc: everyone@example.org", "ann@exam\nple.com", "ann\x00@example.com",
     "ann@exa mple.com", "ann@", "not an address", "ann@localhost", ""],
)
def test_bad_addresses_are_refused(store, address):
    with pytest.raises(InvalidAddress):
        subs.add(store, address)
    with store.read() as conn:
        assert conn.execute(select(schema.subscribers)).all() == []


def test_surrounding_white_space_is_not_part_of_the_address(store):
    subs.add(store, "  ann@example.com \t")
    assert list(_members(store)) == ["ann@example.com"]


def test_a_name_with_line_breaks_is_folded_onto_one_line(store):
    subs.add(store, "ann@example.com", name="Ann\r\n Berg\u2028\x85(sales)\t")
    (member,) = subs.iter_members(store)
    assert member.name == "Ann Berg (sales)"


def test_a_name_that_would_still_break_a_header_is_refused(store):
    with pytest.raises(InvalidAddress, match="not UTF-8 text"):
        subs.add(store, "ann@example.com", name="Ann \udce5")
    with pytest.raises(InvalidAddress, match="longer than 200"):
        subs.add(store, "ann@example.com", name="Ann\n" * 60)
    assert list(subs.iter_members(store)) == []


def test_a_list_title_is_folded_onto_one_line(store):
    subs.create_list(store, "weekly", "The weekly\r\nletter")
    subs.rename_list(store, "weekly", "tuesday", title="Tuesday\nletter")
    assert [item.title for item in subs.get_lists(store)] == ["Tuesday letter"]


# -- unsubscribing and coming back ------------------------------------------------------------


def test_unsubscribed_members_come_back_only_with_a_confirmed_opt_in(store):
    subs.add(store, "ann@example.com", confirmed=True)
    assert subs.unsubscribe(store, "ann@example.com") == ["main"]
    assert _members(store) == {"ann@example.com": "unsubscribed"}
    with pytest.raises(SubscriberError) as caught:
        subs.add(store, "ann@example.com")
    assert "unsubscribed from list 'main'" in str(caught.value)
    assert "--confirmed" in str(caught.value)
    assert _audience(store) == []
    result = subs.add(store, "ann@example.com", confirmed=True)
    assert (result.outcome, result.status) == ("resubscribed", "active")
    member = next(subs.iter_members(store))
    assert member.unsubscribed_at is None
    assert _audience(store) == ["ann@example.com"]


def test_unsubscribing_twice_reports_nothing_left(store):
    subs.add(store, "ann@example.com", confirmed=True)
    subs.unsubscribe(store, "ann@example.com")
    assert subs.unsubscribe(store, "ann@example.com") == []


def test_unsubscribe_from_every_list(store):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com", confirmed=True)
    subs.add(store, "ann@example.com", list_name="weekly")
    assert subs.unsubscribe(store, "ann@example.com", all_lists=True) == ["main", "weekly"]
    assert _members(store, all_lists=True) == {"ann@example.com": "unsubscribed"}


def test_unsubscribe_names_what_is_wrong(store):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com", list_name="weekly")
    with pytest.raises(SubscriberError, match=r"bob@example\.com is not a subscriber"):
        subs.unsubscribe(store, "bob@example.com")
    with pytest.raises(SubscriberError, match=r"not on list 'main' \(their lists: weekly\)"):
        subs.unsubscribe(store, "ann@example.com")


def test_confirm_turns_pending_active_once_and_never_revives_an_unsubscribe(store):
    subs.add(store, "ann@example.com")
    assert subs.confirm(store, "ann@example.com") is True
    assert subs.confirm(store, "ann@example.com") is False
    subs.unsubscribe(store, "ann@example.com")
    assert subs.confirm(store, "ann@example.com") is False
    assert _members(store) == {"ann@example.com": "unsubscribed"}


# -- suppression ------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["bounced", "complained", "manual"])
def test_a_suppression_outranks_every_membership(store, reason):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com", confirmed=True)
    subs.add(store, "ann@example.com", list_name="weekly", confirmed=True)
    subs.add(store, "bob@example.com", confirmed=True)
    assert subs.suppress(store, "ANN@example.com", reason, "550 no such user") is True
    assert subs.suppress(store, "ann@example.com", "manual") is False  # first reason stays
    assert subs.get_suppression(store, "ann@example.com").reason == reason
    assert _audience(store) == ["bob@example.com"]
    assert _audience(store, "weekly") == []
    assert _members(store) == {"ann@example.com": reason, "bob@example.com": "active"}
    assert _members(store, status=reason) == {"ann@example.com": reason}
    assert _members(store, status="active") == {"bob@example.com": "active"}


def test_a_suppressed_address_needs_confirmed_and_resubscribe(store):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com", confirmed=True)
    subs.add(store, "ann@example.com", list_name="weekly", confirmed=True)
    subs.suppress(store, "ann@example.com", "complained")
    with pytest.raises(SubscriberError, match="marked it as spam") as caught:
        subs.add(store, "ann@example.com", confirmed=True)
    assert "--confirmed --resubscribe" in str(caught.value)
    with pytest.raises(SubscriberError, match="only together with --confirmed"):
        subs.add(store, "ann@example.com", resubscribe=True)
    assert subs.get_suppression(store, "ann@example.com") is not None

    result = subs.add(store, "ann@example.com", list_name="weekly", confirmed=True, resubscribe=True)
    assert (result.outcome, result.status) == ("resubscribed", "active")
    assert subs.get_suppression(store, "ann@example.com") is None
    assert _audience(store, "weekly") == ["ann@example.com"]
    # Their confirmation was for weekly; main waits for its own.
    assert _members(store) == {"ann@example.com": "pending"}
    assert _audience(store) == []


def test_suppress_knows_its_reasons(store):
    with pytest.raises(SubscriberError, match="not a suppression reason"):
        subs.suppress(store, "ann@example.com", "annoyed")
    with pytest.raises(SubscriberError, match="use forget"):
        subs.suppress(store, "ann@example.com", "forgotten")


def test_is_mailable_is_the_last_check_before_sending(store):
    subs.add(store, "ann@example.com", confirmed=True)
    subs.add(store, "bob@example.com")
    list_id = subs.list_id(store)
    with store.read() as conn:
        ann, bob = conn.execute(select(schema.subscribers.c.id).order_by("id")).scalars()
        assert subs.is_mailable(conn, ann, list_id) is True
        assert subs.is_mailable(conn, bob, list_id) is False  # pending
    subs.suppress(store, "ann@example.com", "bounced")
    with store.read() as conn:
        assert subs.is_mailable(conn, ann, list_id) is False


# -- forgetting -------------------------------------------------------------------------------


def _every_value(store) -> str:
    """Every value in every table, as one string: to prove an address is gone."""
    with store.read() as conn:
        chunks = []
        for table in schema.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                chunks.extend(str(v) for v in row)
        return "\n".join(chunks).lower()


def test_forget_erases_everything_but_a_hash(store):
    subs.create_list(store, "weekly")
    subs.add(store, "Erin@Example.org", name="Erin Holm", confirmed=True,
             attributes={"city": "Bergen"})
    subs.add(store, "erin@example.org", list_name="weekly")
    subs.suppress(store, "erin@example.org", "bounced", "550 erin@example.org unknown")
    subs.add(store, "bob@example.com", confirmed=True)

    result = subs.forget(store, "erin@EXAMPLE.org")
    assert (result.found, result.lists) == (True, ["main", "weekly"])
    everything = _every_value(store)
    for trace in ("erin", "holm", "bergen"):
        assert trace not in everything
    assert subs.get_suppression(store, "erin@example.org").reason == "forgotten"
    assert _members(store, all_lists=True) == {"bob@example.com": "active"}

    with pytest.raises(SubscriberError, match="erased on request"):
        subs.add(store, "erin@example.org", confirmed=True)


def test_forgetting_an_unknown_address_still_keeps_it_out(store):
    result = subs.forget(store, "zed@example.com")
    assert (result.found, result.lists) == (False, [])
    assert subs.get_suppression(store, "zed@example.com").reason == "forgotten"
    with pytest.raises(SubscriberError):
        subs.add(store, "zed@example.com")


def test_a_forgotten_address_may_come_back_with_a_confirmed_resubscribe(store):
    subs.add(store, "erin@example.org", name="Erin", confirmed=True)
    subs.forget(store, "erin@example.org")
    result = subs.add(store, "erin@example.org", confirmed=True, resubscribe=True)
    assert (result.outcome, result.status) == ("added", "active")
    assert _audience(store) == ["erin@example.org"]


# -- lists ------------------------------------------------------------------------------------


def test_lists_are_created_renamed_and_listed_with_counts(store):
    subs.create_list(store, "weekly", "The weekly letter")
    subs.add(store, "ann@example.com", list_name="weekly", confirmed=True)
    subs.add(store, "bob@example.com", list_name="weekly")
    subs.add(store, "cid@example.com", list_name="weekly", confirmed=True)
    subs.suppress(store, "cid@example.com", "bounced")
    subs.rename_list(store, "weekly", "tuesday", title="Tuesdays")
    (info,) = subs.get_lists(store)
    assert (info.name, info.title) == ("tuesday", "Tuesdays")
    assert info.counts == {"active": 1, "pending": 1, "bounced": 1}
    assert _members(store, "tuesday") == {
        "ann@example.com": "active", "bob@example.com": "pending", "cid@example.com": "bounced"
    }


@pytest.mark.parametrize("name", ["Weekly", "-x", "a b", "", "x" * 64, "wöchentlich"])
def test_list_names_are_checked(store, name):
    with pytest.raises(ListError, match="not a list name"):
        subs.create_list(store, name)


def test_duplicate_and_missing_lists_are_refused(store):
    subs.create_list(store, "weekly")
    subs.create_list(store, "daily")
    with pytest.raises(ListError, match="exists already"):
        subs.create_list(store, "weekly")
    with pytest.raises(ListError, match="a list named 'daily' exists"):
        subs.rename_list(store, "weekly", "daily")
    with pytest.raises(ListNotFound, match=r"lists: daily, weekly"):
        subs.rename_list(store, "monthly", "yearly")
    with pytest.raises(ListNotFound):
        subs.delete_list(store, "monthly")
    with pytest.raises(ListNotFound):
        subs.iter_members(store, "monthly")  # at the call, before any row is read


def test_deleting_a_list_removes_memberships_not_subscribers(store):
    subs.create_list(store, "weekly")
    subs.add(store, "ann@example.com", list_name="weekly", confirmed=True)
    subs.add(store, "ann@example.com", confirmed=True)
    assert subs.delete_list(store, "weekly") == 1
    assert [item.name for item in subs.get_lists(store)] == ["main"]
    assert _members(store) == {"ann@example.com": "active"}


def _insert_campaign(store, list_id: int, issue: str) -> None:
    import datetime as dt

    from newsletter.store.schema import campaigns

    now = dt.datetime.now(dt.UTC)
    with store.write() as conn:
        conn.execute(insert(campaigns).values(
            uid=issue, issue=issue, list_id=list_id, status="finished", subject=issue,
            content_hash="0" * 64, source_hashes={}, provider="outbox", created_at=now, updated_at=now,
        ))


def test_a_list_used_by_a_campaign_cannot_be_deleted(store):
    subs.create_list(store, "weekly")
    subs.create_list(store, "daily")
    subs.add(store, "ann@example.com", list_name="weekly", confirmed=True)
    weekly = subs.list_id(store, "weekly")
    _insert_campaign(store, weekly, "issue-1")
    _insert_campaign(store, weekly, "issue-2")
    with pytest.raises(ListError, match="used by 2 campaigns and cannot be deleted"):
        subs.delete_list(store, "weekly")
    assert _members(store, "weekly") == {"ann@example.com": "active"}
    # A list no campaign uses goes.
    assert subs.delete_list(store, "daily") == 0


# -- audience ---------------------------------------------------------------------------------


def test_the_audience_is_active_unsuppressed_members_in_batches(store):
    subs.create_list(store, "weekly")
    for i in range(7):
        subs.add(store, f"reader{i}@example.com", confirmed=True)
    subs.add(store, "pending@example.com")
    subs.add(store, "left@example.com", confirmed=True)
    subs.unsubscribe(store, "left@example.com")
    subs.add(store, "bounced@example.com", confirmed=True)
    subs.suppress(store, "bounced@example.com", "bounced")
    subs.add(store, "other@example.com", list_name="weekly", confirmed=True)

    batches = list(subs.iter_audience(store, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    emails = [m.email for b in batches for m in b]
    assert emails == [f"reader{i}@example.com" for i in range(7)]
    ids = [m.subscriber_id for b in batches for m in b]
    assert ids == sorted(ids)


def test_the_audience_select_freezes_into_a_table_with_insert_select(store):
    """What a campaign does when it starts: one INSERT ... SELECT, no rows through Python."""
    subs.add(store, "ann@example.com", name="Ann", confirmed=True)
    subs.add(store, "bob@example.com", confirmed=True)
    subs.add(store, "cid@example.com")
    subs.suppress(store, "bob@example.com", "complained")
    md = MetaData()
    frozen = Table(
        "frozen",
        md,
        Column("campaign_id", Integer, primary_key=True),
        Column("subscriber_id", Integer, primary_key=True),
        Column("email", String(320)),
    )
    list_id = subs.list_id(store)
    with store.write() as conn:
        md.create_all(conn)
        audience = subs.audience_select(list_id).subquery()
        from sqlalchemy import literal

        conn.execute(
            insert(frozen).from_select(
                ["campaign_id", "subscriber_id", "email"],
                select(literal(1), audience.c.subscriber_id, audience.c.email),
            )
        )
        rows = conn.execute(select(frozen.c.email)).scalars().all()
    assert rows == ["ann@example.com"]


def test_members_stream_in_order_in_small_batches(store):
    with store.write() as conn:
        now = dt.datetime.now(dt.UTC)
        list_id = conn.execute(
            insert(schema.lists).values(name="main", created_at=now).returning(schema.lists.c.id)
        ).scalar_one()
        conn.execute(
            insert(schema.subscribers),
            [
                {"email": f"r{i}@example.com", "email_key": f"r{i}@example.com",
                 "email_hash": f"{i:064x}", "attributes": {}, "created_at": now,
                 "updated_at": now}
                for i in range(2500)
            ],
        )
        conn.execute(
            text(
                "INSERT INTO memberships (list_id, subscriber_id, status, source, created_at) "
                "SELECT :list_id, id, 'active', '', created_at FROM subscribers"
            ),
            {"list_id": list_id},
        )
    members = list(subs.iter_members(store, batch_size=100))
    assert len(members) == 2500
    assert [m.email for m in members[:3]] == ["r0@example.com", "r1@example.com", "r2@example.com"]
    assert sum(len(b) for b in subs.iter_audience(store, batch_size=999)) == 2500


def test_members_of_a_default_list_not_made_yet_are_none(store):
    assert list(subs.iter_members(store)) == []
    assert list(subs.iter_audience(store)) == []
    assert subs.get_lists(store) == []  # reading does not create it


def test_an_unknown_status_filter_is_refused(store):
    with pytest.raises(SubscriberError, match="not a status"):
        subs.iter_members(store, status="gone")


# -- stats ------------------------------------------------------------------------------------


def test_stats_count_members_per_list_and_status(store):
    subs.create_list(store, "weekly")
    subs.add(store, "a@example.com", confirmed=True)
    subs.add(store, "b@example.com", confirmed=True)
    subs.add(store, "c@example.com")
    subs.add(store, "d@example.com", confirmed=True)
    subs.unsubscribe(store, "d@example.com")
    subs.add(store, "e@example.com", list_name="weekly", confirmed=True)
    subs.suppress(store, "e@example.com", "bounced")
    subs.forget(store, "f@example.com")
    report = subs.stats(store)
    counts = {item.name: item.counts for item in report.lists}
    assert counts == {
        "main": {"active": 2, "pending": 1, "unsubscribed": 1},
        "weekly": {"bounced": 1},
    }
    assert report.subscribers == 5
    assert report.suppressions == {"bounced": 1, "forgotten": 1}


def test_stats_count_joins_and_leaves_per_week_in_the_newsletter_time_zone(store):
    oslo = dt.timezone(dt.timedelta(hours=1))  # fixed offset keeps the test exact
    now = dt.datetime(2026, 3, 18, 12, 0, tzinfo=oslo)  # a Wednesday
    for name in "abcdef":
        subs.add(store, f"{name}@example.com", confirmed=True)

    def at(text_: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text_).replace(tzinfo=oslo)

    joined = {
        "a": at("2026-03-16 00:30"),  # Monday just after midnight in Oslo: this week
        "b": at("2026-03-15 23:30"),  # Sunday night: last week
        "c": at("2026-03-02 09:00"),  # three weeks back
        "d": at("2026-01-01 09:00"),  # too old to show
        "e": at("2026-03-17 09:00"),
        "f": at("2026-03-17 10:00"),
    }
    with store.write() as conn:
        for name, when in joined.items():
            key = f"{name}@example.com"
            sub_id = conn.execute(
                select(schema.subscribers.c.id).where(schema.subscribers.c.email_key == key)
            ).scalar_one()
            values = {"confirmed_at": when}
            if name == "e":
                values.update(status="unsubscribed", unsubscribed_at=at("2026-03-18 08:00"))
            conn.execute(
                update(schema.memberships)
                .where(schema.memberships.c.subscriber_id == sub_id)
                .values(**values)
            )
    report = subs.stats(store, weeks=4, now=now, tz=oslo)
    assert [(w.start.isoformat(), w.joins, w.leaves) for w in report.weeks] == [
        ("2026-02-23", 0, 0),
        ("2026-03-02", 1, 0),
        ("2026-03-09", 1, 0),
        ("2026-03-16", 3, 1),
    ]


def test_a_forgotten_readers_id_is_never_given_to_someone_else(store):
    """Unsubscribe links name readers by id: after `forget`, a new reader must not inherit
    the id, or an old link in the forgotten reader's mailbox would unsubscribe them."""
    subs.add(store, "first@example.com", confirmed=True)
    subs.add(store, "last@example.com", confirmed=True)
    old = {m.email: m.subscriber_id for m in subs.iter_members(store)}["last@example.com"]
    subs.forget(store, "last@example.com")
    subs.add(store, "newcomer@example.com", confirmed=True)
    new = {m.email: m.subscriber_id for m in subs.iter_members(store)}["newcomer@example.com"]
    assert new > old
