"""Make the README's report screenshot (docs/report.png) from a sample run, end to end.

In a scratch folder: this repository's newsletter with [tracking] clicks on (and three more
links in the issue's note, in the scratch copy only), 240 fictional
readers who joined over twelve weeks, the first sample issue sent through the outbox, then
what readers and the email service would do, through the real site (`PublicApp`): clicks on
the tracked links, two one-click unsubscribes, and Postmark webhooks (basic auth) for
deliveries, a bounce and a complaint. `newsletter report --weeks 12 --html` writes the
page; headless Chromium takes the picture.

    .venv/bin/python scripts/report_sample.py [docs/report.png]
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ISSUE = "2026-12-01-the-quota-is-not-the-goal"
READERS = 240
# The sample issue links only to its post; for the picture, the scratch copy's note gets a
# few more links, so that clicks per link has something to compare.
READING = """
Worth your time this week: [the forecast meeting nobody believes](https://blog.example.com/2026/11/forecast),
[a one-page account plan](https://blog.example.com/2026/11/account-plan) and
[the reader survey](https://blog.example.com/survey).
"""
WEEKS = 12


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "report.png").resolve()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        shutil.copy(REPO / "newsletter.toml", root)
        shutil.copytree(REPO / "issues", root / "issues")
        with open(root / "newsletter.toml", "a", encoding="utf-8") as toml:
            toml.write("\n[tracking]\nclicks = true\n")
        with open(root / "issues" / ISSUE / "issue.md", "a", encoding="utf-8") as note:
            note.write(READING)
        (root / ".env").write_text("NEWSLETTER_SECRET=sample-secret-for-the-report-picture\n"
                                   "POSTMARK_WEBHOOK_USER=hook\nPOSTMARK_WEBHOOK_PASSWORD=sample\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        run = [str(bin_dir / "newsletter")]
        rows = "".join(f"reader{n:03d}@example.net\n" for n in range(READERS))
        (root / "readers.csv").write_text("email\n" + rows)
        subprocess.run([*run, "subscribers", "import", "readers.csv"], cwd=root, env=env, check=True,
                       capture_output=True)
        os.chdir(root)
        from newsletter import config as cfg
        from newsletter.store import open_store
        from newsletter.store.schema import memberships

        config = cfg.load(root / "newsletter.toml")
        now = dt.datetime.now(dt.UTC)
        rng = random.Random(7)
        with open_store(config) as store, store.write() as conn:
            from sqlalchemy import select, update

            ids = list(conn.execute(select(memberships.c.subscriber_id)).scalars())
            for n, sub in enumerate(ids):
                # Joined over twelve weeks, a little faster lately; a few left along the way.
                weeks_ago = WEEKS * (1 - (n / len(ids)) ** 0.8) - rng.random()
                joined = now - dt.timedelta(weeks=max(0.05, weeks_ago))
                values = {"confirmed_at": joined, "created_at": joined}
                if rng.random() < 0.06:
                    values.update(status="unsubscribed",
                                  unsubscribed_at=joined + dt.timedelta(days=rng.uniform(3, 30)))
                    if values["unsubscribed_at"] > now:
                        values.update(status="active", unsubscribed_at=None)
                conn.execute(update(memberships).where(memberships.c.subscriber_id == sub).values(**values))
        subprocess.run([*run, "send", ISSUE, "--yes"], cwd=root, env=env, check=True, capture_output=True)
        act(config, root, rng)
        page = root / "report.html"
        subprocess.run([*run, "report", ISSUE, "--weeks", str(WEEKS), "--html", str(page)], cwd=root,
                       env=env, check=True)
        picture(page, out)
    print(f"wrote {out}")


def act(config, root: Path, rng: random.Random) -> None:
    """Readers click and leave, and Postmark reports, all through the site."""
    from werkzeug.test import Client

    from newsletter.store import open_store
    from newsletter.web.app import PublicApp

    with open_store(config) as store:
        app = PublicApp(config, store)
        client = Client(app)
        messages = sorted((root / "outbox").glob("*/*.eml"))
        first = messages[0].read_text()
        links = list(dict.fromkeys(re.findall(r'/l/([a-z2-7]{16})"', first)))
        for n, key in enumerate(links):
            for _ in range(max(1, int(rng.gauss(38 / (n + 1), 3)))):
                assert client.get(f"/l/{key}").status_code == 302
        for path in messages[:2]:
            token = re.search(r"List-Unsubscribe: <https://[^/]+/unsubscribe/([^>]+)>", path.read_text())[1]
            assert client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
        auth = {"Authorization": "Basic " + base64.b64encode(b"hook:sample").decode()}
        for n, path in enumerate(messages):
            text = path.read_text()
            to = re.search(r"^To: (.+)$", text, re.M)[1].strip()
            message_id = re.search(r"^Message-ID: <([^>]+)>", text, re.M)[1]
            stamp = dt.datetime.now(dt.UTC).isoformat()
            if n == 5:
                body = {"RecordType": "Bounce", "ID": 900 + n, "Type": "HardBounce", "Email": to,
                        "MessageID": message_id, "BouncedAt": stamp, "Description": "mailbox unknown"}
            elif n == 9:
                body = {"RecordType": "SpamComplaint", "ID": 900 + n, "Type": "SpamComplaint", "Email": to,
                        "MessageID": message_id, "BouncedAt": stamp}
            else:
                body = {"RecordType": "Delivery", "Recipient": to, "MessageID": message_id,
                        "DeliveredAt": stamp, "Details": "250 OK"}
            response = client.post("/webhooks/postmark", data=json.dumps(body), headers=auth,
                                   content_type="application/json")
            assert response.status_code == 200, response.get_data(as_text=True)
        app.close()


def picture(page: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium")
        tab = browser.new_page(viewport={"width": 800, "height": 900}, device_scale_factor=1)
        tab.goto(page.as_uri())
        tab.screenshot(path=str(out), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
