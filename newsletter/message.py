"""From a rendered issue to one recipient's message, by substitution only.

:class:`Personalizer` splits the rendered HTML and text once per issue around their
placeholders; filling them for a recipient is a join, never a re-render. The headers every
message carries (List-Id, List-Unsubscribe with One-Click, Message-ID on the sender's domain)
are built here for every provider alike.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid
from urllib.parse import quote, urlsplit

from .config import Config
from .errors import NewsletterError
from .render import PLACEHOLDER_RE, Rendered


class HeaderInjection(NewsletterError):
    """A value meant for a header contains a line break."""


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str = ""

    def __post_init__(self) -> None:
        for value in (self.email, self.name):
            if any(ch in value for ch in "\r\n\0"):
                raise HeaderInjection(
                    f"recipient {self.email!r}: line breaks are not allowed in a name or address"
                )

    @property
    def mailbox(self) -> str:
        return formataddr((self.name, self.email)) if self.name else self.email


def _split(template: str) -> tuple[list[str], list[str]]:
    pieces = PLACEHOLDER_RE.split(template)
    return pieces[0::2], pieces[1::2]


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

    @staticmethod
    def _fill(parts: tuple[list[str], list[str]], values: Mapping[str, str]) -> str:
        statics, fields = parts
        out = [statics[0]]
        for name, static in zip(fields, statics[1:], strict=True):
            out.append(values[name])
            out.append(static)
        return "".join(out)

    def html(self, values: Mapping[str, str]) -> str:
        escaped = {k: html_lib.escape(v, quote=True) for k, v in values.items()}
        return self._fill(self._html, escaped)

    def text(self, values: Mapping[str, str]) -> str:
        return self._fill(self._text, values)

    def fields_used(self) -> set[str]:
        return set(self._html[1]) | set(self._text[1])


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


def list_headers(config: Config, list_name: str, unsubscribe: str) -> dict[str, str]:
    """The headers that make unsubscribing one click (RFC 2369, RFC 8058)."""
    targets = [f"<{unsubscribe}>"]
    mailto = config.newsletter.unsubscribe_mailto
    if mailto:
        targets.append(f"<mailto:{mailto}?subject={quote('unsubscribe')}>")
    headers = {
        "List-Id": list_id(config, list_name),
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    for name, value in headers.items():
        if any(ch in value for ch in "\r\n"):
            raise HeaderInjection(f"{name}: line breaks are not allowed in header values")
    return headers


def message_id(config: Config, local: str | None = None) -> str:
    domain = config.newsletter.sender.domain
    if local:
        return f"<{local}@{domain}>"
    return make_msgid(domain=domain)


def build_message(
    config: Config,
    rendered: Rendered,
    recipient: Recipient,
    *,
    list_name: str,
    unsubscribe: str,
    personalizer: Personalizer | None = None,
    msg_id: str | None = None,
    date: object | None = None,
) -> EmailMessage:
    """A complete multipart/alternative message (text, then HTML) for one recipient."""
    import datetime as dt

    p = personalizer or Personalizer(rendered)
    values = field_values(recipient, unsubscribe, rendered.web_url)
    if any(ch in rendered.subject for ch in "\r\n"):
        raise HeaderInjection("the subject must be one line")
    n = config.newsletter
    msg = EmailMessage(policy=SMTP)
    msg["From"] = HeaderAddress(display_name=n.sender.name, addr_spec=n.sender.email)
    msg["To"] = HeaderAddress(display_name=recipient.name, addr_spec=ascii_address(recipient.email))
    msg["Reply-To"] = n.reply_to
    msg["Subject"] = rendered.subject
    when = date if isinstance(date, dt.datetime) else dt.datetime.now(dt.UTC)
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = msg_id or message_id(config)
    for name, value in list_headers(config, list_name, unsubscribe).items():
        msg[name] = value
    msg.set_content(p.text(values), subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(p.html(values), subtype="html", charset="utf-8", cte="quoted-printable")
    return msg
