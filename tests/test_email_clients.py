"""The email HTML uses nothing that Gmail, Outlook, Apple Mail or Yahoo lack, as caniemail's
data has it (tests/clientsupport.py), but for the progressive enhancements in ALLOWED: things
the email uses on purpose and that still leave it reading well where they are missing. Checked
for the repository's sample issues and for an issue with every kind of hard block in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter import build
from newsletter import config as cfg

from . import clientsupport
from .clientsupport import evaluate, used_features
from .conftest import REPO

if not clientsupport.DATA.is_file():
    pytest.skip("caniemail's data is not installed; run `npm ci --prefix tests/caniemail --ignore-scripts`",
                allow_module_level=True)

DATA = clientsupport.load_data()
SLUGS = {feature["slug"] for feature in DATA["data"]}
SAMPLES = sorted(p.name for p in (REPO / "issues").iterdir() if (p / "issue.md").is_file())
STRESS = "2026-12-22-hard-blocks"

# What the email uses on purpose that some listed client does not support ("n"), and why the
# email still reads well there without it. Keep it short: an entry no email needs any more
# fails test_every_allowed_feature_is_still_used_and_still_unsupported.
STYLE_BLOCK = ("the <style> block holds only the narrow-screen and dark-mode @media rules; every "
               "style the email needs is inline, so Gmail's mobile webmail, which drops it, keeps them")
ALLOWED = {
    # Progressive enhancement: dark mode and the narrow-screen tweaks.
    "css-at-media": "narrow-screen tweaks (less padding, smaller headings) and dark mode; the "
                    "600px column already shrinks to fit a phone without them",
    "css-at-media-prefers-color-scheme": "dark-mode colours where the client honours them; elsewhere "
                                         "the light design (or the client's own inversion) stays legible",
    "html-meta-color-scheme": "tells Apple Mail on macOS the email has its own dark colours; the "
                              "others ignore it",
    "html-style": STYLE_BLOCK,
    "css-selector-class": STYLE_BLOCK,
    "css-selector-descendant": STYLE_BLOCK,
    "css-selector-grouping": STYLE_BLOCK,
    "css-selector-type": STYLE_BLOCK,
    "css-border-radius": "rounded corners on the card, images and code; square in Outlook for Windows",
    "css-table-layout": "table-layout:fixed keeps a wide table in a post from widening the whole "
                        "email on phones (it scrolls in its own block); the Outlook apps that "
                        "ignore it are desktop ones, 600px wide",
    # Harmless where ignored.
    "html-doctype": "standards mode where honoured; Outlook for Windows and Yahoo on Android ignore it",
    "html-body": "clients that drop <body> keep the wrapper table, which repeats its colour and width",
    "html-role": "role=presentation on layout tables is an accessibility hint; ignored, nothing breaks",
    # The preheader is hidden several ways at once; every listed client honours at least one.
    "css-display-none": "hides the preheader; Gmail's mobile webmail hides it by max-height:0 and "
                        "overflow:hidden instead",
    "css-max-height": "max-height:0 hides the preheader; Outlook for Windows hides it by mso-hide, "
                      "Windows Mail by display:none",
    "css-opacity": "opacity:0 on the preheader, a further fallback to display:none and max-height",
    "css-overflow": "overflow:hidden with max-height:0 hides the preheader; Outlook hides it by "
                    "mso-hide or display:none",
    # Long URLs and code lines break by both means: where one is missing the other works (but
    # Outlook's Windows Mail app has neither, and shows such a line unbroken).
    "css-word-break": "breaks long URLs and code lines; Yahoo, which ignores it, breaks at the <wbr>s",
    "html-wbr": "break points in long URLs; Gmail iOS and Outlook for Windows break by word-break",
}

STRESS_ISSUE = {
    "issue.md": """\
        ---
        subject: Hard blocks in a narrow inbox
        preheader: A table, a note, some code and a very long link
        ---
        The editor's note: this issue is made of the blocks that are hardest to get right.
        """,
    "01-hard-blocks.md": """\
        ---
        title: Every awkward block at once
        ---
        The forecast meeting ran long again.[^why] Here is where the deals stood on Friday.

        | Stage       | Deals | Value |
        |:------------|------:|:-----:|
        | Discovery   | 14    | 210k  |
        | Negotiation | 3     | 95k   |

        ```python
        def weighted_pipeline(deals):
            return sum(deal.value * deal.stage.weight for deal in deals)
        forecast_for_the_quarter_by_region_and_owner=weighted_pipeline(crm.deals.where(stage="negotiation"))
        ```

        Ask the CRM for `crm.deals.where(owner_region_stage).order_by(close_date_then_value)` first.

        The whole review is at https://example.com/reviews/pipeline/2026/q4/friday-forecast-review-with-every-deal-listed-by-owner-and-stage

        > A buyer told me: "Nobody has ever asked what we need next year."
        >
        > So ask.

        ![The pipeline by stage](pipeline.png)

        [^why]: It always does when nobody owns the agenda.
        """,
}


def write_stress_issue(write) -> None:
    """The stress issue, with its image, in the letter's issues folder."""
    from PIL import Image

    for name, text in STRESS_ISSUE.items():
        path = write(f"issues/{STRESS}/{name}", text)
    Image.new("RGB", (1600, 800), (40, 90, 160)).save(path.parent / "pipeline.png")


@pytest.fixture
def emails(sample_letter: Path, write) -> dict[str, str]:
    """The email HTML (CSS inlined) of each sample issue and of the stress issue, built in a
    copy of the repository's newsletter."""
    write_stress_issue(write)
    config = cfg.load(sample_letter / "newsletter.toml", environ={})
    html = {slug: build.render(config, slug).html for slug in [*SAMPLES, STRESS]}
    for text in ("Negotiation", "weighted_pipeline", "q4/friday", "Nobody has ever asked",
                 "pipeline.png", "owns the agenda"):  # each block made it into the email
        assert text in html[STRESS], text
    return html


def unsupported(html: str) -> tuple[dict[str, list[str]], list[clientsupport.Finding]]:
    """What the email uses, and the findings of no support ("n") for the listed clients."""
    used = used_features(html, SLUGS)
    return used, [finding for finding in evaluate(used, DATA) if finding.support == "n"]


def describe(findings: list[clientsupport.Finding], used: dict[str, list[str]]) -> str:
    """One paragraph per slug: its title, the clients that lack it, where the email uses it."""
    lines = []
    for slug in dict.fromkeys(f.slug for f in findings):
        mine = [f for f in findings if f.slug == slug]
        clients = ", ".join(clientsupport.client_name(DATA, f.client) for f in mine)
        lines.append(f"{slug} ({mine[0].title}): not supported in {clients}")
        lines.append(f"    used at: {'; '.join(place[:90] for place in used[slug][:4])}")
        notes = sorted({f.notes for f in mine if f.notes})
        if notes:
            lines.append(f"    notes: {' / '.join(notes)}")
    return "\n".join(lines)


@pytest.mark.parametrize("slug", [*SAMPLES, STRESS])
def test_email_uses_only_allowed_features_the_clients_lack(emails: dict[str, str], slug: str) -> None:
    used, findings = unsupported(emails[slug])
    offending = [f for f in findings if f.slug not in ALLOWED]
    if offending:
        pytest.fail(f"{slug}: the email uses what some clients do not support (fix it, or add it "
                    f"to ALLOWED with the reason the email reads well without it):\n"
                    f"{describe(offending, used)}", pytrace=False)


def test_every_allowed_feature_is_still_used_and_still_unsupported(emails: dict[str, str]) -> None:
    """ALLOWED names only what a built email uses and some listed client still lacks."""
    needed = {f.slug for html in emails.values() for f in unsupported(html)[1]}
    stale = sorted(set(ALLOWED) - needed)
    assert not stale, f"no built email needs these ALLOWED entries any more; remove them: {stale}"


CANARY = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>canary</title></head>
<body><section><p><a href="#later">Skip ahead</a></p>
<p id="later" style="overflow-wrap:anywhere">https://example.com/a-very-long-address</p></section>
</body></html>
"""


def test_the_checker_finds_what_clients_lack() -> None:
    """The checker can fail: it finds a section, an in-page link and overflow-wrap."""
    used = used_features(CANARY, SLUGS)
    assert {"html-semantics", "html-anchor-links", "css-overflow-wrap"} <= set(used)
    found = {(f.slug, f.client, f.support) for f in evaluate(used, DATA)}
    assert {
        ("html-semantics", "outlook/windows", "n"),
        ("html-semantics", "gmail/ios", "a"),
        ("html-anchor-links", "gmail/ios", "n"),
        ("css-overflow-wrap", "gmail/ios", "n"),
        ("css-overflow-wrap", "outlook/windows", "n"),
    } <= found
    _, findings = unsupported(CANARY)
    assert "<section>" in describe(findings, used) and "Outlook Windows" in describe(findings, used)
