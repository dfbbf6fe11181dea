"""From a rendered issue to one recipient's message, by substitution only.

:class:`Personalizer` splits the rendered HTML and text once per issue around their
placeholders; filling them for a recipient is a join, never a re-render. The headers every
message carries (List-Id, List-Unsubscribe with One-Click, Message-ID on the sender's domain)
are built here for every provider alike.
"""

from __future__ import annotations

import binascii
import datetime as dt
import html as html_lib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from .config import Config
from .errors import NewsletterError
from .placeholders import PLACEHOLDER_RE

if TYPE_CHECKING:
    from .render import Rendered


class HeaderInjection(NewsletterError):
    """A value meant for a header contains a line break."""


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str = ""

    def __post_init__(self) -> None:
        for value in (self.email, self.name):
            if "\r" in value or "\n" in value or "\0" in value:
                raise HeaderInjection(
                    f"recipient {self.email!r}: line breaks are not allowed in a name or address"
                )

    @property
    def mailbox(self) -> str:
        return formataddr((self.name, self.email)) if self.name else self.email


def _json_content(text: str) -> str:
    """``text`` escaped for the inside of a JSON string (ASCII only)."""
    return json.dumps(text)[1:-1]


def _split(template: str) -> tuple[list[str], list[str]]:
    pieces = PLACEHOLDER_RE.split(template)
    return pieces[0::2], pieces[1::2]


def _fill(parts: tuple[list[str], list[str]], values: Mapping[str, str]) -> str:
    """A template split by :func:`_split`, with ``values`` in its fields."""
    statics, fields = parts
    out = [statics[0]]
    for name, static in zip(fields, statics[1:], strict=True):
        out.append(values[name])
        out.append(static)
    return "".join(out)


def ascii_address(address: str) -> str:
    """The address with its domain in IDNA (xn--) form, as message headers need it."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise HeaderInjection(
            f"{address}: addresses with non-ASCII characters before the @ are not supported"
        )
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise HeaderInjection(f"{address}: the domain is not a valid host name") from None
    return f"{local}@{domain}"


class Personalizer:
    """Fills the per-recipient fields of a rendered issue; built once per issue."""

    def __init__(self, rendered: Rendered) -> None:
        self.rendered = rendered
        self._html = _split(rendered.html)
        self._text = _split(rendered.text)
        # The same pieces already escaped as JSON string content, for services whose API
        # takes the body in JSON: the static parts are encoded once, not once per reader.
        self._html_json = ([_json_content(p) for p in self._html[0]], self._html[1])
        self._text_json = ([_json_content(p) for p in self._text[0]], self._text[1])

    def html(self, values: Mapping[str, str]) -> str:
        return _fill(self._html, html_values(values))

    def text(self, values: Mapping[str, str]) -> str:
        return _fill(self._text, values)

    def html_json(self, values: Mapping[str, str]) -> str:
        """:meth:`html` as a JSON string literal, quotes included."""
        escaped = {k: _json_content(v) for k, v in html_values(values).items()}
        return f'"{_fill(self._html_json, escaped)}"'

    def text_json(self, values: Mapping[str, str]) -> str:
        """:meth:`text` as a JSON string literal, quotes included."""
        escaped = {k: _json_content(v) for k, v in values.items()}
        return f'"{_fill(self._text_json, escaped)}"'


def html_values(values: Mapping[str, str]) -> dict[str, str]:
    """The fields as they go into the HTML: escaped, and non-ASCII as character references,
    so the HTML stays ASCII."""
    return {
        k: html_lib.escape(v, quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")
        for k, v in values.items()
    }


def field_values(recipient: Recipient, unsubscribe_url: str, web_url: str) -> dict[str, str]:
    return {
        "name": recipient.name,
        "email": recipient.email,
        "unsubscribe_url": unsubscribe_url,
        "web_url": web_url,
    }


def unsubscribe_url(config: Config, token: str) -> str:
    return f"{config.newsletter.site_url}/unsubscribe/{token}"


def list_id(config: Config, list_name: str) -> str:
    """RFC 2919 List-Id: the newsletter's name and ``<list>.<site host>``."""
    host = urlsplit(config.newsletter.site_url).hostname or config.newsletter.sender.domain
    return formataddr((config.newsletter.name, f"{list_name}.{host}"))


def message_id(config: Config, local: str | None = None) -> str:
    domain = config.newsletter.sender.domain
    if local:
        return f"<{local}@{domain}>"
    return make_msgid(domain=domain)


def _header_lines(headers: list[tuple[str, object]]) -> bytes:
    """Headers encoded and folded by the standard library, as CRLF-terminated bytes."""
    msg = EmailMessage(policy=SMTP)
    for name, value in headers:
        msg[name] = value
    return msg.as_bytes().split(b"\r\n\r\n", 1)[0] + b"\r\n"


MAX_LINE = 998  # RFC 5322, without the CRLF


def _qp(text: str) -> bytes:
    return _qp_crlf(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8"))


def _qp_crlf(body: bytes) -> bytes:
    """Quoted-printable of a body with CRLF line breaks. binascii takes the line break for
    its soft breaks from the first line break it meets, so a body that does not end in one
    (one line, or the last line of a part) is given one for the encoding and has it taken
    off after: every line ends the same way, whether it is encoded alone or with others."""
    if body.endswith(b"\n"):
        return binascii.b2a_qp(body, quotetabs=False, istext=True, header=False)
    return binascii.b2a_qp(body + b"\r\n", quotetabs=False, istext=True, header=False)[:-2]


def _line_fits_7bit(line: str, delimiter: str) -> bool:
    """A line can travel as it is: ASCII, short, and not to be taken for the boundary."""
    return line.isascii() and len(line) <= MAX_LINE and delimiter not in line


def _part(subtype: str, text: str, boundary: str) -> bytes:
    """One MIME part from the whole text: as it is (7bit) when every line allows it, else
    quoted-printable."""
    delimiter = f"--{boundary}"
    if all(_line_fits_7bit(line, delimiter) for line in text.split("\n")):
        cte, body = "7bit", text.replace("\r\n", "\n").replace("\n", "\r\n").encode("ascii")
    else:
        cte, body = "quoted-printable", _qp(text)
    return _part_head(subtype, cte) + body


def _part_head(subtype: str, cte: str) -> bytes:
    return f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'.encode("ascii")


@dataclass(frozen=True, slots=True)
class _Run:
    """Lines of a part that hold no field, with their line breaks: as 7bit (None when not
    ASCII) and as quoted-printable."""

    seven: bytes | None
    qp: bytes


@dataclass(frozen=True, slots=True)
class _FieldLine:
    """A line that holds fields, split around them, and its line break ("" on the last)."""

    pieces: tuple[list[str], list[str]]
    ending: str


class _Body:
    """One part's body (the HTML or the text) made ready once per issue.

    Both ways a part travels, as it is (7bit) and quoted-printable, work a line at a time:
    the lines with no field in them are given CRLF line breaks and encoded both ways here,
    once, and a recipient's message fills and encodes only the few lines that hold a field
    (the greeting, the unsubscribe link). The bytes are the same as filling the whole text
    and encoding it, which is what a template with a lone CR, or a value with a line break,
    still gets."""

    def __init__(self, subtype: str, template: str, boundary: str) -> None:
        self.subtype = subtype
        self.delimiter = f"--{boundary}"
        self.boundary = boundary
        self.pieces = _split(template)
        self.whole = "\r" in template
        self.items: list[_Run | _FieldLine] = []
        self.seven_bit = True  # the lines with no field allow 7bit
        lines = template.split("\n")
        run: list[str] = []
        for i, line in enumerate(lines):
            ending = "\r\n" if i < len(lines) - 1 else ""
            if PLACEHOLDER_RE.search(line):
                self._add_run(run)
                run = []
                self.items.append(_FieldLine(_split(line), ending))
                continue
            if not _line_fits_7bit(line, self.delimiter):
                self.seven_bit = False
            run.append(line + ending)
        self._add_run(run)

    def _add_run(self, lines: list[str]) -> None:
        if lines:
            text = "".join(lines)
            seven = text.encode("ascii") if text.isascii() else None
            self.items.append(_Run(seven, _qp_crlf(text.encode("utf-8"))))

    def part(self, values: Mapping[str, str]) -> bytes:
        """The part, head and body, with ``values`` in its fields."""
        if self.whole or any("\r" in v or "\n" in v for v in values.values()):
            text = _fill(self.pieces, values)
            return _part(self.subtype, text, self.boundary)
        filled = [_fill(item.pieces, values) + item.ending
                  for item in self.items if isinstance(item, _FieldLine)]
        seven = self.seven_bit and all(_line_fits_7bit(line, self.delimiter) for line in filled)
        out = [_part_head(self.subtype, "7bit" if seven else "quoted-printable")]
        lines = iter(filled)
        for item in self.items:
            if isinstance(item, _Run):
                # 7bit is chosen only when every run is ASCII, so each has its 7bit bytes
                out.append(item.seven if seven else item.qp)  # type: ignore[arg-type]
            else:
                line = next(lines)
                out.append(line.encode("ascii") if seven else _qp_crlf(line.encode("utf-8")))
        return b"".join(out)


class MessageTemplate:
    """Everything about a message that is the same for every recipient, prepared once.

    :meth:`bytes_for` assembles one recipient's complete MIME message (multipart/alternative,
    text then HTML) from the prepared parts: a few joins, never a render and never the
    email package per recipient. The rendered HTML is ASCII with short lines (see
    :func:`newsletter.render.mail_safe`), so it normally travels as 7bit; anything else goes
    quoted-printable. Either way the lines without a field were encoded once, here (see
    :class:`_Body`), and only the reader's own lines are encoded per message.
    """

    def __init__(self, config: Config, rendered: Rendered, list_name: str, subject_prefix: str = "") -> None:
        n = config.newsletter
        self.config = config
        self.rendered = rendered
        self.list_name = list_name
        self.subject = subject_prefix + rendered.subject
        if any(ch in self.subject for ch in "\r\n"):
            raise HeaderInjection("the subject must be one line")
        self.sender = HeaderAddress(display_name=n.sender.name, addr_spec=n.sender.email)
        self.personalizer = Personalizer(rendered)
        self.web_url = rendered.web_url
        # "=_" never occurs in quoted-printable output, so the boundary cannot clash.
        self.boundary = f"=_nl_{rendered.content_hash[:24]}"
        self._static = _header_lines(
            [("From", self.sender), ("Reply-To", n.reply_to), ("Subject", self.subject)]
        )
        self._list_id_value = list_id(config, list_name)
        if "\r" in self._list_id_value or "\n" in self._list_id_value:
            raise HeaderInjection("List-Id: line breaks are not allowed in header values")
        self._list_id = _header_lines([("List-Id", self._list_id_value)])
        mailto = n.unsubscribe_mailto
        self._mailto = f", <mailto:{mailto}?subject={quote('unsubscribe')}>" if mailto else ""
        self._date_cache: tuple[int, bytes] = (0, b"")
        self._text_body = _Body("plain", rendered.text, self.boundary)
        self._html_body = _Body("html", rendered.html, self.boundary)

    def headers_for(self, unsubscribe: str) -> dict[str, str]:
        """The headers that make unsubscribing one click (RFC 2369, RFC 8058), for one
        reader's link; everything else in them is fixed once per issue."""
        if "\r" in unsubscribe or "\n" in unsubscribe:
            raise HeaderInjection("List-Unsubscribe: line breaks are not allowed in header values")
        return {
            "List-Id": self._list_id_value,
            "List-Unsubscribe": f"<{unsubscribe}>{self._mailto}",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def parts_for(self, recipient: Recipient, unsubscribe: str) -> tuple[str, str]:
        """The recipient's (html, text)."""
        values = field_values(recipient, unsubscribe, self.web_url)
        return self.personalizer.html(values), self.personalizer.text(values)

    def _date(self) -> bytes:
        now = int(time.time())
        if self._date_cache[0] != now:
            stamp = format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
            self._date_cache = (now, f"Date: {stamp}\r\n".encode("ascii"))
        return self._date_cache[1]

    def bytes_for(self, recipient: Recipient, unsubscribe: str, msg_id: str) -> bytes:
        """One recipient's complete message, CRLF line endings, ready for SMTP or a file."""
        values = field_values(recipient, unsubscribe, self.web_url)
        to = formataddr((recipient.name, ascii_address(recipient.email)), charset="utf-8")
        unsub = self.headers_for(unsubscribe)
        if any(ch in msg_id for ch in "\r\n"):
            raise HeaderInjection("Message-ID: line breaks are not allowed")
        b = self.boundary
        head = (
            f"To: {to}\r\n"
            f"Message-ID: {msg_id}\r\n"
            f"List-Unsubscribe: {unsub['List-Unsubscribe']}\r\n"
            f"List-Unsubscribe-Post: {unsub['List-Unsubscribe-Post']}\r\n"
            "MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{b}"\r\n'
            "\r\n"
        ).encode()
        return b"".join(
            (
                self._static,
                self._date(),
                self._list_id,
                head,
                f"--{b}\r\n".encode("ascii"),
                self._text_body.part(values),
                f"\r\n--{b}\r\n".encode("ascii"),
                self._html_body.part(html_values(values)),
                f"\r\n--{b}--\r\n".encode("ascii"),
            )
        )
