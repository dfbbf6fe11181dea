"""Counts and sizes in messages: "1 recipient", "2 recipients" (never "recipient(s)"), "1.4 MB"."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` (with thousands separators) and ``noun``, or ``nouns`` (default: noun + "s")
    when ``n`` is not 1."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def human_size(size: int) -> str:
    """A number of bytes as B, KB or MB (of 1,024)."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.1f} MB"
