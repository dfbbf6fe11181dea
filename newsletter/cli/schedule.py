"""Commands for the weekly schedule: schedule, unschedule, calendar, tick, scheduler."""

from __future__ import annotations

import datetime as dt
import sys

import click

from .common import Env, pass_env, plural, show_path

NOW_HELP = "Act as if it were this time (e.g. 2026-12-08T09:00:00+01:00); for trying things out."


def _now(env: Env, now: str | None) -> dt.datetime:
    from ..schedule import parse_moment

    if now is None:
        return dt.datetime.now(dt.UTC)
    return parse_moment(now, env.config.newsletter.timezone, "--now")


@click.command()
@click.argument("issue")
@click.option("--at", "at", metavar="TIME",
              help='When to send, e.g. "2026-12-08 09:00" (the newsletter\'s time zone), '
                   '"2026-12-08T09:00+01:00" or "2026-12-08 09:00 America/New_York". '
                   "Default: the issue's weekly slot.")
@click.option("--now", hidden=True, help=NOW_HELP)
@pass_env
def schedule(env: Env, issue: str, at: str | None, now: str | None) -> None:
    """Plan ISSUE for a send time (default: its weekly slot).

    Writes send_at into the issue's issue.md; only that line of the front matter changes, so
    commit the file to keep the plan in git. Without --at, the issue gets the weekly slot of
    its folder's date when that is still to come and free, else the next free slot.
    `newsletter tick` (from cron) or `newsletter scheduler` sends it when it is due.
    """
    from ..schedule import schedule_issue, show_time
    from ..store import open_store_or_scratch

    config = env.config
    tz = config.newsletter.timezone
    moment = _now(env, now)
    with open_store_or_scratch(config) as store:
        done = schedule_issue(config, store, issue, at, moment)
    verb = "rescheduled" if done.previous else "scheduled"
    click.echo(f"{verb} {done.slug} for {show_time(done.send_at, tz)} → list {done.list_name}")
    if done.previous and done.previous != done.send_at:
        click.echo(f"  (was {show_time(done.previous, tz)})")
    click.echo(f"  {show_path(done.issue_file)}: send_at written")
    if done.same_day:
        click.echo(f"  note: {', '.join(done.same_day)} is planned for the same day", err=True)


@click.command()
@click.argument("issue")
@pass_env
def unschedule(env: Env, issue: str) -> None:
    """Take ISSUE off the schedule.

    Removes send_at from its issue.md; the issue is a draft again. Refused once its campaign
    has started (`newsletter cancel` stops a campaign).
    """
    from ..schedule import show_time, unschedule_issue
    from ..store import open_store_or_scratch

    config = env.config
    with open_store_or_scratch(config) as store:
        done = unschedule_issue(config, store, issue)
    if done.previous is None:
        click.echo(f"{done.slug} was not scheduled; nothing changed")
        return
    click.echo(f"unscheduled {done.slug} (was {show_time(done.previous, config.newsletter.timezone)}); "
               "it is a draft again")


_COLOURS = {"sent": "green", "scheduled": "cyan", "due": "cyan", "sending": "cyan",
            "draft": "yellow", "paused": "red", "failed": "red", "missed": "red",
            "cancelled": "magenta"}


def _entry_line(entry, slot: dt.datetime | None, tz, width: int = 0) -> str:
    from ..schedule import show_time

    status = click.style(entry.status.kind, fg=_COLOURS.get(entry.status.kind))
    detail = entry.status.detail
    if entry.status.kind == "scheduled":
        # The slot's time is on the row already; say only what differs.
        off_slot = slot is not None and entry.send_at is not None and entry.send_at != slot.astimezone(dt.UTC)
        detail = (f"{show_time(entry.send_at, tz)} " if off_slot else "") + f"to {entry.list_name}"
    return f"{entry.slug:<{width}}  {status}" + (f" ({detail})" if detail else "")


@click.command()
@click.option("--weeks", type=click.IntRange(1, 520), default=8, show_default=True,
              help="How many weekly slots to show.")
@click.option("--now", hidden=True, help=NOW_HELP)
@pass_env
def calendar(env: Env, weeks: int, now: str | None) -> None:
    """The coming weekly slots, their issues and status.

    Each slot shows the issue planned for it; empty weeks are flagged. Statuses: draft (not scheduled), scheduled, due, sending, sent, paused (interrupted; the
    next tick resumes it), failed (with the reason from the last tick), missed (past the
    grace, not sent) and cancelled. Issues whose time has passed without being sent are
    listed first.
    """
    from ..schedule import calendar as build_calendar
    from ..schedule import show_duration
    from ..store import open_store_or_scratch

    config = env.config
    tz = config.newsletter.timezone
    moment = _now(env, now)
    with open_store_or_scratch(config) as store:
        cal = build_calendar(config, store, moment, weeks)
    s = config.schedule
    width = max((len(e.slug) for e in (*cal.earlier, *(e for r in cal.rows for e in r.entries))), default=0)
    click.echo(f"Weekly on {s.weekday_name.title()} at {s.time:%H:%M} {tz.key} "
               f"(grace {show_duration(s.grace)}); now {moment.astimezone(tz):%a %d %b %Y, %H:%M %Z}")
    if cal.earlier:
        click.echo("")
        click.echo("Not sent yet:")
        for entry in cal.earlier:
            when = entry.send_at.astimezone(tz) if entry.send_at else None
            click.echo(f"  {when:%a %Y-%m-%d %H:%M %Z}  {_entry_line(entry, None, tz, width)}")
    click.echo("")
    for row in cal.rows:
        when = row.when.astimezone(tz)
        stamp = f"{when:%a %Y-%m-%d %H:%M %Z}"
        if not row.on_cadence:
            stamp = f"{when:%a %Y-%m-%d} {'off-cycle':>9}"
            if row.entries and row.entries[0].send_at is not None:
                stamp = f"{when:%a %Y-%m-%d %H:%M %Z}"
        if row.empty and config.feed.auto != "off" and row.on_cadence:
            verb = "drafts and schedules" if config.feed.auto == "send" else "drafts"
            drafts = (row.when - config.feed.lead).astimezone(tz)
            click.echo(f"  {stamp}  — empty: `tick` {verb} it from the feed "
                       f"{drafts:%a %d %b %H:%M} if there are new posts")
            continue
        if row.empty:
            click.echo(f"  {stamp}  " + click.style("— empty: nothing planned", fg="red"))
            continue
        slot = row.when if row.on_cadence else None
        for n, entry in enumerate(row.entries):
            prefix = stamp if n == 0 else " " * len(stamp)
            line = f"  {prefix}  {_entry_line(entry, slot, tz, width)}"
            if not row.on_cadence and n == 0:
                line += "  (off the weekly slot)"
            click.echo(line)
        if row.on_cadence and len(row.entries) > 1:
            click.echo(f"  {' ' * len(stamp)}  " + click.style(
                f"! {len(row.entries)} issues planned for this day", fg="yellow"))
    if cal.empty_weeks:
        click.echo("")
        span = (f"the next {'week' if weeks == 1 else plural(weeks, 'week')}" if cal.empty_weeks == weeks
                else f"{cal.empty_weeks} of the next {plural(weeks, 'week')}")
        start = "`newsletter new \"Title\"` starts an issue for the next free one"
        if config.feed.url:
            start += " (`newsletter new --from-feed` drafts it from the blog's feed)"
        click.echo(f"nothing planned in {span}; {start}.")


@click.command()
@click.option("--now", metavar="TIME", help="Act as if it were this time, e.g. 2026-12-08T09:00:00+01:00 "
                            "(default: now).")
@click.option("--verbose", "-v", is_flag=True,
              help="Also report problems already reported by an earlier tick, and say when nothing is due.")
@pass_env
def tick(env: Env, now: str | None, verbose: bool) -> None:
    """Send every issue that is due, then exit.

    With [feed] auto = "draft" or "send", first draft the coming slot's issue from the
    blog's feed ([feed] lead before the slot, when no issue has that day).
    Safe to run from cron every minute. Due: send_at has passed and the issue's campaign has
    not finished. A campaign is started only within [schedule] grace of send_at (later, the
    slot is reported as missed); an interrupted one is resumed. An issue that fails its pre-flight
    checks is not sent; the reason is printed once and shown by `newsletter calendar`.
    Another tick or scheduler sending at the same moment is not an error. Prints nothing
    when nothing happened; exit code 1 when a new problem was reported.
    """
    from ..schedule import describe_tick
    from ..schedule import tick as run_tick
    from ..store import open_store

    config = env.config
    moment = _now(env, now)
    with open_store(config) as store:
        report = run_tick(config, store, moment)
    reported = False
    for event in report.events:
        if not (event.new or verbose):
            continue
        if event.problem:
            reported = True
            click.echo(f"error: {event}", err=True)
        else:
            click.echo(str(event))
    if verbose and not report.events:
        click.echo(describe_tick(report, config.newsletter.timezone)[0])
    if report.interrupted:
        click.echo(f"tick {report.interrupted}; the next tick resumes the campaign", err=True)
        sys.exit(1)
    if reported:
        sys.exit(1)


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.01), default=60.0, hidden=True,
              help="Seconds between ticks.")
@pass_env
def scheduler(env: Env, interval: float) -> None:
    """Send what is due every minute, until SIGINT or SIGTERM.

    Runs `tick` every minute in the foreground. Logs one line per tick (or per issue acted on) to stderr. A failing tick is logged and
    tried again a minute later. On SIGTERM a batch in flight finishes and the campaign is
    paused; the next tick, or the next start, resumes it.
    """
    from ..config import load
    from ..schedule import run_scheduler

    config = env.config  # fail now, with a clear message, if the configuration is broken
    tz = config.newsletter.timezone
    path = config.path

    def log(line: str) -> None:
        stamp = dt.datetime.now(tz).strftime("%Y-%m-%d %H:%M:%S %Z")
        click.echo(f"{stamp} {line}", err=True)

    log(f"scheduler started: ticking every {interval:g}s for {show_path(path)}")
    why = run_scheduler(lambda: load(path), log, interval=interval)
    log(f"scheduler stopped ({why})")


COMMANDS = [schedule, unschedule, calendar, tick, scheduler]
