"""A local Postmark: ``POST /email/batch`` and ``GET /server`` as Postmark documents them.

It checks the server token, the batch size (500) and each message's shape (From, To, Subject,
a body, a message stream, and, on a broadcast stream, the List-Unsubscribe headers), answers
200 with one result per message in order (ErrorCode 0, or 300 for a bad address and 406 for an
address in ``inactive``), and records what it accepted in ``messages``.

``retry_first`` maps a lower-cased address to how many of its next appearances are refused
with the per-message ErrorCode 429 (Postmark's rate limit, reported inside a 200 batch
answer); a refused message is not recorded, and once the count is used up the address is
accepted again.

Run it alone with ``python -m tests.fakes.postmark --port 0`` (prints its URL).
"""

from __future__ import annotations

import argparse
import uuid

from .httpbase import FakeService, Reply, Request, json_reply

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
            elif self._refuse_for_now(address.lower()):
                results.append({"ErrorCode": 429, "Message": "Rate limit exceeded; send this message again later.", "To": to})
            else:
                message_id = str(uuid.uuid4())
                results.append({"ErrorCode": 0, "Message": "OK", "MessageID": message_id, "To": to,
                                "SubmittedAt": "2026-12-01T07:30:00Z"})
                if self.keep_bodies:
                    accepted.append(message)
        with self.lock:
            self.messages.extend(accepted)
            self.batches += 1
            self.accepted += len(results) - sum(1 for r in results if r["ErrorCode"])
        return json_reply(200, results)

    def stats(self) -> dict:
        return {**super().stats(), "accepted": self.accepted, "batches": self.batches}

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


def main() -> None:
    argparse.ArgumentParser(description="Serve a local Postmark on a free port.").parse_args()
    service = FakePostmark(keep_bodies=False)
    service.record_requests = False
    print(service.url, flush=True)
    service.server.serve_forever()


if __name__ == "__main__":
    main()
