"""The exception hierarchy.

Core code raises a subclass of :class:`NewsletterError` whose message is written for the
person at the keyboard: where the problem is (file and line, key, row, host:port, provider)
and what to do about it. The CLI turns these into one line on stderr and exit code 1.
"""

from __future__ import annotations


class NewsletterError(Exception):
    """A problem the user can fix; the message says where and how."""

    exit_code = 1


class ConfigError(NewsletterError):
    """newsletter.toml (or the environment) is missing or invalid."""

    def __init__(self, problems: list[str] | str, path: str = "newsletter.toml") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.path = path
        super().__init__("\n".join(f"{path}: {p}" for p in self.problems))


class ContentError(NewsletterError):
    """An issue or post file cannot be read: bad front matter, missing title, ..."""


class IssueNotFound(NewsletterError):
    """The issue named on the command line does not exist."""


class AmbiguousIssue(NewsletterError):
    """The short name given on the command line is the name of several issues."""


class TemplateError(NewsletterError):
    """A Jinja2 template is missing or fails to render."""


class ChecksFailed(NewsletterError):
    """Pre-flight checks found errors."""


class StoreError(NewsletterError):
    """The database cannot be opened or refuses an operation."""


class SchemaVersionError(StoreError):
    """The database was made by a newer release, or by something other than newsletter."""


class ListError(StoreError):
    """A list cannot be created, renamed or deleted as asked."""


class ListNotFound(ListError):
    """A subscriber list named on the command line does not exist."""


class SubscriberError(NewsletterError):
    """A subscriber operation is refused: unknown address, unsubscribed, suppressed, ..."""


class InvalidAddress(SubscriberError):
    """An email address (or a name going into a header) is not acceptable."""


class ImportFileError(NewsletterError):
    """A subscriber file cannot be imported at all: missing, not CSV, no email column."""


class ProviderError(NewsletterError):
    """An email service refused or failed a request."""


def location(path: object, line: int | None = None) -> str:
    """Format a place in a file as ``path`` or ``path line N``."""
    return f"{path} line {line}" if line else str(path)
