"""Issue and post files → :class:`Issue` and :class:`Post`.

An issue is a folder under ``issues/`` holding ``issue.md`` (YAML front matter with the
subject, preheader, optional list and send time; the body is an optional editor's note) and
post files assembled in name order (``01-*.md``), or the posts listed by path under
``posts:``. Nothing here renders or writes; it only reads files.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import yaml

from .errors import AmbiguousIssue, ContentError, IssueNotFound

if TYPE_CHECKING:
    from .config import Config

ISSUE_FILE = "issue.md"
DATE_PREFIX = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:-|$)")


@dataclass(frozen=True, slots=True)
class Document:
    """A Markdown file split into front matter and body."""

    path: Path
    meta: Mapping[str, Any]
    body: str
    body_line: int  # 1-based line number of the body's first line in the file


@dataclass(frozen=True, slots=True)
class Post:
    path: Path
    title: str
    author: str
    canonical_url: str | None
    summary: str | None
    body: str
    body_line: int

    @property
    def folder(self) -> Path:
        return self.path.parent


@dataclass(frozen=True, slots=True)
class Issue:
    path: Path  # the issue folder
    slug: str
    subject: str
    preheader: str
    list_name: str | None
    send_at: dt.datetime | None
    date: dt.date
    note: str  # the editor's note (issue.md body), Markdown
    note_line: int
    posts: tuple[Post, ...]
    # A welcome sequence's step is rendered as an issue with its own file and no posts.
    file: Path | None = None
    sequence: str | None = None

    @property
    def issue_file(self) -> Path:
        return self.file or self.path / ISSUE_FILE

    @property
    def source_files(self) -> tuple[Path, ...]:
        return (self.issue_file, *(post.path for post in self.posts))


# ---------------------------------------------------------------------------------------------
# Front matter


def split_front_matter(text: str, path: Path) -> Document:
    """Split ``---``-fenced YAML front matter from the Markdown body.

    A file without front matter has an empty mapping and the whole text as body. Errors name
    the file and the line of the YAML problem.
    """
    text = text.removeprefix("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return Document(path=path, meta={}, body=text, body_line=1)
    for index in range(1, len(lines)):
        if lines[index].strip() in ("---", "..."):
            break
    else:
        raise ContentError(
            f"{path} line 1: front matter starts with --- but has no closing --- line; "
            "add one after the last key"
        )
    raw = "".join(lines[1:index])
    try:
        meta = yaml.safe_load(raw) if raw.strip() else {}
    except yaml.YAMLError as exc:
        line, problem = yaml_problem(exc, raw, first_line=2)  # line 1 is the ---
        raise ContentError(f"{path} line {line}: front matter is not valid YAML: {problem}") from None
    if not isinstance(meta, dict):
        raise ContentError(
            f"{path} line 2: front matter must be key: value pairs, e.g. `subject: Why quotas fail`"
        )
    return Document(path=path, meta=meta, body="".join(lines[index + 1 :]), body_line=index + 2)


def yaml_problem(exc: yaml.YAMLError, raw: str, first_line: int = 1) -> tuple[int, str]:
    """The line that a person would fix, and what to do there, for YAML text ``raw`` that
    starts on line ``first_line`` of its file.

    PyYAML marks where it noticed the problem (``problem_mark``), which for an unclosed quote
    or bracket is the end of the text; ``context_mark`` is where the construct began.
    """
    problem = str(getattr(exc, "problem", None) or str(exc).splitlines()[0])
    context = str(getattr(exc, "context", None) or "")
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    at = problem_mark.line if problem_mark is not None else 0  # 0-based lines of raw
    began = context_mark.line if context_mark is not None else at
    text_lines = raw.splitlines()
    here = text_lines[at] if at < len(text_lines) else ""
    at, began = at + first_line, began + first_line

    opened = raw[context_mark.index] if context_mark is not None and context_mark.index < len(raw) else ""

    if "quoted scalar" in context and "end of stream" in problem:
        return began, f"the {opened} opened on this line is never closed; add the closing {opened}"
    if "flow sequence" in context or "flow mapping" in context:
        closing = {"[": "]", "{": "}"}.get(opened, "bracket")
        return began, f"the {opened} opened on this line is never closed with {closing}"
    if "simple key" in context:
        return began, "this line has no `key: value`; add the key and a colon, or join it to the line above"
    late = _quote_closed_late(raw, at - first_line)
    if late is not None:
        quote, first = late
        return first + first_line, (
            f"the {quote} opened on this line closes only on line {at}; close it on this line")
    if "'\\t'" in problem:
        return at, "a tab; YAML allows only spaces here (to indent, and after the colon)"
    if "cannot start any token" in problem and problem.count("'") >= 2:
        return at, f"a value cannot start with {problem.split(chr(39))[1]!r}; put the value in quotes"
    if "undefined alias" in problem:
        return at, "a value starting with * is read as a YAML alias; put the value in quotes"
    if "escape character" in problem:
        return at, (f"{problem}: in double quotes a backslash starts an escape; use single quotes, "
                    "or write \\\\ for a backslash")
    if "mapping values are not allowed" in problem or "expected <block end>" in problem:
        if here[:1].isspace():
            return at, "this line does not line up with the lines above it; indent it like them, with spaces"
        return at, (f"{problem}; put a value with ': ' or a quote inside it in quotes, "
                    "e.g. preheader: \"Tip: sell well\"")
    return at, f"{problem}; check the quoting and indentation on this line"


def _quote_closed_late(raw: str, line: int) -> tuple[str, int] | None:
    """A quoted value that spans lines and ends on ``line`` (0-based), where YAML found a
    problem: almost always a quote left open on an earlier line. Its quote and first line."""
    found = None
    try:
        for token in yaml.scan(raw, Loader=yaml.SafeLoader):
            if (isinstance(token, yaml.ScalarToken) and token.style in ("'", '"')
                    and token.end_mark.line == line and token.start_mark.line < line):
                found = (token.style, token.start_mark.line)
    except yaml.YAMLError:
        pass
    return found


def read_document(path: Path) -> Document:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContentError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise ContentError(f"{path}: is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ContentError(f"{path}: cannot be read: {exc.strerror}") from None
    return split_front_matter(text, path)


def _string(doc: Document, key: str, required: bool = False, hint: str = "") -> str | None:
    value = doc.meta.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise ContentError(f"{doc.path}: {key} is missing; add `{key}: {hint}` to the front matter")
        return None
    if isinstance(value, dt.date | int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ContentError(f"{doc.path}: {key} must be text, got {value!r}")
    if "\n" in value.strip() and key in ("subject", "title", "preheader"):
        raise ContentError(f"{doc.path}: {key} must be one line")
    return value.strip()


def _key_line(doc: Document, key: str) -> str:
    """`` line N`` for the front matter line that starts with ``key``, when it is found."""
    try:
        lines = doc.path.read_text(encoding="utf-8").splitlines()[: max(1, doc.body_line - 1)]
    except (OSError, UnicodeDecodeError):
        return ""
    for number, line in enumerate(lines, start=1):
        if line.split(":", 1)[0].strip().strip("'\"") == key:
            return f" line {number}"
    return ""


def _closest(key: str, known: set[str]) -> str | None:
    """The known key ``key`` was probably meant to be: the same but for case and the
    separator (``canonical-url``), or a near spelling (``titel``, ``sumary``)."""
    folded = key.lower().replace("-", "_").replace(" ", "_")
    if folded in known:
        return folded
    close = difflib.get_close_matches(folded, sorted(known), n=1, cutoff=0.8)
    return close[0] if close else None


def _known_keys(doc: Document, known: set[str], *, others_allowed: bool = False) -> None:
    """Refuse a front matter key that is not in ``known``. Where other keys are allowed (a
    post from a blog carries its tags, date, draft...), only one that looks like a misspelt
    known key is refused: its value would be silently lost."""
    for key in doc.meta:
        if key in known:
            continue
        meant = _closest(str(key), known)
        if meant:
            raise ContentError(
                f"{doc.path}{_key_line(doc, str(key))}: unknown front matter key {key!r}; did you mean "
                f"{meant!r}?"
            )
        if not others_allowed:
            raise ContentError(
                f"{doc.path}{_key_line(doc, str(key))}: unknown front matter key {key!r} "
                f"(known: {', '.join(sorted(known))})"
            )


ISSUE_KEYS = {"subject", "preheader", "list", "send_at", "posts"}
POST_KEYS = {"title", "author", "canonical_url", "summary", "date", "source_id"}


def load_post(path: Path, default_author: str) -> Post:
    doc = read_document(path)  # other keys (a blog's tags, draft, ...) are ignored
    _known_keys(doc, POST_KEYS, others_allowed=True)
    title = _string(doc, "title", required=True, hint="The title of this post")
    canonical = _string(doc, "canonical_url")
    if canonical and not re.match(r"^https?://[^\s/]+", canonical):
        raise ContentError(
            f"{path}: canonical_url {canonical!r} is not an absolute http(s) URL"
        )
    return Post(
        path=path,
        title=title or "",
        author=_string(doc, "author") or default_author,
        canonical_url=canonical,
        summary=_string(doc, "summary"),
        body=doc.body,
        body_line=doc.body_line,
    )


def parse_send_at(value: Any, tz: ZoneInfo, where: str) -> dt.datetime:
    """A send time from front matter or the command line; naive times are in ``tz``."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        raise ContentError(f"{where}: send_at {value} has no time of day; write e.g. {value} 09:00")
    elif isinstance(value, str):
        text = value.strip().replace("T", " ", 1)
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ContentError(
                f"{where}: send_at {value!r} is not a date and time; write e.g. 2026-12-08 09:00"
            ) from None
    else:
        raise ContentError(f"{where}: send_at {value!r} is not a date and time")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment


def load_issue(folder: Path, default_author: str, tz: ZoneInfo) -> Issue:
    """Read an issue folder: issue.md and its posts, in order."""
    issue_file = folder / ISSUE_FILE
    if not issue_file.is_file():
        raise IssueNotFound(f"{folder}: no {ISSUE_FILE} in this folder")
    doc = read_document(issue_file)
    _known_keys(doc, ISSUE_KEYS)
    subject = _string(doc, "subject") or ""
    preheader = _string(doc, "preheader") or ""
    list_name = _string(doc, "list")
    send_at_raw = doc.meta.get("send_at")
    send_at = parse_send_at(send_at_raw, tz, str(issue_file)) if send_at_raw else None

    listed = doc.meta.get("posts")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
            raise ContentError(f"{issue_file}: posts must be a list of file paths")
        paths = []
        for item in listed:
            path = (folder / item).resolve()
            if not path.is_file():
                raise ContentError(f"{issue_file}: posts lists {item!r}, which does not exist")
            paths.append(path)
    else:
        paths = sorted(
            (p for p in folder.glob("*.md") if p.name != ISSUE_FILE and not p.name.startswith(".")),
            key=lambda p: p.name,
        )
    if not paths:
        raise ContentError(
            f"{folder}: the issue has no posts; add a file such as 01-my-post.md beside {ISSUE_FILE}"
        )
    posts = tuple(load_post(path, default_author) for path in paths)

    slug = folder.name
    match = DATE_PREFIX.match(slug)
    if send_at:
        date = send_at.astimezone(tz).date()
    elif match:
        try:
            date = dt.date.fromisoformat(match[1])
        except ValueError:
            raise ContentError(f"{folder}: folder name starts with an invalid date {match[1]}") from None
    else:
        date = dt.datetime.fromtimestamp(issue_file.stat().st_mtime, tz).date()

    return Issue(
        path=folder,
        slug=slug,
        subject=subject,
        preheader=preheader,
        list_name=list_name,
        send_at=send_at,
        date=date,
        note=doc.body,
        note_line=doc.body_line,
        posts=posts,
    )


# ---------------------------------------------------------------------------------------------
# Finding issues


def issue_folders(issues_dir: Path) -> list[Path]:
    """Every issue folder, oldest first (folder names start with their date)."""
    if not issues_dir.is_dir():
        return []
    return sorted(
        (p for p in issues_dir.iterdir() if p.is_dir() and (p / ISSUE_FILE).is_file()),
        key=lambda p: p.name,
    )


def load_named(config: Config, name: str | None) -> Issue:
    """The issue named on the command line (a path or a slug; the newest when ``name`` is
    None), with the newsletter's author and time zone as its defaults."""
    return load_issue(resolve_issue(config.issues_dir, name), config.newsletter.author,
                      config.newsletter.timezone)


def resolve_issue(issues_dir: Path, name: str | None) -> Path:
    """The issue folder for ``name`` (a path or a slug); the newest when ``name`` is None."""
    folders = issue_folders(issues_dir)
    if name is None:
        if not folders:
            raise IssueNotFound(
                f"{issues_dir}: there are no issues yet; create one with `newsletter new \"Title\"`"
            )
        return folders[-1]
    candidate = Path(name).expanduser()
    if (candidate / ISSUE_FILE).is_file():
        return candidate.resolve()
    slug = candidate.name if candidate.name else name
    for folder in folders:
        if folder.name == slug:
            return folder
    # A slug without its date prefix, when it names exactly one issue.
    matches = [f for f in folders if short_name(f.name) == slug]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousIssue(ambiguous(name, [f.name for f in matches]))
    known = ", ".join(f.name for f in folders) or "none yet"
    raise IssueNotFound(f"no issue {name!r} in {issues_dir} (issues: {known})")


def ambiguous(name: str, slugs: list[str]) -> str:
    """The message for a short name that several issues share."""
    return f"{name!r} is ambiguous: it is {' and '.join(slugs)}; give the whole folder name"


def short_name(slug: str) -> str:
    """An issue's folder name without its date: what a short name on the command line is."""
    return DATE_PREFIX.sub("", slug)


def slugify(title: str) -> str:
    """A folder-friendly slug: ASCII letters, digits and hyphens.

    Letters are transliterated, not dropped ("Tromsø og Ålesund" is tromso-og-alesund,
    "Straße" strasse); emoji and other pictures are left out rather than spelled as words.
    """
    import unicodedata

    from anyascii import anyascii

    words = "".join(" " if unicodedata.category(ch) == "So" else ch for ch in title)
    slug = re.sub(r"[^a-z0-9]+", "-", anyascii(words).lower()).strip("-")
    return slug[:60].rstrip("-") or "issue"
