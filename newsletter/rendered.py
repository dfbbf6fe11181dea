"""What rendering an issue makes: the rendered issue, its links and its published files.

Plain data, apart from the renderer, so that a process that only sends a rendered issue
(handed over from another process, :mod:`newsletter.ready`) loads neither Markdown nor the
templates to read it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import images
    from .content import Issue


@dataclass(frozen=True, slots=True)
class LinkRef:
    """A link or image found in a post, for the pre-flight checks."""

    file: Path
    line: int | None
    kind: str  # "link" or "image"
    url: str  # as written in the Markdown
    alt: str | None = None  # for HTML: None when the tag has no alt attribute
    local: Path | None = None  # the file a relative URL points at, when it is one
    html: bool = False  # written as an HTML tag in the post rather than in Markdown
    width: str | None = None  # an HTML <img>'s own width attribute


@dataclass(frozen=True, slots=True)
class Asset:
    """A local file published beside the web version (an image, a PDF)."""

    source: Path  # the file beside the post
    name: str  # path under the web version's folder, with forward slashes
    file: Path | None = None  # what is published instead, when it differs (a resized image)

    @property
    def path(self) -> Path:
        """The file to publish under ``name``."""
        return self.file or self.source


@dataclass(frozen=True, slots=True)
class Rendered:
    issue: Issue
    subject: str
    preheader: str
    html: str  # the email HTML, CSS inlined, with placeholders
    text: str  # the plain-text part, with placeholders
    web_html: str  # the web (archive) version, no per-recipient fields
    web_url: str
    assets: tuple[Asset, ...]
    links: tuple[LinkRef, ...]
    source_hashes: dict[str, str] = field(default_factory=dict)
    images: tuple[images.Image, ...] = ()  # the local images, measured (and resized)
    tracked: dict[str, str] = field(default_factory=dict)  # [tracking] clicks: link id -> address

    @property
    def slug(self) -> str:
        return self.issue.slug

    @property
    def content_hash(self) -> str:
        """Identifies exactly what recipients get; a campaign freezes it."""
        digest = hashlib.sha256()
        for part in (self.subject, self.preheader, self.html, self.text):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()
