"""How fast is a render? Prints the median time to render the sample issue and a 5,000-word
issue (Markdown, templates, CSS inlining and text part), and the time of a whole
`newsletter build` process, start-up included."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from newsletter import build
from newsletter import config as cfg

REPO = Path(__file__).resolve().parent.parent

PARAGRAPH = (
    "A good seller listens more than she talks, and a good manager does the same with the "
    "team. Ask what the customer is trying to get done, then ask again, and write down the "
    "answer in their words, not yours. The pitch can wait; the problem cannot. "
)


def median_ms(fn, runs: int) -> float:
    fn()  # warm caches: imports, templates, the Markdown parser
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
        shutil.copytree(REPO / "issues", root / "issues")
        big = root / "issues" / "2027-01-05-long-read"
        big.mkdir()
        (big / "issue.md").write_text("---\nsubject: A long read\npreheader: Five thousand words\n---\n")
        words = len(PARAGRAPH.split())
        sections = []
        for n in range(5000 // (words * 4) + 1):
            sections.append(f"## Part {n + 1}\n\n" + "\n\n".join([PARAGRAPH] * 4))
            sections.append("> A reader said it better than I could.\n\n- one\n- two\n- three")
        body = "\n\n".join(sections)
        (big / "01-long.md").write_text(f"---\ntitle: The long read\n---\n{body}\n")
        total_words = len(body.split())
        config = cfg.load(root / "newsletter.toml", environ={})

        sample = median_ms(lambda: build.render(config, "2026-12-01-the-quota-is-not-the-goal"), 30)
        long = median_ms(lambda: build.render(config, "2027-01-05-long-read"), 10)
        print(f"render sample issue (2026-12-01-the-quota-is-not-the-goal): median {sample:.1f} ms")
        print(f"render {total_words:,}-word issue: median {long:.1f} ms")

        exe = Path(sys.executable).with_name("newsletter")
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([str(exe), "build", "2026-12-01-the-quota-is-not-the-goal"], cwd=root,
                           check=True, capture_output=True)
            runs.append(time.perf_counter() - start)
        print(f"`newsletter build` whole process: median {statistics.median(runs) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
