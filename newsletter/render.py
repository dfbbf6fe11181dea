"""Issue → rendered email (HTML and plain text) and web version, once per issue.

Markdown goes through markdown-it-py, the result through the Jinja2 templates, and the email
HTML through premailer to inline its CSS. Per-recipient fields (name, email, unsubscribe and
web URLs) are left as placeholders such as ``[[nl:unsubscribe_url]]`` that the sending stage
fills by plain substitution (see :mod:`newsletter.message`), so nothing here runs per
recipient. premailer is used without ``base_url`` because it would rewrite a placeholder in an
``href`` into a URL; links are made absolute here instead, against the issue's web address.
"""

from __future__ import annotations

import hashlib
import html as html_lib
import os
import pickle
import posixpath
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jinja2
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token
from markdown_it.tree import SyntaxTreeNode
from markupsafe import Markup
from mdit_py_plugins.footnote import footnote_plugin

from . import images
from .config import Config
from .content import Issue
from .errors import TemplateError
from .files import write_atomically
from .placeholders import FIELDS, PLACEHOLDER, PLACEHOLDER_RE, PLACEHOLDERS  # noqa: F401
from .rendered import Asset, LinkRef, Rendered

TEXT_WIDTH = 72
SAFE_SCHEMES = ("http", "https", "mailto", "tel")


# ---------------------------------------------------------------------------------------------
# Markdown


def _markdown_parser() -> MarkdownIt:
    return (
        MarkdownIt("commonmark", {"html": True})
        .enable(["table", "strikethrough"])
        .use(footnote_plugin)
    )


@cache
def markdown() -> MarkdownIt:
    """Posts as Markdown: parses them, and renders the web version."""
    return _markdown_parser()


@cache
def email_markdown() -> MarkdownIt:
    """The renderer of the email, for what mail clients drop or cannot lay out.

    - Footnotes are a plain numbered list after a rule, with plain superscript numbers:
      Outlook for Windows and Yahoo strip ``<section>``, and Gmail on iOS and Yahoo do not
      follow in-page anchors, so there are no jumps and no back-links.
    - Code blocks are lines of text (``<br>`` between them, indentation as no-break spaces)
      rather than ``<pre>``: Outlook for Windows ignores ``white-space`` and Gmail's apps
      ignore ``pre``, so a ``<pre>`` never wraps there and widens the whole message.
    - A word of :data:`LONG_WORD` characters or more (a URL, a token in code) can break:
      ``<wbr>`` inside it for the clients that read that tag, and ``word-break: break-all``
      on it for Outlook for Windows, which does not.
    - Tables sit in a block that scrolls sideways, so a wide one does not widen the page.
    """
    md = _markdown_parser()
    md.add_render_rule("footnote_ref", _email_footnote_ref)
    md.add_render_rule("footnote_block_open", lambda *_: '<hr class="footnotes-sep">\n<ol class="footnotes">\n')
    md.add_render_rule("footnote_block_close", lambda *_: "</ol>\n")
    md.add_render_rule("footnote_open", lambda *_: '<li class="footnote-item">')
    md.add_render_rule("footnote_anchor", lambda *_: "")
    md.add_render_rule("fence", _email_code_block)
    md.add_render_rule("code_block", _email_code_block)
    md.add_render_rule("code_inline", _email_code_inline)
    md.add_render_rule("text", _email_text)
    md.add_render_rule("table_open", lambda *_: '<div class="table-scroll">\n<table>\n')
    md.add_render_rule("table_close", lambda *_: "</table>\n</div>\n")
    return md


LONG_WORD = 30  # characters without a space: longer runs get places to break
# Where a <wbr> goes. premailer's parser (libxml2's, which predates <wbr>) would nest the
# text after a <wbr> inside it, so the tag is written only after the CSS is inlined.
WBR_MARK = "\ue000"  # a private-use character: no text means it
_BREAK_AFTER = frozenset("/.-_?&=,;:#+)]}")
_BREAK_EVERY = 20  # characters, where no punctuation offers a place sooner


def breakable(text: str) -> str:
    """``text`` as HTML, with every long word made breakable (see :func:`email_markdown`);
    the places to break are :data:`WBR_MARK` until :func:`inline_css` makes them ``<wbr>``."""
    parts = re.split(r"(\s+)", text)
    return "".join(_long_word(part) if len(part) >= LONG_WORD else escapeHtml(part) for part in parts)


def _long_word(word: str) -> str:
    pieces, start = [], 0
    for index, char in enumerate(word, start=1):
        if index - start >= _BREAK_EVERY or (char in _BREAK_AFTER and index - start >= 4):
            pieces.append(word[start:index])
            start = index
    pieces.append(word[start:])
    inner = WBR_MARK.join(escapeHtml(piece) for piece in pieces if piece)
    return f'<span class="long">{inner}</span>'


def _email_text(self, tokens, idx, options, env) -> str:
    return breakable(tokens[idx].content)


def _email_code_inline(self, tokens, idx, options, env) -> str:
    return f"<code>{breakable(tokens[idx].content)}</code>"


def _email_footnote_ref(self, tokens, idx, options, env) -> str:
    return f'<sup class="footnote-ref">{tokens[idx].meta["id"] + 1}</sup>'


def _email_code_block(self, tokens, idx, options, env) -> str:
    lines = tokens[idx].content.rstrip("\n").expandtabs(4).split("\n")
    return '<div class="code">' + "<br>\n".join(_code_line(line) for line in lines) + "</div>\n"


def _code_line(line: str) -> str:
    """One line of code as text that keeps its spacing and can still wrap at its spaces."""
    if not line.strip():
        return "&nbsp;"
    out = []
    for part in re.split(r"( +)", line):
        if not part:
            continue
        if part.startswith(" "):
            n = len(part)
            out.append("&nbsp;" * n if not out else "&nbsp;" * (n - 1) + " ")
        else:
            out.append(breakable(part))
    return "".join(out)


def _children(tokens: Iterable[Token]) -> Iterable[tuple[Token, int | None]]:
    """Every inline token with the line it starts on (0-based, relative to the source)."""
    for token in tokens:
        if token.type == "inline" and token.children:
            line = token.map[0] if token.map else None
            for child in token.children:
                yield child, line
                if line is not None:
                    if child.type in ("softbreak", "hardbreak"):
                        line += 1
                    elif child.type == "html_inline":
                        line += child.content.count("\n")


class _HtmlRefs(HTMLParser):
    """The links and images in a piece of raw HTML written in a post, with their lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str, str | None, int, str | None]] = []  # kind, url, alt, line, width

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        line = self.getpos()[0]
        if tag == "a" and values.get("href") is not None:
            self.found.append(("link", str(values["href"]), None, line, None))
        elif tag == "img":
            self.found.append(("image", str(values.get("src") or ""), values.get("alt"), line,
                               values.get("width")))

    handle_startendtag = handle_starttag


def _html_refs(fragment: str, file: Path, line: int | None) -> list[LinkRef]:
    """LinkRefs for the <a href> and <img> tags in ``fragment``, which starts on ``line``."""
    parser = _HtmlRefs()
    parser.feed(fragment)
    parser.close()
    return [
        LinkRef(file=file, line=line + offset - 1 if line is not None else None, kind=kind,
                url=url, alt=alt, html=True, width=width)
        for kind, url, alt, offset, width in parser.found
    ]


def _is_relative(url: str) -> bool:
    parts = urlsplit(url)
    return not parts.scheme and not parts.netloc and not url.startswith("#") and bool(parts.path)


class _PostAssets:
    """Publishes the local files a post refers to, with collision-free names."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache / "images"
        self.by_source: dict[Path, Asset] = {}
        self.names: set[str] = set()
        self.images: dict[Path, images.Image] = {}

    def image(self, source: Path) -> images.Image | None:
        """The published image ``source`` (measured, resized when too wide); None if absent."""
        if source in self.images:
            return self.images[source]
        if not source.is_file():
            return None
        found = images.inspect(source, self.cache)
        self.images[source] = found
        if found.resized:
            asset = self.by_source[source]
            self.by_source[source] = Asset(source=asset.source, name=asset.name, file=found.file)
        return found

    def publish(self, folder: Path, relative: str) -> tuple[Path, str]:
        path_part = unquote(urlsplit(relative).path)
        source = (folder / path_part).resolve()
        if source in self.by_source:
            return source, self.by_source[source].name
        name = posixpath.normpath(path_part.replace("\\", "/"))
        if name.startswith("../") or name == ".." or name.startswith("/"):
            digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
            name = f"assets/{digest}/{source.name}"
        base, n = name, 1
        while name in self.names:
            n += 1
            stem, dot, ext = base.rpartition(".")
            name = f"{stem}-{n}.{ext}" if dot else f"{base}-{n}"
        self.names.add(name)
        self.by_source[source] = Asset(source=source, name=name)
        return source, name

    def all(self) -> tuple[Asset, ...]:
        return tuple(asset for asset in self.by_source.values() if asset.source.is_file())


@dataclass
class _PostHtml:
    email_html: str
    web_html: str
    text: str
    links: list[LinkRef]


def _render_markdown(
    source: str,
    file: Path,
    first_line: int,
    folder: Path | None,
    doc_id: str,
    web_url: str,
    assets: _PostAssets,
    ref_counter: list[int],
) -> _PostHtml:
    md = markdown()
    env: dict[str, Any] = {"docId": doc_id}
    tokens = md.parse(source, env)
    _demote_headings(tokens)
    links: list[LinkRef] = []
    # Each link/image: record it, and remember how to write its URL for email and web.
    rewrites: list[tuple[Token, str, str, str]] = []  # token, attr, email url, web url
    for token in tokens:
        if token.type == "html_block" and token.map:
            links.extend(_html_refs(token.content, file, first_line + token.map[0]))
    for child, line in _children(tokens):
        if child.type == "html_inline":
            links.extend(_html_refs(child.content, file, first_line + line if line is not None else None))
            continue
        if child.type not in ("link_open", "image"):
            continue
        attr = "href" if child.type == "link_open" else "src"
        url = str(child.attrs.get(attr, ""))
        kind = "link" if child.type == "link_open" else "image"
        alt = child.content if kind == "image" else None
        local = None
        absolute_line = first_line + line if line is not None else None
        if _is_relative(url) and folder is not None:
            local, name = assets.publish(folder, url)
            fragment = urlsplit(url).fragment
            suffix = f"#{fragment}" if fragment else ""
            rewrites.append((child, attr, f"{web_url}{name}{suffix}", f"{name}{suffix}"))
            picture = assets.image(local) if kind == "image" else None
            if picture is not None and picture.problem is None:
                child.attrSet("width", str(picture.display_width))
        elif kind == "link" and url.startswith("#") and len(url) > 1:
            # In-page jumps do not work in Gmail on iOS or in Yahoo: the email's go to the
            # same place in the web version instead.
            rewrites.append((child, attr, f"{web_url}{url}", url))
        links.append(LinkRef(file=file, line=absolute_line, kind=kind, url=url, alt=alt, local=local))
    links.sort(key=lambda ref: ref.line or 0)  # in the order of the file

    options = md.options
    for token, attr, email_url, _web in rewrites:
        token.attrSet(attr, email_url)
    email_html = email_markdown().renderer.render(tokens, options, env)
    for token, attr, _email, web in rewrites:
        token.attrSet(attr, web)
    web_html = md.renderer.render(tokens, options, env)
    for token, attr, email_url, _web in rewrites:
        token.attrSet(attr, email_url)
    text = _TextWriter(ref_counter).document(tokens)
    return _PostHtml(email_html=email_html, web_html=web_html, text=text, links=links)


def _demote_headings(tokens: list[Token]) -> None:
    """Headings inside a post sit below the post's own title (an h2): the top level becomes h3."""
    levels = [int(t.tag[1]) for t in tokens if t.type == "heading_open"]
    if not levels:
        return
    shift = max(0, 3 - min(levels))
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + shift)}"


# ---------------------------------------------------------------------------------------------
# Plain text


class _TextWriter:
    """Markdown tokens → plain text that reads well on its own.

    Headings are underlined, quotes prefixed with ``>``, links become numbered references
    listed after the post, images show their alt text.
    """

    def __init__(self, counter: list[int]) -> None:
        self.counter = counter  # shared across posts so reference numbers never repeat
        self.refs: list[tuple[int, str]] = []

    def document(self, tokens: list[Token]) -> str:
        tree = SyntaxTreeNode(tokens)
        body = self.blocks(tree.children)
        if self.refs:
            body += "\n\n" + "\n".join(f"[{n}] {url}" for n, url in self.refs)
        return body.strip("\n")

    def blocks(self, nodes: Iterable[SyntaxTreeNode], width: int = TEXT_WIDTH) -> str:
        parts = [self.block(node, width) for node in nodes]
        return "\n\n".join(part for part in parts if part.strip())

    def block(self, node: SyntaxTreeNode, width: int) -> str:
        kind = node.type
        if kind == "paragraph":
            return self.wrap(self.inline(node.children), width)
        if kind == "heading":
            title = self.inline(node.children).strip()
            mark = "=" if node.tag in ("h1", "h2", "h3") else "-"
            return f"{title}\n{mark * min(len(title), width)}"
        if kind == "blockquote":
            inner = self.blocks(node.children, width - 2)
            return "\n".join(f"> {line}".rstrip() for line in inner.splitlines())
        if kind in ("bullet_list", "ordered_list"):
            start = int(node.attrs.get("start", 1)) if kind == "ordered_list" else 1
            items = []
            for index, item in enumerate(node.children):
                marker = f"{start + index}. " if kind == "ordered_list" else "- "
                inner = self.blocks(item.children, width - len(marker))
                pad = " " * len(marker)
                lines = inner.splitlines() or [""]
                items.append(
                    "\n".join([marker + lines[0]] + [(pad + ln).rstrip() for ln in lines[1:]])
                )
            return "\n".join(items)
        if kind in ("code_block", "fence"):
            return "\n".join(f"    {line}".rstrip() for line in node.content.rstrip("\n").splitlines())
        if kind == "hr":
            return "-" * 20
        if kind == "table":
            return self.table(node)
        if kind == "html_block":
            return self.wrap(_strip_tags(node.content), width)
        if kind == "footnote_block":
            notes = []
            for index, note in enumerate(node.children, start=1):
                inner = self.blocks(
                    (c for c in note.children if c.type != "footnote_anchor"), width - 6
                )
                notes.append(f"[^{index}] {inner.strip()}")
            return "Notes\n-----\n" + "\n".join(notes)
        return self.blocks(node.children, width)

    def table(self, node: SyntaxTreeNode) -> str:
        rows = []
        for section in node.children:
            for row in section.children:
                rows.append([self.inline(cell.children).strip() for cell in row.children])
        if not rows:
            return ""
        lines = [" | ".join(rows[0]), " | ".join("-" * max(3, len(c)) for c in rows[0])]
        lines += [" | ".join(r) for r in rows[1:]]
        return "\n".join(lines)

    def inline(self, nodes: Iterable[SyntaxTreeNode]) -> str:
        out: list[str] = []
        for node in nodes:
            kind = node.type
            if kind == "text":
                out.append(node.content)
            elif kind == "softbreak":
                out.append(" ")
            elif kind == "hardbreak":
                out.append("\n")
            elif kind == "code_inline":
                out.append(node.content)
            elif kind == "link":
                label = self.inline(node.children)
                href = str(node.attrs.get("href", ""))
                bare = href.removeprefix("mailto:")
                if label.strip() in (href, bare) or not href or href.startswith("#"):
                    out.append(label or href)
                else:
                    self.counter[0] += 1
                    self.refs.append((self.counter[0], href))
                    out.append(f"{label} [{self.counter[0]}]")
            elif kind == "image":
                alt = node.content or "image"
                out.append(f"[{alt}]")
            elif kind == "footnote_ref":
                out.append(f"[^{node.meta['id'] + 1}]")
            elif kind == "html_inline":
                continue
            elif kind == "strong":
                out.append(f"*{self.inline(node.children)}*")
            else:
                out.append(self.inline(node.children))
        return "".join(out)

    @staticmethod
    def wrap(text: str, width: int) -> str:
        lines = []
        for line in text.split("\n"):
            lines.append(
                textwrap.fill(line, width=max(20, width), break_long_words=False, break_on_hyphens=False)
                if line.strip()
                else ""
            )
        return "\n".join(lines)


def _strip_tags(fragment: str) -> str:
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", fragment)).strip()


# ---------------------------------------------------------------------------------------------
# Templates


def builtin_templates() -> Path:
    """The default templates: inside the installed package, or the checkout's templates/."""
    here = Path(__file__).resolve().parent
    packaged = here / "_templates"
    return packaged if packaged.is_dir() else here.parent / "templates"


class _CompiledTemplates(jinja2.FileSystemBytecodeCache):
    """Templates compiled once and kept in a newsletter's ``.cache/templates/``: Jinja2 checks
    each against its source, and a new process (`check`, `build`, `send`) loads the compiled
    code instead of compiling the three templates again. The names carry Jinja2's version and
    a hash of the environment's options, which shape the compiled code too. A folder that
    cannot be written is only slower."""

    def __init__(self, folder: Path, options: str) -> None:
        key = hashlib.sha256(f"{jinja2.__version__} {options}".encode()).hexdigest()[:12]
        super().__init__(str(folder), f"{key}-%s.cache")
        self.folder = folder

    def load_bytecode(self, bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError, pickle.UnpicklingError):
            bucket.reset()  # unreadable or damaged: compiled again

    def dump_bytecode(self, bucket) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError:
            pass


_OPTIONS = {"keep_trailing_newline": True, "trim_blocks": True, "lstrip_blocks": True}
_AUTOESCAPED = ("html", "xml")


@cache
def _environment(search: tuple[Path, ...], cache_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(p) for p in search]),
        bytecode_cache=_CompiledTemplates(cache_dir / "templates", repr((_OPTIONS, _AUTOESCAPED))),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(_AUTOESCAPED, default_for_string=False),
        **_OPTIONS,
    )
    env.filters["longdate"] = lambda d: f"{d.day} {d.strftime('%B %Y')}"
    return env


def template_search_path(config: Config) -> tuple[Path, ...]:
    own = config.templates_dir
    builtin = builtin_templates()
    if own.resolve() == builtin.resolve() or not own.is_dir():
        return (builtin,)
    return (own, builtin)


def template_env(config: Config) -> jinja2.Environment:
    return _environment(template_search_path(config), config.cache_dir)


def render_template(config: Config, name: str, context: dict[str, Any]) -> str:
    """Render one template; errors name the template file and line and what to do."""
    env = template_env(config)
    try:
        template = env.get_template(name)
        return template.render(context)
    except jinja2.TemplateNotFound as exc:
        folders = ", ".join(str(p) for p in template_search_path(config))
        raise TemplateError(f"template {exc.name!r} not found (looked in {folders})") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"{exc.filename or name} line {exc.lineno}: template syntax error: {exc.message}"
        ) from None
    except jinja2.UndefinedError as exc:
        where = _template_frame(exc, name)
        raise TemplateError(
            f"{where}: {exc.message}; check the spelling, or see the README for the variables "
            "templates can use"
        ) from None


def _template_frame(exc: BaseException, fallback: str) -> str:
    """The innermost template file and line in a traceback (Jinja2 rewrites frames to them)."""
    found = fallback
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith((".html", ".txt", ".css", ".xml")):
            found = f"{filename} line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


# ---------------------------------------------------------------------------------------------
# The whole issue


def web_url_for(config: Config, slug: str) -> str:
    return f"{config.newsletter.site_url}/archive/{slug}/"


def render_issue(config: Config, issue: Issue) -> Rendered:
    """Render ``issue`` once: email HTML (inlined), plain text and web version."""
    # A welcome step has no web version of its own: its links point at the archive.
    web_url = f"{config.newsletter.site_url}/archive/" if issue.sequence else web_url_for(config, issue.slug)
    assets = _PostAssets(config.cache_dir)
    counter = [0]  # link reference numbers run through the whole text part
    links: list[LinkRef] = []
    note = None
    if issue.note.strip():
        note = _render_markdown(
            issue.note, issue.issue_file, issue.note_line, issue.path, "note", web_url, assets, counter
        )
        links.extend(note.links)
    posts = []
    for index, post in enumerate(issue.posts, start=1):
        rendered = _render_markdown(
            post.body, post.path, post.body_line, post.folder, f"p{index}", web_url, assets, counter
        )
        links.extend(rendered.links)
        posts.append((post, rendered))

    n = config.newsletter
    shared = {
        "newsletter": n,
        "issue": issue,
        "subject": issue.subject,
        "preheader": issue.preheader,
        "date": issue.date,
        "sign_off": n.sign_off,
        "author": n.author,
        "postal_address": n.postal_address,
        "archive_url": f"{n.site_url}/archive/",
        "subscribe_url": f"{n.site_url}/subscribe",
        "issue_web_url": web_url,
        "recipient": {"name": PLACEHOLDERS["name"], "email": PLACEHOLDERS["email"]},
        "unsubscribe_url": PLACEHOLDERS["unsubscribe_url"],
        "web_url": PLACEHOLDERS["web_url"],
    }

    def context(web: bool) -> dict[str, Any]:
        def part(r: _PostHtml) -> Markup:
            return Markup(r.web_html if web else r.email_html)

        return {
            **shared,
            "note": {"html": part(note), "text": note.text} if note else None,
            "posts": [
                {
                    "title": post.title,
                    "author": post.author,
                    "canonical_url": post.canonical_url,
                    "summary": post.summary,
                    "anchor": f"post-{i}",
                    "html": part(r),
                    "text": r.text,
                }
                for i, (post, r) in enumerate(posts, start=1)
            ],
        }

    email_context = context(web=False)
    html = inline_css(render_template(config, "email.html", email_context), cache=config.cache_dir)
    tracked: dict[str, str] = {}
    if config.tracking.clicks and not issue.sequence:
        from .tracking import track

        html, tracked = track(html, issue.slug, n.site_url)
    text = _tidy_text(render_template(config, "email.txt", email_context))
    web_html = render_template(config, "web.html", context(web=True))
    published = assets.all()
    return Rendered(
        issue=issue,
        subject=issue.subject,
        preheader=issue.preheader,
        html=html,
        text=text,
        web_html=web_html,
        web_url=web_url,
        assets=published,
        links=tuple(links),
        source_hashes=source_hashes(config, issue, published),
        images=tuple(assets.images.values()),
        tracked=tracked,
    )


INLINED_KEPT = 200  # inlined emails kept in .cache/inline/, the most recently used


def inline_css(document: str, cache: Path | None = None) -> str:
    """Inline the CSS of ``<style>`` blocks; rules that cannot be inlined (media queries)
    stay in one ``<style>`` block in ``<head>``, with their ``!important`` kept.

    With ``cache`` (a newsletter's .cache/), the result is kept under the hash of the
    document, this module and the inliner's versions: `check`, `build`, `send --dry-run`
    and `send` of an unchanged issue, each a new process, inline it once. premailer in a
    new process spends most of a second compiling its CSS parser's patterns."""
    if cache is None:
        return _inline_css(document)
    kept = cache / "inline" / f"{_inline_key(document)}.html"
    try:
        inlined = kept.read_text(encoding="utf-8")
        os.utime(kept)  # recently used: kept longest
        return inlined
    except OSError:
        pass
    inlined = _inline_css(document)
    _keep_inlined(kept, inlined)
    return inlined


@cache
def _inliner_fingerprint() -> bytes:
    from importlib.metadata import version

    own = Path(__file__).read_bytes()  # a change to the post-processing here changes the key
    return own + f"premailer {version('premailer')} cssutils {version('cssutils')}".encode()


def _inline_key(document: str) -> str:
    digest = hashlib.sha256(_inliner_fingerprint())
    digest.update(document.encode("utf-8"))
    return digest.hexdigest()


def _keep_inlined(path: Path, inlined: str) -> None:
    """Write ``path`` whole (or not at all) and keep only the newest INLINED_KEPT files;
    a cache that cannot be written is only slower."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, inlined.encode("utf-8"))
        files = sorted(path.parent.glob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[INLINED_KEPT:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def _inline_css(document: str) -> str:
    import logging

    import cssutils
    from premailer import Premailer

    cssutils.ser.prefs.useMinified()  # the <style> kept in <head> counts against 16 KB
    # premailer is told not to validate, but reading an <img>'s style for its float still
    # does, and the first validation in a process compiles every CSS property's pattern (a
    # tenth of the first inlining). Without the profiles nothing is validated; the output is
    # the same (validity is only a flag, and all properties are written out either way).
    cssutils.profile.removeProfile(all=True)
    inlined = _mail_premailer(Premailer)(
        document,
        strip_important=False,
        keep_style_tags=False,
        remove_classes=False,
        disable_validation=True,
        allow_network=False,
        cssutils_logging_level=logging.CRITICAL,
        exclude_pseudoclasses=True,
    ).transform()
    if not inlined.lstrip().lower().startswith("<!doctype"):
        inlined = "<!DOCTYPE html>\n" + inlined
    return mail_safe(inlined.replace(WBR_MARK, "<wbr>"))


# premailer copies some CSS into the old presentational attributes (background-color to
# bgcolor, width, height, text-align to align, vertical-align to valign) on every element it
# styles. Outlook and other old clients read them on the elements HTML once gave them: those
# are kept, and the rest (`width` on <body>, `bgcolor` on <pre> and <code>, `height="auto"` on
# <img>) are dropped, as no client reads them and they are not HTML.
_PRESENTATIONAL = {
    "bgcolor": {"body", "table", "tr", "td", "th"},
    "width": {"table", "td", "th", "img"},
    "height": {"table", "tr", "td", "th", "img"},
    "align": {"table", "tr", "td", "th", "thead", "tbody", "tfoot", "img", "p", "div", "hr",
              "h1", "h2", "h3", "h4", "h5", "h6"},
    "valign": {"tr", "td", "th", "thead", "tbody", "tfoot"},
}
_PIXELS = re.compile(r"\d+")  # an image's width or height: whole pixels only
_LENGTH = re.compile(r"\d+%?")  # a table's or a cell's: pixels or a percentage


def _presentational_ok(tag: str, name: str, value: str) -> bool:
    if tag not in _PRESENTATIONAL[name]:
        return False
    if name in ("width", "height"):
        return bool((_PIXELS if tag == "img" else _LENGTH).fullmatch(value.strip()))
    return True


@cache
def _mail_premailer(base: type) -> type:
    """premailer's class, writing only the presentational attributes HTML has (above)."""

    class MailPremailer(base):
        def _style_to_basic_html_attributes(self, element, style_content, force=False):
            before = {name: element.get(name) for name in _PRESENTATIONAL}
            super()._style_to_basic_html_attributes(element, style_content, force=force)
            for name, old in before.items():
                value = element.get(name)
                if value is None or value == old or _presentational_ok(element.tag, name, value):
                    continue
                if old is None:
                    del element.attrib[name]
                else:
                    element.set(name, old)

    return MailPremailer


WRAP_AT = 500  # characters; mail lines may not pass 998


def mail_safe(document: str) -> str:
    """The same HTML in ASCII (other characters as character references) with no line
    longer than about WRAP_AT, so that messages can carry it as 7bit, unencoded.

    Lines are broken only where a newline means the same as the space it replaces: between
    words of text and between a tag's attributes, never inside an attribute value, a
    ``<pre>`` block or a ``<style>`` block.
    """
    styles = re.findall(r"<style\b.*?</style>", document, flags=re.S | re.I)
    if all(block.isascii() for block in styles):
        document = document.encode("ascii", "xmlcharrefreplace").decode("ascii")
    out = []
    verbatim = False  # inside <pre> or <style>
    for line in document.split("\n"):
        lowered = line.lower()
        if len(line) > WRAP_AT and not verbatim and "<pre" not in lowered and "<style" not in lowered:
            line = _wrap_html_line(line)
        opens = lowered.count("<pre") + lowered.count("<style")
        closes = lowered.count("</pre") + lowered.count("</style")
        verbatim = (verbatim or opens > closes) and not (closes > opens)
        out.append(line)
    return "\n".join(out)


def _wrap_html_line(line: str) -> str:
    pieces, start, last_break = [], 0, None
    state = "text"  # text | tag | quote
    quote = ""
    for index, char in enumerate(line):
        if state == "text":
            if char == "<":
                state = "tag"
            elif char == " ":
                last_break = index
        elif state == "tag":
            if char in "\"'":
                state, quote = "quote", char
            elif char == ">":
                state = "text"
            elif char == " ":
                last_break = index
        elif char == quote:
            state = "tag"
        if index - start >= WRAP_AT and last_break is not None and last_break > start:
            pieces.append(line[start:last_break])
            start = last_break + 1
            last_break = None
    pieces.append(line[start:])
    return "\n".join(pieces)


def _tidy_text(text: str) -> str:
    """No trailing spaces, no runs of more than one blank line, one final newline."""
    lines = [line.rstrip() for line in text.splitlines()]
    tidy = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return tidy + "\n"


def source_hashes(config: Config, issue: Issue, assets: Iterable[Asset]) -> dict[str, str]:
    """sha256 of every file the rendered issue depends on, keyed by a path relative to the
    newsletter folder, so that a changed file can be named."""
    files = [*issue.source_files, *(a.source for a in assets), config.path]
    for folder in template_search_path(config):
        files.extend(sorted(p for p in folder.iterdir() if p.is_file()))
    hashes = {}
    for path in files:
        try:
            key = str(path.resolve().relative_to(config.root))
        except ValueError:
            key = str(path)
        hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes
