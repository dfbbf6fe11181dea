"""Start a newsletter (`init`) and a new issue (`new`)."""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import CONFIG_NAME, Config
from .content import ISSUE_FILE, issue_folders, load_issue, slugify
from .errors import ContentError, NewsletterError
from .render import builtin_templates

if TYPE_CHECKING:
    from .feed import Drafted

# What `init` and `new` write where the writer's own words belong. The pre-flight checks
# (newsletter.checks) refuse to send any of it, so none of it can reach a reader.
PLACEHOLDER_NAME = "Your Name"
PLACEHOLDER_ADDRESS = "you@example.com"
PLACEHOLDER_SITE_URL = "https://newsletter.example.com"
STUB_PREHEADER = "The line inboxes show after the subject: why open this one?"
STUB_SENTENCES = (
    "Start with the story, then the point.",
    "Close with what the reader can do on Monday.",
)
STUB_BODY = " ".join(STUB_SENTENCES) + "\n"

GITIGNORE = """\
.venv/
dist/
.cache/
outbox/
*.db
*.db-wal
*.db-shm
.env
"""

CONFIG_TEMPLATE = """\
# {name}: settings. Secrets (API keys, SMTP password, NEWSLETTER_SECRET) live in the
# environment or in .env beside this file, never here.

[newsletter]
name = "{name}"
description = "A weekly letter."
site_url = "{site_url}"   # where `newsletter serve` or the archive is reachable
language = "en"
author = "{author}"
from = {{ name = "{author}", address = "{address}" }}
reply_to = "{address}"
postal_address = ""     # required by law in every message, e.g. "1 Main Street, Springfield"
sign_off = "Sell well"
timezone = "{timezone}"
default_list = "main"

[schedule]
weekday = "tuesday"
time = "08:00"
grace = "6h"

[provider]
name = "outbox"         # writes .eml files under outbox/; see the README for the others

[database]
url = "sqlite:///newsletter.db"

# Posts already on a blog? Draft each issue from its feed: `newsletter new --from-feed`.
# [feed]
# url = "https://blog.example.com/feed/"
# auto = "draft"        # or "send": `tick` drafts (and schedules) each week's issue itself
"""


class AlreadyExists(NewsletterError):
    pass


def init(folder: Path, name: str | None = None, author: str = PLACEHOLDER_NAME,
         address: str = PLACEHOLDER_ADDRESS, timezone: str = "UTC") -> list[Path]:
    """Scaffold a newsletter in ``folder``; refuses to overwrite an existing one."""
    folder = folder.expanduser()
    config_path = folder / CONFIG_NAME
    if config_path.exists():
        raise AlreadyExists(f"{config_path} already exists; this folder is a newsletter already")
    folder.mkdir(parents=True, exist_ok=True)
    title = name or folder.resolve().name.replace("-", " ").replace("_", " ").title()
    for value in (title, author, address):
        if '"' in value or "\\" in value or "\n" in value:
            raise NewsletterError(f"{value!r}: quotes, backslashes and line breaks are not allowed")
    created = []
    config_path.write_text(
        CONFIG_TEMPLATE.format(name=title, author=author, address=address, timezone=timezone,
                               site_url=PLACEHOLDER_SITE_URL),
        encoding="utf-8",
    )
    created.append(config_path)
    templates = folder / "templates"
    if not templates.exists():
        # The preview's own pages are part of the tool, not of the newsletter.
        shutil.copytree(builtin_templates(), templates, ignore=shutil.ignore_patterns("preview"))
        created.append(templates)
    issues = folder / "issues"
    issues.mkdir(exist_ok=True)
    created.append(issues)
    gitignore = folder / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE, encoding="utf-8")
        created.append(gitignore)
    env = folder / ".env"
    if not env.exists():
        env.write_text(f"NEWSLETTER_SECRET={secrets.token_urlsafe(32)}\n", encoding="utf-8")
        env.chmod(0o600)
        created.append(env)
    return created


@dataclass(frozen=True, slots=True)
class NewIssue:
    folder: Path
    files: list[Path]
    slot: dt.datetime


def taken_days(config: Config) -> set[dt.date]:
    """Days that already have an issue (by send time or folder date)."""
    days = set()
    for folder in issue_folders(config.issues_dir):
        try:
            days.add(load_issue(folder, config.newsletter.author, config.newsletter.timezone).date)
        except NewsletterError:
            continue  # a broken issue still shows up in `check`; it does not block `new`
    return days


def new_issue(config: Config, title: str, now: dt.datetime | None = None,
              date: dt.date | None = None) -> NewIssue:
    """Create the next issue folder, dated to the next free weekly slot, with a post stub."""
    title = title.strip()
    if not title or "\n" in title:
        raise ContentError("the title must be one non-empty line")
    from .schedule import next_free_slot

    now = now or dt.datetime.now(dt.UTC)
    if date is None:
        slot = next_free_slot(config, taken_days(config), now)
    else:
        slot = dt.datetime.combine(date, config.schedule.time, tzinfo=config.newsletter.timezone)
    slug = slugify(title)
    folder = config.issues_dir / f"{slot.date().isoformat()}-{slug}"
    if folder.exists():
        raise AlreadyExists(f"{folder} already exists; choose another title or --date")
    folder.mkdir(parents=True)
    quoted = title.replace("\\", "\\\\").replace('"', '\\"')
    issue_md = folder / ISSUE_FILE
    issue_md.write_text(
        f'---\nsubject: "{quoted}"\npreheader: "{STUB_PREHEADER}"\n---\n', encoding="utf-8"
    )
    post = folder / f"01-{slug}.md"
    author = config.newsletter.author.replace('"', '\\"')
    post.write_text(
        f'---\ntitle: "{quoted}"\nauthor: "{author}"\n---\n' + STUB_BODY,
        encoding="utf-8",
    )
    return NewIssue(folder=folder, files=[issue_md, post], slot=slot)


@dataclass(frozen=True, slots=True)
class FeedIssue:
    slot: dt.datetime
    drafted: Drafted


def new_issue_from_feed(config: Config, url: str | None = None, *, since: dt.datetime | None = None,
                        date: dt.date | None = None, download_images: bool = False,
                        now: dt.datetime | None = None) -> FeedIssue:
    """Draft the next free slot's issue from the feed's posts that are in no issue yet,
    published since ``since`` (default: the previous slot)."""
    from .feed import FeedError, draft
    from .schedule import next_free_slot, slots

    url = url or config.feed.url
    if not url:
        raise FeedError(
            f"{config.path.name}: no feed to draft from; add [feed] url = \"https://…/feed/\" "
            "or give one: `newsletter new --from-feed URL`"
        )
    now = now or dt.datetime.now(dt.UTC)
    if date is None:
        slot = next_free_slot(config, taken_days(config), now)
    else:
        slot = dt.datetime.combine(date, config.schedule.time, tzinfo=config.newsletter.timezone)
    if since is None:
        since = next(slots(config, now - dt.timedelta(days=7)))
    return FeedIssue(slot=slot, drafted=draft(config, url, slot, since,
                                              download_images=download_images))
