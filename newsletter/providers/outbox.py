"""The outbox: every message becomes an .eml file under ``outbox/<campaign>/``.

Nothing leaves the machine; open the files in any mail client to see exactly what readers
would get. Writing a campaign's message again replaces its file, so a resumed batch never
delivers twice. Proofs (``send --test-to``, the preview's "Send test") go to
``outbox/test/``, each in a file of its own named by the time it was sent.
"""

from __future__ import annotations

import datetime as dt
import os
import re

from ..files import write_atomically
from . import Batch, Outcome, Provider

PROOF_LABEL = "test"  # the label of a proof batch; a campaign's is "<id>-<issue>"


class OutboxProvider(Provider):
    name = "outbox"
    max_batch = 200
    default_concurrency = 1
    idempotent = True

    def setup(self) -> None:
        folder = self.option("path", "outbox")
        self.folder = (self.config.root / folder).resolve()

    def check(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not os.access(self.folder, os.W_OK):
            from . import FatalError

            raise FatalError(f"outbox: {self.folder} is not writable")
        return f"outbox: messages are written under {self.folder}"

    def send_batch(self, batch: Batch) -> list[Outcome]:
        folder = self.folder / _safe(batch.label)
        folder.mkdir(parents=True, exist_ok=True)
        # A proof's key counts from 1 on every send; the time and the batch's own key keep a
        # second proof to the same address from replacing the first.
        prefix = ""
        if batch.label == PROOF_LABEL:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
            prefix = f"{stamp}-{_safe(batch.idempotency_key)[:8]}-"
        outcomes = []
        for env in batch.envelopes:
            data = batch.template.bytes_for(env.recipient, env.unsubscribe_url, env.message_id)
            path = folder / f"{prefix}{env.key:08d}-{_safe(env.recipient.email)}.eml"
            write_atomically(path, data)
            outcomes.append(Outcome(env.key, "sent", provider_id=path.name))
        return outcomes


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9@._+-]", "_", text)[:120]

