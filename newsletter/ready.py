"""A send's first step: the issue rendered and checked, ready for the engine.

Rendering loads Markdown, the templates and, for a changed issue, the CSS inliner; sending
loads the database's library and the email service's adapter. Neither needs the other's, so
the issue is rendered and checked in a child (:mod:`newsletter.beside`) while this process
loads what the send needs next: on two cores a send starts after the longer of the two, not
both. What comes back is plain data (:mod:`newsletter.rendered`) and the checks' warnings as
text, so reading it loads nothing of rendering here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .beside import Beside
from .config import Config
from .content import Issue, load_named
from .errors import ConfigError

if TYPE_CHECKING:
    from .rendered import Rendered


@dataclass(frozen=True, slots=True)
class Ready:
    rendered: Rendered
    warnings: tuple[str, ...]  # the checks' warnings; an error-level finding raises ChecksFailed


def ready_to_send(config: Config, name: str | None) -> Ready:
    """The issue ``name`` (None: the newest) rendered and checked as a send needs it. Raises
    what rendering raises (a content or template error, ChecksFailed), as it always did."""
    issue = load_named(config, name)
    with Beside(checked, config, issue) as checking:
        _load_for_sending(config)
        return checking.result()


def checked(config: Config, issue: Issue) -> Ready:
    from .checks import preflight
    from .render import render_issue

    rendered = render_issue(config, issue)
    return Ready(rendered, tuple(str(finding) for finding in preflight(config, rendered)))


def _load_for_sending(config: Config) -> None:
    """Import what the send runs next. A provider that cannot be loaded is left for the send
    to report, after the checks, where it always was."""
    from . import campaign, store  # noqa: F401
    from .providers import provider_class

    with contextlib.suppress(ConfigError):
        provider_class(config.provider.name)
