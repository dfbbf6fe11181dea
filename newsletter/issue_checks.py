"""The checks that need the database, beside the pure ones of :mod:`newsletter.checks`.

`newsletter check` and `newsletter schedule` ask the database whether the issue's ``list:``
exists, so that a typo is caught when the issue is written rather than at send time. Only
a database that exists is asked: none is created just to check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checks import Finding, _rel, list_finding
from .config import Config
from .content import Issue
from .errors import ListNotFound, StoreError

if TYPE_CHECKING:
    from .render import Rendered
    from .store import Store


def list_names(store: Store) -> list[str]:
    """Every list in ``store``, by name."""
    from sqlalchemy import select

    from .store.schema import lists

    with store.read() as conn:
        return list(conn.scalars(select(lists.c.name).order_by(lists.c.name)))


def _needs_database(config: Config, issue: Issue) -> bool:
    return bool(issue.list_name) and issue.list_name != config.newsletter.default_list


def database_findings(config: Config, issue: Issue) -> list[Finding]:
    """The issue's list against the database; nothing when there is no database yet."""
    from .store import open_store, sqlite_path

    if not _needs_database(config, issue):
        return []
    url = config.database.url
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None or not path.exists():
            return []
    try:
        with open_store(config) as store:
            names = list_names(store)
    except StoreError as exc:
        return [Finding("warning", _rel(config, issue.issue_file),
                        f"list {issue.list_name!r} was not checked: {exc}")]
    finding = list_finding(config, issue, names)
    return [finding] if finding else []


def check(config: Config, name: str | None) -> tuple[Rendered, list[Finding]]:
    """Everything `newsletter check` reports on issue ``name``: the checks of the rendered
    issue and, when a database exists, its list; errors first."""
    from .build import check as check_rendered

    rendered, findings = check_rendered(config, name)
    findings = findings + database_findings(config, rendered.issue)
    return rendered, sorted(findings, key=lambda f: f.level != "error")


def refuse_unknown_list(config: Config, store: Store, issue: Issue) -> None:
    """Raise ListNotFound when the issue's list is not in ``store``; a throwaway store
    (no database yet) knows no lists and is not asked."""
    if not _needs_database(config, issue) or store.scratch is not None:
        return
    finding = list_finding(config, issue, list_names(store))
    if finding:
        raise ListNotFound(str(finding))
