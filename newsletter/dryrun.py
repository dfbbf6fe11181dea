"""`newsletter send --dry-run`: the issue rendered and checked as a send would, and what the
send would do: the issue's campaign for the list and how far it got, or the readers a new
one would freeze now, in the provider's batches. Nothing is sent or written.

Rendering and counting do not depend on each other, and each loads libraries the other does
not (Markdown and the templates; the database), so the counting runs beside the rendering
(:mod:`newsletter.beside`): on two cores the writer waits for the longer of the two, not both.
What the counting sends back is made of this module's classes and plain values, so reading
it does not load the database's library here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .beside import Beside
from .config import Config
from .content import Issue, load_named

if TYPE_CHECKING:
    from .checks import Finding
    from .providers import Provider
    from .render import Rendered

SAMPLE = 10  # addresses shown


@dataclass(frozen=True, slots=True)
class WouldSend:
    """What a send of the issue to the list would do, as the database says."""

    campaign_status: str | None = None  # the issue's campaign for the list, when it has one
    counts: dict[str, int] = field(default_factory=dict)  # its deliveries by status
    total: int = 0  # without a campaign: the readers a new one would freeze
    sample: tuple[str, ...] = ()  # the first of them


@dataclass(frozen=True, slots=True)
class DryRun:
    rendered: Rendered
    findings: list[Finding]  # warnings: an error-level finding raises ChecksFailed
    list_name: str
    provider: str
    batch_size: int
    would: WouldSend | None  # None for proofs
    proofs: tuple[str, ...] = ()  # the addresses proofs would go to, checked


def dry_run(config: Config, name: str | None, list_name: str | None = None,
            test_to: tuple[str, ...] = ()) -> DryRun:
    """The issue ``name`` (None: the newest) checked, and what sending it to ``list_name``
    (default: the issue's `list:`, else the default list) would do, or, with ``test_to``,
    to whom proofs would go. Raises what the send would raise first: a content or template
    error, failed checks, a bad address, then the database's or the provider's error."""
    issue = load_named(config, name)
    target = list_name or issue.list_name or config.newsletter.default_list
    if test_to:
        from .addresses import parse_address

        provider, rendered, findings = _checked(config, issue)
        proofs = tuple(parse_address(address).email for address in test_to)
        return DryRun(rendered, findings, target, provider.name, provider.batch_size, None, proofs)
    # Started before this process loads Markdown, the templates and the provider's HTTP
    # client, so those imports run here while the child runs the database's.
    with Beside(would_send, config, issue.slug, target) as counting:
        provider, rendered, findings = _checked(config, issue)
        would = counting.result()
    return DryRun(rendered, findings, target, provider.name, provider.batch_size, would)


def would_send(config: Config, slug: str, list_name: str) -> WouldSend:
    """The campaign of ``slug`` for ``list_name`` and how far it got, or, when there is none,
    the audience a send would freeze now."""
    from . import campaign as engine
    from .store import open_store

    with open_store(config) as store:
        existing = engine.find_campaign(store, slug, list_name)
        if existing:
            return WouldSend(existing.status, dict(engine.counts(store, existing.id).by_status))
        return WouldSend(total=engine.audience_size(store, list_name),
                         sample=tuple(engine.audience_sample(store, list_name, SAMPLE)))


def _checked(config: Config, issue: Issue) -> tuple[Provider, Rendered, list[Finding]]:
    """The provider a send would use (made as a send makes it, so a missing key is the same
    error), and the issue rendered and checked."""
    from .checks import preflight
    from .providers import get_provider
    from .render import render_issue

    provider = get_provider(config)
    provider.close()
    rendered = render_issue(config, issue)
    return provider, rendered, preflight(config, rendered)
