"""Shared plumbing for the commands: the lazily loaded configuration and output helpers."""

from __future__ import annotations

import importlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..wording import human_size, plural

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Env", "human_size", "lazy_module", "pass_env", "plural", "show_path"]


def lazy_module(name: str) -> Any:
    """A stand-in that imports module ``name`` on first attribute access."""

    class _Lazy:
        def __getattr__(self, attr: str) -> Any:
            return getattr(importlib.import_module(name), attr)

    return _Lazy()


class Env:
    """What every command may need, loaded on first use so `--help` stays fast."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = Path(config_path) if config_path else None

    @cached_property
    def config(self) -> Config:
        from ..config import load

        return load(self.config_path)


pass_env = click.make_pass_decorator(Env)


def show_path(path: Path) -> str:
    """A path relative to the working folder when it lies inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
