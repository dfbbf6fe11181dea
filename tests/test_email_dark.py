"""The email stays readable when a mail app inverts its colours itself.

Gmail's apps ignore ``prefers-color-scheme`` and turn light colours dark and dark ones light
on their own. Modelled here as Gmail's full inversion (iOS): every text colour and background
colour keeps its hue and saturation and has its lightness turned over (L becomes 1 - L);
images are left as they are. In headless Chromium, each piece of text the reader sees is
measured for its colour and the background behind it, and must keep WCAG contrast (4.5:1, or
3:1 for large text) in the light email and after the inversion. Images are the other half of
the risk: dark art on a transparent background is a check warning (tests/test_images.py).
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import pytest

from newsletter import config as cfg
from newsletter.build import build

from .conftest import REPO, needs_browser

pytestmark = needs_browser

SAMPLES = sorted(p.name for p in (REPO / "issues").iterdir() if (p / "issue.md").is_file())

# Every element with text of its own: its colour, the first opaque background behind it, and
# whether the text is large (WCAG: 24 px, or 18.66 px bold).
TEXT_JS = """() => {
  const rgba = value => (value.match(/[\\d.]+/g) || []).map(Number);
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (!own || box.width === 0 || box.height === 0 || style.visibility === 'hidden'
        || Number(style.opacity) === 0) continue;
    let bg = null;
    for (let up = el; up && !bg; up = up.parentElement) {
      const c = rgba(getComputedStyle(up).backgroundColor);
      if (c.length === 3 || c[3] > 0.5) bg = c.slice(0, 3);
    }
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    out.push({tag: el.tagName.toLowerCase(), cls: el.className, text: el.textContent.trim().slice(0, 40),
              fg: rgba(style.color).slice(0, 3), bg: bg || [255, 255, 255],
              large: size >= 24 || (bold && size >= 18.66)});
  }
  return out;
}"""


def luminance(rgb: list[float]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: list[float], b: list[float]) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def inverted(rgb: list[float]) -> list[float]:
    """The colour as a full inversion shows it: same hue and saturation, lightness turned over."""
    h, lightness, s = colorsys.rgb_to_hls(*(c / 255 for c in rgb))
    return [round(c * 255) for c in colorsys.hls_to_rgb(h, 1 - lightness, s)]


def test_the_model_turns_light_into_dark():
    assert inverted([255, 255, 255]) == [0, 0, 0] and inverted([0, 0, 0]) == [255, 255, 255]
    assert contrast([119, 119, 119], [255, 255, 255]) == pytest.approx(4.48, abs=0.01)
    # mid-grey on mid-grey is unreadable both ways: the check can fail
    assert contrast(inverted([150, 150, 150]), inverted([110, 110, 110])) < 3


@pytest.mark.parametrize("slug", SAMPLES)
def test_text_keeps_its_contrast_when_the_app_inverts_colours(browser, sample_letter: Path, tmp_path: Path,
                                                             slug: str):
    config = cfg.load(sample_letter / "newsletter.toml", environ={})
    preview = build(config, slug, tmp_path / "dist").folder / "preview.html"
    context = browser.new_context(viewport={"width": 600, "height": 800}, color_scheme="light")
    page = context.new_page()
    page.goto(preview.as_uri(), wait_until="load")
    pieces = page.evaluate(TEXT_JS)
    context.close()
    assert len(pieces) > 10  # the masthead, the posts, the sign-off and the footer were measured
    poor = []
    for piece in pieces:
        need = 3.0 if piece["large"] else 4.5
        light = contrast(piece["fg"], piece["bg"])
        dark = contrast(inverted(piece["fg"]), inverted(piece["bg"]))
        if light < need or dark < need:
            poor.append(f"<{piece['tag']} class={piece['cls']!r}> {piece['text']!r}: "
                        f"{light:.1f}:1 light, {dark:.1f}:1 inverted (needs {need}:1)")
    assert not poor, f"{slug}: text hard to read:\n  " + "\n  ".join(poor)
