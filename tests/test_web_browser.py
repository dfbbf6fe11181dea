"""A reader's whole path in headless Chromium (Debian's chromium, driven by Playwright)
against a real `newsletter serve` process: subscribe with the form, confirm from the email
in the outbox (its link opens a page whose button confirms), read the archive, then leave
from the unsubscribe link of a sent issue."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from newsletter import subscribers as subs
from newsletter.config import load as load_config
from newsletter.store import open_store

from .conftest import BROWSER_MISSING, needs_browser
from .test_web_server import env_for, newsletter, start_server, stop_server
from .webutil import ISSUE, confirm_path, outbox, unsubscribe_path, write_letter

if TYPE_CHECKING or not BROWSER_MISSING:
    from playwright.sync_api import Browser, Page, expect

pytestmark = needs_browser
WAIT_MS = 10_000


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 900, "height": 900})
    opened = context.new_page()
    opened.problems = []  # type: ignore[attr-defined]
    opened.on("console", lambda m: m.type == "error" and opened.problems.append(m.text))  # type: ignore[attr-defined]
    opened.on("pageerror", lambda e: opened.problems.append(str(e)))  # type: ignore[attr-defined]
    opened.on("response", lambda r: r.status >= 400 and opened.problems.append(f"{r.status} {r.url}"))  # type: ignore[attr-defined]
    yield opened
    context.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    write_letter(tmp_path)
    (tmp_path / "readers.csv").write_text("email,name\nann@example.com,Ann\n")
    assert newsletter(tmp_path, "subscribers", "import", "readers.csv").returncode == 0
    assert newsletter(tmp_path, "send", ISSUE, "--yes").returncode == 0
    process, base = start_server(tmp_path)
    yield tmp_path, base
    stop_server(process)


def status(root: Path, address: str) -> str | None:
    config = load_config(root / "newsletter.toml", environ=env_for(root))
    with open_store(config) as store:
        return {m.email: m.status for m in subs.iter_members(store, "main")}.get(address)


def test_subscribe_confirm_read_and_leave(page: Page, served):
    root, base = served

    page.goto(f"{base}/subscribe")
    expect(page.locator("h1")).to_have_text("Get Test Letter by email")
    assert page.locator("button").evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(184, 67, 44)"
    assert not page.locator(".hp").is_visible() or page.locator(".hp").bounding_box()["x"] < 0
    page.fill("#email", "rita@example.com")
    page.fill("#name", "Rita <script>alert(1)</script>")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Check your inbox", timeout=WAIT_MS)
    assert status(root, "rita@example.com") == "pending"

    deadline = time.monotonic() + 15
    while not outbox(root, "confirm") and time.monotonic() < deadline:
        time.sleep(0.05)
    [mail] = outbox(root, "confirm")
    assert mail["To"] == "rita@example.com"
    page.goto(base + confirm_path(mail))
    expect(page.locator("h1")).to_have_text("Confirm your subscription to Test Letter")
    assert status(root, "rita@example.com") == "pending"  # opening the link changed nothing
    assert page.locator("button").count() == 1
    page.click("text=Yes, subscribe me")
    expect(page.locator("h1")).to_have_text("You are subscribed")
    assert status(root, "rita@example.com") == "active"

    page.click("text=Read the past issues")
    expect(page.locator("h1")).to_have_text("All issues")
    page.click("text=First <b>issue</b> & more")
    expect(page.locator(".post-title")).to_have_text("The post")
    image = page.locator("img[alt='A chart']")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") == 1

    [label] = [p.name for p in (root / "outbox").iterdir() if p.name != "confirm"]
    [issue_mail] = outbox(root, label)
    page.goto(base + unsubscribe_path(issue_mail))
    expect(page.locator("h1")).to_have_text("Unsubscribe from Test Letter?")
    assert page.locator("button").count() == 1
    assert status(root, "ann@example.com") == "active"  # opening the page changed nothing
    page.click("button")
    expect(page.locator("h1")).to_have_text("You are unsubscribed")
    assert status(root, "ann@example.com") == "unsubscribed"
    assert status(root, "rita@example.com") == "active"

    page.click("text=Subscribe again")
    expect(page.locator("h1")).to_have_text("Get Test Letter by email")
    assert page.url.endswith("/subscribe?list=main")
    assert page.problems == []  # type: ignore[attr-defined]  # no CSP violations, no script errors


def test_a_bad_address_keeps_what_was_typed(page: Page, served):
    root, base = served
    page.goto(f"{base}/subscribe")
    page.fill("#email", "someone@example.com")
    page.fill("#name", "Sam <b>bold</b>")
    # The browser's own check would stop "not-an-address"; post one it lets through.
    page.evaluate("document.querySelector('#email').type = 'text'")
    page.fill("#email", "not an address")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("not a valid email address")
    expect(page.locator("#name")).to_have_value("Sam <b>bold</b>")
    assert page.locator("b").count() == 0
