"""Commands for the public side: serve, archive."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .common import Env, pass_env, plural, show_path

# newsletter.web.serving's defaults, written out so that --help does not load waitress.
REQUEST_TIMEOUT = 10
CONNECTION_LIMIT = 500


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; keep 127.0.0.1 behind a reverse proxy.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Requests served at once.")
@click.option("--request-timeout", default=REQUEST_TIMEOUT, show_default=True, type=click.IntRange(1, 300),
              metavar="SECONDS",
              help="Time a client has to send a whole request (headers and body), and to start "
                   "one on an idle connection; slower clients are disconnected.")
@click.option("--connection-limit", default=CONNECTION_LIMIT, show_default=True,
              type=click.IntRange(10, 100_000),
              help="Connections open at once; at the limit the ones that have waited longest for "
                   "their client are closed to make room.")
@pass_env
def serve(env: Env, host: str, port: int, threads: int, request_timeout: int, connection_limit: int) -> None:
    """Serve the public pages: subscribe, confirm, unsubscribe, webhooks, archive, feed.

    Runs a production WSGI server (waitress) until Ctrl-C or SIGTERM. Put it behind a
    reverse proxy that terminates HTTPS for [newsletter] site_url; the README shows how.
    """
    from ..store import open_store
    from ..web.app import PublicApp, make_server, run, url_of

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    config = env.config
    store = open_store(config)
    try:
        from ..web.signup import ProcessMailer

        secret = config.secret("NEWSLETTER_SECRET")  # without one, PublicApp says what to do
        app = PublicApp(config, store, mailer=ProcessMailer(config, secret) if secret else None)
        try:
            server = make_server(app, host, port, threads=threads, request_timeout=request_timeout,
                                 connections=connection_limit)
        except BaseException:
            app.close()
            raise
        listening = url_of(server)
        site = config.newsletter.site_url
        # Behind a proxy the site and the listening address differ; on its own, they are one.
        shown = "" if site.rstrip("/") == listening.rstrip("/") else f" {site}"
        click.echo(f"serving{shown} at {listening}  (Ctrl-C to stop)")
        run(server, app)
    finally:
        store.close()
    click.echo("stopped")


@click.command()
@click.option("--out", "out", default="site", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write archive/, feed.xml and static/ into.")
@pass_env
def archive(env: Env, out: Path) -> None:
    """Write the archive of sent issues and the Atom feed as static files.

    OUT/archive/ holds an index and each sent issue's web version with its images,
    OUT/feed.xml the feed: the same pages `newsletter serve` shows, for any static host.
    """
    from ..store import open_store
    from ..web.archive import write_archive

    with open_store(env.config) as store:
        written = write_archive(env.config, store, out)
    where = show_path(written.out)
    click.echo(f"wrote {plural(written.issues, 'issue')}, {plural(written.files, 'file')}: "
               f"{where}/archive/ and {where}/feed.xml")


COMMANDS = [serve, archive]
