"""The weekly cadence and the scheduler: slots, planning issues, due work and ``tick``.

The schedule lives in the issue files: ``send_at`` in ``issue.md``'s front matter, reviewable
in git. The database records what came of it: the campaigns (what was sent) and, per issue,
what the last tick found (``schedule_outcomes``: failed checks, a missed slot). An issue is
*due* when its ``send_at`` has passed and its campaign has not finished. A tick sends every
due issue, or resumes its interrupted campaign; the campaign's unique (issue, list) row and
the fenced claims of its journal make that happen exactly once, however many ticks run at
the same moment: a tick leaves a campaign another process is sending to it, and two ticks
that start one together share it.

Times are wall-clock times in the newsletter's time zone: 09:00 Europe/Oslo is 09:00 local on
both sides of a daylight-saving change, and a ``send_at`` without an offset is read in that
zone. The grace for a missed slot is measured in real (UTC) time.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import Config
from .content import (
    DATE_PREFIX,
    ISSUE_FILE,
    Issue,
    issue_folders,
    load_issue,
    load_named,
    parse_send_at,
    read_document,
    split_front_matter,
)
from .errors import ContentError, NewsletterError

if TYPE_CHECKING:
    from .providers import Provider
    from .sequences import SequenceEvent
    from .store import Store

SEND_AT = "send_at"
TICK_INTERVAL = 60.0  # seconds between the scheduler's ticks


class ScheduleError(NewsletterError):
    """A schedule request cannot be carried out."""


class BadTime(ScheduleError):
    """A time that cannot be read, does not exist, or has passed."""


class AlreadySent(ScheduleError):
    """The issue has a campaign already; its schedule is history."""


# ---------------------------------------------------------------------------------------------
# Slots


def slots(config: Config, after: dt.datetime) -> Iterator[dt.datetime]:
    """Weekly send slots strictly after ``after``, as aware datetimes in the newsletter's zone.

    The slot is wall-clock time: 09:00 Europe/Oslo stays 09:00 local across a DST change. A
    slot time the clocks skip (02:30 on the spring change) becomes the moment after the gap.
    """
    tz = config.newsletter.timezone
    local = after.astimezone(tz)
    days_ahead = (config.schedule.weekday - local.weekday()) % 7
    day = local.date() + dt.timedelta(days=days_ahead)
    while True:
        slot = dt.datetime.combine(day, config.schedule.time, tzinfo=tz)
        slot = slot.astimezone(dt.UTC).astimezone(tz)
        if slot > after:
            yield slot
        day += dt.timedelta(days=7)


def next_free_slot(config: Config, taken: Iterable[dt.date], after: dt.datetime) -> dt.datetime:
    """The first slot after ``after`` whose day no issue has claimed yet."""
    taken_days = set(taken)
    for slot in slots(config, after):
        if slot.date() not in taken_days:
            return slot
    raise AssertionError("unreachable: slots() is endless")


def slot_on(config: Config, day: dt.date) -> dt.datetime | None:
    """The slot on ``day``, or None when ``day`` is not the cadence's weekday."""
    if day.weekday() != config.schedule.weekday:
        return None
    tz = config.newsletter.timezone
    return dt.datetime.combine(day, config.schedule.time, tzinfo=tz).astimezone(dt.UTC).astimezone(tz)


# ---------------------------------------------------------------------------------------------
# Reading and writing times


_TRAILING_ZONE = re.compile(r"^(?P<moment>\S.*?)\s+(?P<zone>[A-Za-z][\w+\-]*(?:/[\w+\-]+)*)$")
_HAS_CLOCK = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; BadTime when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadTime(f"{name!r} is not a known time zone; use a name such as Europe/Oslo or UTC") from None


def localize(naive: dt.datetime, tz: ZoneInfo, what: str) -> dt.datetime:
    """``naive`` as wall-clock time in ``tz``. In the hour an autumn change repeats, the first
    of the two is meant; a time the spring change skips is refused."""
    aware = naive.replace(tzinfo=tz, fold=0)
    if aware.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) != naive:
        raise BadTime(
            f"{what}: {naive:%Y-%m-%d %H:%M} does not exist in {tz.key} (the clocks skip that "
            "hour for daylight saving time); pick another time"
        )
    return aware


def parse_moment(text: str, tz: ZoneInfo, what: str = "--at") -> dt.datetime:
    """A date and time from the command line: ``2026-12-08 09:00``, ``2026-12-08T09:00+01:00``
    or ``2026-12-08 09:00 America/New_York``. Without an offset or zone it is in ``tz``."""
    raw = text.strip()
    where = tz
    named = _TRAILING_ZONE.match(raw)
    if named and not _HAS_CLOCK.match(named["moment"]):
        named = None  # not a time followed by a zone: report it as a bad time
    if named:
        raw, where = named["moment"].strip(), zone(named["zone"])
    if _DATE_ONLY.match(raw):
        raise BadTime(f"{what} {text!r} has no time of day; write e.g. {raw} 09:00")
    if not _HAS_CLOCK.match(raw):
        raise BadTime(f"{what} {text!r} is not a date and time; write e.g. 2026-12-08 09:00")
    try:
        moment = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadTime(f"{what} {text!r} is not a date and time; write e.g. 2026-12-08 09:00") from None
    if moment.tzinfo is not None:
        if named:
            raise BadTime(f"{what} {text!r} has both an offset and a time zone; give one of them")
        return moment.astimezone(dt.UTC)
    # In UTC: a local time in the hour the clocks repeat never compares equal to another zone's.
    return localize(moment, where, f"{what} {text!r}").astimezone(dt.UTC)


def aware(moment: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """``moment`` with a zone: naive times are wall-clock time in ``tz``."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def show_time(moment: dt.datetime, tz: ZoneInfo) -> str:
    """``Tue 08 Dec 2026, 09:00 CET``: how times appear in output and logs."""
    return f"{moment.astimezone(tz):%a %d %b %Y, %H:%M %Z}"


def show_duration(delta: dt.timedelta) -> str:
    """``6h``, ``90m``, ``2d 3h``: a duration to whole minutes, largest units first."""
    minutes = int(delta.total_seconds() // 60)
    if minutes <= 0:
        return f"{max(0, int(delta.total_seconds()))}s"
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (mins, "m")) if n]
    return " ".join(parts)


def send_at_text(moment: dt.datetime, tz: ZoneInfo) -> str:
    """The front matter value for ``moment``: local wall-clock time without an offset, except
    in the hour an autumn change repeats, where only the offset says which one is meant."""
    local = moment.astimezone(tz)
    text = local.strftime("%Y-%m-%d %H:%M")
    if local.second:
        text += f":{local.second:02d}"
    if local.replace(fold=0).utcoffset() != local.replace(fold=1).utcoffset():
        offset = local.strftime("%z")
        text += f"{offset[:3]}:{offset[3:]}"
    return text


# ---------------------------------------------------------------------------------------------
# Editing front matter in place


_TOP_LEVEL_KEY = "^{key}[ \t]*:"


def set_front_matter(text: str, key: str, value: str | None) -> str:
    """``text`` with the top-level ``key`` set to ``value`` (None removes it), touching only
    that key's line: every other byte, comments and line endings included, stays as it was."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom):]
    lines = body.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    if not lines or lines[0].strip() != "---":
        if value is None:
            return text
        return f"{bom}---{newline}{key}: {value}{newline}---{newline}{body}"
    for close in range(1, len(lines)):
        if lines[close].strip() in ("---", "..."):
            break
    else:
        raise ContentError("front matter starts with --- but has no closing --- line")
    pattern = re.compile(_TOP_LEVEL_KEY.format(key=re.escape(key)))
    found = [i for i in range(1, close) if pattern.match(lines[i])]
    if len(found) > 1:
        raise ContentError(f"{key} appears {len(found)} times in the front matter; keep one")
    if not found:
        if value is None:
            return text
        lines.insert(close, f"{key}: {value}{newline}")
        return bom + "".join(lines)
    start = found[0]
    end = start + 1
    while end < close and lines[end][:1] in (" ", "\t") and lines[end].strip():
        end += 1  # the value went on over indented lines
    if value is None:
        del lines[start:end]
    else:
        ending = lines[start][len(lines[start].rstrip("\r\n")):] or newline
        lines[start:end] = [f"{key}: {value}{ending}"]
    return bom + "".join(lines)


def write_send_at(issue_file: Path, moment: dt.datetime | None, tz: ZoneInfo) -> None:
    """Set (or, with None, remove) ``send_at`` in ``issue_file``; the rest stays byte for byte.

    The edited file is read back before it replaces the old one, so a front matter too
    unusual to edit by line is refused with the old file untouched."""
    try:
        raw = issue_file.read_bytes()
        old = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContentError(f"{issue_file}: is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ContentError(f"{issue_file}: cannot be read: {exc.strerror}") from None
    try:
        new = set_front_matter(old, SEND_AT, None if moment is None else send_at_text(moment, tz))
    except ContentError as exc:
        raise ContentError(f"{issue_file}: {exc}") from None
    refused = ContentError(
        f"{issue_file}: the front matter is laid out in a way that cannot be edited safely; "
        f"set `{SEND_AT}:` by hand"
    )
    before = split_front_matter(old, issue_file)
    try:
        after = split_front_matter(new, issue_file)
    except ContentError:
        raise refused from None
    expected = {k: v for k, v in before.meta.items() if k != SEND_AT}
    written = after.meta.get(SEND_AT)
    rest = {k: v for k, v in after.meta.items() if k != SEND_AT}
    same = rest == expected and after.body == before.body
    if moment is None:
        same = same and SEND_AT not in after.meta
    else:
        same = same and written is not None and (
            parse_send_at(written, tz, str(issue_file)).astimezone(dt.UTC) == moment.astimezone(dt.UTC))
    if not same:
        raise refused
    _replace(issue_file, new.encode("utf-8"))


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and swap it in, keeping the file's permissions."""
    mode = path.stat().st_mode & 0o7777
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# What the files plan


@dataclass(frozen=True, slots=True)
class Planned:
    """One issue folder as the schedule sees it; an issue that does not load keeps its error
    and whatever of its front matter could be read."""

    folder: Path
    slug: str
    subject: str
    list_name: str
    send_at: dt.datetime | None  # in UTC
    date: dt.date | None  # the day in the newsletter's zone
    issue: Issue | None = None
    error: str | None = None


def scan(config: Config) -> list[Planned]:
    """Every issue folder with its send time, list and day, oldest first."""
    tz = config.newsletter.timezone
    default = config.newsletter.default_list
    found = []
    for folder in issue_folders(config.issues_dir):
        try:
            issue = load_issue(folder, config.newsletter.author, tz)
        except NewsletterError as exc:
            found.append(_broken(folder, str(exc), tz, default))
            continue
        send_at = issue.send_at.astimezone(dt.UTC) if issue.send_at else None
        found.append(Planned(folder=folder, slug=issue.slug, subject=issue.subject,
                             list_name=issue.list_name or default, send_at=send_at,
                             date=issue.date, issue=issue))
    return found


def _broken(folder: Path, error: str, tz: ZoneInfo, default: str) -> Planned:
    """A folder whose issue does not load: its send time and list, when they can be read."""
    send_at = None
    list_name = default
    subject = ""
    try:
        meta = read_document(folder / ISSUE_FILE).meta
        if meta.get(SEND_AT):
            send_at = parse_send_at(meta[SEND_AT], tz, str(folder / ISSUE_FILE)).astimezone(dt.UTC)
        if isinstance(meta.get("list"), str) and meta["list"].strip():
            list_name = meta["list"].strip()
        if isinstance(meta.get("subject"), str):
            subject = meta["subject"].strip()
    except NewsletterError:
        pass
    match = DATE_PREFIX.match(folder.name)
    date = send_at.astimezone(tz).date() if send_at else None
    if date is None and match:
        try:
            date = dt.date.fromisoformat(match[1])
        except ValueError:
            date = None
    return Planned(folder=folder, slug=folder.name, subject=subject, list_name=list_name,
                   send_at=send_at, date=date, error=error)


# ---------------------------------------------------------------------------------------------
# What the database says


@dataclass(frozen=True, slots=True)
class CampaignState:
    id: int
    issue: str
    list_name: str
    status: str  # sending | paused | finished | cancelled
    total: int
    running: bool  # some live process is sending it right now
    last_error: str
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def done(self) -> bool:
        return self.status in ("finished", "cancelled")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the last tick found for an issue, for the send time it had then."""

    issue: str
    list_name: str
    send_at: dt.datetime
    outcome: str  # sent | stopped | failed | missed
    detail: str
    first_seen: dt.datetime
    updated_at: dt.datetime


def campaign_states(store: Store) -> dict[tuple[str, str], CampaignState]:
    """Every issue's campaign by (issue, list name), with whether a process is sending it
    now (welcome steps left out)."""
    from sqlalchemy import select

    from .campaign import running_campaigns
    from .store.schema import campaigns, lists

    running = running_campaigns(store)
    with store.read() as conn:
        rows = conn.execute(
            select(campaigns.c.id, campaigns.c.issue, lists.c.name, campaigns.c.status,
                   campaigns.c.total,
                   campaigns.c.last_error, campaigns.c.created_at, campaigns.c.finished_at)
            .select_from(campaigns.join(lists, lists.c.id == campaigns.c.list_id))
            .where(campaigns.c.sequence.is_(None))  # a welcome step is not an issue
            .order_by(campaigns.c.id)
        ).all()
    return {
        (r.issue, r.name): CampaignState(
            id=r.id, issue=r.issue, list_name=r.name, status=r.status, total=r.total,
            running=r.id in running,
            last_error=r.last_error or "", created_at=r.created_at, finished_at=r.finished_at,
        )
        for r in rows
    }


def outcomes(store: Store) -> dict[str, Outcome]:
    """The last tick outcome of every issue that has one."""
    from sqlalchemy import select

    from .store.schema import schedule_outcomes as t

    with store.read() as conn:
        rows = conn.execute(select(t)).all()
    return {
        r.issue: Outcome(issue=r.issue, list_name=r.list_name, send_at=r.send_at, outcome=r.outcome,
                         detail=r.detail, first_seen=r.first_seen, updated_at=r.updated_at)
        for r in rows
    }


def record_outcome(store: Store, planned: Planned, outcome: str, detail: str,
                   now: dt.datetime | None = None) -> bool:
    """Keep what a tick found for ``planned``; True when it differs from what was kept before
    (so a failure that goes on unchanged is reported once, not every minute)."""
    from sqlalchemy import select

    from .store import upsert
    from .store.schema import schedule_outcomes as t

    assert planned.send_at is not None
    now = now or dt.datetime.now(dt.UTC)
    values = {"list_name": planned.list_name, "send_at": planned.send_at, "outcome": outcome,
              "detail": detail, "updated_at": now}
    with store.write() as conn:
        old = conn.execute(
            select(t.c.list_name, t.c.send_at, t.c.outcome, t.c.detail).where(t.c.issue == planned.slug)
            .with_for_update()
        ).first()
        new = old is None or (old.list_name, old.send_at, old.outcome, old.detail) != (
            planned.list_name, planned.send_at, outcome, detail)
        upsert = upsert(conn, t).values(issue=planned.slug, first_seen=now, **values)
        changes = {**values, "first_seen": now} if new else values
        conn.execute(upsert.on_conflict_do_update(index_elements=[t.c.issue], set_=changes))
    return new


def sent_issues(config: Config) -> dict[str, dt.datetime]:
    """Issues with a finished campaign and when it finished, or {} when there is no database
    to ask. Read only: a database not made yet is not created."""
    from .store import ask_existing

    states = ask_existing(config, campaign_states, {})
    sent: dict[str, dt.datetime] = {}
    for state in states.values():
        if state.status == "finished" and state.finished_at is not None:
            sent[state.issue] = max(sent.get(state.issue, state.finished_at), state.finished_at)
    return sent


# ---------------------------------------------------------------------------------------------
# Status


@dataclass(frozen=True, slots=True)
class Status:
    """Where a planned issue stands: draft, scheduled, due, sending, paused, sent, cancelled,
    failed (with the reason) or missed."""

    kind: str
    detail: str = ""


def status_of(config: Config, planned: Planned, campaign: CampaignState | None,
              outcome: Outcome | None, now: dt.datetime) -> Status:
    """The status of ``planned`` from its file, its campaign and the last tick's outcome."""
    tz = config.newsletter.timezone
    if campaign is not None:
        if campaign.status == "finished":
            when = campaign.finished_at or campaign.created_at
            return Status("sent", f"{show_time(when, tz)} to {campaign.list_name}")
        if campaign.status == "cancelled":
            return Status("cancelled", f"the campaign to {campaign.list_name} was cancelled")
        if campaign.running:
            return Status("sending", f"to {campaign.list_name}, started {show_time(campaign.created_at, tz)}")
        why = f" ({campaign.last_error})" if campaign.last_error else ""
        if planned.send_at is not None and planned.send_at <= now:
            return Status("paused", f"interrupted{why}; the next tick resumes it")
        return Status("paused", f"interrupted{why}; `newsletter send {planned.slug} --resume` "
                                "continues it")
    if planned.send_at is None:
        if planned.error:
            return Status("failed", planned.error)
        return Status("draft", "not scheduled")
    if planned.send_at > now:
        if planned.error:
            return Status("failed", planned.error)
        return Status("scheduled", f"{show_time(planned.send_at, tz)} to {planned.list_name}")
    current = outcome is not None and outcome.send_at == planned.send_at
    if current and outcome.outcome in ("failed", "missed"):
        return Status(outcome.outcome, outcome.detail)
    if now - planned.send_at > config.schedule.grace:
        return Status("missed", missed_detail(config, planned))
    if planned.error:
        return Status("failed", planned.error)
    return Status("due", "the next tick sends it")


def missed_detail(config: Config, planned: Planned) -> str:
    assert planned.send_at is not None
    grace = show_duration(config.schedule.grace)
    return (
        f"was due {show_time(planned.send_at, config.newsletter.timezone)}, more than the "
        f"{grace} grace ago, so it was not sent; send it now with `newsletter send "
        f"{planned.slug}`, or give it a new time with `newsletter schedule {planned.slug} --at ...`"
    )


# ---------------------------------------------------------------------------------------------
# Planning: schedule and unschedule


@dataclass(frozen=True, slots=True)
class Scheduled:
    slug: str
    issue_file: Path
    send_at: dt.datetime
    previous: dt.datetime | None
    list_name: str
    same_day: tuple[str, ...]  # other issues planned for that day


@dataclass(frozen=True, slots=True)
class Unscheduled:
    slug: str
    issue_file: Path
    previous: dt.datetime | None


def _refuse_campaign(store: Store, issue: Issue, list_name: str, config: Config, verb: str) -> None:
    state = campaign_states(store).get((issue.slug, list_name))
    if state is None:
        return
    tz = config.newsletter.timezone
    if state.status == "finished":
        when = show_time(state.finished_at or state.created_at, tz)
        raise AlreadySent(f"{issue.slug} was sent to {list_name} on {when}; it cannot be {verb}")
    if state.status == "cancelled":
        raise AlreadySent(
            f"{issue.slug} has a cancelled campaign for list {list_name}; it cannot be {verb}"
        )
    raise AlreadySent(
        f"{issue.slug} is being sent to {list_name} (campaign {state.status}); it cannot be "
        f"{verb}. `newsletter status {issue.slug}` follows it, `newsletter cancel {issue.slug}` stops it"
    )


def schedule_issue(config: Config, store: Store, name: str, at: str | dt.datetime | None,
                   now: dt.datetime) -> Scheduled:
    """Write ``send_at`` into issue ``name``: ``at``, or by default its slot.

    The default is the slot on the issue's own folder date when that is a free slot still to
    come (where `newsletter new` put it), else the next slot no other issue has claimed.
    An issue whose ``list:`` is not in the database is refused."""
    from .issue_checks import refuse_unknown_list

    tz = config.newsletter.timezone
    issue = load_named(config, name)
    list_name = issue.list_name or config.newsletter.default_list
    if isinstance(at, str):
        moment = parse_moment(at, tz)
    elif at is not None:
        moment = aware(at, tz).astimezone(dt.UTC)
    else:
        moment = None
    if moment is not None and moment <= now:
        raise BadTime(
            f"--at {show_time(moment, tz)} is in the past (it is {show_time(now, tz)} now); "
            "pick a later time"
        )
    _refuse_campaign(store, issue, list_name, config, "scheduled again")
    refuse_unknown_list(config, store, issue)
    others = [p for p in scan(config) if p.slug != issue.slug]
    taken = {p.date for p in others if p.date is not None}
    if moment is None:
        moment = _default_slot(config, issue, taken, now).astimezone(dt.UTC)
    write_send_at(issue.issue_file, moment, tz)
    day = moment.astimezone(tz).date()
    return Scheduled(slug=issue.slug, issue_file=issue.issue_file, send_at=moment,
                     previous=issue.send_at.astimezone(dt.UTC) if issue.send_at else None,
                     list_name=list_name,
                     same_day=tuple(p.slug for p in others if p.date == day))


def _default_slot(config: Config, issue: Issue, taken: set[dt.date], now: dt.datetime) -> dt.datetime:
    match = DATE_PREFIX.match(issue.slug)
    if match:
        try:
            own = slot_on(config, dt.date.fromisoformat(match[1]))
        except ValueError:
            own = None
        if own is not None and own > now and own.date() not in taken:
            return own
    return next_free_slot(config, taken, now)


def unschedule_issue(config: Config, store: Store, name: str) -> Unscheduled:
    """Remove ``send_at`` from issue ``name``; refused once its campaign has started."""
    issue = load_named(config, name)
    list_name = issue.list_name or config.newsletter.default_list
    if issue.send_at is not None:
        state = campaign_states(store).get((issue.slug, list_name))
        if state is not None and state.status != "cancelled":
            _refuse_campaign(store, issue, list_name, config, "unscheduled")
        write_send_at(issue.issue_file, None, config.newsletter.timezone)
    previous = issue.send_at.astimezone(dt.UTC) if issue.send_at else None
    return Unscheduled(slug=issue.slug, issue_file=issue.issue_file, previous=previous)


# ---------------------------------------------------------------------------------------------
# The calendar


@dataclass(frozen=True, slots=True)
class CalendarEntry:
    slug: str
    subject: str
    list_name: str
    send_at: dt.datetime | None
    status: Status


@dataclass(frozen=True, slots=True)
class CalendarRow:
    """A weekly slot (``on_cadence``) or an issue planned off the cadence, with its issues."""

    when: dt.datetime
    on_cadence: bool
    entries: tuple[CalendarEntry, ...]

    @property
    def empty(self) -> bool:
        return not self.entries


@dataclass(frozen=True, slots=True)
class Calendar:
    now: dt.datetime
    earlier: tuple[CalendarEntry, ...]  # past send times not sent: due, sending, failed, missed
    rows: tuple[CalendarRow, ...]

    @property
    def empty_weeks(self) -> int:
        return sum(1 for row in self.rows if row.on_cadence and row.empty)


def calendar(config: Config, store: Store, now: dt.datetime, weeks: int = 8) -> Calendar:
    """The coming ``weeks`` slots with the issues planned for each, and what needs attention."""
    tz = config.newsletter.timezone
    plan = scan(config)
    camps = campaign_states(store)
    outs = outcomes(store)

    def entry(p: Planned) -> CalendarEntry:
        status = status_of(config, p, camps.get((p.slug, p.list_name)), outs.get(p.slug), now)
        return CalendarEntry(slug=p.slug, subject=p.subject, list_name=p.list_name,
                             send_at=p.send_at, status=status)

    earlier = []
    for p in sorted((p for p in plan if p.send_at is not None and p.send_at <= now),
                    key=lambda p: p.send_at or now):
        e = entry(p)
        if e.status.kind not in ("sent", "cancelled"):
            earlier.append(e)

    coming = [slot for slot, _ in zip(slots(config, now), range(max(0, weeks)), strict=False)]
    last_day = coming[-1].date() if coming else now.astimezone(tz).date()
    today = now.astimezone(tz).date()
    by_day: dict[dt.date, list[Planned]] = {}
    for p in plan:
        if p.send_at is not None and p.send_at <= now:
            continue  # shown above, or sent
        if p.send_at is None and p.date is not None and p.date < today:
            continue  # an old draft: not part of the coming weeks
        if p.date is not None and p.date <= last_day:
            by_day.setdefault(p.date, []).append(p)
    rows = []
    for slot in coming:
        planned = sorted(by_day.pop(slot.date(), []), key=lambda p: (p.send_at or slot, p.slug))
        rows.append(CalendarRow(when=slot, on_cadence=True, entries=tuple(entry(p) for p in planned)))
    for day, planned in by_day.items():
        for p in planned:
            when = p.send_at or dt.datetime.combine(day, config.schedule.time, tzinfo=tz)
            if when > now or p.send_at is None:
                rows.append(CalendarRow(when=when, on_cadence=False, entries=(entry(p),)))
    rows.sort(key=lambda r: (r.when, not r.on_cadence))
    return Calendar(now=now, earlier=tuple(earlier), rows=tuple(rows))


# ---------------------------------------------------------------------------------------------
# Tick: send what is due


@dataclass(frozen=True, slots=True)
class TickEvent:
    """What a tick did or found for one due issue.

    ``outcome`` is sent (finished now), stopped (the run paused), failed (not started: the
    reason is in ``detail``), missed (past its grace) or busy (another process has it)."""

    issue: str
    list_name: str
    outcome: str
    detail: str
    new: bool = True  # False when the same outcome was reported by an earlier tick
    resumed: bool = False

    @property
    def problem(self) -> bool:
        return self.outcome in ("stopped", "failed", "missed")

    def __str__(self) -> str:
        verb = {"sent": "resumed and finished" if self.resumed else "sent", "stopped": "stopped",
                "failed": "not sent", "missed": "missed", "busy": "left alone"}[self.outcome]
        return f"{self.issue} → {self.list_name}: {verb}: {self.detail}"


@dataclass
class TickReport:
    now: dt.datetime
    events: list[TickEvent | FeedEvent | SequenceEvent] = field(default_factory=list)
    interrupted: str | None = None  # "interrupted" / "terminated" when a signal stopped a run
    next_up: tuple[str, dt.datetime] | None = None  # the next issue to go out, and when

    @property
    def problems(self) -> list[TickEvent]:
        return [e for e in self.events if e.problem]


ProviderFactory = Callable[[Config], "Provider"]


def due(config: Config, plan: list[Planned], now: dt.datetime) -> list[Planned]:
    """Issues whose send time has passed, earliest first (finished campaigns not excluded)."""
    return sorted((p for p in plan if p.send_at is not None and p.send_at <= now),
                  key=lambda p: (p.send_at, p.slug))


def tick(config: Config, store: Store, now: dt.datetime, *,
         provider_factory: ProviderFactory | None = None,
         should_stop: Callable[[], bool] = lambda: False,
         **send_options: Any) -> TickReport:
    """Draft the coming slot's issue from the blog's feed when ``[feed] auto`` says so, send
    every due issue whose campaign has not finished, then every welcome step that is due
    (see :mod:`newsletter.sequences`), and return what happened.

    Each issue goes to its ``list:`` (else the default list). A new one is sent only when its
    time is at most ``[schedule] grace`` ago and it passes the pre-flight checks; an
    interrupted campaign is resumed. Another process starting or sending the same campaign
    at the same moment is not an error: that process has it (``busy``)."""
    now = now.astimezone(dt.UTC)
    report = TickReport(now=now)
    plan = scan(config)
    drafted = draft_from_feed(config, store, now, plan)
    if drafted is not None:
        report.events.append(drafted)
        plan = scan(config)
    camps = campaign_states(store)
    for planned in due(config, plan, now):
        if should_stop():
            break
        campaign = camps.get((planned.slug, planned.list_name))
        if campaign is not None and campaign.done:
            continue
        event = _tick_one(config, store, planned, campaign, now, provider_factory, report,
                          should_stop, send_options)
        if event is not None:
            report.events.append(event)
        if report.interrupted:
            break
    if not report.interrupted and not should_stop():
        from .sequences import tick as tick_sequences

        welcomed, report.interrupted = tick_sequences(
            config, store, now, provider_factory=provider_factory, should_stop=should_stop,
            **send_options)
        report.events.extend(welcomed)
    upcoming = sorted((p.send_at, p.slug) for p in plan if p.send_at is not None and p.send_at > now)
    if upcoming:
        report.next_up = (upcoming[0][1], upcoming[0][0])
    return report


def _tick_one(config: Config, store: Store, planned: Planned, campaign: CampaignState | None,
              now: dt.datetime, provider_factory: ProviderFactory | None, report: TickReport,
              should_stop: Callable[[], bool], send_options: dict[str, Any]) -> TickEvent | None:
    from . import campaign as engine
    from .checks import preflight
    from .providers import get_provider
    from .render import render_issue

    assert planned.send_at is not None
    slug, list_name = planned.slug, planned.list_name

    def outcome(kind: str, detail: str) -> TickEvent:
        new = record_outcome(store, planned, kind, detail, now)
        return TickEvent(slug, list_name, kind, detail, new=new, resumed=campaign is not None)

    def busy(detail: str) -> TickEvent:
        return TickEvent(slug, list_name, "busy", detail, resumed=campaign is not None)

    if campaign is None and now - planned.send_at > config.schedule.grace:
        return outcome("missed", missed_detail(config, planned))
    if campaign is not None and campaign.running:
        return busy("another process is sending it")
    provider: Provider | None = None
    try:
        if planned.issue is None:
            raise ContentError(planned.error or f"{slug} does not load")
        rendered = render_issue(config, planned.issue)
        if should_stop():
            return None  # asked to stop while rendering: start nothing new
        if campaign is None:
            preflight(config, rendered)
            _ready_to_send(config, store, list_name)
            provider = (provider_factory or get_provider)(config)
            try:
                row = engine.start(store, rendered, list_name, provider.name)
            except engine.CampaignExists:
                return busy("another process started it at the same moment")
        else:
            row = engine.find_campaign(store, slug, list_name)
            if row is None or row.status in ("finished", "cancelled"):
                return None  # finished by another process a moment ago
            provider = (provider_factory or get_provider)(config)
        result = engine.send_campaign(config, store, row, rendered, provider, **send_options)
    except NewsletterError as exc:
        return outcome("failed", str(exc))
    finally:
        if provider is not None:
            provider.close()
    c = result.counts
    parts = [f"{c['sent']:,} sent"] + [f"{c[s]:,} {s}" for s in ("failed", "skipped", "unknown") if c[s]]
    summary = f"{', '.join(parts)} of {c.total:,}"
    if result.finished:
        return outcome("sent", summary)
    if result.stopped_reason in ("interrupted", "terminated"):
        report.interrupted = result.stopped_reason
    return outcome("stopped", f"stopped after {c.done:,} of {c.total:,} ({result.stopped_reason}); "
                              "the next tick resumes it")


# ---------------------------------------------------------------------------------------------
# Tick: draft the coming slot's issue from the blog's feed ([feed] auto)

FEED_RETRY = dt.timedelta(hours=1)  # a slot with no new post, or a failed fetch, is tried again
FEED_STALE = dt.timedelta(minutes=15)  # a drafting claim this old was left by a tick that died


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """What a tick did about the blog's feed for the coming slot: drafted, nothing (no new
    post) or failed (the feed could not be read; ``detail`` says why)."""

    slot: dt.datetime
    outcome: str
    detail: str
    new: bool = True  # False when an earlier tick reported the same

    @property
    def problem(self) -> bool:
        return self.outcome == "failed"

    def __str__(self) -> str:
        return f"feed → {self.slot:%a %d %b %H:%M}: {self.detail}"


def draft_from_feed(config: Config, store: Store, now: dt.datetime,
                    plan: list[Planned]) -> FeedEvent | None:
    """With ``[feed] auto`` on, draft the coming slot's issue once ``[feed] lead`` before it,
    unless an issue already has the slot's day; with ``auto = "send"`` it is scheduled for
    the slot too. However many ticks run at once, one drafts: the slot's row in
    ``feed_drafts`` is the claim."""
    feed = config.feed
    if feed.auto == "off" or not feed.url:
        return None
    tz = config.newsletter.timezone
    slot = next(slots(config, now))
    if now < slot - feed.lead or any(p.date == slot.date() for p in plan):
        return None
    previous = _claim_feed_slot(store, slot, now)
    if previous is None:
        return None  # drafted already, looked at within the hour, or another tick has it
    from .feed import draft, summary

    since = next(slots(config, slot - dt.timedelta(days=8))) - feed.lead
    send = feed.auto == "send"
    folder = ""
    try:
        result = draft(config, feed.url, slot, since,
                       send_at=send_at_text(slot, tz) if send else None)
    except NewsletterError as exc:
        outcome, detail = "failed", f"{exc}; the next tick tries again within the hour"
    except BaseException:
        _settle_feed_slot(store, slot, "failed", "", "the drafting tick stopped", now, previous)
        raise
    else:
        if result.folder is None:
            outcome = "nothing"
            detail = summary(result, config) + ("; nothing goes out" if send else "; nothing drafted")
        else:
            outcome, folder = "drafted", result.folder.name
            detail = summary(result, config) + (
                f"; scheduled for {show_time(slot, tz)}" if send
                else f"; read it, then `newsletter schedule {folder}`")
    new = _settle_feed_slot(store, slot, outcome, folder, detail, now, previous)
    return FeedEvent(slot, outcome, detail, new=new)


def _claim_feed_slot(store: Store, slot: dt.datetime, now: dt.datetime) -> tuple[str, str] | None:
    """Mark ``slot`` as being drafted by this tick; the (outcome, detail) kept before, or None
    when this tick is not the one to draft it."""
    from sqlalchemy import select, update

    from .store import upsert
    from .store.schema import feed_drafts as t

    with store.write() as conn:
        row = conn.execute(select(t.c.outcome, t.c.detail, t.c.updated_at)
                           .where(t.c.slot == slot).with_for_update()).first()
        if row is None:
            claim = upsert(conn, t).values(
                slot=slot, outcome="drafting", first_seen=now, updated_at=now)
            taken = conn.execute(claim.on_conflict_do_nothing(index_elements=[t.c.slot])
                                 .returning(t.c.slot)).first()
            return ("", "") if taken is not None else None
        wait = FEED_STALE if row.outcome == "drafting" else FEED_RETRY
        if row.outcome == "drafted" or now - row.updated_at < wait:
            return None
        taken = conn.execute(
            update(t).where(t.c.slot == slot, t.c.outcome == row.outcome,
                            t.c.updated_at == row.updated_at)
            .values(outcome="drafting", updated_at=now)
        ).rowcount
        return (row.outcome, row.detail) if taken == 1 else None


def _settle_feed_slot(store: Store, slot: dt.datetime, outcome: str, folder: str, detail: str,
                      now: dt.datetime, previous: tuple[str, str]) -> bool:
    """Keep what came of drafting ``slot``; True when it differs from what was kept before."""
    from sqlalchemy import update

    from .store.schema import feed_drafts as t

    new = previous != (outcome, detail)
    values = {"outcome": outcome, "issue": folder, "detail": detail, "updated_at": now}
    if new:
        values["first_seen"] = now
    with store.write() as conn:
        conn.execute(update(t).where(t.c.slot == slot).values(**values))
    return new


def _ready_to_send(config: Config, store: Store, list_name: str) -> None:
    """Refuse before a campaign exists: no signing secret, or nobody on the list."""
    from .campaign import CampaignError, audience_size

    if not config.secret("NEWSLETTER_SECRET"):
        raise CampaignError(
            "NEWSLETTER_SECRET is not set; it signs every unsubscribe link. Put one in .env "
            "beside newsletter.toml"
        )
    if audience_size(store, list_name) == 0:
        raise CampaignError(
            f"list {list_name} has no active subscribers; add some with `newsletter subscribers add` or `import`"
        )


# ---------------------------------------------------------------------------------------------
# The scheduler: tick every minute until stopped


def describe_tick(report: TickReport, tz: ZoneInfo) -> list[str]:
    """Log lines for a tick: one per event, or one saying nothing was due and what is next."""
    if report.events:
        return [str(event) for event in report.events]
    line = "nothing due"
    if report.next_up:
        slug, when = report.next_up
        line += f"; next: {slug} at {show_time(when, tz)}"
    return [line]


class Scheduler:
    """Runs ``run_tick`` every ``interval`` seconds until :meth:`stop`, SIGINT or SIGTERM.

    A tick that raises is logged and the next one runs as usual. A signal during a send lets
    the batches in flight finish (the campaign engine pauses the campaign, and the next
    start resumes it); a signal between ticks stops at once."""

    def __init__(self, run_tick: Callable[[Scheduler], TickReport], log: Callable[[str], None],
                 interval: float = TICK_INTERVAL, tz: ZoneInfo | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], object] | None = None) -> None:
        self.run_tick = run_tick
        self.log = log
        self.interval = interval
        self.tz = tz or ZoneInfo("UTC")
        self.clock = clock
        self._stop = threading.Event()
        self.wait = wait or self._stop.wait  # returns early when stopped
        self.why = ""
        self.ticks = 0

    def stop(self, why: str = "stopped") -> None:
        self.why = self.why or why
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> str:
        """Tick until stopped; returns why it stopped."""
        with self._signals():
            next_at = self.clock()
            while not self._stop.is_set():
                self.ticks += 1
                try:
                    report = self.run_tick(self)
                except NewsletterError as exc:
                    self.log(f"tick failed: {exc}; trying again in {self.interval:g}s")
                except Exception as exc:  # the loop outlives any tick, even a bug in one
                    self.log("tick failed: " + "".join(traceback.format_exception(exc)).rstrip())
                else:
                    if isinstance(report, TickReport):
                        for line in describe_tick(report, self.tz):
                            self.log(line)
                        if report.interrupted:
                            self.stop(report.interrupted)
                next_at += self.interval
                now = self.clock()
                if next_at < now:  # a long send: tick again straight away, then on the beat
                    next_at = now
                if not self._stop.is_set():
                    self.wait(max(0.0, next_at - now))
        return self.why or "stopped"

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: Any) -> None:
            self.stop("interrupted" if signum == signal.SIGINT else "terminated")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def run_scheduler(load_config: Callable[[], Config], log: Callable[[str], None],
                  interval: float = TICK_INTERVAL,
                  now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> str:
    """The ``scheduler`` command's loop: each tick reads the configuration and the issue
    files afresh and opens the database, so edits and a database restart are picked up."""
    from .store import open_store

    def one_tick(scheduler: Scheduler) -> TickReport:
        config = load_config()
        scheduler.tz = config.newsletter.timezone
        with open_store(config) as store:
            return tick(config, store, now(), should_stop=lambda: scheduler.stopping)

    return Scheduler(one_tick, log, interval=interval).run()
