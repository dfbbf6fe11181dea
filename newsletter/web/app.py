"""The public web app: what readers and email services reach on ``[newsletter] site_url``.

========================  ==================================================================
GET  /subscribe           the sign-up form
POST /subscribe           form or JSON (email, name, list): double opt-in, same answer always
GET  /confirm/<token>     a page with one button (mail scanners GET: a GET changes nothing)
POST /confirm/<token>     the button: makes the membership active (each link works once)
GET  /unsubscribe/<token> a page with one button (link scanners GET: a GET changes nothing)
POST /unsubscribe/<token> RFC 8058 one-click (``List-Unsubscribe=One-Click``) or the button
POST /webhooks/<name>     bounces and complaints from postmark, sendgrid, mailgun, resend, ses
GET  /archive/            sent issues, newest first; /archive/<slug>/ the web version
GET  /feed.xml            Atom
GET  /healthz             200 when the database answers
GET  /static/site.css     the pages' style sheet (templates/web/site.css)
========================  ==================================================================

Only a POST changes anything: GET and HEAD (HEAD is answered as GET without the body) read.
Every absolute URL the site makes, redirects included, comes from ``[newsletter] site_url``,
never from the request's Host. Every response carries the security headers of
:mod:`newsletter.web.http` and a strict Content-Security-Policy (the pages run no script at
all); every page is a Jinja2 template with autoescaping; request bodies are capped at
``[web] max_body_bytes``. :func:`make_server` and :func:`run` serve it with waitress, a
production WSGI server, guarded against slow clients (:mod:`newsletter.web.serving`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import Map, Rule
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from ..config import Config
from ..errors import NewsletterError, StoreError
from ..render import render_template
from ..store import Store
from ..tokens import BadToken
from . import http, serving, signup
from .archive import Archive
from .webhooks import (
    PROVIDERS,
    CertificateCache,
    Webhook,
    WebhookInvalid,
    WebhookRefused,
    record_events,
    webhook_for,
)

log = logging.getLogger("newsletter.web")

PAGE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# The web version of an issue keeps its styles in the page, and may show remote images.
ISSUE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
ASSET_CSP = "default-src 'none'; frame-ancestors 'none'"
ARCHIVE_CACHE = "public, max-age=300"
PRUNE_EVERY = 500  # sign-ups between clean-ups of old rate-limit counters


class PublicApp:
    """The public endpoints as a WSGI app.

    ``mailer`` sends confirmation emails (default: a background :class:`signup.Mailer` on
    the configured provider); ``clock`` and ``certificates`` (the SNS certificate fetcher)
    are there for tests.
    """

    def __init__(self, config: Config, store: Store, *, mailer: Any = None,
                 clock: Callable[[], float] = time.time,
                 certificates: CertificateCache | None = None,
                 confirm_sns: Callable[[str], Any] | None = None) -> None:
        secret = config.secret("NEWSLETTER_SECRET")
        if not secret:
            raise NewsletterError(
                "NEWSLETTER_SECRET is not set; it signs the confirmation and unsubscribe links. "
                "Put the one your emails were sent with in .env"
            )
        self.config = config
        self.store = store
        self.secret = secret
        self.clock = clock
        self.webhooks: dict[str, Webhook | str] = {
            name: webhook_for(config, name, clock=clock, certificates=certificates, confirm=confirm_sns,
                              store=store)
            for name in PROVIDERS
        }
        self.archive = Archive(config, store)
        self.mailer = mailer if mailer is not None else signup.Mailer(config, store, secret)
        self._signups = 0
        self._lock = threading.Lock()
        self.url_map = Map([
            Rule("/", endpoint="home"),
            Rule("/healthz", endpoint="health"),
            Rule("/subscribe", endpoint="subscribe", methods=["GET", "POST"]),
            Rule("/confirm/<token>", endpoint="confirm", methods=["GET", "POST"]),
            Rule("/unsubscribe/<token>", endpoint="unsubscribe", methods=["GET", "POST"]),
            Rule("/webhooks/<provider>", endpoint="webhook", methods=["POST"]),
            Rule("/archive/", endpoint="archive_index"),
            Rule("/archive/<slug>/", endpoint="archive_issue"),
            Rule("/archive/<slug>/<path:name>", endpoint="archive_asset"),
            Rule("/feed.xml", endpoint="feed"),
            Rule("/l/<key>", endpoint="link", methods=["GET", "HEAD"]),
            Rule("/static/site.css", endpoint="stylesheet"),
            Rule("/favicon.ico", endpoint="favicon"),
        ], merge_slashes=False)
        # Redirects (werkzeug's /archive -> /archive/) are built from site_url, not the Host.
        site = urlsplit(config.newsletter.site_url)
        self.site_scheme, self.site_host, self.site_path = site.scheme, site.netloc, site.path.rstrip("/")

    def close(self) -> None:
        close = getattr(self.mailer, "close", None)
        if close:
            close()

    # -- plumbing --------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.max_content_length = self.config.web.max_body_bytes
        request.max_form_memory_size = self.config.web.max_body_bytes
        response = self.dispatch(request)
        if request.scheme == "https":
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind(self.site_host, script_name=self.site_path or "/",
                                    url_scheme=self.site_scheme, path_info=request.path,
                                    query_args=request.query_string.decode("latin-1"))
        try:
            length = request.content_length
            if length is not None and length > self.config.web.max_body_bytes:
                raise RequestEntityTooLarge()
            endpoint, args = adapter.match(method=request.method)
            return getattr(self, f"on_{endpoint}")(request, **args)
        except NotFound:
            return self.error(request, 404, "Not found", "There is nothing at this address.")
        except MethodNotAllowed as exc:
            response = self.error(request, 405, "Method not allowed", "This address does not take that kind of request.")
            response.headers["Allow"] = ", ".join(exc.valid_methods or [])
            return response
        except RequestEntityTooLarge:
            return self.error(request, 413, "Too large", "The request is larger than this site accepts.")
        except HTTPException as exc:
            if exc.code is not None and 300 <= exc.code < 400:
                return http.secure(exc.get_response(request.environ), PAGE_CSP)  # type: ignore[arg-type]
            return self.error(request, exc.code or 500, exc.name, exc.description or "")
        except StoreError as exc:
            log.error("database error on %s %s: %s", request.method, request.path, exc)
            return self.error(request, 503, "Unavailable", "The site cannot reach its database; try again in a minute.")
        except Exception as exc:  # one broken request must not take the site down
            log.error("%s %s failed:\n%s", request.method, request.path,
                      "".join(traceback.format_exception(exc)).rstrip())
            return self.error(request, 500, "Something went wrong", "The page failed; try again later.")

    def root(self, request: Request) -> str:
        """The relative way from this page back to the site root (for links and CSS)."""
        depth = request.path.count("/") - 1
        return "../" * depth

    def page(self, request: Request, template: str, code: int = 200, **context: Any) -> Response:
        context.setdefault("root", self.root(request))
        body = render_template(self.config, f"web/{template}", {"newsletter": self.config.newsletter, **context})
        return http.html_response(body, code, csp=PAGE_CSP)

    def error(self, request: Request, status: int, title: str, message: str) -> Response:
        body = render_template(self.config, "web/error.html", {
            "newsletter": self.config.newsletter, "root": self.root(request), "status": status,
            "title": title, "message": message,
        })
        return http.html_response(body, status, csp=PAGE_CSP)

    @staticmethod
    def wants_json(request: Request) -> bool:
        if request.mimetype == "application/json":
            return True
        best = request.accept_mimetypes.best_match(["text/html", "application/json"])
        return best == "application/json" and not request.accept_mimetypes.accept_html

    # -- pages -------------------------------------------------------------------------------

    def on_link(self, request: Request, key: str) -> Response:
        """A tracked link of a sent issue: to where it points, one more click for that link
        (of that issue, not of anybody). A HEAD only looks, as link scanners do."""
        from ..tracking import follow

        found = follow(self.store, key, count=request.method == "GET")
        if found is None:
            return self.error(request, 404, "Not found", "There is no such link.")
        response = Response(status=302, headers={"Location": found.url, "Cache-Control": "no-store",
                                                 "Referrer-Policy": "no-referrer"})
        return http.secure(response, PAGE_CSP)

    def on_home(self, request: Request) -> Response:
        location = f"{self.config.newsletter.site_url}/archive/"
        return http.secure(Response(status=302, headers={"Location": location}), PAGE_CSP)

    def on_health(self, request: Request) -> Response:
        try:
            with self.store.read() as conn:
                conn.execute(text("SELECT 1"))
        except StoreError:
            return http.json_response({"status": "unavailable", "database": "unreachable"}, 503)
        return http.json_response({"status": "ok"})

    def on_favicon(self, request: Request) -> Response:
        """No icon: an empty answer browsers keep, instead of a 404 on every page."""
        response = Response(status=204, headers={"Cache-Control": "public, max-age=86400"})
        return http.secure(response, ASSET_CSP)

    def on_stylesheet(self, request: Request) -> Response:
        response = send_file(self.archive.stylesheet(), request.environ, mimetype="text/css", max_age=3600)
        return http.secure(response, ASSET_CSP)

    # -- subscribe -----------------------------------------------------------------------------

    def _lists(self) -> list[dict[str, str]]:
        return [{"name": name, "label": signup.list_label(self.config, signup.ListRef(0, name, ""))}
                for name in self.config.web.public_lists]

    def _form(self, request: Request, status: int = 200, *, error: str | None = None,
              email: str = "", name: str = "", chosen: str | None = None) -> Response:
        lists = self._lists()
        wanted = chosen if chosen in {item["name"] for item in lists} else lists[0]["name"]
        return self.page(request, "subscribe.html", status, error=error, email=email, name=name,
                         lists=lists, chosen=wanted, honeypot=signup.HONEYPOT)

    def on_subscribe(self, request: Request) -> Response:
        if request.method != "POST":  # GET and HEAD only show the form
            return self._form(request, chosen=request.args.get("list"))
        as_json = self.wants_json(request)
        if request.mimetype == "application/json":
            data = request.get_json(silent=True)
            fields = data if isinstance(data, dict) else {}
        else:
            fields = request.form
        email = _field(fields, "email")
        name = _field(fields, "name")
        list_name = _field(fields, "list") or None

        try:
            signup.check_ip(self.store, self.secret, request.remote_addr or "unknown",
                            self.config.web.ip_signups_per_hour)
        except signup.RateLimited as exc:
            if as_json:
                response = http.json_response({"ok": False, "error": str(exc)}, 429)
            else:
                response = self._form(request, 429, error=f"Sorry, {exc}.", email=email, name=name,
                                      chosen=list_name)
            response.headers["Retry-After"] = str(exc.retry_after)
            return response
        self._maybe_prune()

        if not _field(fields, signup.HONEYPOT):
            try:
                job = signup.request_signup(self.store, self.config, email, name, list_name)
            except signup.SignupError as exc:
                if as_json:
                    return http.json_response({"ok": False, "error": str(exc)}, 400)
                return self._form(request, 400, error=_sentence(str(exc)), email=email, name=name,
                                  chosen=list_name)
            if job is not None:
                self.mailer.submit(job)

        label = self._label(list_name)
        message = "Check your inbox: unless the address is on the list already, a confirmation link is on its way."
        if as_json:
            return http.json_response({"ok": True, "message": message})
        return self.page(request, "subscribed.html", label=label, days=signup.CONFIRM_TTL // 86400)

    def _label(self, list_name: str | None) -> str:
        name = list_name if list_name in self.config.web.public_lists else self.config.web.public_lists[0]
        return signup.list_label(self.config, signup.ListRef(0, name, ""))

    def _maybe_prune(self) -> None:
        with self._lock:
            self._signups += 1
            due = self._signups % PRUNE_EVERY == 0
        if due:
            signup.prune_counters(self.store)

    # -- confirm and unsubscribe -----------------------------------------------------------

    def _bad_link(self, request: Request, exc: BadToken) -> Response:
        expired = "expired" in str(exc)
        # What is wrong, once; the page itself says what to do about it.
        what = str(exc).split(";", 1)[0]
        return self.page(request, "link-error.html", 400, message=_sentence(what), expired=expired)

    def on_confirm(self, request: Request, token: str) -> Response:
        # Mail scanners open every link in a new message, so opening it (GET, HEAD) only
        # shows the button; the button's POST confirms.
        post = request.method == "POST"
        try:
            result = signup.confirm(self.store, self.secret, token, apply=post)
        except BadToken as exc:
            return self._bad_link(request, exc)
        label = signup.list_label(self.config, result.list)
        if result.status == "ready":
            return self.page(request, "confirm.html", label=label, token=token)
        code = {"confirmed": 200, "used": 200, "left": 410, "blocked": 403, "gone": 410}[result.status]
        return self.page(request, "confirmed.html", code, status=result.status, label=label)

    def on_unsubscribe(self, request: Request, token: str) -> Response:
        try:
            target = signup.read_unsubscribe(self.store, self.secret, token)
        except BadToken as exc:
            return self._bad_link(request, exc)
        label = signup.list_label(self.config, target.list)
        if request.method != "POST":  # GET and HEAD (link scanners send both) change nothing
            return self.page(request, "unsubscribe.html", label=label, test=target.test, token=token)
        # RFC 8058: the body is List-Unsubscribe=One-Click; our own button posts the form.
        # Either way the token in the URL is what authorises it: no cookie, no other check.
        signup.unsubscribe(self.store, target)
        return self.page(request, "unsubscribed.html", label=label, test=target.test,
                         list_name=target.list.name if target.list else "")

    # -- webhooks ------------------------------------------------------------------------------

    def on_webhook(self, request: Request, provider: str) -> Response:
        hook = self.webhooks.get(provider)
        if hook is None:
            raise NotFound()
        if isinstance(hook, str):
            log.warning("webhook %s refused: not configured (%s)", provider, hook)
            return _unauthorized(provider)
        body = request.get_data(cache=False)
        try:
            found = hook.parse(request.headers, body)
        except WebhookRefused as exc:
            log.warning("webhook %s refused: %s", provider, exc)
            return _unauthorized(provider)
        except WebhookInvalid as exc:
            log.warning("webhook %s: unreadable payload: %s", provider, exc)
            return http.json_response({"ok": False, "error": str(exc)}, 400)
        recorded = record_events(self.store, provider, found, self.config.web.soft_bounce_limit)
        if recorded.new:
            log.info("webhook %s: new events %d, suppressed %d, unsubscribed %d", provider,
                     recorded.new, recorded.suppressed, recorded.unsubscribed)
        return http.json_response({"ok": True, "received": recorded.received, "new": recorded.new})

    # -- archive -------------------------------------------------------------------------------

    def on_archive_index(self, request: Request) -> Response:
        body = self.archive.index_html(self.archive.issues())
        response = http.html_response(body, csp=PAGE_CSP, cache=True)
        response.headers["Cache-Control"] = ARCHIVE_CACHE
        return response

    def on_archive_issue(self, request: Request, slug: str) -> Response:
        found = self.archive.issue(slug)
        if found is None:
            raise NotFound()
        response = http.html_response(found.web_html, csp=ISSUE_CSP, cache=True)
        response.headers["Cache-Control"] = ARCHIVE_CACHE
        return response

    def on_archive_asset(self, request: Request, slug: str, name: str) -> Response:
        if self.archive.issue(slug) is None:
            raise NotFound()
        source = self.archive.assets.get(slug).get(name)
        if source is None or not source.is_file():
            raise NotFound()
        response = send_file(source, request.environ, max_age=3600)
        return http.secure(response, ASSET_CSP)

    def on_feed(self, request: Request) -> Response:
        body = self.archive.feed_xml(self.archive.issues())
        response = http.text_response(body, mimetype="application/atom+xml", cache=True)
        response.headers["Cache-Control"] = ARCHIVE_CACHE
        return response


def _field(fields: Any, name: str) -> str:
    value = fields.get(name, "") if hasattr(fields, "get") else ""
    return value.strip() if isinstance(value, str) else ""


def _sentence(text_: str) -> str:
    text_ = text_.strip()
    return (text_[:1].upper() + text_[1:]).rstrip(".") + "." if text_ else text_


def _unauthorized(provider: str) -> Response:
    response = http.json_response({"ok": False, "error": "unauthorized"}, 401)
    if provider == "postmark":
        response.headers["WWW-Authenticate"] = 'Basic realm="newsletter webhooks"'
    return response


# ---------------------------------------------------------------------------------------------
# Serving


def make_server(app: PublicApp, host: str, port: int, *, threads: int = 8,
                request_timeout: float = serving.REQUEST_TIMEOUT,
                connections: int = serving.CONNECTION_LIMIT) -> Any:
    """A waitress server for ``app`` on ``host:port`` (0 picks a free port); behind a
    reverse proxy at ``[web] trusted_proxy`` its X-Forwarded-For/-Proto/-Host are believed.

    A request must arrive whole within ``request_timeout`` seconds of its first byte, and at
    ``connections`` open connections the longest-waiting idle or slow ones are closed to
    make room (see :mod:`newsletter.web.serving`)."""
    web = app.config.web
    options: dict[str, Any] = {
        "host": host, "port": port, "threads": threads, "ident": "newsletter",
        "max_request_body_size": web.max_body_bytes, "clear_untrusted_proxy_headers": True,
    }
    if web.trusted_proxy:
        options.update(trusted_proxy=web.trusted_proxy, trusted_proxy_count=1,
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
    try:
        return serving.create(app, request_timeout=request_timeout, connections=connections, **options)
    except OSError as exc:
        reason = "the port is in use" if exc.errno == 98 else (exc.strerror or str(exc))
        raise NewsletterError(f"cannot listen on {host}:{port}: {reason}; pass --port with another number") from None


def run(server: Any, app: PublicApp) -> None:
    """Serve until Ctrl-C or SIGTERM, then let queued confirmation emails go out."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        app.close()


def url_of(server: Any) -> str:
    if hasattr(server, "effective_listen"):  # listening on several addresses (localhost)
        host, port = server.effective_listen[0]
    else:
        host, port = server.effective_host, server.effective_port
    host, port = str(host), int(port)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


__all__ = ["PublicApp", "make_server", "run", "url_of"]
