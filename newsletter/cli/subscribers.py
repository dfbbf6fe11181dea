"""Commands for lists and subscribers: thin wrappers over newsletter.subscribers."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import Env, lazy_module, pass_env, plural, show_path

if TYPE_CHECKING:
    from ..store import Store

# The store pulls in SQLAlchemy; load it when a command runs, not for every `newsletter`.
core = lazy_module("newsletter.subscribers")
optin = lazy_module("newsletter.optin")
# newsletter.subscribers.STATUSES, written out so that --help needs no database code
# (tests/test_cli_subscribers.py keeps the two equal).
STATUS_CHOICES = ("active", "pending", "unsubscribed", "bounced", "complained", "manual")

LIST_OPTION_HELP = "List to use (default: [newsletter] default_list, created on first use)."
PROGRESS_MIN_BYTES = 1_000_000  # smaller files import before a bar would be worth drawing
EXPORT_COLUMNS = (
    "email", "name", "status", "list", "source", "created_at", "confirmed_at",
    "unsubscribed_at", "attributes",
)


@contextmanager
def _store(env: Env) -> Iterator[Store]:
    from ..store import open_store

    store = open_store(env.config)
    try:
        yield store
    finally:
        store.close()


def _list_option(func: Any) -> Any:
    return click.option("--list", "list_name", metavar="NAME", help=LIST_OPTION_HELP)(func)


# ---------------------------------------------------------------------------------------------
# lists


@click.group()
def lists() -> None:
    """Create, show, rename and delete subscriber lists."""


@lists.command("create")
@click.argument("name")
@click.argument("title", required=False, default="")
@pass_env
def lists_create(env: Env, name: str, title: str) -> None:
    """Create the list NAME, with an optional TITLE.

    NAME is lowercase letters, digits, - and _, e.g. weekly."""
    with _store(env) as store:
        made = core.create_list(store, name, title)
    click.echo(f"Created list {made.name!r}" + (f" ({made.title})" if made.title else "") + ".")


@lists.command("list")
@pass_env
def lists_list(env: Env) -> None:
    """Show every list with its members by status."""
    with _store(env) as store:
        found = core.get_lists(store)
        default = store.default_list
    if not found:
        click.echo(f"No lists yet; {default!r} is created when you first add or import subscribers.")
        return
    width = max(len("LIST"), *(len(item.name) for item in found)) + 2
    header = f"{'LIST':<{width}}{'ACTIVE':>8}{'PENDING':>9}{'LEFT':>7}{'SUPPRESSED':>12}  TITLE"
    click.echo(header)
    for item in found:
        c = item.counts
        suppressed = sum(c.get(s, 0) for s in ("bounced", "complained", "manual"))
        title = " ".join(t for t in (item.title, "(default)" if item.name == default else "") if t)
        click.echo(
            f"{item.name:<{width}}{c.get('active', 0):>8,}{c.get('pending', 0):>9,}"
            f"{c.get('unsubscribed', 0):>7,}{suppressed:>12,}  {title}".rstrip()
        )


@lists.command("rename")
@click.argument("old")
@click.argument("new")
@click.option("--title", help="Give the list a new title as well.")
@pass_env
def lists_rename(env: Env, old: str, new: str, title: str | None) -> None:
    """Rename the list OLD to NEW. Members, history and campaigns follow."""
    with _store(env) as store:
        core.rename_list(store, old, new, title)
        default = store.default_list
    click.echo(f"Renamed list {old!r} to {new!r}.")
    if old == default:
        click.echo(
            f"Note: [newsletter] default_list is still {old!r}; set it to {new!r} in "
            "newsletter.toml, or a new empty list by the old name is made on first use."
        )


@lists.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_env
def lists_delete(env: Env, name: str, yes: bool) -> None:
    """Delete the list NAME and its memberships.

    The subscribers stay, with their other lists and any suppressions. Refused while
    campaigns use the list."""
    with _store(env) as store:
        found = {item.name: item for item in core.get_lists(store)}
        members = sum(found[name].counts.values()) if name in found else 0
        if members and not yes:
            click.confirm(
                f"Delete list {name!r} and its {members} membership{'s' if members != 1 else ''}?",
                abort=True,
                err=True,
            )
        removed = core.delete_list(store, name)
    click.echo(f"Deleted list {name!r} ({removed} membership{'s' if removed != 1 else ''} removed).")


# ---------------------------------------------------------------------------------------------
# subscribers


@click.group()
def subscribers() -> None:
    """Add, import, list, export, unsubscribe and forget subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="The subscriber's name, e.g. \"Ann Berg\".")
@_list_option
@click.option(
    "--confirmed",
    is_flag=True,
    help="They have confirmed their opt-in: make them active now (otherwise pending). Also "
    "brings back someone who unsubscribed and has opted in again.",
)
@click.option(
    "--resubscribe",
    is_flag=True,
    help="With --confirmed: lift a suppression (bounce, complaint, manual, forgotten) for "
    "someone who has opted in again and confirmed.",
)
@click.option("--check-deliverability", is_flag=True, help="Also look up the domain in DNS.")
@pass_env
def subscribers_add(
    env: Env,
    email: str,
    name: str,
    list_name: str | None,
    confirmed: bool,
    resubscribe: bool,
    check_deliverability: bool,
) -> None:
    """Add EMAIL to a list.

    They are pending until they confirm: the confirmation email the sign-up form sends goes
    to them now, through the configured provider (`subscribers confirm-request` sends it
    again). With --confirmed they are active at once and no email is sent. Someone who
    unsubscribed comes back only with --confirmed; a suppressed address (bounced,
    complained, forgotten) only with --confirmed --resubscribe."""
    with _store(env) as store:
        result = core.add(
            store,
            email,
            name=name,
            list_name=list_name,
            confirmed=confirmed,
            resubscribe=resubscribe,
            check_deliverability=check_deliverability,
        )
        messages = {
            "added": f"Added {result.email} to {result.list!r} ({result.status})",
            "confirmed": f"Confirmed {result.email} on {result.list!r} (active)",
            "resubscribed": f"Resubscribed {result.email} to {result.list!r} (active)",
            "unchanged": f"{result.email} is already on {result.list!r} ({result.status})",
        }
        line = messages[result.outcome]
        again = _confirm_request_hint(result.email, result.list, store.default_list)
        if result.status == "pending" and result.outcome == "added":
            sent, problem = _first_confirmation(env, store, result.email, result.list)
            if sent:
                line += "; the confirmation email is on its way, and they are mailed once they"
                line += " click its link (use --confirmed if they already confirmed)"
            else:
                line += "; they are mailed once they confirm (use --confirmed if they already have)"
            click.echo(line + ".")
            if problem:
                click.echo(f"No confirmation email sent: {problem}; they stay pending: send it "
                           f"later with `{again}`.", err=True)
            return
        if result.status == "pending":
            line += f"; `{again}` sends the confirmation email again"
    click.echo(line + ".")


def _confirm_request_hint(email: str, list_name: str, default: str) -> str:
    on = "" if list_name == default else f" --list {list_name}"
    return f"newsletter subscribers confirm-request {email}{on}"


def _first_confirmation(env: Env, store: Store, email: str, list_name: str) -> tuple[bool, str]:
    """Send a new pending reader the confirmation email: (sent, why not). Never fails the
    add: a reader who could not be mailed stays pending for confirm-request."""
    from ..errors import NewsletterError

    try:
        results = list(optin.request_confirmations(env.config, store, [email], list_name))
    except NewsletterError as exc:
        return False, " ".join(str(exc).split())
    if not results:
        return False, "they are no longer on the list"
    done = results[0]
    if done.outcome == "sent":
        return True, ""
    if done.outcome == "unknown":
        return False, f"it may or may not have gone out ({done.detail})"
    return False, done.detail


@subscribers.command("confirm-request")
@click.argument("emails", nargs=-1, metavar="[EMAIL]...")
@click.option("--all-pending", is_flag=True, help="Every pending member of the list.")
@_list_option
@click.option("--dry-run", is_flag=True, help="Say who would be sent one; send nothing.")
@click.option("--yes", is_flag=True, help="With --all-pending: do not ask for confirmation.")
@pass_env
def subscribers_confirm_request(
    env: Env, emails: tuple[str, ...], all_pending: bool, list_name: str | None,
    dry_run: bool, yes: bool,
) -> None:
    """Send the confirmation email again to pending readers.

    Name them (EMAIL...) or pass --all-pending. It is the email the sign-up form sends,
    through the configured provider; as on the site, an address gets at most
    [web] address_signups_per_day of them a day. Active, unsubscribed and suppressed
    readers are skipped."""
    if bool(emails) == all_pending:
        raise click.UsageError("name the pending readers (EMAIL...) or pass --all-pending, not both"
                               if emails else "name the pending readers (EMAIL...) or pass --all-pending")
    with _store(env) as store:
        where = list_name or store.default_list
        if all_pending and not dry_run:
            pending = optin.count_pending(store, list_name)
            if not pending:
                click.echo(f"Nobody on {where!r} is waiting to confirm; nothing was sent.")
                return
            if not yes:
                click.confirm(
                    f"Send the confirmation email to {plural(pending, 'pending reader')} on {where!r}?",
                    abort=True, err=True,
                )
        counts: dict[str, int] = {}
        labels = {"sent": "sent", "would_send": "would send", "limited": "limited",
                  "skipped": "skipped", "failed": "failed", "unknown": "unknown"}
        for done in optin.request_confirmations(
            env.config, store, list(emails) if emails else None, list_name, dry_run=dry_run
        ):
            counts[done.outcome] = counts.get(done.outcome, 0) + 1
            detail = f": {done.detail}" if done.detail else ""
            click.echo(f"  {labels[done.outcome]:<10}  {done.email}{detail}")
    total = sum(counts.values())
    if not total:
        click.echo(f"Nobody on {where!r} is waiting to confirm; nothing was sent.")
        return
    if dry_run:
        head = f"Dry run: {plural(counts.get('would_send', 0), 'confirmation email')} would be sent"
    else:
        head = f"Sent {plural(counts.get('sent', 0), 'confirmation email')}"
    rest = [f"{counts[k]:,} {labels[k]}" for k in ("limited", "skipped", "failed", "unknown")
            if counts.get(k)]
    click.echo(head + (f" ({', '.join(rest)})" if rest else "") + ".")
    if counts.get("failed") or counts.get("unknown"):
        click.echo("Some confirmation emails did not go out (see above); run the command again "
                   "for those readers later.", err=True)
        click.get_current_context().exit(1)


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=True))
@_list_option
@click.option("--dry-run", is_flag=True, help="Report what would happen; change nothing.")
@click.option(
    "--email-column",
    metavar="COLUMN",
    help="The column holding the addresses, when it is not called email or Email Address.",
)
@click.option("--check-deliverability", is_flag=True, help="Also look up each domain in DNS.")
@click.option(
    "--rejects",
    metavar="FILE",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the rejected rows to FILE (default: NAME.rejected.csv in the current folder). "
    "Replaced on every import; removed when no row is rejected.",
)
@click.option("--welcome", is_flag=True,
              help="Readers this import makes active members get the list's welcome sequence "
              "(by default an import enrolls nobody).")
@pass_env
def subscribers_import(
    env: Env,
    file: Path,
    list_name: str | None,
    dry_run: bool,
    email_column: str | None,
    check_deliverability: bool,
    rejects: Path | None,
    welcome: bool,
) -> None:
    """Import subscribers from a CSV or JSON FILE.

    Reads Mailchimp, Substack, Buttondown, listmonk, Ghost and plain CSV exports, and this
    tool's own CSV and JSON exports (`subscribers export --format json`: each member goes
    back on the list it names, unless --list names one for all). People who unsubscribed,
    bounced, complained or were forgotten are never re-added; invalid rows are listed and
    written to NAME.rejected.csv (or .json) in the current folder (or --rejects FILE), never
    beside FILE. Rows for one address are merged: the last row wins, but the strictest
    status is kept. All or nothing: a failed import changes nothing. Imported readers get
    no welcome emails unless --welcome says so."""
    # Reading the header first means a file that cannot be imported fails before the
    # database is opened (or created).
    from ..store import open_store_or_scratch
    from ..subscriber_file import open_subscriber_file

    source = open_subscriber_file(
        file, email_column=email_column, check_deliverability=check_deliverability
    )
    # A dry run against a database not made yet runs on an empty scratch one instead.
    opened = open_store_or_scratch(env.config) if dry_run else _store(env)
    with source, opened as store, _progress(file) as progress:
        summary = core.import_file(
            store, source, list_name=list_name, dry_run=dry_run, progress=progress,
            rejects=rejects, welcome=welcome,
        )
    _print_summary(summary, rejects)


@contextmanager
def _progress(file: Path) -> Iterator[Any]:
    """A progress bar on stderr for big files on a terminal; nothing otherwise."""
    try:
        size = file.stat().st_size
    except OSError:
        size = 0
    if size < PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=size, label="Importing", file=sys.stderr) as bar:
        done = 0

        def update(position: int) -> None:
            nonlocal done
            bar.update(position - done)
            done = position

        yield update


def _print_summary(s: core.ImportSummary, rejects: Path | None = None) -> None:
    into = s.lists or [s.list]
    names = ", ".join(repr(n) for n in into)
    where = f"{show_path(s.path)} into list{'s' if len(into) != 1 else ''} {names}"
    click.echo(f"Dry run of {where}: nothing was changed." if s.dry_run else f"Imported {where}.")
    if s.created_lists:
        made = ", ".join(repr(n) for n in s.created_lists)
        verb = "would be created" if s.dry_run else "created"
        click.echo(f"  (list{'s' if len(s.created_lists) != 1 else ''} {made} {verb}: the file names them)")
    verb = "would be " if s.dry_run else ""
    click.echo(f"  added      {s.added:>8,}")
    click.echo(f"  updated    {s.updated:>8,}")
    click.echo(f"  unchanged  {s.unchanged:>8,}")
    kept = "  (unsubscribed, bounced, complained or forgotten: never re-added)" if s.kept_out else ""
    click.echo(f"  kept out   {s.kept_out:>8,}{kept}")
    where_rejected = ""
    if s.rejected_path:
        where_rejected = f"  (written to {show_path(s.rejected_path)})"
    elif s.rejected and s.dry_run:
        would_be = core.rejected_path_for(s.path, rejects)
        where_rejected = f"  ({verb}written to {show_path(would_be)})"
    click.echo(f"  rejected   {s.rejected:>8,}{where_rejected}")
    if s.welcomed is not None:
        click.echo(f"  welcomed   {s.welcomed:>8,}  (they get the welcome sequence from the next tick)")
    if s.duplicates:
        click.echo(
            f"  ({plural(s.duplicates, 'duplicate row')} merged: the last row for an address "
            "wins, for its spelling, name and attributes; the strictest status is kept)"
        )
    for rejection in s.rejections:
        click.echo(f"  {rejection.unit} {rejection.row}: {rejection.reason}")
    if s.rejected > len(s.rejections):
        more = s.rejected - len(s.rejections)
        where_all = f" (all are in {show_path(s.rejected_path)})" if s.rejected_path else ""
        click.echo(f"  ... and {plural(more, 'more rejected row')}{where_all}")


def _status_option(func: Any) -> Any:
    return click.option(
        "--status",
        type=click.Choice(STATUS_CHOICES),
        help="Only members with this status.",
    )(func)


def _all_lists_option(func: Any) -> Any:
    return click.option("--all-lists", is_flag=True, help="Every list, not just one.")(func)


@subscribers.command("list")
@_list_option
@_all_lists_option
@_status_option
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="Output format.",
)
@pass_env
def subscribers_list(
    env: Env, list_name: str | None, all_lists: bool, status: str | None, fmt: str
) -> None:
    """Show the members of a list and their status."""
    with _store(env) as store:
        members = core.iter_members(store, list_name, status=status, all_lists=all_lists)
        _write_members(members, fmt, env.config.newsletter.timezone, all_lists)


@subscribers.command("export")
@_list_option
@_all_lists_option
@_status_option
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json", "table"]), default="csv",
    show_default=True, help="Output format.",
)
@pass_env
def subscribers_export(
    env: Env, list_name: str | None, all_lists: bool, status: str | None, fmt: str
) -> None:
    """Export the members of a list to stdout.

    E.g. `newsletter subscribers export > backup.csv`. The CSV and the JSON
    (`--all-lists --format json` for every list) import back as they were: unsubscribed
    and suppressed people stay out. Cells a spreadsheet would run as a formula (starting
    with = + - @) get a ' in front; the JSON is exact."""
    with _store(env) as store:
        members = core.iter_members(store, list_name, status=status, all_lists=all_lists)
        _write_members(members, fmt, env.config.newsletter.timezone, all_lists)


def _iso(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def _write_members(members: Iterable[core.Member], fmt: str, tz: Any, all_lists: bool) -> None:
    out = sys.stdout
    if fmt == "csv":
        from ..csvsafe import SafeWriter

        writer = SafeWriter(out, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for m in members:
            writer.writerow(
                [m.email, m.name, m.status, m.list, m.source, _iso(m.created_at),
                 _iso(m.confirmed_at), _iso(m.unsubscribed_at),
                 json.dumps(m.attributes, ensure_ascii=False) if m.attributes else ""]
            )
    elif fmt == "json":
        out.write("[")
        for index, m in enumerate(members):
            item = {
                "email": m.email, "name": m.name, "status": m.status, "list": m.list,
                "source": m.source, "attributes": m.attributes,
                "created_at": _iso(m.created_at) or None,
                "confirmed_at": _iso(m.confirmed_at) or None,
                "unsubscribed_at": _iso(m.unsubscribed_at) or None,
            }
            out.write(("\n  " if index == 0 else ",\n  ") + json.dumps(item, ensure_ascii=False))
        out.write("\n]\n")
    else:
        _write_table(iter(members), tz, all_lists, out)


def _write_table(members: Iterator[core.Member], tz: Any, all_lists: bool, out: Any) -> None:
    """Columns sized to the first rows seen, so the table streams like the other formats."""
    first = list(islice(members, 200))
    if not first:
        click.echo("No members.", err=True)
        return

    def clip(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    email_w = min(40, max(5, *(len(m.email) for m in first)))
    name_w = min(30, max(4, *(len(m.name) for m in first)))
    list_w = max(4, *(len(m.list) for m in first)) if all_lists else 0
    head = f"{'EMAIL':<{email_w}}  {'NAME':<{name_w}}  "
    head += f"{'LIST':<{list_w}}  " if all_lists else ""
    out.write(head + f"{'STATUS':<12}  JOINED\n")
    count = 0
    by_status: dict[str, int] = {}
    for m in chain(first, members):
        line = f"{clip(m.email, email_w):<{email_w}}  {clip(m.name, name_w):<{name_w}}  "
        if all_lists:
            line += f"{m.list:<{list_w}}  "
        line += f"{m.status:<12}  {m.created_at.astimezone(tz):%Y-%m-%d}\n"
        out.write(line)
        count += 1
        by_status[m.status] = by_status.get(m.status, 0) + 1
    statuses = ", ".join(f"{by_status[s]:,} {s}" for s in STATUS_CHOICES if s in by_status)
    click.echo(f"{plural(count, 'member')}: {statuses}", err=True)


@subscribers.command("unsubscribe")
@click.argument("email")
@_list_option
@_all_lists_option
@pass_env
def subscribers_unsubscribe(env: Env, email: str, list_name: str | None, all_lists: bool) -> None:
    """Unsubscribe EMAIL from a list (or every list).

    No import brings them back."""
    with _store(env) as store:
        left = core.unsubscribe(store, email, list_name, all_lists=all_lists)
        default = store.default_list
    if left:
        click.echo(f"Unsubscribed {email.strip()} from {', '.join(repr(n) for n in left)}.")
    else:
        where = "every list" if all_lists else repr(list_name or default)
        click.echo(f"{email.strip()} was already unsubscribed from {where}; nothing changed.")


@subscribers.command("forget")
@click.argument("email")
@pass_env
def subscribers_forget(env: Env, email: str) -> None:
    """Erase EMAIL's personal data, keeping only a hash.

    Address, name, attributes and memberships go; a one-way hash stays so no import or
    form adds the address back unasked."""
    with _store(env) as store:
        result = core.forget(store, email)
    if result.found:
        on = f" (was on {', '.join(repr(n) for n in result.lists)})" if result.lists else ""
        click.echo(f"Forgot {result.email}{on}; only a one-way hash of the address remains.")
    else:
        click.echo(
            f"{result.email} was not on file; its one-way hash is recorded so it is never added."
        )


@subscribers.command("suppress")
@click.argument("email")
@click.option(
    "--reason",
    type=click.Choice(["manual", "bounced", "complained"]),
    default="manual",
    show_default=True,
    help="Why this address must not be mailed.",
)
@pass_env
def subscribers_suppress(env: Env, email: str, reason: str) -> None:
    """Never mail EMAIL again, on any list.

    Bounce and complaint webhooks do this too."""
    with _store(env) as store:
        new = core.suppress(store, email, reason)
    if new:
        click.echo(f"Suppressed {email.strip()} ({reason}) on every list.")
    else:
        click.echo(f"{email.strip()} was already suppressed; nothing changed.")


@subscribers.command("stats")
@click.option("--weeks", default=8, show_default=True, type=click.IntRange(1, 104),
              help="How many weeks of joins and leaves to show.")
@pass_env
def subscribers_stats(env: Env, weeks: int) -> None:
    """Members per list and status, and joins and leaves per week."""
    tz = env.config.newsletter.timezone
    with _store(env) as store:
        report = core.stats(store, weeks=weeks, tz=tz)
    statuses = core.STATUSES
    width = max(4, *(len(item.name) for item in report.lists)) if report.lists else 4
    click.echo(f"{'LIST':<{width}}" + "".join(f"{s.upper():>14}" for s in statuses))
    for item in report.lists:
        counts = "".join(f"{item.counts.get(s, 0):>14,}" for s in statuses)
        click.echo(f"{item.name:<{width}}{counts}")
    if not report.lists:
        click.echo("(no lists yet)")
    click.echo("")
    click.echo(f"{'WEEK OF':<12}{'JOINS':>8}{'LEAVES':>8}{'SUPPRESSED':>12}")
    for week in report.weeks:
        click.echo(f"{week.start:%Y-%m-%d}  {week.joins:>8,}{week.leaves:>8,}{week.suppressed:>12,}")
    click.echo("")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(report.suppressions.items())) or "none"
    click.echo(f"Subscribers on file: {report.subscribers:,}; suppressed addresses: {reasons}.")


COMMANDS = [lists, subscribers]
