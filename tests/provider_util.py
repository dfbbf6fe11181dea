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
