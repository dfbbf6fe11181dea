"""Every page the public site serves, and every page `newsletter archive` writes, passes the
Nu HTML checker with no errors. The checker is vnu.jar from npm (tests/validator), run
once for all the pages by Debian's Java."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.test import Client

from newsletter import subscribers as subs
from newsletter import tokens
from newsletter.cli import main
from newsletter.store import open_store
from newsletter.web.app import PublicApp

from .conftest import REPO
from .webutil import (
    ISSUE,
    SECRET,
    add_reader,
    confirm_path,
    load,
    outbox,
    send_issue,
    unsubscribe_path,
    write_letter,
)

VNU = REPO / "tests" / "validator" / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"
REQUIRE_ALL = bool(os.environ.get("NEWSLETTER_REQUIRE_ALL"))  # read before any test clears it
INSTALL = ("install Java with `apt-get install default-jre-headless` and the checker with "
           "`npm ci --prefix tests/validator --ignore-scripts` (.ci/run does both)")

# What each page is; the fixture below makes exactly these.
PAGES = [
    "subscribe", "subscribe-refused", "subscribed",
    "confirm", "confirmed", "confirm-used", "confirm-left", "confirm-blocked", "confirm-gone",
    "link-expired", "link-forged",
    "unsubscribe", "unsubscribed", "unsubscribe-test-copy", "unsubscribed-test-copy",
    "error-404", "error-405", "error-413",
    "archive-empty", "archive", "issue",
    "written-archive", "written-issue",
]
# A page with the two mistakes the checker once found here, to show it still finds them.
CANARY = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>canary</title></head>
<body><p><time datetime="2026-12-01T09:00:00.123456+00:00">1 December</time></p>
<form method="post" action=""><button type="submit">Go</button></form></body></html>
"""


def _missing() -> str | None:
    if shutil.which("java") is None:
        return f"the Nu HTML checker needs Java, which is not installed; {INSTALL}"
    if not VNU.is_file():
        return f"the Nu HTML checker (vnu.jar) is not installed; {INSTALL}"
    return None


def _site_pages(root: Path) -> dict[str, bytes]:
    """Every kind of page the site serves, and the two `newsletter archive` writes, by name
    (run in ``root``)."""
    write_letter(root, web='public_lists = ["main", "weekly"]\n')
    config = load(root)
    pages: dict[str, bytes] = {}
    with open_store(config) as store:
        subs.create_list(store, "weekly", title="The weekly digest")
        add_reader(store, "ann@example.com")
        app = PublicApp(config, store)
        client = Client(app)

        def get(name: str, path: str, status: int = 200, method: str = "GET", **kw) -> None:
            response = client.open(path, method=method, **kw)
            assert response.status_code == status, (name, response.status_code)
            pages[name] = response.get_data()

        def sign_up(address: str, ip: str) -> str:
            get("subscribed", "/subscribe", method="POST", data={"email": address},
                environ_overrides={"REMOTE_ADDR": ip})
            app.mailer.wait()
            [mail] = [m for m in outbox(root, "confirm") if m["To"] == address]
            return confirm_path(mail)

        try:
            get("archive-empty", "/archive/")
            campaign = send_issue(config, store)
            [issue_mail] = outbox(root, f"{campaign.id}-{campaign.issue}")
            get("archive", "/archive/")
            get("issue", f"/archive/{ISSUE}/")

            get("subscribe", "/subscribe")
            get("subscribe-refused", "/subscribe", 400, method="POST", data={"email": "not an address"})
            first = sign_up("rita@example.com", "192.0.2.1")
            get("confirm", first)
            get("confirmed", first, method="POST")
            get("confirm-used", first, method="POST")
            subs.unsubscribe(store, "rita@example.com")
            get("confirm-left", first, 410, method="POST")
            blocked = sign_up("bounced@example.com", "192.0.2.2")
            subs.suppress(store, "bounced@example.com", "bounced")
            get("confirm-blocked", blocked, 403)
            nobody = tokens.sign(SECRET, "confirm", {"s": 999, "l": 1, "c": 0, "m": "x"}, ttl=60)
            get("confirm-gone", f"/confirm/{nobody}", 410)
            expired = tokens.sign(SECRET, "confirm", {"s": 1, "l": 1, "c": 0}, ttl=-1)
            get("link-expired", f"/confirm/{expired}", 400)
            get("link-forged", "/confirm/bm90.aGluZw", 400)

            leave = unsubscribe_path(issue_mail)
            get("unsubscribe", leave)
            get("unsubscribed", leave, method="POST", data={"unsubscribe": "1"})
            test_copy = "/unsubscribe/" + tokens.sign(SECRET, "unsubscribe", {"s": 0, "l": 0})
            get("unsubscribe-test-copy", test_copy)
            get("unsubscribed-test-copy", test_copy, method="POST")

            get("error-404", "/nowhere", 404)
            get("error-405", "/subscribe", 405, method="DELETE")
            get("error-413", "/subscribe", 413, method="POST", data={"name": "x" * 300_000})
        finally:
            app.close()

    result = CliRunner().invoke(main, ["archive", "--out", "site"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pages["written-archive"] = (root / "site" / "archive" / "index.html").read_bytes()
    pages["written-issue"] = (root / "site" / "archive" / ISSUE / "index.html").read_bytes()
    return pages


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, list[dict]]:
    """The checker's messages for each page (and the canary), from one run of vnu."""
    missing = _missing()
    if missing:
        if REQUIRE_ALL:
            pytest.fail(f"NEWSLETTER_REQUIRE_ALL: {missing}")
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("pages")
    with pytest.MonkeyPatch.context() as patch:  # as conftest's _clean_env, for the whole module
        for name in [n for n in os.environ if n.startswith("NEWSLETTER_")]:
            patch.delenv(name)
        (root / "letter").mkdir()
        patch.chdir(root / "letter")
        pages = _site_pages(root / "letter")
    assert sorted(pages) == sorted(PAGES)
    folder = root / "checked"
    folder.mkdir()
    files = {}
    for name, body in {**pages, "canary": CANARY.encode()}.items():
        files[name] = folder / f"{name}.html"
        files[name].write_bytes(body)
    run = subprocess.run(
        ["java", "-jar", str(VNU), "--format", "json", "--stdout", "--exit-zero-always",
         *(str(p) for p in files.values())],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    messages = json.loads(run.stdout)["messages"]
    found: dict[str, list[dict]] = {name: [] for name in files}
    by_file = {path.name: name for name, path in files.items()}
    for message in messages:
        name = by_file.get(message.get("url", "").rsplit("/", 1)[-1])
        assert name is not None, message  # a message about no page: the checker itself failed
        found[name].append(message)
    return found


def _errors(messages: list[dict]) -> list[str]:
    return [f"line {m.get('lastLine', '?')}: {m.get('message')} [{m.get('extract', '').strip()}]"
            for m in messages if m.get("type") in ("error", "non-document-error")
            or m.get("subType") == "fatal"]


def test_the_checker_still_finds_the_mistakes_it_once_found(report):
    errors = "\n".join(_errors(report["canary"]))
    assert "datetime" in errors and "action" in errors, errors


@pytest.mark.parametrize("name", PAGES)
def test_every_page_is_valid_html(report, name):
    assert _errors(report[name]) == []
