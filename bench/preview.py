"""From saving a post to the new version on screen: a real `newsletter preview` process on a
scratch copy of the sample issues, the issue open in headless Chromium (Debian's chromium,
driven by Playwright), and a post edited N times.

Each edit's latency runs from the moment before the file is written (this process's wall
clock) to the moment the page itself reports (its own ``performance.timeOrigin + now()``,
read in the first animation frame that shows the new text in the phone view). Both clocks
are the machine's. Prints the median and the slowest; figures are printed, never asserted.

    .venv/bin/python bench/preview.py [--edits 15]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ISSUE = "2026-12-01-the-quota-is-not-the-goal"
POST = f"issues/{ISSUE}/01-the-quota-is-not-the-goal.md"
PHRASE = "Every January a sales manager"

SHOWN = """marker => {
  const frame = document.querySelector('iframe[data-frame="phone"]');
  const body = frame && frame.contentDocument && frame.contentDocument.body;
  return body && body.textContent.includes(marker) ? performance.timeOrigin + performance.now() : false;
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=15)
    args = parser.parse_args()
    try:
        from playwright.sync_api import sync_playwright

        sys.path.insert(0, str(REPO))
        from newsletter.web.preview import POLL_INTERVAL
        from newsletter.web.screenshot import CHROMIUM_ARGS, BrowserMissing, find_chromium

        chromium = find_chromium()
    except (ImportError, BrowserMissing) as exc:
        print(f"preview: skipped ({exc}); install Chromium with `apt-get install chromium` "
              "and Playwright with `pip install playwright`")
        return

    with tempfile.TemporaryDirectory(prefix="bench-preview-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
        shutil.copytree(REPO / "issues", root / "issues")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "preview", "--no-open", "--port", "0"],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            line = server.stdout.readline() if server.stdout else ""
            match = re.match(r"previewing at (http://127\.0\.0\.1:\d+)/", line)
            if not match:
                raise SystemExit(f"the preview did not start: {line}")
            base = match[1]
            post = root / POST
            latencies: list[float] = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
                page = browser.new_page(viewport={"width": 1700, "height": 1000})
                page.goto(f"{base}/issue/{ISSUE}/")
                page.wait_for_function("document.querySelector('#live-status').textContent === 'live'")
                page.wait_for_function(SHOWN, arg=PHRASE, polling="raf")
                current = PHRASE
                rnd = random.Random(17)
                for n in range(args.edits):
                    marker = f"Every January (edit {n}) a sales manager"
                    text = post.read_text(encoding="utf-8").replace(current, marker, 1)
                    # Let the last build settle, then save at a random point of the watcher's cycle.
                    time.sleep(0.3 + rnd.uniform(0, POLL_INTERVAL))
                    saved = time.time() * 1000
                    post.write_text(text, encoding="utf-8")
                    shown = page.wait_for_function(SHOWN, arg=marker, polling="raf", timeout=10_000)
                    latencies.append(shown.json_value() - saved)
                    current = marker
                browser.close()
        finally:
            server.terminate()
            _, log = server.communicate(timeout=10)
    builds = [int(m) for m in re.findall(r"built \S+ in (\d+) ms", log)][1:]  # the first is the page's
    print(f"preview: save to new version in the page, {len(latencies)} edits of the sample issue: "
          f"median {statistics.median(latencies):.0f} ms, slowest {max(latencies):.0f} ms, "
          f"fastest {min(latencies):.0f} ms   (aim: 300 ms)")
    if builds:
        print(f"  of which the rebuild, as the preview logs it: median {statistics.median(builds):.0f} ms; "
              f"the preview looks at the files every {POLL_INTERVAL * 1000:.0f} ms")


if __name__ == "__main__":
    main()
