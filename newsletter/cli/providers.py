"""Commands about the email service: providers check."""

from __future__ import annotations

import click

from .common import Env, pass_env


@click.group()
def providers() -> None:
    """Check the email service set up in [provider]."""


@providers.command()
@pass_env
def check(env: Env) -> None:
    """Verify the [provider] settings and credentials with the email service itself."""
    from ..providers import get_provider

    provider = get_provider(env.config)
    try:
        click.echo(provider.check())
    finally:
        provider.close()


COMMANDS = [providers]
