"""`newsletter send`'s first step, newsletter.ready: the issue rendered and checked in a
child while the command loads the engine. Whole processes, so the child is forked as it is
for a writer; the same without fork()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_dryrun import SLUG, newsletter, sent_files
from .test_dryrun import letter3 as letter3  # the fixture: three readers and one issue

RENDERING = ("jinja2", "markdown_it", "premailer", "cssutils", "lxml", "PIL", "newsletter.render",
             "newsletter.checks")


def in_a_fresh_process(root: Path, fork: bool, then: str = "") -> subprocess.CompletedProcess:
    code = ("import sys; from newsletter import beside, config, ready; "
            f"beside.FORK = {fork}; "
            "r = ready.ready_to_send(config.load('newsletter.toml', environ={}), None); "
            f"loaded = [m for m in {RENDERING!r} if m in sys.modules]; "
            "import json; print(json.dumps([r.rendered.subject, r.rendered.slug, "
            "'sqlalchemy' in sys.modules, loaded, list(r.warnings)])); " + then)
    env = {**os.environ, "NEWSLETTER_DATABASE_URL": f"sqlite:///{root / 'newsletter.db'}"}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("fork", [True, False])
def test_the_issue_comes_back_rendered_and_the_engine_is_loaded_meanwhile(letter3, fork):
    done = in_a_fresh_process(letter3, fork)
    assert done.returncode == 0, done.stderr
    subject, slug, engine, loaded, _ = json.loads(done.stdout.splitlines()[0])
    assert (subject, slug, engine) == ("Dry run", SLUG, True)
    # forked: nothing of rendering was loaded here to read what the child sent back
    if fork:
        assert loaded == []
    else:
        assert {"jinja2", "markdown_it", "newsletter.render"} <= set(loaded)


def test_what_comes_back_is_what_rendering_here_makes(letter3):
    # the child's copy is the same issue, to the byte, as the one rendered in this process
    then = ("from newsletter.render import render_issue; from newsletter.content import load_named; "
            "c = config.load('newsletter.toml', environ={}); here = render_issue(c, load_named(c, None)); "
            "print(here == r.rendered, here.content_hash == r.rendered.content_hash)")
    done = in_a_fresh_process(letter3, True, then)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "True True"


def test_warnings_come_back_as_the_checks_word_them(letter3):
    (letter3 / "issues" / SLUG / "issue.md").write_text("---\nsubject: Dry run\n---\n")  # no preheader
    done = in_a_fresh_process(letter3, True)
    assert done.returncode == 0, done.stderr
    warnings = json.loads(done.stdout.splitlines()[0])[4]
    assert len(warnings) == 1 and "preheader" in warnings[0]
    sent = newsletter(letter3, "send", "--yes")
    assert sent.returncode == 0, sent.stderr
    assert "  warning: " in sent.stderr and "preheader" in sent.stderr
    assert len(sent_files(letter3)) == 3


@pytest.mark.parametrize(("change", "says"), [
    (("01-a.md", "---\ntitle: A\n---\n![](missing.png)\n"), f"error: {SLUG} fails its pre-flight checks"),
    (("issue.md", "---\nsubject: [unclosed\n---\n"), "error: "),
])
def test_a_bad_issue_stops_the_send_with_one_line_and_nothing_sent(letter3, change, says):
    name, text = change
    (letter3 / "issues" / SLUG / name).write_text(text)
    sent = newsletter(letter3, "send", "--yes")
    assert sent.returncode == 1 and sent.stderr.startswith(says), sent.stderr
    assert len(sent.stderr.strip().splitlines()) == 1
    assert sent_files(letter3) == []
    status = newsletter(letter3, "status")
    assert SLUG not in status.stdout  # no campaign was started


def test_failed_checks_are_reported_before_a_missing_key_as_before(letter3):
    # the engine and the adapter load while the child checks; the adapter's own errors still
    # come after the checks
    toml = letter3 / "newsletter.toml"
    toml.write_text(toml.read_text().replace('name = "outbox"', 'name = "postmark"'))
    (letter3 / "issues" / SLUG / "01-a.md").write_text("---\ntitle: A\n---\n![](missing.png)\n")
    sent = newsletter(letter3, "send", "--yes")
    assert sent.returncode == 1
    assert sent.stderr.startswith(f"error: {SLUG} fails its pre-flight checks"), sent.stderr
    (letter3 / "issues" / SLUG / "01-a.md").write_text("---\ntitle: A\n---\nSell well.\n")
    sent = newsletter(letter3, "send", "--yes")
    assert sent.returncode == 1 and "POSTMARK_SERVER_TOKEN" in sent.stderr, sent.stderr
