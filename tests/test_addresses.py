"""Address checks: the key, the hash, header safety, and the quick path agreeing with
email-validator."""

from __future__ import annotations

import hashlib

import pytest
from email_validator import EmailNotValidError, validate_email

from newsletter.addresses import _quick_normalized, clean_name, parse_address, unsafe_character
from newsletter.errors import InvalidAddress

SAMPLES = [
    "ann@example.com", "Ann.Berg@Example.COM", "POSTMASTER@example.org", "a+tag@example.net",
    "o'hara@example.com", "x_y-z@sub.example.co.uk", "{odd}|chars~@example.com",
    "a..b@example.com", ".a@example.com", "a.@example.com", "a@example", "a@-example.com",
    "a@example..com", "a@localhost", "a@foo.local", "a@foo.invalid", "a@123.123.123.123",
    "a@[127.0.0.1]", "åse@bücher.example", "ann@BÜCHER.example", "ann@xn--bcher-kva.example",
    "李@例え.jp", '"quoted"@example.com', "a b@example.com", "a@b@example.com", "@example.com",
    "ann@", "x" * 64 + "@example.com", "x" * 65 + "@example.com",
    "x" * 60 + "@" + ".".join(["d" * 60] * 3) + ".com", "a@" + "d" * 64 + ".com",
]


@pytest.mark.parametrize("address", SAMPLES)
def test_the_quick_path_agrees_with_email_validator(address):
    quick = _quick_normalized(address)
    try:
        expected = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    if quick is not None:
        assert quick.lower() == expected.lower()
    # And the public function, quick path or not, accepts exactly what email-validator does.
    if expected is None:
        with pytest.raises(InvalidAddress):
            parse_address(address)
    else:
        assert parse_address(address).key == expected.lower()


def test_the_quick_path_takes_the_common_shape():
    assert _quick_normalized("Ann.Berg@Example.COM") == "Ann.Berg@example.com"


def test_key_and_hash():
    parsed = parse_address("  Ann@Example.COM ")
    assert parsed.email == "Ann@Example.COM"
    assert parsed.key == "ann@example.com"
    assert parsed.hash == hashlib.sha256(b"ann@example.com").hexdigest()
    assert parse_address("ann@xn--bcher-kva.example").key == parse_address("Ann@Bücher.example").key


@pytest.mark.parametrize(
    "text, found",
    [("plain", None), ("a\rb", "a line break"), ("a\nb", "a line break"),
     ("a\x00b", "the control character U+0000"), ("a\tb", "the control character U+0009"),
     ("a\x85b", "the control character U+0085"), ("a\u2028b", "the control character U+2028"),
     ("Åse Ødegård 李", None)],
)
def test_header_breaking_characters_are_found(text, found):
    assert unsafe_character(text) == found


def test_names_are_folded_for_headers_and_checked_for_length():
    assert clean_name("  Ann Berg ") == "Ann Berg"
    assert clean_name(None) == ""
    assert clean_name("Ann\nBcc: x@example.com") == "Ann Bcc: x@example.com"
    assert clean_name("Ann \r\n\t Berg\x00\u2029") == "Ann Berg"
    assert unsafe_character(clean_name("".join(map(chr, range(0x20))) + "\x7f\x9f")) is None
    with pytest.raises(InvalidAddress, match="not UTF-8 text"):
        clean_name("Ann \udcc5")
    with pytest.raises(InvalidAddress, match="longer than 200"):
        clean_name("A" * 201)


def test_the_reason_is_in_the_message():
    with pytest.raises(InvalidAddress, match=r"'ann@' is not a valid email address: There must be"):
        parse_address("ann@")
    with pytest.raises(InvalidAddress, match="contains a line break, which is never allowed"):
        parse_address("ann@example.com\r\nBcc: x@example.org")
