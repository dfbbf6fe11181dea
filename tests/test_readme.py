"""The README's command table stays in step with the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import click

from newsletter.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def cli_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    found = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= cli_commands(command, (*prefix, name))
        else:
            found.add(" ".join((*prefix, name)))
    return found


def readme_commands() -> set[str]:
    text = README.read_text(encoding="utf-8")
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    found = set()
    for cell in re.findall(r"^\| `newsletter ([^`]+)`", table, flags=re.M):
        words = [w for w in cell.split() if re.fullmatch(r"[a-z][a-z-]*", w)]
        found.add(" ".join(words))
    return found


def test_readme_lists_every_command_and_no_others():
    assert readme_commands() == cli_commands(main)


def test_readme_shows_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
