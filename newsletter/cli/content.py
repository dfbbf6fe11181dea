"""Commands for writing and building issues."""

from __future__ import annotations

COMMANDS: list = []
