"""Commands for writing and building issues: init, new, build, check, preview."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from .common import Env, human_size, pass_env, plural, show_path

ISSUE_ARG = click.argument("issue", required=False)


def print_findings(findings) -> None:
    """The pre-flight checks as a list: errors, then warnings."""
    if not findings:
        click.echo("checks: all passed")
        return
    for finding in findings:
        colour = "red" if finding.level == "error" else "yellow"
        click.echo(f"  {click.style(finding.level, fg=colour)}: {finding}")
    errors = sum(1 for f in findings if f.level == "error")
    warnings = len(findings) - errors
    click.echo(f"checks: {plural(errors, 'error')}, {plural(warnings, 'warning')}")


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="The newsletter's name (default: from the folder name).")
@click.option("--author", default="Your Name", show_default=True, help="Author and sender name.")
@click.option("--from", "address", default="you@example.com", show_default=True,
              help="Sender address.")
@click.option("--timezone", default="UTC", show_default=True, help="Time zone of the schedule.")
def init(folder: Path, name: str | None, author: str, address: str, timezone: str) -> None:
    """Start a newsletter in FOLDER: newsletter.toml, templates/, issues/, .gitignore, .env."""
    from ..scaffold import init as scaffold

    created = scaffold(folder, name=name, author=author, address=address, timezone=timezone)
    for path in created:
        click.echo(f"created {show_path(path)}")
    click.echo(
        f"Next: edit {show_path(folder / 'newsletter.toml')} (sender, site_url, postal_address), "
        f"then `cd {show_path(folder)} && newsletter new \"Your first issue\"`."
    )


@click.command()
@click.argument("title", required=False)
@click.option("--date", type=click.DateTime(["%Y-%m-%d"]), help="Date the issue to this day "
              "instead of the next free weekly slot.")
@click.option("--from-feed", "feed_url", is_flag=False, flag_value="", default=None,
              metavar="[URL]", help="Draft the issue from the blog's feed ([feed] url, or URL): "
              "one post per entry not yet in any issue.")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="With --from-feed: posts "
              "published on or after this day (default: since the previous slot).")
@click.option("--download-images", is_flag=True, help="With --from-feed: fetch the posts' "
              "images and keep them beside the posts instead of linking to the blog.")
@pass_env
def new(env: Env, title: str | None, date: dt.datetime | None, feed_url: str | None,
        since: dt.datetime | None, download_images: bool) -> None:
    """Create the next issue, dated to the next free weekly slot, with a post stub.

    With --from-feed, the issue is drafted from the blog's RSS or Atom feed instead: each
    post published since the previous slot and not yet in any issue becomes a post file to
    edit before it goes out. A post already in an issue is never drafted again.
    """
    from ..scaffold import new_issue, new_issue_from_feed

    day = date.date() if date else None
    if feed_url is None:
        if since or download_images:
            raise click.UsageError("--since and --download-images go with --from-feed")
        if not title:
            raise click.UsageError("give the issue's title, e.g. newsletter new \"Listen first\", "
                                   "or draft it with --from-feed")
        made = new_issue(env.config, title, date=day)
        click.echo(f"created {show_path(made.folder)}/ for {made.slot:%A %d %B %Y, %H:%M %Z}")
        for path in made.files:
            click.echo(f"  {show_path(path)}")
        return
    if title:
        raise click.UsageError("with --from-feed the title is the newest post's; leave TITLE out "
                               "(a feed URL goes after --from-feed)")
    from ..feed import summary

    tz = env.config.newsletter.timezone
    start = since.replace(tzinfo=tz) if since else None
    made = new_issue_from_feed(env.config, feed_url or None, since=start, date=day,
                               download_images=download_images)
    drafted = made.drafted
    if drafted.feed.moved_to:
        click.echo(f"note: the feed moved permanently to {drafted.feed.moved_to}; "
                   "update [feed] url in newsletter.toml", err=True)
    if drafted.feed.duplicates:
        click.echo(f"note: the feed lists {plural(drafted.feed.duplicates, 'entry', 'entries')} twice "
                   "(same id); each is drafted once", err=True)
    click.echo(summary(drafted, env.config))
    if drafted.folder is None:
        return
    click.echo(f"  for {made.slot:%A %d %B %Y, %H:%M %Z}")
    for path in drafted.files:
        click.echo(f"  {show_path(path)}")
    if drafted.sign_offs:
        click.echo(f"  dropped the closing \"{env.config.newsletter.sign_off}\" from "
                   f"{plural(drafted.sign_offs, 'post')}: the email closes with it")
    click.echo(f"Next: read and edit the posts, then `newsletter preview {drafted.folder.name}`.")


@click.command()
@ISSUE_ARG
@pass_env
def build(env: Env, issue: str | None) -> None:
    """Render ISSUE (default: the newest) into dist/<slug>/ and run the checks."""
    from ..build import build as build_issue
    from ..checks import has_errors
    from ..errors import ChecksFailed

    result = build_issue(env.config, issue)
    click.echo(f"built {result.rendered.slug}")
    for path in result.files:
        click.echo(f"  {show_path(path):<60} {human_size(path.stat().st_size):>9}")
    for picture in result.rendered.images:
        if picture.resized:
            click.echo(
                f"  resized {show_path(picture.source)} for email: {picture.original_width:,} to "
                f"{picture.width:,} px wide, {human_size(picture.original_bytes)} to "
                f"{human_size(picture.bytes)} (the original is kept)"
            )
    print_findings(result.findings)
    if has_errors(result.findings):
        raise ChecksFailed("the issue has errors (listed above); fix them before sending")


SEQUENCE_OPTION = click.option(
    "--sequence", metavar="NAME",
    help="A welcome sequence's steps (sequences/NAME/) instead of the issues; ISSUE then "
    "names a step (default: every step, or the first).")


@click.command()
@ISSUE_ARG
@SEQUENCE_OPTION
@pass_env
def check(env: Env, issue: str | None, sequence: str | None) -> None:
    """Run the pre-flight checks on ISSUE; exit 1 if any error-level check fails."""
    from ..checks import has_errors
    from ..errors import ChecksFailed

    if sequence is not None:
        from ..sequences import check_steps

        failed = False
        for rendered, findings in check_steps(env.config, sequence, issue):
            click.echo(f"checked {rendered.slug}")
            print_findings(findings)
            failed = failed or has_errors(findings)
        if failed:
            raise ChecksFailed("the sequence has errors (listed above); fix them: no step with "
                               "an error is sent")
        return
    from ..issue_checks import check as run

    rendered, findings = run(env.config, issue)
    click.echo(f"checked {rendered.slug}")
    print_findings(findings)
    if has_errors(findings):
        raise ChecksFailed("the issue has errors (listed above); fix them before sending")


@click.command()
@ISSUE_ARG
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port on 127.0.0.1 (default: [preview] port, 8025; 0 picks a free one).")
@click.option("--no-open", is_flag=True, help="Do not open the web browser.")
@click.option("--screenshot", "shots", type=click.Path(file_okay=False, path_type=Path),
              help="Write phone.png, desktop.png and dark.png of the email into this folder "
              "with headless Chromium, then exit.")
@SEQUENCE_OPTION
@pass_env
def preview(env: Env, issue: str | None, port: int | None, no_open: bool,
            shots: Path | None, sequence: str | None) -> None:
    """Preview ISSUE (default: the newest) as readers see it, updating as you save.

    Serves a page on 127.0.0.1 with the inbox line, the email on a phone, in dark mode and
    on a desktop, the plain-text part, the headers and the pre-flight checks. Press Ctrl-C
    to stop. With --sequence NAME, the steps of that welcome sequence instead.
    """
    if shots is not None and sequence is not None:
        raise click.UsageError("--screenshot takes issues only; preview the sequence in the browser")
    if shots is not None:
        from ..web.screenshot import screenshots

        for path in screenshots(env.config, issue, shots):
            click.echo(f"wrote {show_path(path)}")
        return

    import webbrowser

    from ..web.preview import serve

    def send_test(rendered):
        """The page's "Send test" button: proofs with the settings as they are now."""
        from ..campaign import send_proofs
        from ..config import load

        return send_proofs(load(env.config.path), rendered)

    server, page = serve(env.config, issue, port=port, send_test=send_test,
                         log=lambda line: click.echo(line, err=True), sequence=sequence)
    click.echo(f"previewing at {page}  (Ctrl-C to stop)")
    if not no_open:
        webbrowser.open(page)
    server.serve_forever()
    click.echo("stopped")


COMMANDS = [init, new, build, check, preview]
