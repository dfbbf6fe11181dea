"""Pictures of an issue's email as readers see it: phone, desktop and dark mode, taken with
headless Chromium through Playwright. The email is served by the preview app on a private
port so its images load exactly as in the live preview."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import NewsletterError
from .preview import (
    DESKTOP_WIDTH,
    PHONE_WIDTH,
    PreviewApp,
    PreviewServer,
    Workspace,
    preview_prefix,
    resolve_slug,
)

CHROMIUM_ENV = "NEWSLETTER_CHROMIUM"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# No sandbox: root in a container cannot use it. The rest keeps a headless run offline.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
INSTALL_CHROMIUM = "install it with `apt-get install chromium`"


class BrowserMissing(NewsletterError):
    """Chromium or the playwright package is not installed."""


@dataclass(frozen=True, slots=True)
class Shot:
    name: str
    width: int
    color_scheme: str  # "light" or "dark": the emulated prefers-color-scheme


SHOTS = (
    Shot("phone.png", PHONE_WIDTH, "light"),
    Shot("desktop.png", DESKTOP_WIDTH, "light"),
    Shot("dark.png", PHONE_WIDTH, "dark"),
)


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium to drive: ``explicit``, $NEWSLETTER_CHROMIUM, or Debian's chromium."""
    wanted = explicit or os.environ.get(CHROMIUM_ENV)
    if wanted:
        if Path(wanted).is_file() and os.access(wanted, os.X_OK):
            return wanted
        raise BrowserMissing(f"Chromium not found at {wanted} ({CHROMIUM_ENV}); {INSTALL_CHROMIUM}")
    for candidate in CHROMIUM_PATHS:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    raise BrowserMissing(f"Chromium is not installed; {INSTALL_CHROMIUM}")


def _playwright():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        raise BrowserMissing(
            "screenshots need the playwright package; install it with `pip install playwright` "
            "(it drives the system Chromium; no browser download is needed)"
        ) from None
    return sync_playwright, Error


def screenshots(config: Config, issue: str | None, out_dir: Path, *,
                chromium: str | None = None) -> list[Path]:
    """Write phone.png, desktop.png and dark.png of ``issue``'s email into ``out_dir``.

    Each image is the whole email at the frame's width, one device pixel per CSS pixel."""
    sync_playwright, PlaywrightError = _playwright()
    executable = find_chromium(chromium)
    slug = resolve_slug(config, issue)
    if slug is None:
        raise NewsletterError(f"{config.issues_dir}: there are no issues to photograph yet")
    app = PreviewApp(Workspace(config.path))
    entry = app.live.entry(slug)
    if entry is None or entry.build is None or entry.error:
        raise NewsletterError(entry.error if entry and entry.error else f"no issue {slug!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    server = PreviewServer(app, port=0)
    server.start()
    written = []
    try:
        url = server.url.rstrip("/") + preview_prefix(slug) + "email.html"
        with sync_playwright() as playwright:
            try:
                browser = playwright.chromium.launch(executable_path=executable,
                                                     args=list(CHROMIUM_ARGS))
            except PlaywrightError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BrowserMissing(f"Chromium at {executable} did not start: {first}") from None
            try:
                for shot in SHOTS:
                    page = browser.new_page(viewport={"width": shot.width, "height": 900},
                                            device_scale_factor=1, color_scheme=shot.color_scheme)
                    page.goto(url, wait_until="load")
                    target = out_dir / shot.name
                    partial = target.with_name(target.name + ".tmp")
                    page.screenshot(path=str(partial), full_page=True, type="png")
                    partial.replace(target)
                    written.append(target)
                    page.close()
            finally:
                browser.close()
    finally:
        server.stop()
    return written
