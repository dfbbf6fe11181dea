"""A local Postmark: ``POST /email/batch`` and ``GET /server`` as Postmark documents them.

It checks the server token, the batch size (500) and each message's shape (From, To, Subject,
a body, a message stream, and, on a broadcast stream, the List-Unsubscribe headers), answers
200 with one result per message in order (ErrorCode 0, or 300 for a bad address and 406 for an
address in ``inactive``), and records what it accepted in ``messages``.

``retry_first`` maps a lower-cased address to how many of its next appearances are refused
with the per-message ErrorCode 429 (Postmark's rate limit, reported inside a 200 batch
answer); a refused message is not recorded, and once the count is used up the address is
accepted again.

``accepted_by`` counts the messages accepted per lower-cased address (``GET /_accepted``
answers it as JSON, outside Postmark's API), so a soak in another process can tell who got
two copies. :class:`Chaos` misbehaves at random, for soaks.

Run it alone with ``python -m tests.fakes.postmark`` (prints its URL); ``--chaos 0.2 --seed 7``
turns on chaos, ``--latency 0.05`` delays every answer.
"""

from __future__ import annotations

import argparse
import random
import threading
import uuid
from collections import Counter
from typing import Any

from .httpbase import FakeService, Reply, Request, json_reply, text_reply

TOKEN = "postmark-test-token"
MAX_BATCH = 500


class FakePostmark(FakeService):
    fault_paths = ("/email/batch",)

    def __init__(self, token: str = TOKEN, keep_bodies: bool = True) -> None:
        super().__init__()
        self.token = token
        self.inactive: set[str] = set()
        self.retry_first: dict[str, int] = {}  # address -> appearances still to refuse with 429
        self.messages: list[dict] = []
        self.keep_bodies = keep_bodies
        self.batches = 0
        self.accepted = 0
        self.accepted_by: Counter[str] = Counter()  # lower-cased address -> messages accepted

    def dispatch(self, request: Request) -> Reply:
        if request.headers.get("x-postmark-server-token") != self.token:
            return json_reply(401, {"ErrorCode": 10, "Message": "The Server Token you provided in the X-Postmark-Server-Token request header was invalid."})
        if request.path == "/server" and request.method == "GET":
            return json_reply(200, {"ID": 1, "Name": "Local test server"})
        if request.path != "/email/batch" or request.method != "POST":
            return json_reply(404, {"ErrorCode": 404, "Message": "not found"})
        if "application/json" not in request.headers.get("content-type", ""):
            return json_reply(415, {"ErrorCode": 415, "Message": "send JSON"})
        try:
            batch = request.json()
        except ValueError:
            return json_reply(422, {"ErrorCode": 402, "Message": "Received invalid JSON input."})
        if not isinstance(batch, list) or not batch:
            return json_reply(422, {"ErrorCode": 402, "Message": "A batch must be a non-empty array."})
        if len(batch) > MAX_BATCH:
            return json_reply(422, {"ErrorCode": 300, "Message": f"Batch of {len(batch)} messages exceeds {MAX_BATCH}."})
        results = []
        accepted = []
        accepted_to = []
        refuse = request.notes.get("retry", ())  # a chaos draw's per-message 429s
        for message in batch:
            problem = self._problem(message)
            if problem:
                return json_reply(422, {"ErrorCode": 300, "Message": problem})
            to = message["To"]
            address = to.rsplit("<", 1)[-1].rstrip(">").strip()
            if "@" not in address:
                results.append({"ErrorCode": 300, "Message": "Invalid 'To' address.", "To": to})
            elif address.lower() in self.inactive:
                results.append({"ErrorCode": 406, "Message": "You tried to send to recipient(s) that have been marked as inactive.", "To": to})
            elif address.lower() in refuse or self._refuse_for_now(address.lower()):
                results.append({"ErrorCode": 429, "Message": "Rate limit exceeded; send this message again later.", "To": to})
            else:
                message_id = str(uuid.uuid4())
                results.append({"ErrorCode": 0, "Message": "OK", "MessageID": message_id, "To": to,
                                "SubmittedAt": "2026-12-01T07:30:00Z"})
                accepted_to.append(address.lower())
                if self.keep_bodies:
                    accepted.append(message)
        with self.lock:
            self.messages.extend(accepted)
            self.accepted_by.update(accepted_to)
            self.batches += 1
            self.accepted += len(results) - sum(1 for r in results if r["ErrorCode"])
        return json_reply(200, results)

    def stats(self) -> dict:
        counted = {**super().stats(), "accepted": self.accepted, "batches": self.batches}
        if isinstance(self.chaos, Chaos):
            counted["chaos"] = self.chaos.counts()
        return counted

    def inspect(self, path: str) -> Any:
        if path == "/_accepted":
            with self.lock:
                return dict(self.accepted_by)
        return super().inspect(path)

    def _refuse_for_now(self, address: str) -> bool:
        """Use up one of the address's scripted 429s, if it has any left."""
        with self.lock:
            left = self.retry_first.get(address, 0)
            if left <= 0:
                return False
            self.retry_first[address] = left - 1
            return True

    @staticmethod
    def _problem(message: dict) -> str | None:
        for key in ("From", "To", "Subject", "MessageStream"):
            if not message.get(key):
                return f"Missing required field '{key}'."
        if not (message.get("HtmlBody") or message.get("TextBody")):
            return "Provide either email TextBody or HtmlBody or both."
        if message["MessageStream"] == "broadcast":
            names = {h.get("Name") for h in message.get("Headers") or []}
            if not {"List-Unsubscribe", "List-Unsubscribe-Post"} <= names:
                return "Broadcast messages need List-Unsubscribe and List-Unsubscribe-Post headers."
        return None


BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


class Chaos:
    """Postmark on a bad day, for ``FakePostmark.chaos``: each batch request, with
    probability ``p``, gets one of ``KINDS`` (equally likely), drawn from ``seed`` in the
    order the requests arrive:

    - ``refuse-500``: Postmark's own 500 error body (a proven refusal, nothing taken);
    - ``limit-429``: a 429 with Retry-After (nothing taken);
    - ``hang``: nothing taken, no answer until the client gives up;
    - ``hang-after``: taken, but the answer never comes;
    - ``after-502``: taken, then a gateway's HTML 502 page;
    - ``some-429``: a 200 answer whose per-message ErrorCode is 429 for a few of the batch;
    - ``slow``: the normal answer, up to 1.5 s late.
    """

    KINDS = ("refuse-500", "limit-429", "hang", "hang-after", "after-502", "some-429", "slow")

    def __init__(self, p: float, seed: int) -> None:
        self.p = p
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.drawn: Counter[str] = Counter()

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.drawn)

    def __call__(self, request: Request) -> Any:
        with self.lock:
            if self.random.random() >= self.p:
                return None
            kind = self.random.choice(self.KINDS)
            self.drawn[kind] += 1
            more = random.Random(self.random.getrandbits(64))  # this draw's own details
        if kind == "refuse-500":
            return 500
        if kind == "limit-429":
            return 429
        if kind in ("hang", "hang-after"):
            return kind
        if kind == "after-502":
            return ("after", text_reply(502, BAD_GATEWAY))
        if kind == "slow":
            return ("delay", round(more.uniform(0.2, 1.5), 3))
        try:
            batch = request.json()
            addresses = [str(m.get("To", "")).rsplit("<", 1)[-1].rstrip(">").strip().lower() for m in batch]
        except (ValueError, AttributeError, TypeError):
            return None  # not a batch dispatch can read: let it refuse the request
        if addresses:
            request.notes["retry"] = set(more.sample(addresses, more.randint(1, max(1, len(addresses) // 5))))
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a local Postmark on a free port.")
    parser.add_argument("--chaos", type=float, default=0.0, metavar="P",
                        help="probability that a batch request misbehaves (see Chaos)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the chaos draws")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="delay before every answer")
    parser.add_argument("--hang", type=float, default=3.0, metavar="SECONDS",
                        help="how long a hanging request holds its connection")
    args = parser.parse_args()
    service = FakePostmark(keep_bodies=False)
    service.record_requests = False
    service.latency = args.latency
    service.hang_seconds = args.hang
    if args.chaos > 0:
        service.chaos = Chaos(args.chaos, args.seed)
    print(service.url, flush=True)
    service.server.serve_forever()


if __name__ == "__main__":
    main()
