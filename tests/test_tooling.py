"""The project's own tooling: the test run's summary and the CI scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_skips_are_summed_up_by_reason_and_failures_kept_in_full(tmp_path):
    """A run with many skips (`make test` without PostgreSQL or Chromium) prints one line per
    reason, not one per test, and still lists every failure and error."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_many.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("n", range(5))
        def test_needs_a_server(n):
            pytest.skip("no server here; start one")

        @pytest.mark.skipif(True, reason="no browser here")
        @pytest.mark.parametrize("n", range(3))
        def test_needs_a_browser(n):
            pass

        def test_passes():
            pass

        def test_fails():
            assert 1 == 2

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        def test_errors(broken):
            pass
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "PYTEST_"))}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert skipped == ["SKIPPED 5 tests: no server here; start one",
                       "SKIPPED 3 tests: no browser here"], out
    assert "FAILED tests/test_many.py::test_fails - assert 1 == 2" in out
    assert "ERROR tests/test_many.py::test_errors - RuntimeError: fixture broke" in out
    assert "1 failed, 1 passed, 8 skipped, 1 error" in out


def fake_postgres(tmp_path: Path, psql_status: int) -> Path:
    """Server binaries that say a server is up and whose psql exits with ``psql_status``, and
    a runuser (used when root) that runs the command as is."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    scripts = {"pg_ctl": "exit 0", "pg_isready": "exit 0", "initdb": "exit 0",
               "psql": f"cat >/dev/null; exit {psql_status}", "postgres": "echo 'postgres (PostgreSQL) 99.0'",
               "runuser": 'while [ "$1" != "--" ]; do shift; done; shift; exec "$@"'}
    for name, body in scripts.items():
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    return bindir


def source_postgres_sh(tmp_path: Path, bindir: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (which sources .ci/postgres.sh) in bash with the fake binaries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(NEWSLETTER_PG_BINDIR=str(bindir), NEWSLETTER_PG_DIR=str(tmp_path / "pg"),
               PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}")
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_postgres_sh_fails_when_the_test_role_cannot_be_made(tmp_path):
    bindir = fake_postgres(tmp_path, psql_status=2)
    plain = source_postgres_sh(tmp_path, bindir, ". .ci/postgres.sh; echo status=$?")
    assert "postgres.sh: could not create the test role" in plain.stderr
    assert plain.stdout.strip() == "status=1"
    # As .ci/run sources it: the run stops there.
    strict = source_postgres_sh(tmp_path, bindir, "set -euo pipefail; . .ci/postgres.sh; echo went on")
    assert strict.returncode != 0 and "went on" not in strict.stdout
    assert "could not create the test role" in strict.stderr


def test_postgres_sh_exports_the_url_when_all_went_well(tmp_path):
    bindir = fake_postgres(tmp_path, psql_status=0)
    result = source_postgres_sh(tmp_path, bindir,
                                '. .ci/postgres.sh; echo "status=$? $NEWSLETTER_TEST_POSTGRES_URL"')
    assert result.stdout.strip() == (
        "status=0 postgresql+psycopg://newsletter_test:newsletter_test@127.0.0.1:54329/newsletter_test")
    assert "PostgreSQL 99.0 on 127.0.0.1:54329" in result.stderr
