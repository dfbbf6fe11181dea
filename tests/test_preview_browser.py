"""The preview in headless Chromium (Debian's chromium, driven by Playwright), against the
real `newsletter preview` command serving on 127.0.0.1."""

from __future__ import annotations

import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from newsletter.web.preview import PreviewApp, PreviewServer, Workspace

from .conftest import BROWSER_MISSING, REPO, needs_browser
from .test_preview import QUOTA, QUOTA_POST, RecordingSender, edit

if TYPE_CHECKING or not BROWSER_MISSING:
    from playwright.sync_api import Browser, Page, expect

pytestmark = needs_browser

SAMPLE_ISSUES = sorted(p.name for p in (REPO / "issues").iterdir() if (p / "issue.md").is_file())
WAIT_MS = 5_000  # "within about a second", with room for a slow machine


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1700, "height": 1000})
    opened = context.new_page()
    yield opened
    context.close()


def copy_samples(folder: Path) -> Path:
    shutil.copy(REPO / "newsletter.toml", folder / "newsletter.toml")
    shutil.copytree(REPO / "issues", folder / "issues")
    return folder


def start_preview(folder: Path) -> tuple[subprocess.Popen[str], str]:
    """`newsletter preview --no-open --port 0` in ``folder``; returns it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "preview", "--no-open", "--port", "0"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline()
    match = re.match(r"previewing at (http://127\.0\.0\.1:\d+)/", line)
    if not match:
        process.kill()
        pytest.fail(f"the preview did not start: {line}{process.stderr.read()}")
    return process, match[1]


def stop_preview(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def samples_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One preview process over an untouched copy of the sample issues."""
    process, base = start_preview(copy_samples(tmp_path_factory.mktemp("samples")))
    yield base
    stop_preview(process)


@pytest.fixture
def live_server(sample_letter: Path) -> Iterator[str]:
    """A preview process over this test's own copy, free to edit."""
    process, base = start_preview(sample_letter)
    yield base
    stop_preview(process)


def open_issue(page: Page, base: str, slug: str) -> None:
    page.goto(f"{base}/issue/{slug}/")
    expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
    page.evaluate("window.__notReloaded = true")


def frame(page: Page, name: str):
    return page.frame_locator(f'iframe[data-frame="{name}"]')


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"


def png_info(path: Path) -> tuple[int, int, tuple[int, ...]]:
    """Width, height and top-left pixel of a PNG (8-bit RGB or RGBA), from its bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    chunks, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            chunks.append(data[offset + 8:offset + 8 + length])
        offset += 12 + length
    raw = zlib.decompressobj().decompress(b"".join(chunks), 16)
    # The first pixel of the first row is stored as is under every PNG filter type.
    channels = 3 if colour == 2 else 4
    return width, height, tuple(raw[1:1 + channels])


# ---------------------------------------------------------------------------------------------


def test_preview_loads_with_every_view(page: Page, samples_server: str) -> None:
    open_issue(page, samples_server, QUOTA)
    expect(page.locator(".inbox-from")).to_have_text("Martin Hale")
    expect(page.locator(".inbox-subject")).to_have_text("The quota is not the goal")
    expect(page.locator(".inbox-snippet")).to_contain_text("A reader in Bergen pushed back")
    for name in ("phone", "dark", "desktop"):
        expect(frame(page, name).locator(".post-title").first).to_have_text("The quota is not the goal")
    expect(page.locator("#text-part")).to_contain_text("THE QUOTA IS NOT THE GOAL")
    expect(page.locator("#headers")).to_contain_text("List-Unsubscribe=One-Click")
    expect(page.locator("#checks")).to_contain_text("All checks passed")
    phone = page.frame(url=re.compile(r"/frame/light\.html"))
    images = phone.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert images == [[f"/issue/{QUOTA}/web/quota-chart.png", True, 600]]


def test_frames_have_the_phone_and_desktop_widths(page: Page, samples_server: str) -> None:
    open_issue(page, samples_server, QUOTA)
    widths = {
        f.url.split("/frame/")[1].split("?")[0] + ":" + str(f.evaluate("window.innerWidth"))
        for f in page.frames if "/frame/" in f.url
    }
    assert widths == {"light.html:375", "dark.html:375", "light.html:800"}


def test_dark_view_matches_a_dark_mode_client(browser: Browser, page: Page,
                                              samples_server: str) -> None:
    open_issue(page, samples_server, QUOTA)
    style = "getComputedStyle(document.querySelector('.container')).backgroundColor"
    dark_frame = page.frame(url=re.compile(r"/frame/dark\.html")).evaluate(style)
    light_frame = page.frame(url=re.compile(r"/frame/light\.html")).evaluate(style)
    context = browser.new_context(color_scheme="dark", viewport={"width": 375, "height": 800})
    try:
        client = context.new_page()
        client.goto(f"{samples_server}/issue/{QUOTA}/email.html")
        emulated = client.evaluate(style)
    finally:
        context.close()
    assert dark_frame == emulated == "rgb(31, 34, 38)"
    assert light_frame == "rgb(255, 255, 255)"


@pytest.mark.parametrize("width", [320, 375])
@pytest.mark.parametrize("slug", SAMPLE_ISSUES)
def test_email_has_no_horizontal_overflow_on_phones(browser: Browser, samples_server: str,
                                                    slug: str, width: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": 800})
    try:
        email = context.new_page()
        email.goto(f"{samples_server}/issue/{slug}/email.html", wait_until="load")
        scroll, client = email.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
    finally:
        context.close()
    assert client == width
    assert scroll <= client, f"{slug} is {scroll} px wide in a {width} px viewport"


@pytest.mark.parametrize("slug", SAMPLE_ISSUES)
def test_phone_frame_has_no_horizontal_overflow(page: Page, samples_server: str, slug: str) -> None:
    open_issue(page, samples_server, slug)
    phone = page.frame(url=re.compile(r"/frame/light\.html"))
    phone.wait_for_load_state("load")
    scroll, client = phone.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert client == 375 and scroll <= client


def test_editing_a_post_updates_the_open_page_without_reload(page: Page, sample_letter: Path,
                                                             live_server: str) -> None:
    open_issue(page, live_server, QUOTA)
    expect(frame(page, "phone").locator("body")).to_contain_text("Every January a sales manager")
    edit(sample_letter / QUOTA_POST, "Every January a sales manager", "Every single January a manager")
    for name in ("phone", "dark", "desktop"):
        expect(frame(page, name).locator("body")).to_contain_text(
            "Every single January a manager", timeout=WAIT_MS
        )
    expect(page.locator("#text-part")).to_contain_text("Every single January", timeout=WAIT_MS)
    assert_not_reloaded(page)


def test_broken_front_matter_shows_the_error_and_fixing_it_restores_the_preview(
    page: Page, sample_letter: Path, live_server: str
) -> None:
    open_issue(page, live_server, QUOTA)
    issue_md = sample_letter / "issues" / QUOTA / "issue.md"
    good = issue_md.read_text(encoding="utf-8")
    issue_md.write_text(good.replace('subject: "The quota', "subject: [The quota"), encoding="utf-8")
    error = page.locator("#panel .error")
    expect(error).to_contain_text(f"issues/{QUOTA}/issue.md line 2: front matter is not valid YAML",
                                  timeout=WAIT_MS)
    issue_md.write_text(good.replace("The quota is not the goal", "Quotas are not goals"),
                        encoding="utf-8")
    expect(error).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator(".inbox-subject")).to_have_text("Quotas are not goals")
    expect(frame(page, "phone").locator("body")).to_contain_text("Every January")
    assert_not_reloaded(page)


def test_index_updates_when_an_issue_is_added(page: Page, sample_letter: Path,
                                              live_server: str) -> None:
    page.goto(f"{live_server}/")
    expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
    page.evaluate("window.__notReloaded = true")
    expect(page.locator(".issue-row")).to_have_count(2)
    folder = sample_letter / "issues" / "2026-12-15-ask-for-the-order"
    folder.mkdir()
    (folder / "issue.md").write_text('---\nsubject: "Ask for the order"\nsend_at: 2026-12-15 07:30\n---\n')
    (folder / "01-post.md").write_text("---\ntitle: Ask\n---\nAsk.\n")
    expect(page.locator(".issue-row")).to_have_count(3, timeout=WAIT_MS)
    expect(page.locator(".issue-row").first).to_contain_text("scheduled for Tue 15 Dec 2026, 07:30 CET")
    assert_not_reloaded(page)


def test_send_test_button_shows_the_result(page: Page, sample_letter: Path) -> None:
    sender = RecordingSender()
    server = PreviewServer(PreviewApp(Workspace(sample_letter / "newsletter.toml"), send_test=sender),
                           port=0)
    server.start()
    try:
        open_issue(page, server.url.rstrip("/"), QUOTA)
        page.get_by_role("button", name="Send test").click()
        expect(page.locator("#send-result")).to_have_text(
            "sent 'The quota is not the goal' to martin@letter.example.com", timeout=WAIT_MS
        )
        assert [r.slug for r in sender.calls] == [QUOTA]
        assert_not_reloaded(page)
    finally:
        server.stop()


def test_screenshot_command_writes_pngs_of_the_right_width(sample_letter: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "preview", QUOTA, "--screenshot", "shots"],
        cwd=sample_letter, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "wrote shots/phone.png", "wrote shots/desktop.png", "wrote shots/dark.png"
    ]
    shots = sample_letter / "shots"
    phone, desktop, dark = (png_info(shots / name) for name in ("phone.png", "desktop.png", "dark.png"))
    assert phone[0] == 375 and dark[0] == 375 and desktop[0] == 800
    for _, height, _ in (phone, desktop, dark):
        assert height > 1000  # the whole email, not one screenful
    assert sum(phone[2][:3]) > 600  # the light email starts on a light background
    assert sum(dark[2][:3]) < 150  # and in dark mode on a dark one
    assert sorted(p.name for p in shots.iterdir()) == ["dark.png", "desktop.png", "phone.png"]
