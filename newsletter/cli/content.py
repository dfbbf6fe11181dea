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
@click.argument("title")
@click.option("--date", type=click.DateTime(["%Y-%m-%d"]), help="Date the issue to this day "
              "instead of the next free weekly slot.")
@pass_env
def new(env: Env, title: str, date: dt.datetime | None) -> None:
    """Create the next issue, dated to the next free weekly slot, with a post stub."""
    from ..scaffold import new_issue

    made = new_issue(env.config, title, date=date.date() if date else None)
    click.echo(f"created {show_path(made.folder)}/ for {made.slot:%A %d %B %Y, %H:%M %Z}")
    for path in made.files:
        click.echo(f"  {show_path(path)}")


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


@click.command()
@ISSUE_ARG
@pass_env
def check(env: Env, issue: str | None) -> None:
    """Run the pre-flight checks on ISSUE; exit 1 if any error-level check fails."""
    from ..checks import has_errors
    from ..errors import ChecksFailed
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
@pass_env
def preview(env: Env, issue: str | None, port: int | None, no_open: bool,
            shots: Path | None) -> None:
    """Preview ISSUE (default: the newest) as readers see it, updating as you save.

    Serves a page on 127.0.0.1 with the inbox line, the email on a phone, in dark mode and
    on a desktop, the plain-text part, the headers and the pre-flight checks. Press Ctrl-C
    to stop.
    """
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
                         log=lambda line: click.echo(line, err=True))
    click.echo(f"previewing at {page}  (Ctrl-C to stop)")
    if not no_open:
        webbrowser.open(page)
    server.serve_forever()
    click.echo("stopped")


COMMANDS = [init, new, build, check, preview]
