"""The report command: how an issue did, and the weeks around it."""

from __future__ import annotations

from pathlib import Path

import click

from .common import pass_env, show_path
from .schedule import NOW_HELP, _now
from .send import _issue_slug


@click.command()
@click.argument("issue", required=False)
@click.option("--list", "list_name", help="The list: the issue's campaign for it, or the list the weeks count.")
@click.option("--weeks", type=click.IntRange(1, 520), default=None,
              help="The last N weeks: one row per issue, and the list's joins, leaves and size.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as one HTML page with its charts (no script, nothing fetched).")
@click.option("--now", hidden=True, help=NOW_HELP)
@pass_env
def report(env, issue: str | None, list_name: str | None, weeks: int | None, html_file: Path | None,
           now: str | None) -> None:
    """How ISSUE did: sent, failed, unknown, delivered, bounced, complained, who left
    through its link, and clicks per link (with [tracking] clicks = true).

    Clicks and opens are counted per link and per issue, never per reader. With --weeks N
    (and no ISSUE), the last N weeks instead: each issue sent in them, and the list's joins,
    leaves and size week by week.
    """
    from .. import report as core
    from ..files import write_atomically
    from ..store import open_store

    if issue is None and weeks is None:
        raise click.UsageError("name an ISSUE, or pass --weeks N (e.g. --weeks 12)")
    if html_file is not None and not html_file.parent.is_dir():
        from ..errors import NewsletterError

        raise NewsletterError(f"--html {html_file}: the folder {show_path(html_file.parent)} does not "
                              "exist; create it, or write the page elsewhere")
    config = env.config
    moment = _now(env, now)
    tz = config.newsletter.timezone
    one = many = None
    with open_store(config) as store:
        if issue is not None:
            slug = _issue_slug(env, store, issue)
            one = core.issue_report(store, core.find(store, slug, list_name))
        if weeks is not None:
            many = core.weeks_report(store, weeks, moment, tz, list_name)
    if one is not None:
        _print_issue(one, tz)
    if many is not None:
        if one is not None:
            click.echo()
        _print_weeks(many)
    if html_file is not None:
        write_atomically(html_file, core.page(config, one, many, moment).encode("utf-8"))
        click.echo(f"wrote {show_path(html_file)}")


def _n(n: int | None) -> str:
    return "not reported" if n is None else f"{n:,}"


def _print_issue(r, tz) -> None:
    from ..report import OPENS_CAVEAT, delivery_rows

    when = r.finished or r.started
    click.echo(f"{r.issue} → {r.list_name}: {r.subject}")
    click.echo(f"  {'sent' if r.finished else r.status} {when.astimezone(tz):%a %d %b %Y, %H:%M %Z}")
    rows = [(label, n) for key, label, n in delivery_rows(r) if key != "opens"]
    width = max(len(label) for label, _n in rows)
    for label, n in rows:
        click.echo(f"  {label:<{width}}  {_n(n):>12}")
    if r.delivered is None:
        click.echo("  (deliveries are counted when the email service reports them by webhook)")
    if r.clicks:
        click.echo("  clicks per link (counted per link, never per reader):")
        for url, n in r.clicks:
            click.echo(f"    {n:>8,}  {url}")
    elif not r.tracked:
        click.echo("  clicks: not counted; turn it on with [tracking] clicks = true in newsletter.toml")
    if r.opens:
        click.echo(f"  opens: {r.opens:,} ({OPENS_CAVEAT})")


def _print_weeks(w) -> None:
    click.echo(f"list {w.list_name}, the last {len(w.weeks)} weeks:")
    click.echo(f"  {'week of':<12} {'readers':>8} {'joined':>7} {'left':>6}")
    for week in w.weeks:
        click.echo(f"  {week.start:%a %d %b}   {week.size:>8,} {week.joined:>7,} {week.left:>6,}")
    if not w.issues:
        click.echo("  no issue was sent to this list in these weeks")
        return
    click.echo(f"  {'issue':<44} {'sent':>7} {'deliv.':>7} {'bounced':>7} {'compl.':>6} {'unsub.':>6} {'clicks':>6}")
    for r in w.issues:
        delivered = "–" if r.delivered is None else f"{r.delivered:,}"
        clicks = f"{r.total_clicks:,}" if (r.tracked or r.clicks) else "–"
        click.echo(f"  {r.issue[:44]:<44} {r.sent:>7,} {delivered:>7} {r.bounced:>7,} {r.complained:>6,} "
                   f"{r.left_by_link + r.left_by_service:>6,} {clicks:>6}")


COMMANDS = [report]
