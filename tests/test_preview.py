"""The preview app in-process (werkzeug's test client), plus its server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from werkzeug.test import Client

from newsletter.cli import main
from newsletter.config import load as load_config
from newsletter.content import load_issue
from newsletter.errors import NewsletterError
from newsletter.render import Rendered, builtin_templates
from newsletter.web.http import contained, host_allowed, sse_message
from newsletter.web.preview import (
    PreviewApp,
    PreviewServer,
    Workspace,
    force_dark,
    issue_state,
    serve,
    snapshot,
)

QUOTA = "2026-12-01-the-quota-is-not-the-goal"
LISTEN = "2026-12-08-listen-before-you-lead"
QUOTA_POST = f"issues/{QUOTA}/01-the-quota-is-not-the-goal.md"


def make_app(root: Path, **kwargs) -> PreviewApp:
    app = PreviewApp(Workspace(root / "newsletter.toml"), **kwargs)
    app.live.poll()  # record the files as they are now
    return app


@pytest.fixture
def app(sample_letter: Path) -> PreviewApp:
    return make_app(sample_letter)


@pytest.fixture
def client(app: PreviewApp) -> Client:
    return Client(app)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------
# Index


def test_index_lists_every_issue_newest_first_with_links(client: Client) -> None:
    body = page(client, "/")
    assert body.index("Listen before you lead") < body.index("The quota is not the goal")
    assert f'href="/issue/{QUOTA}/"' in body
    assert f'href="/issue/{LISTEN}/"' in body
    assert body.count('class="state state-draft"') == 2


def test_index_shows_scheduled_issues_with_their_send_time(sample_letter: Path, client: Client) -> None:
    edit(sample_letter / f"issues/{LISTEN}/issue.md", "list: main\n",
         "list: main\nsend_at: 2026-12-08 07:30\n")
    body = page(client, "/")
    assert "scheduled for Tue 08 Dec 2026, 07:30 CET" in body
    assert body.count('class="state state-draft"') == 1


def test_index_names_an_issue_that_does_not_build(sample_letter: Path, client: Client) -> None:
    edit(sample_letter / f"issues/{QUOTA}/issue.md", 'subject: "The quota', "subject: [The quota")
    body = page(client, "/")
    assert "does not build" in body
    assert f"issues/{QUOTA}/issue.md line 2: front matter is not valid YAML" in body
    assert "Listen before you lead" in body


def test_index_without_issues_says_how_to_start_one(letter: Path) -> None:
    body = page(Client(make_app(letter)), "/")
    assert 'newsletter new "Title"' in body


def test_issue_state_is_draft_or_scheduled(sample_letter: Path) -> None:
    config = load_config(sample_letter / "newsletter.toml")
    folder = sample_letter / "issues" / LISTEN
    issue = load_issue(folder, "x", config.newsletter.timezone)
    assert issue_state(issue).kind == "draft"
    assert issue_state(issue).label == "draft"
    edit(folder / "issue.md", "list: main\n", "list: main\nsend_at: 2026-12-08 07:30\n")
    scheduled = issue_state(load_issue(folder, "x", config.newsletter.timezone))
    assert scheduled.kind == "scheduled"
    assert scheduled.when is not None and scheduled.when.hour == 7



def test_the_index_says_sent_once_the_database_has_a_finished_campaign(sample_letter: Path) -> None:
    from newsletter import build
    from newsletter import campaign as engine
    from newsletter import subscribers as subs
    from newsletter.store import open_store

    listing = {item.slug: item.state.kind for item in Workspace(sample_letter / "newsletter.toml").listing()}
    assert listing == {QUOTA: "draft", LISTEN: "draft"}
    assert not (sample_letter / "newsletter.db").exists()  # the preview made no database
    config = load_config(sample_letter / "newsletter.toml", environ={"NEWSLETTER_SECRET": "s"})
    with open_store(config) as store:
        subs.add(store, "reader@example.com", confirmed=True)
        rendered = build.render(config, QUOTA)
        started = engine.start(store, rendered, "main", "outbox")
        assert engine.send_campaign(config, store, started, rendered, sleep=lambda s: None).finished
    states = {item.slug: item.state for item in Workspace(sample_letter / "newsletter.toml").listing()}
    assert states[QUOTA].kind == "sent" and states[QUOTA].label.startswith("sent on ")
    assert states[QUOTA].label.endswith(("CET", "CEST"))
    assert states[LISTEN].kind == "draft"
    assert "sent on " in page(Client(make_app(sample_letter)), "/")
    # and its headline figures, as `newsletter status` shows them
    numbers = {item.slug: item.numbers for item in Workspace(sample_letter / "newsletter.toml").listing()}
    assert numbers[QUOTA] == "1 sent, 0 unsubscribed" and numbers[LISTEN] == ""
    assert "1 sent, 0 unsubscribed" in page(Client(make_app(sample_letter)), "/")

# ---------------------------------------------------------------------------------------------
# The issue page and the email's parts


def test_issue_page_shows_inbox_frames_text_headers_and_checks(client: Client) -> None:
    body = page(client, f"/issue/{QUOTA}/")
    inbox = body[body.index('class="inbox"'):body.index('class="frames"')]
    assert "Martin Hale" in inbox
    assert "The quota is not the goal" in inbox
    assert "A reader in Bergen pushed back on last week&#39;s post" in inbox
    assert re.search(r'data-frame="phone"[^>]*src="frame/light\.html\?v=\d+"[^>]*width="375"', body)
    assert re.search(r'data-frame="dark"[^>]*src="frame/dark\.html\?v=\d+"[^>]*width="375"', body)
    assert re.search(r'data-frame="desktop"[^>]*src="frame/light\.html\?v=\d+"[^>]*width="800"', body)
    text = body[body.index('id="text-part"'):]
    assert "THE QUOTA IS NOT THE GOAL" in text
    assert "Unsubscribe: https://letter.example.com/unsubscribe/sample" in text
    headers = body[body.index('id="headers"'):]
    for name in ("From", "To", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"):
        assert f'<th scope="row">{name}</th>' in headers
    assert "List-Unsubscribe=One-Click" in headers
    assert "All checks passed" in body
    assert "Send test" not in body  # no sender wired in


def test_issue_page_security_headers(client: Client) -> None:
    response = client.get(f"/issue/{QUOTA}/")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'<script nonce="{nonce[1]}">' in response.get_data(as_text=True)
    email_response = client.get(f"/issue/{QUOTA}/email.html")
    assert email_response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert "script-src" not in email_response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in email_response.headers["Content-Security-Policy"]


def test_email_is_the_sample_readers_with_images_served_locally(sample_letter: Path,
                                                                 client: Client) -> None:
    html = page(client, f"/issue/{QUOTA}/email.html")
    assert "[[nl:" not in html
    assert "reader@example.com" in html
    assert 'href="https://letter.example.com/unsubscribe/sample"' in html
    assert f'src="/issue/{QUOTA}/web/quota-chart.png"' in html
    assert "https://letter.example.com/archive/" + QUOTA not in html
    image = client.get(f"/issue/{QUOTA}/web/quota-chart.png")
    assert image.status_code == 200
    assert image.mimetype == "image/png"
    assert image.data == (sample_letter / "issues" / QUOTA / "quota-chart.png").read_bytes()


def test_frames_open_links_outside_and_dark_frame_forces_dark_rules(client: Client) -> None:
    light = page(client, f"/issue/{QUOTA}/frame/light.html")
    dark = page(client, f"/issue/{QUOTA}/frame/dark.html")
    assert '<base target="_blank">' in light
    assert "prefers-color-scheme" in light
    assert "prefers-color-scheme" not in dark
    assert "color-scheme: dark" in dark
    assert "background-color:#15171a" in dark.replace(" ", "")


def test_force_dark_applies_dark_rules_and_drops_light_ones() -> None:
    html = ("<html><head><style>@media (prefers-color-scheme: dark) { .a { color: white } }"
            "@media screen and (prefers-color-scheme:light) { .a { color: black } }</style>"
            "</head><body></body></html>")
    dark = force_dark(html)
    assert "@media (min-width: 0px) { .a { color: white } }" in dark
    assert "@media screen and (max-width: 0px) { .a { color: black } }" in dark
    assert dark.index(":root { color-scheme: dark; }") < dark.index("</head>")


def test_web_version_is_served_with_its_images(client: Client) -> None:
    html = page(client, f"/issue/{QUOTA}/web/")
    assert 'src="quota-chart.png"' in html
    assert client.get(f"/issue/{QUOTA}/web/quota-chart.png").status_code == 200


def test_text_part(client: Client) -> None:
    response = client.get(f"/issue/{LISTEN}/email.txt")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert "LISTEN BEFORE YOU LEAD" in text
    assert "Sell well" in text
    assert "reader@example.com" in text
    assert "[[nl:" not in text


def test_headers_json_and_message_eml(client: Client) -> None:
    headers = json.loads(page(client, f"/issue/{LISTEN}/headers.json"))
    values = {h["name"]: h["value"] for h in headers}
    assert values["From"] == "Martin Hale <martin@letter.example.com>"
    assert values["To"] == "Sample Reader <reader@example.com>"
    assert values["Subject"] == "Listen before you lead"
    assert values["List-Unsubscribe"] == "<https://letter.example.com/unsubscribe/sample>"
    assert values["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert values["List-Id"] == "Sales = Leadership <main.letter.example.com>"
    raw = client.get(f"/issue/{LISTEN}/message.eml")
    assert raw.mimetype == "text/plain"
    message = email.message_from_bytes(raw.data, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Listen before you lead"
    download = client.get(f"/issue/{LISTEN}/message.eml?download=1")
    assert download.mimetype == "message/rfc822"
    assert "attachment" in download.headers["Content-Disposition"]


def test_checks_are_listed_with_file_and_line(sample_letter: Path, client: Client) -> None:
    assert json.loads(page(client, f"/issue/{QUOTA}/checks.json")) == []
    (sample_letter / QUOTA_POST).write_text(
        (sample_letter / QUOTA_POST).read_text() + "\n![](missing.png)\n", encoding="utf-8"
    )
    app = make_app(sample_letter)
    findings = json.loads(page(Client(app), f"/issue/{QUOTA}/checks.json"))
    assert {f["level"] for f in findings} == {"error"}
    assert any(f["where"].startswith(QUOTA_POST + " line ") and "no alt text" in f["message"]
               for f in findings)
    body = page(Client(app), f"/issue/{QUOTA}/")
    assert "2 errors, 0 warnings" in body
    assert "does not exist; put the file beside the post" in body


def test_the_build_log_counts_findings_in_words(sample_letter: Path) -> None:
    (sample_letter / QUOTA_POST).write_text(
        (sample_letter / QUOTA_POST).read_text() + "\n![A chart](missing.png)\n", encoding="utf-8"
    )
    lines: list[str] = []
    app = make_app(sample_letter, log=lines.append)
    page(Client(app), f"/issue/{QUOTA}/checks.json")
    assert any(line.startswith(f"built {QUOTA} in ") and line.endswith(" ms (1 error, 0 warnings)")
               for line in lines), lines


def test_unknown_issue_is_404(client: Client) -> None:
    for url in ("/issue/no-such-issue/", "/issue/no-such-issue/email.html", "/nothing"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "The index lists every issue" in response.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------
# Live rebuilds: errors, recovery, never a half-built issue


def test_saving_a_post_rebuilds_the_issue(sample_letter: Path, app: PreviewApp) -> None:
    client = Client(app)
    before = app.live.entry(QUOTA)
    assert "Every January a sales manager" in page(client, f"/issue/{QUOTA}/email.html")
    edit(sample_letter / QUOTA_POST, "Every January a sales manager", "Every February a sales lead")
    assert app.live.poll() is True
    after = app.live.entry(QUOTA)
    assert after.version > before.version
    assert "Every February a sales lead" in page(client, f"/issue/{QUOTA}/email.html")
    assert f'data-version="{after.version}"' in page(client, f"/issue/{QUOTA}/panel")


def test_a_change_that_does_not_change_the_output_keeps_the_version(sample_letter: Path,
                                                                    app: PreviewApp) -> None:
    before = app.live.entry(QUOTA)
    post = sample_letter / QUOTA_POST
    post.write_text(post.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert app.live.poll() is True
    assert app.live.entry(QUOTA).version == before.version


def test_editor_swap_files_do_not_count_as_changes(sample_letter: Path, app: PreviewApp) -> None:
    (sample_letter / "issues" / QUOTA / ".issue.md.swp").write_text("x")
    (sample_letter / "issues" / QUOTA / "issue.md~").write_text("x")
    assert app.live.poll() is False
    (sample_letter / "issues" / QUOTA / "notes.md.txt").write_text("x")
    assert app.live.poll() is True


def test_broken_front_matter_shows_file_and_line_and_fixing_it_recovers(
    sample_letter: Path, app: PreviewApp
) -> None:
    client = Client(app)
    page(client, f"/issue/{QUOTA}/")
    issue_md = sample_letter / "issues" / QUOTA / "issue.md"
    good = issue_md.read_text(encoding="utf-8")
    issue_md.write_text(good.replace('subject: "The quota', "subject: [The quota"), encoding="utf-8")
    assert app.live.poll()

    body = page(client, f"/issue/{QUOTA}/")
    assert 'role="alert"' in body
    assert f"issues/{QUOTA}/issue.md line 2: front matter is not valid YAML" in body
    assert str(sample_letter) not in body  # paths shown relative to the newsletter folder
    assert "the last good build" in body
    # The last complete build stays available; nothing half-built is served.
    assert "Every January a sales manager" in page(client, f"/issue/{QUOTA}/email.html")

    issue_md.write_text(good.replace("The quota is not the goal", "Quotas are not goals"),
                        encoding="utf-8")
    assert app.live.poll()
    body = page(client, f"/issue/{QUOTA}/")
    assert 'role="alert"' not in body
    assert "Quotas are not goals" in body


def test_an_issue_that_never_built_shows_the_error_and_serves_no_email(sample_letter: Path) -> None:
    edit(sample_letter / f"issues/{LISTEN}/issue.md", "list: main", "list: [main")
    client = Client(make_app(sample_letter))
    body = page(client, f"/issue/{LISTEN}/")
    assert f"issues/{LISTEN}/issue.md line" in body
    assert 'data-frame="phone"' not in body
    response = client.get(f"/issue/{LISTEN}/email.html")
    assert response.status_code == 503
    assert "does not build" in response.get_data(as_text=True)


def test_template_error_names_the_template_and_line(sample_letter: Path) -> None:
    shutil.copytree(builtin_templates(), sample_letter / "templates",
                    ignore=shutil.ignore_patterns("preview"))
    app = make_app(sample_letter)
    client = Client(app)
    page(client, f"/issue/{QUOTA}/")
    template = sample_letter / "templates" / "email.html"
    good = template.read_text(encoding="utf-8")
    template.write_text(good.replace("{{ sign_off }}", "{{ sign_of }}"), encoding="utf-8")
    assert app.live.poll()
    body = page(client, f"/issue/{QUOTA}/")
    line = next(n for n, text in enumerate(good.splitlines(), 1) if "{{ sign_off }}" in text)
    assert f"templates/email.html line {line}" in body
    assert "sign_of" in body
    template.write_text(good.replace("{{ sign_off }}", "{{ sign_off }}!"), encoding="utf-8")
    assert app.live.poll()
    assert 'role="alert"' not in page(client, f"/issue/{QUOTA}/")
    assert "Sell well!" in page(client, f"/issue/{QUOTA}/email.html")


def test_config_error_shows_on_pages_and_recovers(sample_letter: Path, app: PreviewApp) -> None:
    client = Client(app)
    page(client, f"/issue/{QUOTA}/")
    toml = sample_letter / "newsletter.toml"
    good = toml.read_text(encoding="utf-8")
    toml.write_text(good.replace('weekday = "tuesday"', 'weekday = "tusday"'), encoding="utf-8")
    assert app.live.poll()
    expected = "[schedule] weekday: &#39;tusday&#39; is not a weekday"
    assert expected in page(client, f"/issue/{QUOTA}/")
    assert expected in page(client, "/")
    toml.write_text(good.replace("Sales = Leadership", "Sales and Leadership"), encoding="utf-8")
    assert app.live.poll()
    assert "Sales and Leadership" in page(client, f"/issue/{QUOTA}/email.html")
    assert "does not load" not in page(client, "/")


def test_event_stream_announces_each_new_build(sample_letter: Path, app: PreviewApp) -> None:
    app.keepalive = 0.2
    client = Client(app)
    response = client.get(f"/issue/{QUOTA}/events", buffered=False)
    assert response.mimetype == "text/event-stream"
    stream = iter(response.response)
    first = json.loads(next(stream).decode().split("data: ", 1)[1])
    assert first == {"version": app.live.entry(QUOTA).version, "server": app.instance}

    edit(sample_letter / QUOTA_POST, "Every January", "Every March")
    threading.Timer(0.3, app.live.poll).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chunk = next(stream).decode()
        if chunk.startswith("event: build"):
            break
        assert chunk == ": keep-alive\n\n"
    else:
        pytest.fail("no build event within 10 seconds")
    announced = json.loads(chunk.split("data: ", 1)[1])
    assert announced["version"] == app.live.entry(QUOTA).version > first["version"]
    app.live.stop()
    response.close()


def test_index_stream_announces_file_changes(sample_letter: Path, app: PreviewApp) -> None:
    client = Client(app)
    response = client.get("/events", buffered=False)
    stream = iter(response.response)
    first = json.loads(next(stream).decode().split("data: ", 1)[1])
    (sample_letter / "issues" / "2026-12-15-new" / "issue.md").parent.mkdir()
    (sample_letter / "issues" / "2026-12-15-new" / "issue.md").write_text("---\nsubject: New\n---\n")
    threading.Timer(0.2, app.live.poll).start()
    second = json.loads(next(stream).decode().split("data: ", 1)[1])
    assert second["version"] > first["version"]
    assert "2026-12-15-new" in page(client, "/list")
    app.live.stop()
    response.close()


def test_watcher_thread_rebuilds_within_a_few_seconds(sample_letter: Path, app: PreviewApp) -> None:
    before = app.live.entry(QUOTA).version
    app.live.start(interval=0.05)
    try:
        edit(sample_letter / QUOTA_POST, "Every January", "Every April")
        assert app.live.wait(QUOTA, before, timeout=10) > before
        assert "Every April" in app.live.entry(QUOTA).build.html
    finally:
        app.live.stop()


# ---------------------------------------------------------------------------------------------
# Nothing outside the newsletter folder, nothing for other hosts

TRAVERSALS = [
    "/../../etc/passwd",
    "/issue/../../etc/passwd",
    "/issue/%2e%2e/%2e%2e/etc/passwd",
    "/issue/..%2f..%2fetc%2fpasswd/email.html",
    f"/issue/{QUOTA}/web/../../../../etc/passwd",
    f"/issue/{QUOTA}/web/..%2f..%2f..%2f..%2fetc%2fpasswd",
    f"/issue/{QUOTA}/web/%2e%2e%2f%2e%2e%2f%2e%2e%2fnewsletter.toml",
    f"/issue/{QUOTA}/web/..%5c..%5c..%5cnewsletter.toml",
    f"/issue/{QUOTA}/web/%252e%252e%252f%252e%252e%252fnewsletter.toml",
    f"/issue/{QUOTA}/web//etc/passwd",
    f"/issue/{QUOTA}/web/01-the-quota-is-not-the-goal.md",
    f"/issue/{QUOTA}/web/issue.md",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_path_traversal_is_refused_in_process(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code in (400, 404), url
    body = response.get_data(as_text=True)
    assert "root:" not in body
    assert "[newsletter]" not in body
    assert "title:" not in body


def test_path_traversal_is_refused_over_the_wire(sample_letter: Path) -> None:
    server = PreviewServer(make_app(sample_letter), port=0)
    server.start()
    try:
        host, port = server.address
        for url in TRAVERSALS:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.putrequest("GET", url, skip_host=True)
            connection.putheader("Host", f"{host}:{port}")
            connection.endheaders()
            response = connection.getresponse()
            body = response.read().decode("utf-8", "replace")
            connection.close()
            assert response.status in (400, 404), (url, response.status)
            assert "root:" not in body and "[newsletter]" not in body, url
    finally:
        server.stop()


def test_images_outside_the_folder_are_not_served(sample_letter: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    folder = sample_letter / "issues" / QUOTA
    (folder / "linked.png").symlink_to(secret)
    relative = os.path.relpath(secret, folder)
    post = sample_letter / QUOTA_POST
    post.write_text(post.read_text() + f"\n![a link](linked.png)\n\n![up]({relative})\n",
                    encoding="utf-8")
    client = Client(make_app(sample_letter))
    html = page(client, f"/issue/{QUOTA}/email.html")
    sources = re.findall(rf'src="/issue/{QUOTA}/web/([^"]+)"', html)
    assert "linked.png" in sources and len(sources) == 3
    assert client.get(f"/issue/{QUOTA}/web/quota-chart.png").status_code == 200
    for name in sources:
        if name != "quota-chart.png":
            response = client.get(f"/issue/{QUOTA}/web/{name}")
            assert response.status_code == 404, name
            assert b"secret" not in response.data


def test_other_host_names_are_refused(client: Client) -> None:
    assert client.get("/", headers={"Host": "127.0.0.1:8025"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:8025"}).status_code == 200
    refused = client.get("/", headers={"Host": "attacker.example:8025"})
    assert refused.status_code == 403
    assert "127.0.0.1 only" in refused.get_data(as_text=True)


def test_server_binds_127_0_0_1_on_the_configured_port(sample_letter: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    toml = sample_letter / "newsletter.toml"
    toml.write_text(toml.read_text() + f"port = {free}\n", encoding="utf-8")  # [preview] is last
    config = load_config(toml)
    server, url = serve(config)
    try:
        assert server.address == ("127.0.0.1", free)
        assert server.httpd.socket.getsockname()[0] == "127.0.0.1"
        assert url == f"http://127.0.0.1:{free}/issue/{LISTEN}/"
        server.start()
        connection = http.client.HTTPConnection("127.0.0.1", free, timeout=10)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        server.stop()


def test_a_port_in_use_is_a_clear_error(sample_letter: Path) -> None:
    config = load_config(sample_letter / "newsletter.toml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(NewsletterError, match=rf"127\.0\.0\.1:{port}: the port is in use; pass --port"):
            serve(config, port=port)


def test_contained_and_host_allowed() -> None:
    root = Path("/srv/letter")
    assert contained(root, root / "issues" / "a.png") == root / "issues" / "a.png"
    assert contained(root, root / ".." / "etc" / "passwd") is None
    assert host_allowed("127.0.0.1:8025", {"127.0.0.1"})
    assert host_allowed("[::1]:8025", {"::1"})
    assert not host_allowed("127.0.0.1.evil.example", {"127.0.0.1"})
    assert not host_allowed(None, {"127.0.0.1"})
    assert sse_message({"a": 1}, event="build") == b'event: build\ndata: {"a":1}\n\n'


def test_snapshot_sees_new_changed_and_removed_files(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("one")
    first = snapshot([tmp_path])
    (tmp_path / "a.md").write_text("two!")
    second = snapshot([tmp_path])
    assert first != second
    (tmp_path / "a.md").unlink()
    assert snapshot([tmp_path]) == {}


# ---------------------------------------------------------------------------------------------
# The "Send test" hook


class RecordingSender:
    """Stands in for the sending engine: records what it was asked to send."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[Rendered] = []
        self.fail = fail

    def __call__(self, rendered: Rendered) -> str:
        self.calls.append(rendered)
        if self.fail:
            raise NewsletterError(self.fail)
        return f"sent {rendered.subject!r} to martin@letter.example.com"


def post_send_test(client: Client, app: PreviewApp, slug: str, *, token: str | None = None,
                   origin: str | None = "http://localhost"):
    headers = {"Origin": origin} if origin else {}
    data = {"token": app.token if token is None else token}
    return client.post(f"/issue/{slug}/send-test", data=data, headers=headers)


def test_send_test_is_absent_without_a_sender(app: PreviewApp, client: Client) -> None:
    assert "Send test" not in page(client, f"/issue/{QUOTA}/")
    assert post_send_test(client, app, QUOTA).status_code == 404


def test_send_test_calls_the_sender_with_the_rendered_issue(sample_letter: Path) -> None:
    sender = RecordingSender()
    app = make_app(sample_letter, send_test=sender)
    client = Client(app)
    body = page(client, f"/issue/{QUOTA}/")
    assert '<button type="submit">Send test</button>' in body
    assert "to martin@letter.example.com" in body
    response = post_send_test(client, app, QUOTA)
    assert response.status_code == 200
    assert response.json == {"ok": True,
                             "message": "sent 'The quota is not the goal' to martin@letter.example.com"}
    assert len(sender.calls) == 1
    assert sender.calls[0].slug == QUOTA
    assert "[[nl:unsubscribe_url]]" in sender.calls[0].html  # the sender personalizes


def test_send_test_refuses_forged_requests(sample_letter: Path) -> None:
    sender = RecordingSender()
    app = make_app(sample_letter, send_test=sender)
    client = Client(app)
    assert post_send_test(client, app, QUOTA, token="guess").status_code == 403
    assert post_send_test(client, app, QUOTA, origin="https://evil.example").status_code == 403
    assert post_send_test(client, app, QUOTA, origin=None).status_code == 403
    assert client.get(f"/issue/{QUOTA}/send-test").status_code == 405
    assert sender.calls == []


def test_send_test_reports_the_senders_error(sample_letter: Path) -> None:
    sender = RecordingSender(fail="postmark: 401 the server token is wrong; check POSTMARK_SERVER_TOKEN")
    app = make_app(sample_letter, send_test=sender)
    response = post_send_test(Client(app), app, QUOTA)
    assert response.status_code == 502
    assert response.json == {"ok": False, "message": sender.fail}


def test_send_test_refuses_an_issue_that_does_not_build(sample_letter: Path) -> None:
    sender = RecordingSender()
    app = make_app(sample_letter, send_test=sender)
    client = Client(app)
    page(client, f"/issue/{QUOTA}/")
    edit(sample_letter / f"issues/{QUOTA}/issue.md", 'subject: "The quota', "subject: [The quota")
    assert app.live.poll()
    response = post_send_test(client, app, QUOTA)
    assert response.status_code == 409
    assert "fix the error first" in response.json["message"]
    assert sender.calls == []


# ---------------------------------------------------------------------------------------------
# The command


def test_preview_help_lists_its_options() -> None:
    result = CliRunner().invoke(main, ["preview", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--no-open", "--screenshot"):
        assert option in result.output


def test_preview_of_an_unknown_issue_is_a_one_line_error(sample_letter: Path) -> None:
    result = CliRunner().invoke(main, ["preview", "no-such-issue", "--no-open", "--port", "0"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no issue 'no-such-issue'")


def test_screenshot_without_chromium_names_the_install_command(
    sample_letter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("playwright.sync_api", reason="install it with `pip install playwright`")
    monkeypatch.setenv("NEWSLETTER_CHROMIUM", str(sample_letter / "no-chromium"))
    result = CliRunner().invoke(main, ["preview", QUOTA, "--screenshot", "shots"])
    assert result.exit_code == 1
    assert "apt-get install chromium" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (sample_letter / "shots").exists()


def test_screenshot_without_playwright_names_the_install_command(
    sample_letter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import fails
    result = CliRunner().invoke(main, ["preview", QUOTA, "--screenshot", "shots"])
    assert result.exit_code == 1
    assert "pip install playwright" in result.output


def test_init_does_not_copy_the_preview_pages(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "letter")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "letter" / "templates" / "email.html").is_file()
    assert not (tmp_path / "letter" / "templates" / "preview").exists()


def test_preview_command_serves_until_interrupted(sample_letter: Path) -> None:
    """The real command in its own process: serves on 127.0.0.1 and stops cleanly on Ctrl-C."""
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "preview", QUOTA, "--no-open", "--port", "0"],
        cwd=sample_letter, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.match(r"previewing at (http://127\.0\.0\.1:(\d+)/issue/" + QUOTA + "/)", line)
        assert match, line + process.stderr.read()
        connection = http.client.HTTPConnection("127.0.0.1", int(match[2]), timeout=10)
        connection.request("GET", f"/issue/{QUOTA}/")
        response = connection.getresponse()
        assert response.status == 200
        assert "The quota is not the goal" in response.read().decode()
        connection.close()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert "stopped" in out
        assert f"built {QUOTA}" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_send_test_sends_real_proofs_through_the_configured_provider(sample_letter: Path) -> None:
    """The button wired to the real proof sender: the outbox gets one message per test
    recipient, with the [Test] subject."""
    import email as email_lib

    from newsletter.campaign import send_proofs
    from newsletter.config import load as load_config

    (sample_letter / ".env").write_text("NEWSLETTER_SECRET=preview-secret\n")
    app = make_app(sample_letter, send_test=lambda rendered: send_proofs(
        load_config(sample_letter / "newsletter.toml"), rendered))
    response = post_send_test(Client(app), app, QUOTA)
    assert response.status_code == 200, response.json
    assert response.json["message"] == "test sent to martin@letter.example.com via outbox"
    (proof,) = (sample_letter / "outbox" / "test").glob("*.eml")
    msg = email_lib.message_from_bytes(proof.read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "[Test] The quota is not the goal"
    assert msg["To"] == "martin@letter.example.com"


def test_send_test_without_test_recipients_says_where_to_add_them(sample_letter: Path) -> None:
    from newsletter.campaign import send_proofs
    from newsletter.config import load as load_config

    toml = sample_letter / "newsletter.toml"
    toml.write_text(toml.read_text().replace('test_recipients = ["martin@letter.example.com"]', ""))
    app = make_app(sample_letter, send_test=lambda rendered: send_proofs(load_config(toml), rendered))
    response = post_send_test(Client(app), app, QUOTA)
    assert response.status_code == 502
    assert "add test_recipients" in response.json["message"]
