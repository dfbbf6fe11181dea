"""The email never scrolls sideways: at 320, 375 and 600 px wide, the sample reader's copy
(``preview.html`` from a build, images loaded from its ``web/`` folder) is no wider than the
viewport, for the repository's sample issues and for an issue full of wide content (a big
image, long URLs, a wide table, long code lines). Each case saves a full-page screenshot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from newsletter import config as cfg
from newsletter.build import build

from .conftest import BROWSER_MISSING, REPO, needs_browser

if TYPE_CHECKING or not BROWSER_MISSING:
    from playwright.sync_api import Browser, Page

pytestmark = needs_browser

SAMPLES = sorted(p.name for p in (REPO / "issues").iterdir() if (p / "issue.md").is_file())
STRESS = "2026-12-15-wide-things"
WIDTHS = (320, 375, 600)

LONG_URL = "https://example.com/" + ("pipeline-review-notes/" * 7)[:150]  # no spaces
LONG_CODE_LINE = ("forecast+=stage_weight*deal_value;" * 6)[:200]
INLINE_CODE = ("crm.deals.where(owner_region_stage)." * 3)[:80]
ROW = ["Qualification", "Demonstration", "Implementation", "Stakeholders", "Recommendation",
       "Accountability", "Responsibilities"]  # 12 to 16 letters, no spaces
TABLE = "\n".join([
    "| Pipeline stage | Owner | Deal value | Next step | Risk | Close date | Notes |",
    "|" + "---|" * 7,
    *("| " + " | ".join(ROW[i:] + ROW[:i]) + " |" for i in range(3)),
])
POST = f"""\
---
title: "Wide things in a narrow inbox"
---
Good sellers keep things simple. So should a newsletter.

![A pipeline chart, wider than any phone](pipeline.png)

The full notes from our review live here: {LONG_URL}

You can also [read them at {LONG_URL}]({LONG_URL}).

Here is where every deal stood on Friday.

{TABLE}

Our forecast is one line of code. It is a long line.[^1]

```
{LONG_CODE_LINE}
if deal.stage == "negotiation": call_the_buyer_today()
```

Ask the CRM for this: `{INLINE_CODE}`. Then pick up the phone.

[^1]: Nobody reads the forecast. Everybody reads the calendar.
"""

OVERFLOW_JS = """() => {
  // Elements reaching past the right edge that cannot shrink to fit (their narrowest width,
  // measured at width 0, is still too wide), innermost first: what widens the email.
  const limit = document.documentElement.clientWidth;
  const narrowest = el => {
    if (el.tagName === 'IMG' && getComputedStyle(el).maxWidth === 'none') return el.width;
    const style = el.getAttribute('style');
    const inline = getComputedStyle(el).display === 'inline';
    el.style.cssText += `;width:0 !important;min-width:0 !important${inline ? ';display:inline-block' : ''}`;
    const width = Math.max(el.scrollWidth, el.getBoundingClientRect().width);
    style === null ? el.removeAttribute('style') : el.setAttribute('style', style);
    return Math.round(width);
  };
  const wide = [...document.querySelectorAll('body *')]
    .filter(el => el.getBoundingClientRect().right > limit)
    .filter(el => !getComputedStyle(el).display.match(/^table-(row|cell|.*-group)/))
    .map(el => ({el, min: narrowest(el)})).filter(({min}) => min > limit);
  return wide.filter(({el}) => !wide.some(other => other.el !== el && el.contains(other.el)))
    .sort((a, b) => b.min - a.min).slice(0, 8)
    .map(({el, min}) => `<${el.tagName.toLowerCase()}${el.className ? ' class=' + el.className : ''}>`
      + ` right=${Math.round(el.getBoundingClientRect().right)} narrowest=${min}`
      + ` "${(el.textContent || el.alt || '').replace(/\\s+/g, ' ').trim().slice(0, 60)}"`);
}"""


def write_stress_issue(letter: Path, write) -> None:
    from PIL import Image

    folder = f"issues/{STRESS}"
    write(f"{folder}/issue.md", "---\nsubject: Wide things\npreheader: Does it fit?\n---\n")
    write(f"{folder}/01-wide-things.md", POST)
    Image.new("RGB", (2400, 1200), (40, 90, 160)).save(letter / folder / "pipeline.png")


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    width = request.node.callspec.params["width"]
    context = browser.new_context(viewport={"width": width, "height": 800})
    yield context.new_page()
    context.close()


@pytest.fixture
def preview_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The built ``preview.html`` of the parametrized email."""
    slug = request.node.callspec.params["slug"]
    if slug == STRESS:
        write_stress_issue(request.getfixturevalue("letter"), request.getfixturevalue("write"))
    else:
        request.getfixturevalue("sample_letter")
    config = cfg.load(tmp_path / "newsletter.toml", environ={})
    return build(config, slug, tmp_path / "dist").folder / "preview.html"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("slug", [*SAMPLES, STRESS])
def test_email_has_no_horizontal_scroll(page: Page, preview_file: Path, tmp_path: Path,
                                        slug: str, width: int) -> None:
    page.goto(preview_file.as_uri(), wait_until="load")
    broken = page.evaluate("() => [...document.images].filter(i => !i.naturalWidth).map(i => i.src)")
    assert not broken, f"{slug}: images did not load: {broken}"
    shot = tmp_path / f"{slug}-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    sizes = page.evaluate("""() => ({
      page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
      body: [document.body.scrollWidth, document.body.clientWidth]})""")
    problems = [f"{name} scrollWidth {scroll} > clientWidth {client}"
                for name, (scroll, client) in sizes.items() if scroll > client]
    if problems:
        widest = "\n  ".join(page.evaluate(OVERFLOW_JS)) or "(none found)"
        pytest.fail(f"{slug} at {width}px scrolls sideways: {'; '.join(problems)}\n"
                    f"widest elements:\n  {widest}\nscreenshot: {shot}", pytrace=False)
