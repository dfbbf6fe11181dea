"""Subscriber addresses: validation, the case-insensitive key and the one-way hash.

Every address that enters the database passes :func:`parse_address`. The key (normalised,
lowercased) makes ``Ann@Example.com`` and ``ann@example.com`` one subscriber; the hash of
the key is all a suppression keeps, so a forgotten address can still be recognised (and
kept out) without being stored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import InvalidAddress

MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class ParsedAddress:
    email: str  # as given, surrounding spaces removed
    key: str  # normalised and lowercased: unique per subscriber
    hash: str  # sha256 hex of key: what a suppression remembers


# Characters that could end a mail header or smuggle another one in: C0 and C1 controls
# (CR, LF and NUL among them) and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A run of them with the spaces around it, for single_line().
_FOLD = re.compile("[ ]*[\x00-\x1f\x7f-\x9f\u2028\u2029][ \x00-\x1f\x7f-\x9f\u2028\u2029]*")
# Lone surrogates: text decoded from bytes that were not UTF-8; no header can encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")
# A plain ASCII local part (RFC 5322 dot-atom): the shape of nearly every real address, and
# one email-validator accepts as it is, so the quick path below may take it.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_MAX_ADDRESS = 254
_MAX_LOCAL = 64


def unsafe_character(text: str) -> str | None:
    """The first character that could break out of a mail header (CR, LF, NUL, other
    control characters, Unicode line separators), described for a message; else None."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    ch = found.group()
    return "a line break" if ch in "\r\n" else f"the control character U+{ord(ch):04X}"


@lru_cache(maxsize=8192)
def _checked_domain(domain: str) -> tuple[str, str] | None:
    """email-validator's verdict on a domain, once per domain: (normalised, ASCII) or None.
    Lists repeat a few domains thousands of times, and the domain is most of the work."""
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email("a@" + domain, check_deliverability=False)
    except EmailNotValidError:
        return None
    return result.domain, result.ascii_domain


def _quick_normalized(email: str) -> str | None:
    """The normalised form of a plain address (ASCII dot-atom local part, a domain already
    judged valid), or None to send it through the full validation."""
    local, at, domain = email.rpartition("@")
    if not at or len(local) > _MAX_LOCAL or not _PLAIN_LOCAL.fullmatch(local):
        return None
    checked = _checked_domain(domain)
    if checked is None:
        return None  # let the full validation say what is wrong
    normalized = f"{local}@{checked[0]}"
    longest = max(len(email.encode()), len(normalized.encode()), len(local) + 1 + len(checked[1]))
    return normalized if longest <= _MAX_ADDRESS else None


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
    normalized = None if check_deliverability else _quick_normalized(email)
    if normalized is None:
        try:
            normalized = validate_email(
                email,
                check_deliverability=check_deliverability,
                dns_resolver=dns_resolver,
            ).normalized
        except EmailNotValidError as exc:
            raise InvalidAddress(f"{email!r} is not a valid email address: {exc}") from None
    key = normalized.lower()
    return ParsedAddress(email=email, key=key, hash=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def address_hash(raw: str) -> str:
    """The suppression hash of an address, for callers holding only the address."""
    return parse_address(raw).hash


def single_line(text: str | None) -> str:
    """Free text (a name, a note, a list title) on one line: every run of line breaks and
    other control characters, with the spaces around it, becomes one space. A line break
    in a name is cosmetic (a spreadsheet cell edited with Alt+Enter), not a reason to lose
    the reader."""
    return _FOLD.sub(" ", text or "").strip()


def clean_name(raw: str | None) -> str:
    """A display name fit for a From/To header (folded onto one line), or InvalidAddress
    saying what is wrong with it even then."""
    name = single_line(raw)
    if _SURROGATE.search(name):
        raise InvalidAddress(
            f"the name {name!r} holds bytes that are not UTF-8 text; names go into mail headers"
        )
    bad = unsafe_character(name)
    if bad:  # folding leaves none; kept so that no path around it can reach a header
        raise InvalidAddress(f"the name {name!r} contains {bad}; names go into mail headers")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidAddress(f"the name is longer than {MAX_NAME_LENGTH} characters")
    return name
