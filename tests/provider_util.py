"""A batch of envelopes for the provider tests, as the campaign engine would hand one over."""

from __future__ import annotations

from newsletter.message import MessageTemplate, Recipient
from newsletter.providers import Batch, Envelope


def batch_of(template: MessageTemplate, addresses: list[str], names: list[str] | None = None,
             key: str = "c1-b1", label: str = "c1") -> Batch:
    """Recipient i (from 1) is "Reader i" unless ``names`` says otherwise, with its own
    unsubscribe link and Message-ID."""
    envelopes = [
        Envelope(i, Recipient(a, names[i - 1] if names else f"Reader {i}"),
                 f"https://letter.example.com/unsubscribe/t{i}", f"<c.{i}@example.com>")
        for i, a in enumerate(addresses, start=1)
    ]
    return Batch(template, envelopes, idempotency_key=key, label=label)


# A maintenance page as a proxy in front of a service shows it.
MAINTENANCE_PAGE = "<!DOCTYPE html>\n<html><body>\n<h1>Service Unavailable</h1>\n<p>Back soon.</p>\n</body></html>\n"


def foreign_5xx(lookalike):
    """5xx answers that nothing proves came from the service itself, as (fault, status), for
    the fakes' ``faults``; ``lookalike`` is a JSON 500 shaped almost, but not quite, like the
    service's own error."""
    from .fakes.httpbase import Reply, text_reply

    return [
        (text_reply(503, MAINTENANCE_PAGE), 503),
        (504, 504),  # a gateway's status, whatever its body says
        (Reply(500), 500),  # no body at all
        (text_reply(500, "upstream connect error or\ndisconnect/reset before headers", "text/plain"), 500),
        (lookalike, 500),
    ]
