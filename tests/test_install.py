"""The command as a user installs it: a wheel built from this checkout, installed into a
fresh virtual environment (not an editable install), used in a folder far from the clone."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_distribution_has_a_name_of_its_own():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "letterfold"  # "newsletter" on the package index is someone else's
    assert project["scripts"] == {"newsletter": "newsletter.cli:run"}
    readme = (REPO / "README.md").read_text()
    assert "pip install 'newsletter[" not in readme and "pip install 'letterfold[postgres]'" in readme
    assert "pipx install" in readme


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel; its dependencies come from this test run's
    environment (read-only, through a .pth line), so nothing is downloaded."""
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if built.returncode != 0 and "hatchling" in built.stderr:
        pytest.fail("building the wheel needs hatchling: pip install -e '.[test]'")
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("letterfold-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (not the editable newsletter: a plain path line runs no .pth files).
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return env_dir / "bin"


def test_init_outside_any_checkout_scaffolds_from_the_installed_package(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["PATH"] = f"{installed}:{env.get('PATH', '')}"
    where = subprocess.run([installed / "python", "-c", "import newsletter; print(newsletter.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout
    assert str(REPO) not in where and "site-packages" in where  # the wheel, not the checkout
    letter = tmp_path / "my-letter"
    init = subprocess.run([installed / "newsletter", "init", str(letter)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert init.returncode == 0, init.stderr
    assert (letter / "templates" / "email.html").is_file() and (letter / "newsletter.toml").is_file()
    new = subprocess.run([installed / "newsletter", "new", "First"], capture_output=True, text=True,
                         cwd=letter, env=env, timeout=60)
    assert new.returncode == 0, new.stderr
    version = subprocess.run([installed / "newsletter", "--version"], capture_output=True, text=True,
                             cwd=letter, env=env, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("newsletter, version ")
