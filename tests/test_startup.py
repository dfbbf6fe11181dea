"""What a command loads before it runs: the heavy libraries only where they are used.

Structural, not a timing: each check imports a module in a fresh interpreter and lists the
top-level packages that came with it. The figures are bench/startup.py's to print."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = {"sqlalchemy", "premailer", "cssutils", "lxml", "requests", "urllib3", "boto3",
         "botocore", "werkzeug", "waitress", "jinja2", "markdown_it", "PIL", "feedparser",
         "nh3", "markdownify", "psycopg"}


def loaded_with(module: str) -> set[str]:
    code = (f"import sys, json; import {module}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out))


def test_the_command_line_loads_none_of_the_heavy_libraries():
    # --help needs click and the commands' names; settings are read when a command runs
    assert loaded_with("newsletter.cli") & (HEAVY | {"email_validator", "yaml", "dotenv"}) == set()


@pytest.mark.parametrize(("module", "allowed"), [
    # status, cancel, the engine: the database, nothing for Markdown, templates or CSS
    ("newsletter.campaign", {"sqlalchemy"}),
    # calendar, schedule, tick's planning
    ("newsletter.schedule", set()),
    # send --dry-run: the database in a child, Markdown and templates after it is started
    ("newsletter.dryrun", set()),
    # send: the issue rendered in a child while the engine loads; what comes back is plain data
    ("newsletter.ready", set()),
    ("newsletter.rendered", set()),
    # the database layer works on SQLite without PostgreSQL's driver or dialect
    ("newsletter.store", {"sqlalchemy"}),
    # the feed loads feedparser, nh3, markdownify and requests when it fetches
    ("newsletter.feed", set()),
    # welcome sequences: the database; rendering only when a step is sent or shown
    ("newsletter.sequences", {"sqlalchemy"}),
    # an email service's adapter: its HTTP client and nothing of rendering
    ("newsletter.providers.sendgrid", {"requests", "urllib3"}),
])
def test_a_core_module_loads_only_what_it_needs(module, allowed):
    assert loaded_with(module) & HEAVY == allowed


def test_sqlite_does_not_load_postgresql_support():
    code = ("import sys; import newsletter.store, newsletter.campaign; "
            "print(any(m.startswith('sqlalchemy.dialects.postgresql') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"


def _exit_of(code: str, *args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that runs ``code`` and, as its very last step (an exit handler
    runs after the command has returned), says how many objects the collector holds frozen."""
    probe = ("import atexit, gc, sys; "
             "atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.stderr)); ")
    return subprocess.run([sys.executable, "-c", probe + code, *args], capture_output=True,
                          text=True, timeout=60)


def test_the_installed_command_leaves_the_heap_frozen_for_the_exit(tmp_path):
    # bench/startup.py: the last collection walked the heap for 70-80 ms after `status`
    done = _exit_of("from newsletter.cli import run; run()", "--version")
    assert done.returncode == 0 and "newsletter" in done.stdout
    frozen = int(done.stderr.split("frozen ")[1].split()[0])
    assert frozen > 1000
    # the exit code and the one-line error come through unchanged
    failed = _exit_of("from newsletter.cli import run; run()", "--config",
                      str(tmp_path / "missing.toml"), "status")
    assert failed.returncode == 1 and failed.stderr.startswith("error: ")
    assert "frozen" in failed.stderr


def test_the_group_itself_freezes_nothing():
    # tests and other callers of `main` keep a collecting process
    done = _exit_of("from newsletter.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
                    "--version")
    assert "frozen 0" in done.stderr


def test_python_dash_m_and_the_script_run_the_same_entry():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["newsletter"] == "newsletter.cli:run"
    assert "run()" in (root / "newsletter" / "__main__.py").read_text()
