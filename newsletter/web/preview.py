"""The live preview: each issue as a reader will see it, rebuilt whenever a file changes.

:class:`Workspace` is the builder: it reads the newsletter folder afresh and builds one issue
completely in memory (:class:`IssuePreview`). :class:`LivePreview` keeps the last good build
of every issue on screen, polls the folder's files for changes, rebuilds, and swaps a new
build in only when it succeeded; a failed build is kept as an error beside the last good one,
so a page never shows a half-built issue and the server never stops over a typo.
:class:`PreviewApp` is the WSGI app and :class:`PreviewServer` serves it on 127.0.0.1.

Pages learn about new builds through Server-Sent Events and swap in the changed part of the
page (no reload). The dark-mode view applies the email's own ``prefers-color-scheme: dark``
rules unconditionally, which is how Apple Mail and the Outlook apps show it in dark mode.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import jinja2
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from ..build import sample
from ..checks import Finding, run_checks
from ..config import Config
from ..config import load as load_config
from ..content import Issue, issue_folders, load_issue, resolve_issue
from ..errors import IssueNotFound, NewsletterError
from ..render import Rendered, builtin_templates, render_issue
from ..report import headlines
from ..schedule import sent_issues
from ..wording import plural
from . import http

DEFAULT_HOST = "127.0.0.1"
POLL_INTERVAL = 0.1  # seconds between looks at the files' modification times (a few stat calls)
KEEPALIVE = 15.0  # seconds between comments on an idle event stream
PHONE_WIDTH = 375
DESKTOP_WIDTH = 800  # a desktop reading pane: wider than the email's 600 px column

SendTest = Callable[[Rendered], str]
Log = Callable[[str], None]

PAGE_CSP = (
    "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
# An email runs no scripts in any mail client, so none run in the preview either.
EMAIL_CSP = (
    "default-src 'none'; img-src 'self' https: http: data:; style-src 'unsafe-inline'; "
    "font-src 'self' https: data:; frame-ancestors 'self'; form-action 'none'"
)


# ---------------------------------------------------------------------------------------------
# What the index shows


@dataclass(frozen=True, slots=True)
class IssueState:
    """Where an issue stands: ``draft``, ``scheduled`` (with ``when``) or ``sent`` (with when
    its campaign finished)."""

    kind: str
    when: dt.datetime | None = None

    @property
    def label(self) -> str:
        if self.when is None:
            return self.kind
        preposition = "for" if self.kind == "scheduled" else "on"
        return f"{self.kind} {preposition} {self.when:%a %d %b %Y, %H:%M %Z}".strip()


def issue_state(issue: Issue, sent_at: dt.datetime | None = None) -> IssueState:
    """The state of ``issue``: ``sent`` when the database says its campaign finished
    (``sent_at``), else as its files tell it."""
    if sent_at is not None:
        return IssueState("sent", sent_at)
    if issue.send_at is not None:
        return IssueState("scheduled", issue.send_at)
    return IssueState("draft")


@dataclass(frozen=True, slots=True)
class IssueListing:
    slug: str
    subject: str = ""
    date: dt.date | None = None
    state: IssueState | None = None
    error: str | None = None
    numbers: str = ""  # a sent issue's headline figures (`newsletter report` has the rest)


# ---------------------------------------------------------------------------------------------
# The builder


@dataclass(frozen=True, slots=True)
class IssuePreview:
    """One issue built completely in memory, ready to be swapped in."""

    slug: str
    rendered: Rendered
    findings: tuple[Finding, ...]
    html: str  # the email as the sample reader receives it, images served by the preview
    frame_html: str  # the same, with links opening outside the preview frame
    dark_html: str  # the frame with the email's dark-mode rules in force
    has_dark_styles: bool
    text: str  # the sample reader's plain-text part
    headers: tuple[tuple[str, str], ...]
    eml: bytes
    sender: str  # the From name the inbox shows
    snippet: str  # the inbox snippet: the preheader, or the start of the email without one
    test_recipients: tuple[str, ...]
    assets: Mapping[str, Path]  # published name -> file (an original inside the folder, or its resized copy)
    sources: tuple[Path, ...]  # files the build read, for the watcher
    built_at: dt.datetime

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.level == "error")

    @property
    def warnings(self) -> int:
        return len(self.findings) - self.errors

    def fingerprint(self) -> str:
        """Changes exactly when something a reader or the page shows changes."""
        digest = hashlib.sha256()
        varying = {"date", "message-id"}
        parts = [self.html, self.dark_html, self.text, self.rendered.web_html, self.sender,
                 self.snippet, self.rendered.subject, repr(self.findings),
                 repr(self.test_recipients), repr(sorted(self.assets.items())),
                 repr([h for h in self.headers if h[0].lower() not in varying])]
        for part in parts:
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()


_DARK_QUERY = re.compile(r"\(\s*prefers-color-scheme\s*:\s*dark\s*\)", re.IGNORECASE)
_LIGHT_QUERY = re.compile(r"\(\s*prefers-color-scheme\s*:\s*light\s*\)", re.IGNORECASE)
_STYLE = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.IGNORECASE | re.DOTALL)
_HEAD_OPEN = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
_HEAD_CLOSE = re.compile(r"</head\s*>", re.IGNORECASE)


def _after_head(html: str, snippet: str) -> str:
    if _HEAD_OPEN.search(html):
        return _HEAD_OPEN.sub(lambda m: f"{m[0]}\n{snippet}", html, count=1)
    return snippet + html


def frame_document(html: str) -> str:
    """The email for a preview frame: links open in a new tab instead of inside the frame."""
    return _after_head(html, '<base target="_blank">')


def has_dark_styles(html: str) -> bool:
    return any(_DARK_QUERY.search(m[2]) for m in _STYLE.finditer(html))


def force_dark(html: str) -> str:
    """The email as a dark-mode client shows it: its ``prefers-color-scheme: dark`` rules
    always apply and its light-only rules never do. A page cannot switch an iframe's
    ``prefers-color-scheme``, so the email's own style sheet is rewritten instead."""

    def rewrite(match: re.Match[str]) -> str:
        css = _DARK_QUERY.sub("(min-width: 0px)", match[2])
        css = _LIGHT_QUERY.sub("(max-width: 0px)", css)
        return f"{match[1]}{css}{match[3]}"

    dark = _STYLE.sub(rewrite, html)
    scheme = "<style>:root { color-scheme: dark; }</style>"
    if _HEAD_CLOSE.search(dark):
        return _HEAD_CLOSE.sub(lambda m: f"{scheme}\n{m[0]}", dark, count=1)
    return scheme + dark


def _snippet(preheader: str, text: str, limit: int = 140) -> str:
    if preheader.strip():
        return preheader.strip()
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def preview_prefix(slug: str) -> str:
    """Where the preview serves an issue's pages: ``/issue/<slug>/``."""
    return f"/issue/{quote(slug, safe='')}/"


class Workspace:
    """A newsletter folder, read afresh for every build: the builder behind the preview."""

    def __init__(self, config_path: Path | str) -> None:
        self.config_path = Path(config_path).resolve()
        self.root = self.config_path.parent
        self.issues_dir = self.root / "issues"

    def config(self) -> Config:
        return load_config(self.config_path)

    def slugs(self) -> list[str]:
        """Every issue folder's name, oldest first."""
        return [folder.name for folder in issue_folders(self.issues_dir)]

    def has(self, slug: str) -> bool:
        """Whether ``slug`` names an issue folder (an exact name, never a path)."""
        return slug in self.slugs()

    def listing(self) -> list[IssueListing]:
        """Every issue with its subject and state, newest first; a broken one with its error."""
        config = self.config()
        tz = config.newsletter.timezone
        sent = {slug: when.astimezone(tz) for slug, when in sent_issues(config).items()}
        numbers = headlines(config) if sent else {}
        out = []
        for folder in reversed(issue_folders(self.issues_dir)):
            try:
                issue = load_issue(folder, config.newsletter.author, config.newsletter.timezone)
            except NewsletterError as exc:
                out.append(IssueListing(slug=folder.name, error=self.describe(exc)))
                continue
            out.append(IssueListing(slug=issue.slug, subject=issue.subject, date=issue.date,
                                    state=issue_state(issue, sent.get(issue.slug)),
                                    numbers=numbers.get(issue.slug, "")))
        return out

    def render(self, config: Config, slug: str) -> Rendered:
        """The issue ``slug``, loaded and rendered."""
        if not self.has(slug):
            known = ", ".join(self.slugs()) or "none yet"
            raise IssueNotFound(f"no issue {slug!r} in {self.issues_dir} (issues: {known})")
        issue = load_issue(self.issues_dir / slug, config.newsletter.author,
                           config.newsletter.timezone)
        return render_issue(config, issue)

    def build(self, slug: str) -> IssuePreview:
        """Load, render and check one issue; raises NewsletterError naming file and line."""
        config = self.config()
        rendered = self.render(config, slug)
        issue = rendered.issue
        findings = tuple(run_checks(config, rendered))
        proof = sample(config, rendered, preview_prefix(slug) + "web/")
        body = proof.message.get_body(("plain",))
        text = body.get_content() if body is not None else rendered.text
        framed = frame_document(proof.html)
        assets = {}
        for asset in rendered.assets:
            if http.contained(self.root, asset.source) is not None:
                assets[asset.name] = asset.path
        n = config.newsletter
        return IssuePreview(
            slug=slug,
            rendered=rendered,
            findings=findings,
            html=proof.html,
            frame_html=framed,
            dark_html=force_dark(framed),
            has_dark_styles=has_dark_styles(proof.html),
            text=text,
            headers=tuple((name, str(value)) for name, value in proof.message.items()),
            eml=proof.raw,
            sender=n.sender.name or n.sender.email,
            snippet=_snippet(rendered.preheader, text),
            test_recipients=config.preview.test_recipients,
            assets=MappingProxyType(assets),
            sources=(*issue.source_files, *(a.source for a in rendered.assets)),
            built_at=dt.datetime.now().astimezone(),
        )

    def watched(self) -> list[Path]:
        """Files and folders whose changes can change a preview."""
        return [self.config_path, self.root / ".env", self.issues_dir, self.root / "templates",
                builtin_templates()]

    def describe(self, exc: BaseException) -> str:
        """An error message for the page: paths inside the folder shown relative to it."""
        message = str(exc) if isinstance(exc, NewsletterError) else (
            f"unexpected {type(exc).__name__}: {exc}"
        )
        return message.replace(f"{self.root}{os.sep}", "")


class SequenceWorkspace(Workspace):
    """The steps of one welcome sequence (sequences/<name>/) in place of the issues: each
    step's page is the email a new reader gets, with the same checks as an issue."""

    def __init__(self, config_path: Path | str, name: str) -> None:
        super().__init__(config_path)
        self.name = name
        self.folder = self.root / "sequences" / name

    def _steps(self):
        from ..sequences import load_sequence

        return load_sequence(self.folder).steps

    def slugs(self) -> list[str]:
        try:
            return [step.name for step in self._steps()]
        except NewsletterError:
            return sorted(p.stem for p in self.folder.glob("[0-9]*.md"))

    def listing(self) -> list[IssueListing]:
        from ..sequences import show_delay

        try:
            steps = self._steps()
        except NewsletterError as exc:
            return [IssueListing(slug=self.name, error=self.describe(exc))]
        return [IssueListing(slug=step.name, subject=step.subject,
                             state=IssueState("sent on joining" if not step.delay else
                                              f"sent {show_delay(step.delay)} after joining"))
                for step in steps]

    def render(self, config: Config, slug: str) -> Rendered:
        from ..sequences import find_step, load_sequence, render_step

        return render_step(config, find_step(load_sequence(self.folder), slug))

    def watched(self) -> list[Path]:
        return [self.config_path, self.root / ".env", self.folder, self.root / "templates",
                builtin_templates()]


# ---------------------------------------------------------------------------------------------
# Watching and rebuilding

Snapshot = dict[str, tuple[int, int]]
_IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".part")


def snapshot(paths: Iterable[Path]) -> Snapshot:
    """Modification time and size of every file under ``paths`` (hidden files skipped)."""
    state: Snapshot = {}
    for path in paths:
        _scan(Path(path), state, depth=0)
    return state


def _scan(path: Path, state: Snapshot, depth: int) -> None:
    try:
        info = path.stat()
    except OSError:
        return
    if stat.S_ISDIR(info.st_mode):
        if depth > 8:
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_IGNORED_SUFFIXES) or name == "__pycache__":
                continue
            _scan(Path(entry.path), state, depth + 1)
    else:
        state[str(path)] = (info.st_mtime_ns, info.st_size)


@dataclass(frozen=True, slots=True)
class Entry:
    """What the preview shows for one issue: its last good build and its current error."""

    build: IssuePreview | None
    error: str | None
    version: int
    fingerprint: str = field(default="", repr=False)


class LivePreview:
    """The builds on screen; rebuilt when a watched file changes, swapped in only whole."""

    def __init__(self, workspace: Workspace, *, log: Log | None = None) -> None:
        self.workspace = workspace
        self.log = log or (lambda message: None)
        self._entries: dict[str, Entry] = {}
        self._counter = 0  # bumped whenever anything shown changes
        self._changes = 0  # the value of _counter at the last file change (for the index)
        self._snapshot: Snapshot | None = None
        self._cond = threading.Condition()
        self._build_lock = threading.Lock()  # one build at a time: rendering is not thread-safe
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- builds

    def entry(self, slug: str) -> Entry | None:
        """The entry for ``slug``, built on first request; None when no such issue exists."""
        with self._cond:
            found = self._entries.get(slug)
        if found is not None:
            return found
        if not self.workspace.has(slug):
            return None
        with self._build_lock:
            with self._cond:
                found = self._entries.get(slug)
            return found if found is not None else self._rebuild(slug)

    def _rebuild(self, slug: str) -> Entry:
        """Build ``slug`` and swap the result in; the caller holds the build lock."""
        started = time.monotonic()
        try:
            built = self.workspace.build(slug)
        except Exception as exc:  # the server outlives any build, even a bug in one
            if not isinstance(exc, NewsletterError):
                self.log("".join(traceback.format_exception(exc)).rstrip())
            message = self.workspace.describe(exc)
            with self._cond:
                old = self._entries.get(slug)
                fingerprint = "error\0" + message
                if old is not None and old.fingerprint == fingerprint:
                    return old
                self._counter += 1
                new = Entry(build=old.build if old else None, error=message,
                            version=self._counter, fingerprint=fingerprint)
                self._entries[slug] = new
                self._cond.notify_all()
            self.log(f"error: {message}")
            return new
        fingerprint = built.fingerprint()
        with self._cond:
            old = self._entries.get(slug)
            if old is not None and old.fingerprint == fingerprint:
                return old
            self._counter += 1
            new = Entry(build=built, error=None, version=self._counter, fingerprint=fingerprint)
            self._entries[slug] = new
            self._cond.notify_all()
        elapsed = (time.monotonic() - started) * 1000
        self.log(f"built {slug} in {elapsed:.0f} ms ({_checks_summary(built)})")
        return new

    def _watched(self) -> list[Path]:
        paths = self.workspace.watched()
        with self._cond:
            for current in self._entries.values():
                if current.build is not None:
                    paths.extend(current.build.sources)
        return paths

    def poll(self) -> bool:
        """Rebuild the issues on screen if a watched file changed; True when one had.

        The first call only records the files' state."""
        now = snapshot(self._watched())
        if now == self._snapshot:
            return False
        first = self._snapshot is None
        self._snapshot = now
        if first:
            return False
        with self._build_lock:
            with self._cond:
                slugs = list(self._entries)
            for slug in slugs:
                self._rebuild(slug)
        with self._cond:
            self._counter += 1
            self._changes = self._counter
            self._cond.notify_all()
        return True

    # -- waiting for changes

    def version(self, slug: str | None) -> int:
        """The version of ``slug``'s entry, or (None) of the file list for the index."""
        with self._cond:
            if slug is None:
                return self._changes
            found = self._entries.get(slug)
            return found.version if found else 0

    def wait(self, slug: str | None, after: int, timeout: float) -> int:
        """Block until the version passes ``after``, ``timeout`` passes, or the server stops."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._stop.is_set() or self._version_locked(slug) > after, timeout
            )
            return self._version_locked(slug)

    def _version_locked(self, slug: str | None) -> int:
        if slug is None:
            return self._changes
        found = self._entries.get(slug)
        return found.version if found else 0

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # -- the watcher thread

    def start(self, interval: float = POLL_INTERVAL) -> None:
        """Watch the files in a background thread, every ``interval`` seconds."""
        if self._thread is not None:
            return
        self.poll()
        self._thread = threading.Thread(target=self._watch, args=(interval,),
                                        name="preview-watcher", daemon=True)
        self._thread.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception as exc:  # keep watching whatever happens
                self.log(f"watcher: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _checks_summary(built: IssuePreview) -> str:
    if not built.findings:
        return "checks passed"
    return f"{plural(built.errors, 'error')}, {plural(built.warnings, 'warning')}"


# ---------------------------------------------------------------------------------------------
# The app


@cache
def _ui() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(builtin_templates() / "preview")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clock"] = lambda moment: moment.strftime("%H:%M:%S")
    env.filters["longdate"] = lambda d: f"{d.day} {d.strftime('%B %Y')}" if d else ""
    return env


def render_ui(name: str, **context: Any) -> str:
    return _ui().get_template(name).render(context)


class PreviewApp:
    """The preview as a WSGI app: an index of issues and a live page per issue.

    ``send_test``, when given, is called with the rendered issue when the page's "Send test"
    button is pressed; it returns a line to show, or raises NewsletterError.
    """

    def __init__(self, workspace: Workspace, *, send_test: SendTest | None = None,
                 log: Log | None = None, allowed_hosts: Iterable[str] = ()) -> None:
        self.workspace = workspace
        self.live = LivePreview(workspace, log=log)
        self.send_test = send_test
        self.allowed_hosts = set(http.LOOPBACK_HOSTS) | set(allowed_hosts)
        self.token = secrets.token_urlsafe(24)  # proves a POST came from a page we served
        self.instance = secrets.token_hex(6)  # tells a page that the server was restarted
        self.keepalive = KEEPALIVE
        self.url_map = Map([
            Rule("/", endpoint="index"),
            Rule("/list", endpoint="index_list"),
            Rule("/events", endpoint="index_events"),
            Rule("/issue/<slug>/", endpoint="issue"),
            Rule("/issue/<slug>/panel", endpoint="panel"),
            Rule("/issue/<slug>/events", endpoint="events"),
            Rule("/issue/<slug>/email.html", endpoint="email"),
            Rule("/issue/<slug>/frame/<any(light, dark):scheme>.html", endpoint="frame"),
            Rule("/issue/<slug>/email.txt", endpoint="text"),
            Rule("/issue/<slug>/message.eml", endpoint="eml"),
            Rule("/issue/<slug>/headers.json", endpoint="headers"),
            Rule("/issue/<slug>/checks.json", endpoint="checks"),
            Rule("/issue/<slug>/web/", endpoint="web"),
            Rule("/issue/<slug>/web/<path:name>", endpoint="asset"),
            Rule("/issue/<slug>/send-test", endpoint="send_test", methods=["POST"]),
        ], merge_slashes=False)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        if not http.host_allowed(request.host, self.allowed_hosts):
            return self._error_page(403, "This preview answers on 127.0.0.1 only.")
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
            return getattr(self, f"on_{endpoint}")(request, **args)
        except NotFound:
            return self._error_page(404, "There is nothing here. The index lists every issue.")
        except HTTPException as exc:
            if exc.code is not None and 300 <= exc.code < 400:
                return http.secure(exc.get_response(request.environ))  # type: ignore[arg-type]
            return self._error_page(exc.code or 500, exc.description or exc.name)
        except Exception as exc:  # a bug in a page must not take the preview down
            self.live.log("".join(traceback.format_exception(exc)).rstrip())
            return self._error_page(500, f"The preview failed: {type(exc).__name__}: {exc}")

    def _error_page(self, status: int, message: str) -> Response:
        nonce = secrets.token_urlsafe(12)
        body = render_ui("error.html", status=status, message=message, nonce=nonce)
        return http.html_response(body, status, csp=PAGE_CSP.format(nonce=nonce))

    def _entry(self, slug: str) -> Entry:
        found = self.live.entry(slug)
        if found is None:
            raise NotFound()
        return found

    def _built(self, slug: str) -> IssuePreview | Response:
        """The last good build of ``slug``, or a response saying why there is none."""
        found = self._entry(slug)
        if found.build is None:
            return http.text_response(f"The issue does not build:\n{found.error}\n", 503)
        return found.build

    # -- pages

    def on_index(self, request: Request) -> Response:
        nonce = secrets.token_urlsafe(12)
        body = render_ui("index.html", nonce=nonce, **self._listing())
        return http.html_response(body, csp=PAGE_CSP.format(nonce=nonce))

    def on_index_list(self, request: Request) -> Response:
        return http.html_response(render_ui("_issues.html", **self._listing()))

    def _listing(self) -> dict[str, Any]:
        shown = {"version": self.live.version(None), "server": self.instance}
        try:
            return {**shown, "issues": self.workspace.listing(), "error": None}
        except NewsletterError as exc:
            return {**shown, "issues": [IssueListing(slug=s) for s in reversed(self.workspace.slugs())],
                    "error": self.workspace.describe(exc)}

    def on_issue(self, request: Request, slug: str) -> Response:
        found = self._entry(slug)
        nonce = secrets.token_urlsafe(12)
        body = render_ui("issue.html", slug=slug, entry=found, nonce=nonce, **self._page(found))
        return http.html_response(body, csp=PAGE_CSP.format(nonce=nonce))

    def on_panel(self, request: Request, slug: str) -> Response:
        found = self._entry(slug)
        return http.html_response(render_ui("_panel.html", slug=slug, entry=found,
                                            **self._page(found)))

    def _page(self, found: Entry) -> dict[str, Any]:
        return {
            "build": found.build,
            "error": found.error,
            "send_test": self.send_test is not None,
            "token": self.token,
            "server": self.instance,
            "phone_width": PHONE_WIDTH,
            "desktop_width": DESKTOP_WIDTH,
        }

    # -- live updates

    def on_events(self, request: Request, slug: str) -> Response:
        self._entry(slug)
        return self._stream(slug, request)

    def on_index_events(self, request: Request) -> Response:
        return self._stream(None, request)

    def _stream(self, slug: str | None, request: Request) -> Response:
        """Server-Sent Events: the current version at once, then each new one."""
        live = self.live
        server = self.instance

        def events() -> Iterator[bytes]:
            version = live.version(slug)
            yield http.sse_message({"version": version, "server": server}, event="build")
            while not live.stopped:
                newer = live.wait(slug, version, self.keepalive)
                if live.stopped:
                    return
                if newer > version:
                    version = newer
                    yield http.sse_message({"version": version, "server": server}, event="build")
                else:
                    yield b": keep-alive\n\n"

        response = Response(events(), mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"
        return http.secure(response, None)

    # -- the email and its parts

    def on_email(self, request: Request, slug: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        return http.html_response(built.html, csp=EMAIL_CSP, frame="SAMEORIGIN")

    def on_frame(self, request: Request, slug: str, scheme: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        body = built.dark_html if scheme == "dark" else built.frame_html
        return http.html_response(body, csp=EMAIL_CSP, frame="SAMEORIGIN")

    def on_text(self, request: Request, slug: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        return http.text_response(built.text)

    def on_eml(self, request: Request, slug: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        if request.args.get("download"):
            response = http.text_response(built.eml, mimetype="message/rfc822")
            response.headers["Content-Disposition"] = f'attachment; filename="{slug}.eml"'
            return response
        return http.text_response(built.eml)

    def on_headers(self, request: Request, slug: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        return http.json_response([{"name": k, "value": v} for k, v in built.headers])

    def on_checks(self, request: Request, slug: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        return http.json_response([
            {"level": f.level, "where": f.where, "message": f.message} for f in built.findings
        ])

    def on_web(self, request: Request, slug: str) -> Response:
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        return http.html_response(built.rendered.web_html, csp=EMAIL_CSP, frame="SAMEORIGIN")

    def on_asset(self, request: Request, slug: str, name: str) -> Response:
        """An image of the issue: only files the issue publishes, only inside the folder."""
        built = self._built(slug)
        if isinstance(built, Response):
            return built
        published = built.assets.get(name)  # only files of images inside the folder
        if published is None or not published.is_file():
            raise NotFound()
        response = send_file(published, request.environ, max_age=0)
        return http.secure(response, "default-src 'none'", frame="SAMEORIGIN")

    # -- the test send

    def on_send_test(self, request: Request, slug: str) -> Response:
        if self.send_test is None:
            raise NotFound()
        given = request.form.get("token", "")
        if not http.same_origin(request) or not hmac.compare_digest(given, self.token):
            return http.json_response(
                {"ok": False, "message": "refused: reload the preview page and try again"}, 403
            )
        found = self._entry(slug)
        if found.error is not None or found.build is None:
            return http.json_response(
                {"ok": False, "message": "the issue does not build; fix the error first"}, 409
            )
        try:
            result = self.send_test(found.build.rendered)
        except NewsletterError as exc:
            return http.json_response({"ok": False, "message": str(exc)}, 502)
        return http.json_response({"ok": True, "message": result})


# ---------------------------------------------------------------------------------------------
# Serving


class _QuietHandler(WSGIRequestHandler):
    """No access log: the terminal shows builds and errors, not every frame and image."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "; pass --port with another number" if port else ""
        reason = "the port is in use" if exc.errno == 98 else (exc.strerror or str(exc))
        raise NewsletterError(f"cannot listen on {host}:{port}: {reason}{hint}") from None
    return sock


class PreviewServer:
    """The preview app on ``host:port`` (127.0.0.1 unless told otherwise), with its watcher."""

    def __init__(self, app: PreviewApp, host: str = DEFAULT_HOST, port: int = 8025,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.app = app
        self.poll_interval = poll_interval
        sock = _bind(host, port)
        try:
            self.httpd: BaseWSGIServer = make_server(
                host, port, app, threaded=True, request_handler=_QuietHandler, fd=sock.fileno()
            )
        finally:
            sock.close()  # the server holds its own duplicate of the socket
        app.allowed_hosts.add(host)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        self.app.live.start(self.poll_interval)
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.app.live.stop()

    def start(self) -> None:
        """Serve from a background thread."""
        self.app.live.start(self.poll_interval)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="preview-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.app.live.stop()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()


def resolve_slug(config: Config, name: str | None) -> str | None:
    """The slug of the issue named on the command line (None and no issues: None)."""
    if name is None and not issue_folders(config.issues_dir):
        return None
    folder = resolve_issue(config.issues_dir, name)
    if folder.resolve().parent != config.issues_dir.resolve():
        raise IssueNotFound(
            f"{folder} is not in {config.issues_dir}; the preview shows the issues in that folder"
        )
    return folder.name


def serve(config: Config, issue: str | None = None, *, host: str = DEFAULT_HOST,
          port: int | None = None, send_test: SendTest | None = None,
          log: Log | None = None, sequence: str | None = None) -> tuple[PreviewServer, str]:
    """A preview server for ``config``'s folder and the URL of ``issue``'s page (the newest
    issue by default, the index when there are none); with ``sequence``, of that welcome
    sequence's steps instead (``issue`` then names a step). Call ``serve_forever`` on it."""
    workspace: Workspace
    if sequence is not None:
        from ..sequences import find_sequence, find_step

        found = find_sequence(config, sequence)
        slug: str | None = find_step(found, issue).name if issue else found.steps[0].name
        workspace = SequenceWorkspace(config.path, found.name)
    else:
        slug = resolve_slug(config, issue)
        workspace = Workspace(config.path)
    app = PreviewApp(workspace, send_test=send_test, log=log)
    server = PreviewServer(app, host=host, port=config.preview.port if port is None else port)
    page = server.url + (preview_prefix(slug)[1:] if slug else "")
    return server, page
