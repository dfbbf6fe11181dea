"""A message part made ready once per issue gives, for every reader, the very bytes that
filling the whole text and encoding it would."""

from __future__ import annotations

import binascii
import random

import pytest

from newsletter.message import _Body
from newsletter.placeholders import PLACEHOLDER_RE, PLACEHOLDERS

BOUNDARY = "=_nl_0123456789abcdef01234567"
WORDS = ["selling", "a", "=", ".", "—", "é", "\t", " ", "  ", "=20", "x" * 70, "y" * 75, "z" * 400,
         "Hi", "Sell well", "--", f"--{BOUNDARY}", "\u2028", "🙂"]


def whole(subtype: str, template: str, values: dict[str, str]) -> bytes:
    """The reference: fill every field, then encode the whole text as one."""
    text = PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)
    seven = (text.isascii() and max(map(len, text.split("\n"))) <= 998
             and f"--{BOUNDARY}" not in text)
    crlf = text.replace("\r\n", "\n").replace("\n", "\r\n")
    if seven:
        cte, body = "7bit", crlf.encode("ascii")
    else:
        # binascii takes its soft line break from the first line break in the text: a text
        # that does not end in one is encoded with a CRLF added and taken off, so its last
        # line breaks the same way as the others
        cte, data = "quoted-printable", crlf.encode("utf-8")
        if data.endswith(b"\n"):
            body = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        else:
            body = binascii.b2a_qp(data + b"\r\n", quotetabs=False, istext=True, header=False)[:-2]
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    return head.encode("ascii") + body


def line(rng: random.Random, ascii_only: bool) -> str:
    words = [w for w in WORDS if w.isascii()] if ascii_only else WORDS
    out = []
    for _ in range(rng.randrange(0, 12)):
        out.append(rng.choice(words) if rng.random() < 0.8 else rng.choice(list(PLACEHOLDERS.values())))
    if rng.random() < 0.05:
        out.append("w" * rng.randrange(900, 1100))  # near and over the 998 line limit
    return (" " if rng.random() < 0.5 else "").join(out) + (" " if rng.random() < 0.2 else "")


def template(rng: random.Random) -> str:
    ascii_only = rng.random() < 0.5
    text = "\n".join(line(rng, ascii_only) for _ in range(rng.randrange(1, 30)))
    if rng.random() < 0.1:
        text = text.replace("\n", "\r\n", 1)  # a CRLF already there
    if rng.random() < 0.05:
        text += "\r" + rng.choice(list(PLACEHOLDERS.values())) + "\n"  # a lone CR beside a field
    return text + ("\n" if rng.random() < 0.5 else "")


def values(rng: random.Random) -> dict[str, str]:
    names = ["", "Ann", "Åsa Lindqvist", "Ann ", "a=b", "x" * 1000, f"--{BOUNDARY}", "Zoë\t",
             "two\nlines", "cr\r", "."]
    return {"name": rng.choice(names), "email": rng.choice(["a@example.com", "åsa@bücher.example"]),
            "unsubscribe_url": "https://letter.example.com/unsubscribe/" + "T" * rng.randrange(0, 90),
            "web_url": "https://letter.example.com/archive/2026-12-01/"}


@pytest.mark.parametrize("seed", range(40))
def test_a_part_made_ready_once_is_the_whole_text_encoded(seed):
    rng = random.Random(seed)
    for _ in range(25):
        text = template(rng)
        for subtype in ("plain", "html"):
            body = _Body(subtype, text, BOUNDARY)
            for _ in range(4):
                v = values(rng)
                assert body.part(v) == whole(subtype, text, v), (text, v)


def test_both_encodings_are_met():
    # the cases the random ones stand on: a field line that turns a 7bit part
    # quoted-printable, and static lines that already are
    body = _Body("plain", "Hi [[nl:name]],\nselling " * 3 + "\nSell well\n", BOUNDARY)
    seven = body.part({"name": "Ann"})
    assert b"Content-Transfer-Encoding: 7bit" in seven
    qp = body.part({"name": "Åsa"})
    assert b"Content-Transfer-Encoding: quoted-printable" in qp and b"=C3=85sa" in qp
    assert _Body("plain", "Hej då\nHi [[nl:name]]", BOUNDARY).part({"name": "Ann"}).count(b"quoted-printable") == 1


def test_a_part_of_one_long_line_breaks_softly_with_crlf():
    # binascii alone would break a text with no line break in it with a bare LF
    out = _Body("plain", "Åsa sells " * 40, BOUNDARY).part({})
    assert b"=\r\n" in out and b"\n" not in out.replace(b"\r\n", b"")
