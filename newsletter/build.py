"""Write a rendered issue to ``dist/<slug>/``: the email, its text part, a sample message and
the web version with its images. The folder is written beside the old one and swapped in at
the end, so a failed build never leaves a half-written folder behind."""

from __future__ import annotations

import email
import email.policy
import shutil
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from .checks import Finding, run_checks
from .config import Config
from .content import load_named
from .message import MessageTemplate, Recipient, field_values, message_id, unsubscribe_url
from .render import Rendered, render_issue

SAMPLE_RECIPIENT = Recipient(email="reader@example.com", name="Sample Reader")


@dataclass(frozen=True, slots=True)
class BuildResult:
    rendered: Rendered
    findings: list[Finding]
    folder: Path
    files: list[Path]


def render(config: Config, name: str | None) -> Rendered:
    return render_issue(config, load_named(config, name))


def check(config: Config, name: str | None) -> tuple[Rendered, list[Finding]]:
    rendered = render(config, name)
    return rendered, run_checks(config, rendered)


def sample_unsubscribe_url(config: Config, list_name: str) -> str:
    """The unsubscribe link in the sample message: signed when NEWSLETTER_SECRET is set."""
    from .tokens import sign

    secret = config.secret("NEWSLETTER_SECRET")
    token = sign(secret, "unsubscribe", {"s": 0, "l": list_name}) if secret else "sample"
    return unsubscribe_url(config, token)


@dataclass(frozen=True, slots=True)
class Sample:
    """The issue as the sample reader receives it: the whole message, and the HTML with the
    reader's fields filled in and images taken from ``web_prefix`` (a local copy) instead of
    the published web address, which does not exist until the issue is archived."""

    message: EmailMessage  # parsed from ``raw``, for showing headers and parts
    raw: bytes  # exactly what would be sent
    html: str
    unsubscribe_url: str


def sample(
    config: Config,
    rendered: Rendered,
    web_prefix: str,
    *,
    template: MessageTemplate | None = None,
) -> Sample:
    """The sample reader's message and HTML; ``web_prefix`` stands in for the web version."""
    list_name = rendered.issue.list_name or config.newsletter.default_list
    unsubscribe = sample_unsubscribe_url(config, list_name)
    template = template or MessageTemplate(config, rendered, list_name)
    raw = template.bytes_for(SAMPLE_RECIPIENT, unsubscribe, message_id(config))
    html = template.personalizer.html(
        field_values(SAMPLE_RECIPIENT, unsubscribe, f"{web_prefix}index.html")
    ).replace(rendered.web_url, web_prefix)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return Sample(message=message, raw=raw, html=html, unsubscribe_url=unsubscribe)


def build(config: Config, name: str | None, out_dir: Path | None = None) -> BuildResult:
    """Render the issue and write ``dist/<slug>/``; the checks are returned, not raised."""
    rendered, findings = check(config, name)
    dist = out_dir or config.dist_dir
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / rendered.slug
    staging = Path(tempfile.mkdtemp(prefix=f".{rendered.slug}.", dir=dist))
    try:
        # The email as the sample reader sees it, with images from the local web/ folder.
        proof = sample(config, rendered, "web/")
        (staging / "preview.html").write_text(proof.html, encoding="utf-8")
        (staging / "email.html").write_text(rendered.html, encoding="utf-8")
        (staging / "email.txt").write_text(rendered.text, encoding="utf-8")
        (staging / "message.eml").write_bytes(proof.raw)
        web = staging / "web"
        web.mkdir()
        (web / "index.html").write_text(rendered.web_html, encoding="utf-8")
        for asset in rendered.assets:
            destination = web / asset.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(asset.path, destination)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{rendered.slug}.old.", dir=dist))
            target.rename(old / "x")
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [
        target / "email.html",
        target / "email.txt",
        target / "message.eml",
        target / "preview.html",
        target / "web" / "index.html",
        *(target / "web" / asset.name for asset in rendered.assets),
    ]
    return BuildResult(rendered=rendered, findings=findings, folder=target, files=files)
