"""Click counts per link, never per reader ([tracking] clicks = true).

When it is on, each link in an issue's email HTML (to anywhere but the newsletter's own
site) becomes ``<site_url>/l/<id>``: the same address for every reader, with nothing about
the reader in it. ``id`` is a digest of the issue's name and the link's address, so the
rendered email stays the same however often it is rendered. A campaign records its issue's
links when it starts; ``newsletter serve`` redirects ``/l/<id>`` to the address recorded for
that id and adds one to its counter. Only links of issues some reader was sent redirect: any
other id, or one made up, is not found (no open redirect). The plain-text part keeps the real
addresses.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import re
from dataclasses import dataclass

from sqlalchemy import Connection, exists, select, update

from .store import Store, upsert
from .store.schema import campaigns, deliveries, links

LINK_PATH = "/l/"
ID_LENGTH = 16  # base32 characters: 80 bits of a sha256
ID = re.compile(r"^[a-z2-7]{16}$")
_HREF = re.compile(r'(<a\b[^>]*?\bhref=")(https?://[^"]+)(")', re.IGNORECASE)


def link_id(issue: str, url: str) -> str:
    digest = hashlib.sha256(f"{issue}\n{url}".encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:ID_LENGTH]


def track(document: str, issue: str, site_url: str) -> tuple[str, dict[str, str]]:
    """``document`` with every link to elsewhere pointing at its counter, and the links
    (id -> address, in the order they first appear)."""
    prefix = f"{site_url}{LINK_PATH}"
    own = site_url.rstrip("/") + "/"
    found: dict[str, str] = {}

    def swap(match: re.Match[str]) -> str:
        url = html.unescape(match[2])
        if url.startswith(own) or url == site_url:
            return match[0]
        key = link_id(issue, url)
        found.setdefault(key, url)
        return f"{match[1]}{prefix}{key}{match[3]}"

    return _HREF.sub(swap, document), found


def record(conn: Connection, issue: str, tracked: dict[str, str], now: dt.datetime) -> None:
    """Keep an issue's links (called when its campaign starts, or takes a new version)."""
    if not tracked:
        return
    rows = [{"id": key, "issue": issue, "url": url, "position": n, "clicks": 0, "created_at": now}
            for n, (key, url) in enumerate(tracked.items())]
    conn.execute(upsert(conn, links).on_conflict_do_nothing(index_elements=[links.c.id]), rows)


@dataclass(frozen=True, slots=True)
class Followed:
    url: str


def follow(store: Store, key: str, *, count: bool = True) -> Followed | None:
    """Where link ``key`` goes, when it is a link of an issue sent to someone; ``count``
    adds one to its clicks (a GET; a HEAD only looks)."""
    if not ID.match(key):
        return None
    sent = exists().where(campaigns.c.issue == links.c.issue, deliveries.c.campaign_id == campaigns.c.id,
                          deliveries.c.status == "sent")
    with store.read() as conn:
        url = conn.execute(select(links.c.url).where(links.c.id == key, sent)).scalar_one_or_none()
    if url is None:
        return None
    if count:
        with store.write() as conn:
            conn.execute(update(links).where(links.c.id == key).values(clicks=links.c.clicks + 1))
    return Followed(url)


def clicks(store: Store, issue: str) -> list[tuple[str, int]]:
    """The issue's tracked links, in the order of the email, with their clicks."""
    with store.read() as conn:
        return [(r.url, r.clicks) for r in conn.execute(
            select(links.c.url, links.c.clicks).where(links.c.issue == issue).order_by(links.c.position))]
