"""Helpers for the public web tests: a newsletter folder with a sent issue, the outbox, links."""

from __future__ import annotations

import email
import email.policy
import io
import re
import textwrap
from email.message import EmailMessage
from pathlib import Path

from PIL import Image

from newsletter import campaign as engine
from newsletter import config as cfg
from newsletter import subscribers as subs
from newsletter.content import load_issue
from newsletter.render import render_issue
from newsletter.store import Store

from .conftest import BASIC_TOML

SECRET = "web-test-secret"
ISSUE = "2026-12-01-first"


def _png() -> bytes:
    """A real 1 x 1 white PNG (the images are read with Pillow, so they must be sound)."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1), "white").save(out, "PNG")
    return out.getvalue()


PNG = _png()


def write_letter(root: Path, web: str = "", env: str = "") -> None:
    """newsletter.toml (outbox provider, optional [web] lines), .env with the secret, one
    issue with an image."""
    toml = BASIC_TOML + '\n[provider]\nname = "outbox"\n'
    if web:
        toml += "\n[web]\n" + textwrap.dedent(web)
    (root / "newsletter.toml").write_text(toml, encoding="utf-8")
    (root / ".env").write_text(f"NEWSLETTER_SECRET={SECRET}\n{textwrap.dedent(env)}", encoding="utf-8")
    folder = root / "issues" / ISSUE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "issue.md").write_text(
        "---\nsubject: First <b>issue</b> & more\npreheader: Why quotas fail\n---\n", encoding="utf-8"
    )
    (folder / "01-post.md").write_text(
        "---\ntitle: The post\n---\nHello reader.\n\n![A chart](chart.png)\n", encoding="utf-8"
    )
    (folder / "chart.png").write_bytes(PNG)


def load(root: Path) -> cfg.Config:
    return cfg.load(root / "newsletter.toml")


def send_issue(config: cfg.Config, store: Store, slug: str = ISSUE, list_name: str = "main"):
    """Send ``slug`` to ``list_name`` through the outbox with the campaign engine."""
    n = config.newsletter
    rendered = render_issue(config, load_issue(config.issues_dir / slug, n.author, n.timezone))
    campaign = engine.start(store, rendered, list_name, "outbox")
    result = engine.send_campaign(config, store, campaign, rendered)
    assert result.finished
    return campaign


def add_reader(store: Store, address: str, list_name: str = "main", name: str = "") -> None:
    subs.add(store, address, name=name, list_name=list_name, confirmed=True)


def outbox(root: Path, label: str) -> list[EmailMessage]:
    folder = root / "outbox" / label
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted(folder.glob("*.eml"))
    ] if folder.is_dir() else []


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content()


def confirm_path(message: EmailMessage) -> str:
    found = re.search(r"https://letter\.example\.com(/confirm/[A-Za-z0-9_.-]+)", text_of(message))
    assert found, text_of(message)
    return found[1]


def unsubscribe_path(message: EmailMessage) -> str:
    found = re.search(r"<https://letter\.example\.com(/unsubscribe/[A-Za-z0-9_.-]+)>", message["List-Unsubscribe"])
    assert found, message["List-Unsubscribe"]
    return found[1]


def heading(html: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", html, re.S)
    return found[1] if found else ""
