"""The archive of sent issues and its Atom feed: served by ``newsletter serve`` and written
as static files by ``newsletter archive``, from the same code.

An issue is in the archive once a campaign has sent it to anyone. Its page is the web
version the campaign froze (``campaigns.web_html``), so the archive shows what readers
got even if the files changed since; the images come from the issue's folder (the names
the web version refers to, published by rendering the issue again, and only files inside
the newsletter folder).

Layout, relative to ``[newsletter] site_url``::

    archive/                  every sent issue, newest first
    archive/<slug>/           the issue's web version, and its images beside it
    feed.xml                  Atom, the newest issues with their full text
    static/site.css           the style sheet of the public pages
"""

from __future__ import annotations

import datetime as dt
import html as html_lib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exists, func, select

from ..config import Config
from ..content import load_issue
from ..errors import NewsletterError
from ..render import (
    builtin_templates,
    render_issue,
    render_template,
    template_search_path,
    web_url_for,
)
from ..store import Store
from ..store.schema import campaigns, deliveries
from . import http

log = logging.getLogger("newsletter.web")

FEED_ENTRIES = 20
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DESCRIPTION = re.compile(r"<meta\s+name=\"description\"\s+content=\"([^\"]*)\"", re.IGNORECASE)
_MAIN = re.compile(r"<main\b[^>]*>(.*)</main>", re.IGNORECASE | re.DOTALL)
_BODY = re.compile(r"<body\b[^>]*>(.*)</body>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class ArchivedIssue:
    slug: str
    subject: str
    sent_at: dt.datetime  # when its first campaign started
    updated_at: dt.datetime
    web_html: str
    url: str  # the web version's address under site_url

    @property
    def summary(self) -> str:
        """The web version's description (the preheader), as plain text."""
        found = _DESCRIPTION.search(self.web_html)
        return html_lib.unescape(found[1]).strip() if found else ""

    @property
    def body(self) -> str:
        """The web version's page content, for the feed."""
        found = _MAIN.search(self.web_html) or _BODY.search(self.web_html)
        return found[1].strip() if found else ""


def sent_issues(config: Config, store: Store, slug: str | None = None) -> list[ArchivedIssue]:
    """Every issue a campaign has sent to at least one reader (or just ``slug``), newest
    first; an issue sent to several lists appears once, with the most recent web version."""
    sent = exists().where(deliveries.c.campaign_id == campaigns.c.id, deliveries.c.status == "sent")
    stmt = (
        select(campaigns.c.issue, campaigns.c.subject, campaigns.c.web_html,
               campaigns.c.created_at, campaigns.c.updated_at)
        .where(sent, func.length(campaigns.c.web_html) > 0, campaigns.c.sequence.is_(None))
        .order_by(campaigns.c.id)
    )
    if slug is not None:
        stmt = stmt.where(campaigns.c.issue == slug)
    with store.read() as conn:
        rows = conn.execute(stmt).all()
    found: dict[str, ArchivedIssue] = {}
    for r in rows:
        if not SLUG.fullmatch(r.issue) or ".." in r.issue:
            continue
        first = found.get(r.issue)
        found[r.issue] = ArchivedIssue(
            slug=r.issue, subject=r.subject, web_html=r.web_html,
            sent_at=min(r.created_at, first.sent_at) if first else r.created_at,
            updated_at=max(r.updated_at, first.updated_at) if first else r.updated_at,
            url=web_url_for(config, r.issue),
        )
    return sorted(found.values(), key=lambda i: (i.sent_at, i.slug), reverse=True)


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AssetIndex:
    """The images of each issue, found by rendering the issue from its folder; kept until
    a file in the folder changes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._cache: dict[str, tuple[tuple, Mapping[str, Path]]] = {}
        self._lock = threading.Lock()

    def _fingerprint(self, folder: Path) -> tuple:
        state = []
        for path in sorted(folder.rglob("*")):
            try:
                info = path.stat()
            except OSError:
                continue
            state.append((str(path), info.st_mtime_ns, info.st_size))
        return tuple(state)

    def get(self, slug: str) -> Mapping[str, Path]:
        folder = self.config.issues_dir / slug
        if not SLUG.fullmatch(slug) or not folder.is_dir():
            return {}
        fingerprint = self._fingerprint(folder)
        with self._lock:
            cached = self._cache.get(slug)
            if cached and cached[0] == fingerprint:
                return cached[1]
            n = self.config.newsletter
            try:
                rendered = render_issue(self.config, load_issue(folder, n.author, n.timezone))
            except NewsletterError as exc:
                log.warning("archive: the images of %s cannot be found: %s", slug, exc)
                assets: Mapping[str, Path] = {}
            else:
                assets = {}
                for asset in rendered.assets:
                    inside = http.contained(self.config.root, asset.source) is not None
                    if inside and asset.path.is_file():
                        assets[asset.name] = asset.path
            self._cache[slug] = (fingerprint, assets)
            return assets


class Archive:
    """The archive pages and feed of one newsletter."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.assets = AssetIndex(config)

    def issues(self) -> list[ArchivedIssue]:
        return sent_issues(self.config, self.store)

    def issue(self, slug: str) -> ArchivedIssue | None:
        found = sent_issues(self.config, self.store, slug)
        return found[0] if found else None

    def index_html(self, issues: list[ArchivedIssue]) -> str:
        tz = self.config.newsletter.timezone
        items = [
            {"slug": i.slug, "subject": i.subject, "summary": i.summary, "sent_at": i.sent_at,
             "sent_at_utc": _stamp(i.sent_at), "local_date": i.sent_at.astimezone(tz).date()}
            for i in issues
        ]
        return render_template(self.config, "web/archive.html", {
            "newsletter": self.config.newsletter, "root": "../", "issues": items,
        })

    def feed_xml(self, issues: list[ArchivedIssue]) -> str:
        newest = issues[:FEED_ENTRIES]
        updated = max((i.updated_at for i in newest), default=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        items = [
            {"subject": i.subject, "url": i.url, "summary": i.summary, "body": i.body,
             "published": _stamp(i.sent_at), "updated": _stamp(i.updated_at)}
            for i in newest
        ]
        return render_template(self.config, "web/feed.xml", {
            "newsletter": self.config.newsletter, "site_url": self.config.newsletter.site_url,
            "updated": _stamp(updated), "issues": items,
        })

    def stylesheet(self) -> Path:
        """The public pages' style sheet: the newsletter's own, else the built-in one."""
        for folder in template_search_path(self.config):
            candidate = folder / "web" / "site.css"
            if candidate.is_file():
                return candidate
        return builtin_templates() / "web" / "site.css"


# ---------------------------------------------------------------------------------------------
# Static files


@dataclass(frozen=True, slots=True)
class WrittenArchive:
    out: Path
    issues: int
    files: int


def write_archive(config: Config, store: Store, out: Path) -> WrittenArchive:
    """Write ``archive/``, ``feed.xml`` and ``static/site.css`` under ``out``. The archive
    folder is built beside the old one and swapped in whole; nothing else in ``out`` is
    touched."""
    archive = Archive(config, store)
    issues = archive.issues()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".archive.", dir=out))
    files = 0
    try:
        folder = staging / "archive"
        folder.mkdir()
        (folder / "index.html").write_text(archive.index_html(issues), encoding="utf-8")
        files += 1
        for issue in issues:
            target = folder / issue.slug
            target.mkdir()
            (target / "index.html").write_text(issue.web_html, encoding="utf-8")
            files += 1
            for name, source in archive.assets.get(issue.slug).items():
                destination = target / name
                if http.contained(target, destination) is None:
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
                files += 1
        (staging / "feed.xml").write_text(archive.feed_xml(issues), encoding="utf-8")
        (staging / "site.css").write_bytes(archive.stylesheet().read_bytes())
        files += 2
        _swap(folder, out / "archive")
        os.replace(staging / "feed.xml", out / "feed.xml")
        (out / "static").mkdir(exist_ok=True)
        os.replace(staging / "site.css", out / "static" / "site.css")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return WrittenArchive(out=out, issues=len(issues), files=files)


def _swap(new: Path, target: Path) -> None:
    """Put ``new`` where ``target`` is, replacing it whole."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".archive.old.", dir=target.parent))
        target.rename(old / "x")
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
