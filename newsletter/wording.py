"""Counts in messages: "1 recipient", "2 recipients", never "recipient(s)"."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` (with thousands separators) and ``noun``, or ``nouns`` (default: noun + "s")
    when ``n`` is not 1."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"
