"""Subscriber addresses: validation, the case-insensitive key and the one-way hash.

Every address that enters the database passes :func:`parse_address`. The key (normalised,
lowercased) makes ``Ann@Example.com`` and ``ann@example.com`` one subscriber; the hash of
the key is all a suppression keeps, so a forgotten address can still be recognised (and
kept out) without being stored.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any

from .errors import InvalidAddress

MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class ParsedAddress:
    email: str  # as given, surrounding spaces removed
    key: str  # normalised and lowercased: unique per subscriber
    hash: str  # sha256 hex of key: what a suppression remembers


def unsafe_character(text: str) -> str | None:
    """The first character that could break out of a mail header (CR, LF, NUL, other
    control characters, Unicode line separators), described for a message; else None."""
    for ch in text:
        if ch in "\r\n":
            return "a line break"
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return f"the control character U+{ord(ch):04X}"
    return None


def parse_address(
    raw: str, *, check_deliverability: bool = False, dns_resolver: Any = None
) -> ParsedAddress:
    """Validate an address (syntax and normalisation; DNS only when asked) or raise
    InvalidAddress saying why."""
    from email_validator import EmailNotValidError, validate_email

    email = raw.strip()
    if not email:
        raise InvalidAddress("the email address is empty")
    bad = unsafe_character(email)
    if bad:
        raise InvalidAddress(f"{email!r} contains {bad}, which is never allowed in an address")
    try:
        result = validate_email(
            email,
            check_deliverability=check_deliverability,
            dns_resolver=dns_resolver,
        )
    except EmailNotValidError as exc:
        raise InvalidAddress(f"{email!r} is not a valid email address: {exc}") from None
    key = result.normalized.lower()
    return ParsedAddress(email=email, key=key, hash=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def address_hash(raw: str) -> str:
    """The suppression hash of an address, for callers holding only the address."""
    return parse_address(raw).hash


def clean_name(raw: str | None) -> str:
    """A display name fit for a From/To header, or InvalidAddress saying what is wrong."""
    name = (raw or "").strip()
    bad = unsafe_character(name)
    if bad:
        raise InvalidAddress(f"the name {name!r} contains {bad}; names go into mail headers")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidAddress(f"the name is longer than {MAX_NAME_LENGTH} characters")
    return name
