"""The per-recipient fields of a rendered issue, as markers filled in at sending.

Kept apart from rendering so that what only sends (the engine, the providers) does not load
Markdown and templates to know them."""

from __future__ import annotations

import re

# The marker survives CSS inlining and HTML escaping unchanged and cannot be produced by
# Markdown by accident.
FIELDS = ("name", "email", "unsubscribe_url", "web_url")
PLACEHOLDER = "[[nl:{}]]"
PLACEHOLDERS = {name: PLACEHOLDER.format(name) for name in FIELDS}
PLACEHOLDER_RE = re.compile(r"\[\[nl:(" + "|".join(FIELDS) + r")\]\]")
