"""How fast is a render? Prints the median time to render the sample issue and a 5,000-word
issue (Markdown, templates, CSS inlining and text part), an issue with a 4,032 x 3,024 phone
photo (the first render resizes it, later ones find the copy), how many readers' complete
messages a second the sample issue makes (as SMTP, SES and the outbox send them), and the
time of a whole `newsletter build` process, start-up included."""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launcher import run as launch
from PIL import Image

from newsletter import build
from newsletter import config as cfg
from newsletter.message import MessageTemplate, Recipient, message_id, unsubscribe_url

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


def _peak_mb(root: Path, slug: str) -> float:
    """Peak RSS of a fresh process that loads the config and renders ``slug`` once, started
    from the small launcher (launcher.py): this script has rendered the photo itself by
    then, and a process it started would count its size too."""
    script = ("import sys; from newsletter import build, config; "
              "build.render(config.load(sys.argv[1], environ={}), sys.argv[2])")
    ran = launch([sys.executable, "-c", script, str(root / "newsletter.toml"), slug], str(REPO),
                 dict(os.environ))
    if ran.returncode != 0:
        raise SystemExit(f"rendering {slug} failed:\n{ran.stderr}")
    return ran.peak_mb


def messages_per_second(config: cfg.Config, n: int = 20_000) -> float:
    """How many readers' complete messages a second :meth:`MessageTemplate.bytes_for` makes
    from the sample issue: what SMTP, SES and the outbox do once per reader."""
    template = MessageTemplate(config, build.render(config, "2026-12-01-the-quota-is-not-the-goal"), "main")
    readers = [Recipient(f"reader{i:07d}@example.com", f"Reader {i}") for i in range(n)]
    leave = [unsubscribe_url(config, f"token{i:07d}abcdefghijklmnopqrstuvwxyz") for i in range(n)]
    ids = [message_id(config, f"c1.{i}") for i in range(n)]
    template.bytes_for(readers[0], leave[0], ids[0])
    start = time.perf_counter()
    for reader, link, mid in zip(readers, leave, ids, strict=True):
        template.bytes_for(reader, link, mid)
    return n / (time.perf_counter() - start)


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
        print(f"messages made from the sample issue: {messages_per_second(config):,.0f} per second "
              "(one reader's complete MIME message each, one process)")

        photo = root / "issues" / "2027-01-12-the-photo"
        photo.mkdir()
        (photo / "issue.md").write_text("---\nsubject: The offsite\npreheader: One photo\n---\n")
        (photo / "01-photo.md").write_text("---\ntitle: The offsite\n---\nThe team.\n\n"
                                           "![The team at the offsite](team.jpg)\n")
        grain = random.Random(5).randbytes(1008 * 756 * 3)  # a photo's grain, then scaled up
        Image.frombytes("RGB", (1008, 756), grain).resize((4032, 3024)).save(photo / "team.jpg", quality=95)
        size = (photo / "team.jpg").stat().st_size
        start = time.perf_counter()
        first = build.render(config, "2027-01-12-the-photo")
        first_ms = (time.perf_counter() - start) * 1000
        again = median_ms(lambda: build.render(config, "2027-01-12-the-photo"), 10)
        (picture,) = first.images
        print(f"render an issue with a 4,032 px photo ({size / 1024 / 1024:.1f} MB): first {first_ms:.0f} ms "
              f"(resized to {picture.width:,} px, {picture.bytes / 1024:.0f} KB), later median {again:.1f} ms")
        shutil.rmtree(root / ".cache")
        peaks = {slug: _peak_mb(root, slug) for slug in ("2026-12-01-the-quota-is-not-the-goal", photo.name)}
        print(f"peak memory of a process rendering the sample issue / the photo issue (resizing): "
              f"{peaks['2026-12-01-the-quota-is-not-the-goal']:.0f} MB / {peaks[photo.name]:.0f} MB")

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
