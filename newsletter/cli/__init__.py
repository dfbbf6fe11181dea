"""The command line: click commands only. Each command parses its arguments, calls one core
function with plain values and prints; the work lives in the core modules.

Commands are grouped by pipeline stage in the modules of this package; each registers its
commands on :data:`main` in :func:`_register`.
"""

from __future__ import annotations

import gc
import sys

import click

from .. import __version__
from ..errors import NewsletterError
from .common import pass_env


class NewsletterGroup(click.Group):
    """Turns every NewsletterError into one line on stderr and exit code 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=NewsletterGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="newsletter")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=True, path_type=str),
    envvar="NEWSLETTER_CONFIG",
    help="newsletter.toml to use (default: the nearest one in this folder or above).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Write a weekly newsletter in Markdown, preview it, and send it to your list."""
    from .common import Env

    ctx.obj = Env(config_path)


def _register() -> None:
    from . import content as content_commands
    from . import providers as provider_commands
    from . import report as report_commands
    from . import schedule as schedule_commands
    from . import send as send_commands
    from . import sequences as sequence_commands
    from . import subscribers as subscriber_commands
    from . import web as web_commands

    for module in (content_commands, subscriber_commands, send_commands, schedule_commands,
                   sequence_commands, report_commands, provider_commands, web_commands):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


def run() -> None:
    """The ``newsletter`` command, as installed: :data:`main`, then an exit that skips the
    interpreter's last garbage collections. Every object still alive is moved out of the
    collector's reach (``gc.freeze``) on the way out, so exiting does not walk the whole
    heap once more (a tenth of a second and more after the database layer has loaded);
    what only the collector would free is freed by the process ending. Tests call
    :data:`main` itself, so their process keeps collecting."""
    try:
        main()
    finally:
        gc.freeze()


__all__ = ["main", "pass_env", "run", "sys"]
