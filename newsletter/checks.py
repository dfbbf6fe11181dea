"""Pre-flight checks on a rendered issue: size, links, images, compliance.

Errors stop a send (Gmail clipping, a missing unsubscribe link or postal address, images
without alt text, links a mail client cannot follow, a missing or unreadable image, and the placeholders
`newsletter init` and `newsletter new` write: stub text, "Your Name", addresses on domains
reserved for examples); warnings are shown and do not. Each finding names the file and, where
it can, the line.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

from . import images
from .config import Config
from .content import Issue
from .errors import ChecksFailed
from .render import PLACEHOLDERS, SAFE_SCHEMES, LinkRef, Rendered
from .scaffold import PLACEHOLDER_NAME, STUB_PREHEADER, STUB_SENTENCES
from .wording import human_size

GMAIL_CLIP_BYTES = 102 * 1024
STYLE_BLOCK_BYTES = 16 * 1024
SUBJECT_WARN_CHARS = 80
# Names reserved for examples and tests (RFC 2606, RFC 6761): nobody receives mail there and
# no site answers, so a sender or site_url on one means every reply and unsubscribe is lost.
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
EXAMPLE_TLDS = ("example", "test", "invalid", "localhost")


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # "error" or "warning"
    where: str  # a file, with " line N" when known
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _rel(config: Config, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(config.root))
    except ValueError:
        return str(path)


class _Scan(HTMLParser):
    """Collects hrefs, images, ids, <head> style blocks and the text a reader sees (with
    character references decoded: ``&amp;`` is ``&``) of the final HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.images: list[tuple[str, str | None]] = []
        self.ids: set[str] = set()
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in_style = False
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "head":
            self._in_head = True
        elif tag == "style":
            self._in_style = True
            self.styles.append("")
        elif tag == "a" and values.get("href") is not None:
            self.hrefs.append(str(values["href"]))
        elif tag == "img":
            self.images.append((str(values.get("src") or ""), values.get("alt")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style and self.styles:
            self.styles[-1] += data
        elif not self._in_head:
            self.text.append(data)

    @property
    def visible_text(self) -> str:
        return " ".join(self.text)


def _link_problem(url: str, ids: set[str]) -> str | None:
    """Why a mail client cannot follow ``url``, or None when it can."""
    if url in PLACEHOLDERS.values():
        return None
    if url.startswith("#"):
        return None if url[1:] in ids else f"link {url!r} points to no anchor in this email"
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        return f"link {url!r} is not absolute; write the full address, e.g. https://..."
    if scheme not in SAFE_SCHEMES:
        return f"link {url!r} uses {scheme}:, which mail clients block; use https:// or mailto:"
    if scheme in ("http", "https") and not urlsplit(url).netloc:
        return f"link {url!r} has no host name"
    return None


def example_domain(host: str) -> str | None:
    """The reserved name ``host`` is or lies under (``example.com``, ``.test``,
    ``localhost``), or None for a host someone can own."""
    name = host.strip().rstrip(".").lower()
    for domain in EXAMPLE_DOMAINS:
        if name == domain or name.endswith("." + domain):
            return domain
    if name == "localhost":
        return name
    tld = name.rpartition(".")[2]
    return f".{tld}" if tld in EXAMPLE_TLDS else None


def _reserved(name: str) -> str:
    if name == "localhost":
        return "localhost, which is only ever this computer"
    if name.startswith("."):
        return f"{name}, a top-level domain reserved for tests and examples"
    return f"{name}, a domain reserved for examples"


def _same(text: str | None, placeholder: str) -> bool:
    """``text`` is ``placeholder``, give or take case and spaces."""
    return " ".join((text or "").split()).casefold() == " ".join(placeholder.split()).casefold()


def _key_line(path: Path, key: str) -> int | None:
    """The line of ``key:`` in the front matter of ``path``, or None."""
    try:
        lines = path.read_text(encoding="utf-8").removeprefix("\ufeff").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0].strip() != "---":
        return None
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() in ("---", "..."):
            return None
        if line.split(":", 1)[0].strip() == key and ":" in line:
            return number
    return None


def _at(config: Config, path: Path, line: int | None) -> str:
    return _rel(config, path) + (f" line {line}" if line else "")


def _stub_line(body: str, first_line: int) -> tuple[str, int] | None:
    """The first sentence of `newsletter new`'s stub still in ``body``, with its line."""
    flat = " ".join(body.split())
    for sentence in STUB_SENTENCES:
        if sentence not in flat:
            continue
        opening = " ".join(sentence.split()[:3])
        for offset, line in enumerate(body.splitlines()):
            if opening in " ".join(line.split()):
                return sentence, first_line + offset
        return sentence, first_line
    return None


def placeholder_findings(config: Config, issue: Issue) -> list[Finding]:
    """Errors for what `newsletter init` and `newsletter new` wrote and the writer has not
    replaced yet: it would reach every reader as it is."""
    findings: list[Finding] = []
    n = config.newsletter
    toml = _rel(config, config.path)

    def error(where: str, message: str) -> None:
        findings.append(Finding("error", where, message))

    if _same(n.sender.name, PLACEHOLDER_NAME):
        error(toml, f"[newsletter] from: the sender name {n.sender.name!r} is the placeholder "
                    "`newsletter init` wrote; write the name readers know you by")
    if _same(n.author, PLACEHOLDER_NAME):
        error(toml, f"[newsletter] author: {n.author!r} is the placeholder `newsletter init` "
                    "wrote; write your name (without author, the from name is used)")
    if not n.allow_example_domains:
        addresses = [("from", n.sender.email, "no mail is delivered there; write the address you "
                                              "send from, on a domain of your own (and in "
                                              "reply_to, where it is set)")]
        if n.reply_to != n.sender.email:  # else it is the from address, reported already
            addresses.append(("reply_to", n.reply_to, "replies would be lost; write the address "
                                                      "that should get them, or remove the line "
                                                      "to use the from address"))
        if n.unsubscribe_mailto:
            addresses.append(("unsubscribe_mailto", n.unsubscribe_mailto,
                              "unsubscribe requests by email would be lost; write an address "
                              "you read, or remove the line"))
        for key, address, why in addresses:
            reserved = example_domain(address.rpartition("@")[2])
            if reserved:
                error(toml, f"[newsletter] {key}: {address!r} is on {_reserved(reserved)}, so {why}")
        reserved = example_domain(urlsplit(n.site_url).hostname or "")
        if reserved:
            error(toml, f"[newsletter] site_url: {n.site_url!r} is on {_reserved(reserved)}, so "
                        "every unsubscribe and web link in the email would be dead; write the "
                        "address where `newsletter serve` or your archive is reachable")

    if _same(issue.preheader, STUB_PREHEADER):
        error(_at(config, issue.issue_file, _key_line(issue.issue_file, "preheader")),
              "preheader is still the placeholder `newsletter new` wrote; write the line the "
              "inbox shows after the subject")
    stub = _stub_line(issue.note, issue.note_line)
    if stub:
        error(_at(config, issue.issue_file, stub[1]),
              f"{stub[0]!r} is the stub text `newsletter new` wrote; write your own note here")
    for post in issue.posts:
        if _same(post.author, PLACEHOLDER_NAME):
            line = _key_line(post.path, "author")
            if line is not None:  # else it is [newsletter] author, reported above
                error(_at(config, post.path, line),
                      f"author: {post.author!r} is the placeholder `newsletter new` wrote; "
                      "write your name, or remove the line to use [newsletter] author")
        stub = _stub_line(post.body, post.body_line)
        if stub:
            error(_at(config, post.path, stub[1]),
                  f"{stub[0]!r} is the stub text `newsletter new` wrote; write the post here")
    return findings


def run_checks(config: Config, rendered: Rendered) -> list[Finding]:
    """Every finding for ``rendered``, errors first."""
    findings: list[Finding] = []
    issue = rendered.issue
    issue_file = _rel(config, issue.issue_file)
    templates = "templates/email.html"

    def error(where: str, message: str) -> None:
        findings.append(Finding("error", where, message))

    def warning(where: str, message: str) -> None:
        findings.append(Finding("warning", where, message))

    # Placeholders from `newsletter init` and `newsletter new`.
    findings.extend(placeholder_findings(config, issue))

    # Size: Gmail clips the HTML body past about 102 KB and drops a <style> over 16 KB.
    size = len(rendered.html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        error(
            issue_file,
            f"the email HTML is {size / 1024:.0f} KB; Gmail clips messages over 102 KB, "
            "so shorten the issue or move a post to next week",
        )
    scan = _Scan()
    scan.feed(rendered.html)
    for block in scan.styles:
        block_size = len(block.encode("utf-8"))
        if block_size > STYLE_BLOCK_BYTES:
            error(
                templates,
                f"a <style> block is {block_size / 1024:.1f} KB; Gmail ignores blocks over 16 KB, "
                "so trim the CSS kept for media queries",
            )

    # Subject and preheader.
    if not rendered.subject.strip():
        error(issue_file, "subject is missing; add `subject: ...` to the front matter")
    elif len(rendered.subject) > SUBJECT_WARN_CHARS:
        warning(
            issue_file,
            f"subject is {len(rendered.subject)} characters; inboxes cut it off past about 80",
        )
    if not rendered.preheader.strip():
        warning(
            issue_file,
            "preheader is missing; add `preheader: ...` so the inbox snippet is not the masthead",
        )

    # Compliance: a working unsubscribe link and the postal address in both parts.
    unsubscribe = PLACEHOLDERS["unsubscribe_url"]
    if unsubscribe not in scan.hrefs:
        error(templates, "no unsubscribe link; keep <a href=\"{{ unsubscribe_url }}\"> in the footer")
    if unsubscribe not in rendered.text:
        error("templates/email.txt", "no unsubscribe URL; keep {{ unsubscribe_url }} in the footer")
    postal = config.newsletter.postal_address
    if not postal:
        error(
            _rel(config, config.path),
            "[newsletter] postal_address is empty; the law (CAN-SPAM) requires a postal address "
            "in every message",
        )
    else:
        # Compared as the reader sees it: in the HTML "Hale & Sons" is written
        # "Hale &amp; Sons" (and non-ASCII letters as character references).
        def words(text: str) -> str:
            return " ".join(text.split())

        shown = words(postal)
        if shown not in words(scan.visible_text) or shown not in words(rendered.text):
            error(templates, "the postal address is missing; keep {{ postal_address }} in the footer")

    # Links and images written in the posts, with their file and line.
    seen_urls: set[str] = set()
    for ref in rendered.links:
        seen_urls.add(ref.url)
        _check_ref(config, ref, scan.ids, error)
    _image_findings(config, rendered, error, warning)

    # Everything else in the final HTML (templates, raw HTML in posts).
    web_prefix = rendered.web_url
    for href in scan.hrefs:
        if href in seen_urls or href.startswith(web_prefix):
            continue
        problem = _link_problem(href, scan.ids)
        if problem:
            error(templates, problem)
    for src, alt in scan.images:
        if src in seen_urls or src.startswith(web_prefix):
            continue
        if alt is None:
            error(templates, f"image {src!r} has no alt attribute; add alt=\"...\"")
        problem = _link_problem(src, scan.ids)
        if problem:
            error(templates, problem.replace("link", "image", 1))

    # Plain text: a text part with no words is a spam signal and useless to text readers.
    if not issue.note.strip() and not any(post.body.strip() for post in issue.posts):
        warning(issue_file, "the posts have no text; the plain-text part will be empty")

    return sorted(findings, key=lambda f: f.level != "error")


def _check_ref(config: Config, ref: LinkRef, ids: set[str], error) -> None:
    where = _at(config, ref.file, ref.line)
    if ref.kind == "image":
        if ref.html:
            if ref.alt is None:
                error(where, f"image {ref.url!r} has no alt attribute; add alt=\"...\"")
        elif not (ref.alt or "").strip():
            error(
                where,
                f"image {ref.url!r} has no alt text; describe it: ![what it shows]({ref.url})",
            )
        if ref.local is not None:
            if not ref.local.is_file():
                error(where, f"image {ref.url!r} does not exist; put the file beside the post")
            return
        problem = _link_problem(ref.url, ids)
        if problem:
            error(where, problem.replace("link", "image", 1))
        return
    if ref.local is not None:
        if not ref.local.is_file():
            error(
                where,
                f"link {ref.url!r} is not absolute and no such file is beside the post; "
                "write the full address, e.g. https://...",
            )
        return
    problem = _link_problem(ref.url, ids)
    if problem:
        error(where, problem)


def _image_findings(config: Config, rendered: Rendered, error, warning) -> None:
    """What the local images weigh and whether mail clients can show them; and the width of
    remote ones, which cannot be known."""
    found = {picture.source: picture for picture in rendered.images}
    done: set[Path] = set()
    for ref in rendered.links:
        if ref.kind != "image":
            continue
        where = _at(config, ref.file, ref.line)
        if ref.html:
            if not (ref.width or "").strip().isdigit() and urlsplit(ref.url).scheme in ("http", "https"):
                warning(where, f"image {ref.url!r} has no width attribute, so Outlook for Windows "
                        f"shows it at full size; add width=\"...\" (at most {images.COLUMN})")
            continue
        if ref.local is None:
            if urlsplit(ref.url).scheme in ("http", "https"):
                warning(where, f"image {ref.url!r} is not beside the post, so its width is "
                        "unknown and Outlook for Windows shows it at full size; save the file "
                        "beside the post and link it by name")
            continue
        picture = found.get(ref.local)
        if picture is None or picture.source in done:
            continue
        done.add(picture.source)
        if picture.problem:
            error(where, f"image {ref.url!r} {picture.problem}")
            continue
        if picture.format in images.PARTLY_SHOWN:
            warning(where, f"image {ref.url!r}: {images.PARTLY_SHOWN[picture.format]}; "
                    "save it as JPEG or PNG")
        if picture.bytes > images.IMAGE_WARN_BYTES:
            after = f" after resizing to {picture.width:,} px wide" if picture.resized else ""
            warning(where, f"image {ref.url!r} is {human_size(picture.bytes)}{after}; readers on "
                    f"phones wait for it: keep each image under {human_size(images.IMAGE_WARN_BYTES)} "
                    "(save photos as JPEG, charts as PNG with fewer colours)")
        if picture.transparent_dark:
            warning(where, f"image {ref.url!r} is dark on a transparent background; Gmail's dark "
                    "mode shows it on a dark background, where it can hardly be seen: give it "
                    "a white background")
    total = sum(found[source].bytes for source in done if not found[source].problem)
    if total > images.ISSUE_WARN_BYTES:
        warning(_rel(config, rendered.issue.issue_file),
                f"the issue's images come to {human_size(total)}; readers on phones wait for "
                f"them: keep them under {human_size(images.ISSUE_WARN_BYTES)} in all")


def list_finding(config: Config, issue: Issue, lists: Collection[str]) -> Finding | None:
    """An error when the issue's ``list:`` is none of ``lists`` (the lists in the database).
    The default list is made when it is first used, so it always passes."""
    name = issue.list_name
    if not name or name == config.newsletter.default_list or name in lists:
        return None
    known = ", ".join(sorted(lists)) or "none yet"
    return Finding(
        "error",
        _at(config, issue.issue_file, _key_line(issue.issue_file, "list")),
        f"list {name!r} does not exist; lists: {known}. Write one of them in `list:`, or "
        f"create it with `newsletter lists create {name}`",
    )


def has_errors(findings: list[Finding]) -> bool:
    return any(f.level == "error" for f in findings)


def preflight(config: Config, rendered: Rendered) -> list[Finding]:
    """The checks before a send; raises when any error-level check fails."""
    findings = run_checks(config, rendered)
    if has_errors(findings):
        first = next(f for f in findings if f.level == "error")
        raise ChecksFailed(
            f"{rendered.slug} fails its pre-flight checks ({first}); run `newsletter check "
            f"{rendered.slug}` for the full list"
        )
    return findings
