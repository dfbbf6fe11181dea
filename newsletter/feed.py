"""Drafting an issue from the blog's RSS or Atom feed.

The feed is fetched politely (a timeout, a User-Agent naming the project, ``ETag`` and
``Last-Modified`` remembered in ``.cache/feeds/``), parsed with feedparser, and each entry not
yet in any issue becomes a post file in Markdown: the entry's HTML is untrusted, so it is
sanitised with nh3 first (scripts, frames, forms, styles, event handlers and tracking pixels
go; links and images become absolute against the entry's link), then converted with
markdownify. A post is known by its entry id (``source_id`` in its front matter) or, for a
feed without ids, by its link (``canonical_url``), so no post is drafted twice.

The issue folder is written whole in ``.cache/`` and moved into ``issues/`` in one rename:
a crash leaves no half-written issue, and a second run drafting the same slot at the same
moment finds the folder taken. Which slot and since when is the caller's to say (``new
--from-feed`` and ``tick``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import yaml

from .config import Config
from .content import ISSUE_FILE, issue_folders, read_document, slugify
from .errors import ContentError, NewsletterError
from .files import write_atomically

TIMEOUT = 20.0  # seconds for the feed server to answer (and between bytes)
MAX_FEED_BYTES = 10 * 1024 * 1024
MAX_IMAGE_BYTES = 10 * 1024 * 1024
PREHEADER_CHARS = 110

# What a post keeps of the entry's HTML; everything else is unwrapped to its text, and the
# CONTENT_DROPPED elements go together with what is inside them.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "dl", "dt",
    "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins",
    "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "small", "strong", "sub", "sup", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}
CONTENT_DROPPED = {
    "applet", "audio", "button", "canvas", "embed", "form", "iframe", "input", "map", "math",
    "noscript", "object", "script", "select", "style", "svg", "template", "textarea", "video",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"}}
URL_SCHEMES = {"http", "https", "mailto"}
FEED_TYPES = {"application/rss+xml", "application/atom+xml", "application/rdf+xml"}
IMAGE_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}


class FeedError(NewsletterError):
    """The feed cannot be fetched or read; the message names the URL and what to do."""


# ---------------------------------------------------------------------------------------------
# Fetching


@dataclass(frozen=True, slots=True)
class Entry:
    """One feed entry, its HTML already sanitised and its URLs absolute."""

    source_id: str  # the entry's id, or its link when the feed gives none
    link: str | None
    title: str
    author: str | None
    published: dt.datetime | None  # aware, UTC
    html: str  # the full content, or the summary when the feed carries no more
    summary: str  # plain text
    full: bool  # html is the whole post, not an excerpt


@dataclass(frozen=True, slots=True)
class Feed:
    url: str
    title: str
    entries: tuple[Entry, ...]
    duplicates: int = 0  # entries dropped because an earlier one had the same id
    moved_to: str | None = None  # where a permanent redirect points


def user_agent(config: Config) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("letterfold")
    except PackageNotFoundError:
        release = "dev"
    return f"letterfold/{release} (+{config.newsletter.site_url})"


class _Cache:
    """What the last answer from one feed URL was: its validators and its body."""

    def __init__(self, config: Config, url: str) -> None:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:24]
        self.folder = config.cache_dir / "feeds"
        self.meta_path = self.folder / f"{key}.json"
        self.body_path = self.folder / f"{key}.xml"
        self.url = url

    def load(self) -> tuple[dict[str, str], bytes] | None:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            body = self.body_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("url") != self.url:
            return None
        return {k: v for k, v in meta.items() if isinstance(v, str)}, body

    def save(self, validators: dict[str, str], body: bytes) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(self.body_path, body)
            write_atomically(self.meta_path, json.dumps({"url": self.url, **validators}).encode())
        except OSError:
            pass  # only the next request's validators are lost: it fetches the whole feed


def fetch(config: Config, url: str, *, timeout: float = TIMEOUT) -> Feed:
    """The feed at ``url``, asking the server only for what changed since the last time."""
    import requests

    where = f"feed {url}"
    if urlsplit(url).scheme not in ("http", "https"):
        raise FeedError(f"{where}: is not an http(s) URL; give the feed's full address")
    cache = _Cache(config, url)
    cached = cache.load()
    headers = {
        "User-Agent": user_agent(config),
        "Accept": "application/rss+xml, application/atom+xml, application/rdf+xml, "
                  "application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5",
    }
    if cached:
        validators = cached[0]
        if validators.get("etag"):
            headers["If-None-Match"] = validators["etag"]
        if validators.get("last_modified"):
            headers["If-Modified-Since"] = validators["last_modified"]
    try:
        with requests.get(url, headers=headers, timeout=timeout, stream=True) as response:
            status = response.status_code
            final_url = response.url
            moved = any(r.status_code in (301, 308) for r in response.history)
            content_type = response.headers.get("Content-Type", "")
            validators = {k: response.headers[h] for k, h in
                          (("etag", "ETag"), ("last_modified", "Last-Modified"))
                          if response.headers.get(h)}
            body = b"" if status == 304 else _read_capped(response, where)
    except requests.Timeout:
        raise FeedError(f"{where}: did not answer within {timeout:g} s; try again later, or "
                        "check the URL") from None
    except requests.TooManyRedirects:
        raise FeedError(f"{where}: redirects in a loop; open it in a browser and give the "
                        "address it ends at") from None
    except requests.RequestException as exc:
        raise FeedError(f"{where}: cannot be reached ({_reason(exc)}); check the URL and the "
                        "network") from None
    if status == 304 and cached:
        body = cached[1]
    elif status == 304:
        raise FeedError(f"{where}: answered 304 Not Modified to a request that asked for the "
                        "whole feed; the server is misconfigured")
    elif status in (404, 410):
        gone = "Not Found" if status == 404 else "Gone"
        raise FeedError(f"{where}: answered {status} {gone}; check the URL ([feed] url in "
                        "newsletter.toml, or the one given)")
    elif status >= 400:
        raise FeedError(f"{where}: answered {status}; "
                        + ("the blog's server failed, try again later" if status >= 500
                           else "check the URL and whether the feed is public"))
    elif status != 200:
        raise FeedError(f"{where}: answered {status}, not a feed")
    feed = parse(body, url, content_type)
    if status == 200:
        cache.save(validators, body)
    return replace(feed, moved_to=final_url if moved and final_url != url else None)


def _read_capped(response: Any, where: str) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_FEED_BYTES:
            raise FeedError(f"{where}: is larger than {MAX_FEED_BYTES // (1024 * 1024)} MB; "
                            "that is not a blog's feed")
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "No route to host",
                  "certificate verify failed", "Temporary failure in name resolution"):
        if known in text:
            return known.lower()
    return type(exc).__name__


def parse(body: bytes, url: str, content_type: str = "") -> Feed:
    """The entries of an RSS 0.9x/1.0/2.0 or Atom document, newest first as the feed has
    them, each id once."""
    import feedparser

    where = f"feed {url}"
    parsed = feedparser.parse(body, sanitize_html=False, resolve_relative_uris=False,
                              response_headers={"content-type": content_type or "application/xml"})
    if not parsed.version:
        start = body[:1000].decode("utf-8", "replace").lower()
        if "<html" not in start and "<!doctype html" not in start:
            raise FeedError(f"{where}: is not an RSS or Atom feed; give the feed's own address "
                            "(often /feed/, /rss.xml, /atom.xml or /index.xml)")
        found = _advertised_feed(body.decode("utf-8", "replace"), url)
        hint = (f"the page names its feed: {found}" if found else
                "give the feed's own address (often /feed/, /rss.xml, /atom.xml or /index.xml)")
        raise FeedError(f"{where}: is an HTML page, not a feed; {hint}")
    entries: list[Entry] = []
    seen: set[str] = set()
    duplicates = 0
    for raw in parsed.entries:
        entry = _entry(raw, parsed.feed)
        if entry is None:
            continue
        if entry.source_id in seen:
            duplicates += 1
            continue
        seen.add(entry.source_id)
        entries.append(entry)
    title = _text(parsed.feed.get("title", "")) or url
    return Feed(url=url, title=title, entries=tuple(entries), duplicates=duplicates)


# What blog engines append to an excerpt: "[…]", "Continue reading →", "Read more".
_READ_MORE = re.compile(r"\s*(\[(…|\.\.\.|&hellip;)\]|continue reading.*|read more.*|"
                        r"the post .* appeared first on .*)$", re.IGNORECASE)


def _advertised_feed(page: str, url: str) -> str | None:
    """The feed a web page points to with ``<link rel="alternate" type="application/rss+xml">``."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = {k: v or "" for k, v in attrs}
            if (tag == "link" and "alternate" in a.get("rel", "").lower().split()
                    and a.get("type", "").lower() in FEED_TYPES and a.get("href")):
                found.append(urljoin(url, a["href"]))

    Links().feed(page)
    return found[0] if found else None


def _entry(raw: Any, feed: Any) -> Entry | None:
    link = raw.get("link") or None
    if link and urlsplit(link).scheme not in ("http", "https"):
        link = None
    source_id = (raw.get("id") or "").strip() or link
    if not source_id:
        return None  # nothing to know it by again: it could not be kept from coming twice
    base = link or feed.get("link") or ""
    content = ""
    for part in raw.get("content", ()):
        if part.get("value", "").strip() and part.get("type", "text/html") in (
                "text/html", "application/xhtml+xml", "html", "xhtml"):
            content = part["value"]
            break
    summary_html = raw.get("summary", "") or ""
    if content and _text(content) == _text(summary_html):
        summary_html = ""  # feeds that put the whole post in both
    body = content or summary_html
    summary = _READ_MORE.sub("", _text(summary_html or content))
    moment = raw.get("published_parsed") or raw.get("updated_parsed")
    published = dt.datetime(*moment[:6], tzinfo=dt.UTC) if moment else None
    author = _text(raw.get("author", "") or feed.get("author", "")) or None
    title = _text(raw.get("title", "")) or _shorten(_text(body), 60) or "Untitled"
    return Entry(
        source_id=source_id, link=link, title=title, author=author, published=published,
        html=sanitise(body, base), summary=summary,
        full=bool(content),
    )


# ---------------------------------------------------------------------------------------------
# Turning untrusted HTML into the Markdown of a post


def sanitise(fragment: str, base: str) -> str:
    """``fragment`` with only the harmless tags and attributes left, URLs absolute against
    ``base`` and with http, https or mailto schemes, and tracking pixels gone."""
    import nh3

    def absolute(tag: str, attribute: str, value: str) -> str | None:
        if attribute in ("href", "src"):
            value = urljoin(base, value.strip())
            if urlsplit(value).scheme not in URL_SCHEMES:
                return None
        return value

    cleaned = nh3.clean(fragment, tags=ALLOWED_TAGS, clean_content_tags=CONTENT_DROPPED,
                        attributes=ALLOWED_ATTRIBUTES, attribute_filter=absolute,
                        url_schemes=URL_SCHEMES, link_rel=None, strip_comments=True)
    return cleaned


def _text(fragment: str) -> str:
    """The text of an HTML fragment, on one line."""
    import nh3

    text = html.unescape(nh3.clean(fragment or "", tags=set(), clean_content_tags={"script", "style"}))
    return " ".join(text.split())


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:.-–— ")
    return cut + "…"


def to_markdown(fragment: str) -> str:
    """Sanitised HTML as Markdown: headings with #, lists with -, images and links kept."""
    from markdownify import MarkdownConverter

    class Converter(MarkdownConverter):
        def convert_img(self, el: Any, text: str, parent_tags: set[str]) -> str:
            if _is_pixel(el.get("width")) or _is_pixel(el.get("height")):
                return ""  # a tracking pixel
            return super().convert_img(el, text, parent_tags)

    converter = Converter(heading_style="ATX", bullets="-", strong_em_symbol="*",
                          escape_underscores=False, escape_misc=False)
    markdown = converter.convert(fragment)
    markdown = re.sub(r"[ \t]+\n", "\n", markdown)
    return re.sub(r"\n{3,}", "\n\n", markdown).strip() + "\n"


def _is_pixel(value: Any) -> bool:
    return isinstance(value, str) and value.strip().rstrip("px").strip() in ("0", "1")


_EMPHASIS = re.compile(r"[*_~`]")
_TRAILING = ".!,;:…-–— \t"


def _fold(text: str) -> str:
    """Text compared for the sign-off: no emphasis marks, case or trailing punctuation."""
    return " ".join(_EMPHASIS.sub("", text).split()).strip(_TRAILING).casefold()


def drop_sign_off(markdown: str, sign_off: str) -> tuple[str, bool]:
    """``markdown`` without its last paragraph when that paragraph is ``sign_off`` (the
    template closes every issue with it, so readers would see it twice)."""
    blocks = markdown.rstrip().split("\n\n")
    if len(blocks) > 1 and _fold(blocks[-1]) == _fold(sign_off):
        return "\n\n".join(blocks[:-1]).rstrip() + "\n", True
    return markdown, False


# ---------------------------------------------------------------------------------------------
# Which entries are new


def known_sources(issues_dir: Path) -> set[str]:
    """The ``source_id`` and ``canonical_url`` of every post in every issue."""
    known: set[str] = set()
    for folder in issue_folders(issues_dir):
        for path in folder.glob("*.md"):
            if path.name == ISSUE_FILE:
                continue
            try:
                meta = read_document(path).meta
            except (ContentError, OSError):
                continue  # a broken post still shows up in `check`
            for key in ("source_id", "canonical_url"):
                value = meta.get(key)
                if isinstance(value, str) and value.strip():
                    known.add(value.strip())
    return known


def new_entries(feed: Feed, known: set[str], since: dt.datetime | None) -> list[Entry]:
    """Entries not in any issue and published at or after ``since`` (an entry without a date
    counts as new), newest first."""
    fresh = [
        e for e in feed.entries
        if e.source_id not in known and (e.link is None or e.link not in known)
        and (since is None or e.published is None or e.published >= since)
    ]
    dated = sorted((e for e in fresh if e.published), key=lambda e: e.published, reverse=True)
    return dated + [e for e in fresh if e.published is None]


# ---------------------------------------------------------------------------------------------
# Writing the draft


@dataclass(frozen=True, slots=True)
class Drafted:
    feed: Feed
    since: dt.datetime | None
    folder: Path | None  # None: nothing new, nothing written
    files: list[Path] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    sign_offs: int = 0  # posts whose closing sign-off was dropped


def draft(config: Config, url: str, slot: dt.datetime, since: dt.datetime | None, *,
          content: str | None = None, download_images: bool = False,
          send_at: str | None = None, feed: Feed | None = None) -> Drafted:
    """Write the issue for ``slot`` from the entries of ``url`` not yet in any issue.

    ``content`` is "full" or "summary" (default: ``[feed] content``); ``send_at`` is the
    front matter value that schedules the issue, when it should be scheduled."""
    feed = feed or fetch(config, url)
    entries = new_entries(feed, known_sources(config.issues_dir), since)
    if not entries:
        return Drafted(feed=feed, since=since, folder=None)
    mode = content or config.feed.content
    lead = entries[0]
    folder = config.issues_dir / f"{slot.date().isoformat()}-{slugify(lead.title)}"
    if folder.exists():
        raise FeedError(f"{folder} already exists; draft the issue for another day with --date")
    config.cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="draft-", dir=config.cache_dir))
    try:
        written, sign_offs = _write_posts(config, work, entries, mode, download_images)
        issue_meta: dict[str, Any] = {"subject": lead.title,
                                      "preheader": _shorten(lead.summary, PREHEADER_CHARS)
                                      or lead.title}
        if send_at:
            issue_meta["send_at"] = send_at
        (work / ISSUE_FILE).write_text(_front_matter(issue_meta), encoding="utf-8")
        config.issues_dir.mkdir(parents=True, exist_ok=True)
        try:
            work.rename(folder)
        except OSError:
            raise FeedError(f"{folder} was created by another run at the same moment; "
                            "nothing was written") from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    files = [folder / ISSUE_FILE, *(folder / p.name for p in written)]
    return Drafted(feed=feed, since=since, folder=folder, files=files, entries=entries,
                   sign_offs=sign_offs)


def _write_posts(config: Config, work: Path, entries: list[Entry], mode: str,
                 download_images: bool) -> tuple[list[Path], int]:
    written: list[Path] = []
    taken: set[str] = set()
    sign_offs = 0
    for number, entry in enumerate(entries, start=1):
        if mode == "summary" and entry.full:
            body = to_markdown(f"<p>{html.escape(_shorten(entry.summary, 400))}</p>")
        else:
            body, dropped = drop_sign_off(to_markdown(entry.html), config.newsletter.sign_off)
            sign_offs += dropped
        if (mode == "summary" or not entry.full) and entry.link:
            body = body.rstrip() + f"\n\n[Read the rest]({entry.link})\n"
        if download_images:
            body = _download_images(config, work, body, taken)
        meta: dict[str, Any] = {"title": entry.title}
        if entry.author:
            meta["author"] = entry.author
        if entry.published:
            meta["date"] = entry.published.astimezone(config.newsletter.timezone).isoformat()
        if entry.link:
            meta["canonical_url"] = entry.link
        if entry.summary:
            meta["summary"] = _shorten(entry.summary, 200)
        meta["source_id"] = entry.source_id
        path = work / f"{number:02d}-{slugify(entry.title)[:60]}.md"
        path.write_text(_front_matter(meta) + body, encoding="utf-8")
        written.append(path)
    return written, sign_offs


def _front_matter(meta: dict[str, Any]) -> str:
    dumped = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=10_000)
    return f"---\n{dumped}---\n"


_MD_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<url>https?://[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")


def _download_images(config: Config, work: Path, body: str, taken: set[str]) -> str:
    """``body`` with each remote image fetched beside the post and linked by file name."""

    def local(match: re.Match[str]) -> str:
        name = _fetch_image(config, match["url"], work, taken)
        return f"![{match['alt']}]({name}{match['title'] or ''})"

    return _MD_IMAGE.sub(local, body)


def _fetch_image(config: Config, url: str, work: Path, taken: set[str]) -> str:
    import requests

    where = f"image {url}"
    try:
        with requests.get(url, headers={"User-Agent": user_agent(config)}, timeout=TIMEOUT,
                          stream=True) as response:
            if response.status_code != 200:
                raise FeedError(f"{where}: answered {response.status_code}; draft without "
                                "--download-images to keep it as a remote image")
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not kind.startswith("image/"):
                raise FeedError(f"{where}: is {kind or 'not labelled'}, not an image; draft "
                                "without --download-images to keep it as a remote image")
            data, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise FeedError(f"{where}: is larger than 10 MB; keep it remote or shrink it")
                data.append(chunk)
    except requests.RequestException as exc:
        raise FeedError(f"{where}: cannot be fetched ({_reason(exc)}); draft without "
                        "--download-images to keep it as a remote image") from None
    stem, suffix = os.path.splitext(os.path.basename(urlsplit(url).path))
    suffix = IMAGE_TYPES.get(kind, suffix.lower() if suffix else ".img")
    stem = slugify(stem)[:50] or "image"
    name = f"{stem}{suffix}"
    n = 2
    while name in taken:
        name = f"{stem}-{n}{suffix}"
        n += 1
    taken.add(name)
    (work / name).write_bytes(b"".join(data))
    return name


def describe_since(since: dt.datetime | None, config: Config) -> str:
    if since is None:
        return "the start of the feed"
    return since.astimezone(config.newsletter.timezone).strftime("%a %d %b %Y %H:%M")


def summary(result: Drafted, config: Config) -> str:
    """One line on what a drafting run did, for ``new --from-feed`` and ``tick`` alike."""
    if result.folder is None:
        return f"no new posts in {result.feed.url} since {describe_since(result.since, config)}"
    count = len(result.entries)
    return (f"drafted {result.folder.name}/ from {count} new post{'s' if count != 1 else ''} "
            f"in {result.feed.url}")
