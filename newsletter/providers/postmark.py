"""Postmark: ``POST /email/batch`` with up to 500 messages per call, on a message stream.

Postmark answers 200 with one result per message, in request order; ``ErrorCode`` 0 means
accepted. A refused token (401) or an invalid request (422) stops the campaign; 429 and 5xx
are retried.
"""

from __future__ import annotations

import json

from ..message import field_values
from . import Batch, FatalError, Outcome, Provider
from .http import HttpClient, json_body

API = "https://api.postmarkapp.com"
# Per-message error codes that are worth another try later (Postmark's rate and queue limits).
RETRY_CODES = {429}


class PostmarkProvider(Provider):
    name = "postmark"
    max_batch = 500
    # Each batch in flight holds its request body (a few MB for 500 messages); two keep the
    # connection busy while the next batch is built.
    default_concurrency = 2

    def setup(self) -> None:
        token = self.require_secret("POSTMARK_SERVER_TOKEN")
        self.stream = self.option("message_stream", "broadcast")
        self.track_opens = self.option("track_opens", False, bool)
        self.client = HttpClient(
            "postmark",
            self.config.provider.base_url or API,
            timeout=self.http_timeout(),
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "X-Postmark-Server-Token": token,
            },
        )

    def check(self) -> str:
        response = self.client.request("GET", "/server")
        self.client.refuse_auth(response, "POSTMARK_SERVER_TOKEN")
        if response.status_code != 200:
            raise FatalError(f"postmark: GET /server answered {response.status_code}: {_message(response)}")
        name = response.json().get("Name", "?")
        return f"postmark: server token accepted (server {name!r}), message stream {self.stream!r}"

    def send_batch(self, batch: Batch) -> list[Outcome]:
        t = batch.template
        # The request body is assembled from JSON pieces: the fields every message shares
        # are encoded once per batch, the body once per issue (by the personalizer).
        shared = (
            f'"From":{json.dumps(str(t.sender))},"ReplyTo":{json.dumps(self.config.newsletter.reply_to)},'
            f'"Subject":{json.dumps(t.subject)},"MessageStream":{json.dumps(self.stream)},'
            f'"TrackOpens":{"true" if self.track_opens else "false"}'
        )
        messages = []
        for env in batch.envelopes:
            values = field_values(env.recipient, env.unsubscribe_url, t.web_url)
            headers = [{"Name": k, "Value": v} for k, v in t.headers_for(env.unsubscribe_url).items()]
            messages.append(
                f'{{{shared},"To":{json.dumps(env.recipient.mailbox)},'
                f'"HtmlBody":{t.personalizer.html_json(values)},'
                f'"TextBody":{t.personalizer.text_json(values)},'
                f'"Headers":{json.dumps(headers)},"Metadata":{{"delivery":"{env.key}"}}}}'
            )
        payload = ("[" + ",".join(messages) + "]").encode("ascii")
        del messages
        response = self.client.request("POST", "/email/batch", data=payload)
        self.client.refuse_auth(response, "POSTMARK_SERVER_TOKEN")
        if response.status_code == 422:
            body = json_body(response)
            code = body.get("ErrorCode")
            if code == 10:
                raise FatalError("postmark: the server token was refused (ErrorCode 10); check POSTMARK_SERVER_TOKEN")
            raise FatalError(f"postmark: the batch was refused (422, ErrorCode {code}): {body.get('Message', '')}")
        if response.status_code != 200:
            raise FatalError(f"postmark: unexpected answer {response.status_code}: {_message(response)}")
        results = json_body(response)
        if not isinstance(results, list) or len(results) != len(batch.envelopes):
            from . import UnknownOutcome

            raise UnknownOutcome("postmark: the answer did not list one result per message")
        outcomes = []
        for env, result in zip(batch.envelopes, results, strict=True):
            code = result.get("ErrorCode", -1)
            if code == 0:
                outcomes.append(Outcome(env.key, "sent", provider_id=result.get("MessageID")))
            elif code in RETRY_CODES:
                outcomes.append(Outcome(env.key, "retry", reason=f"postmark {code}: {result.get('Message', '')}"))
            else:
                outcomes.append(Outcome(env.key, "failed", reason=f"postmark {code}: {result.get('Message', '')}"))
        return outcomes

    def close(self) -> None:
        self.client.close()



def _message(response) -> str:
    body = json_body(response)
    if isinstance(body, dict) and body.get("Message"):
        return str(body["Message"])
    return response.text[:200]
