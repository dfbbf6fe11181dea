"""Postmark: ``POST /email/batch`` with up to 500 messages per call, on a message stream.

Postmark answers 200 with one result per message, in request order; ``ErrorCode`` 0 means
accepted. What each of its answers proves is in the table below.
"""

from __future__ import annotations

import json

from ..message import field_values
from . import Batch, FatalError, Outcome, Provider, UnknownOutcome
from .http import HttpClient, describe_body, json_body, json_object, one_line

# What Postmark's answers prove, from its API overview (HTTP response codes, API error codes)
# and its batch guide (postmarkapp.com/developer/api/overview,
# postmarkapp.com/developer/user-guide/send-email-with-api/batch-emails). Postmark keeps no
# idempotency key, so nothing unknown is sent again unless the user asks.
#
# | answer | what it proves | raised as |
# |---|---|---|
# | connection refused, connect timeout | the request never reached Postmark | TransientError |
# | 200, a JSON array of one result per message, in order | the call was read; each result's ErrorCode says what became of its message | per message: 0 sent, 429 retry, any other code failed |
# | per-message ErrorCode 429 | that message hit the rate limit and was not taken; the others stand | Outcome "retry" |
# | 200 that is not such an array (other shape, wrong length, a result without a numeric ErrorCode), any other 2xx | something answered, but not with the documented result | UnknownOutcome |
# | 401, 403, 422 with ErrorCode 10 | the server token was refused | FatalError |
# | 422 with {ErrorCode, Message} | the whole call was refused as invalid (sender signature, JSON, fields) | FatalError |
# | 404, 413, 415, other 4xx | the request's address, size or type is wrong | FatalError |
# | 429 | too many calls; nothing of this one was taken | TransientError, waiting Retry-After |
# | 500 or 503 (any 5xx but 502/504) with Postmark's {ErrorCode, Message} body | Postmark itself failed to handle the call (500: its servers, which lose the message and alert its staff; 503: the API is down, e.g. maintenance, ErrorCode 100) | TransientError |
# | 502, 504 (any body) | a gateway answered; Postmark may have taken the batch | UnknownOutcome |
# | any other 5xx without Postmark's error body (an HTML page, empty, a proxy's text) | not known to come from Postmark | UnknownOutcome |
# | read timeout, connection reset or closed after the request went out | the batch may have been taken | UnknownOutcome |

API = "https://api.postmarkapp.com"
# Per-message error codes that are worth another try later (Postmark's rate and queue limits).
RETRY_CODES = {429}


def is_postmark_error(response) -> bool:
    """Postmark's own error body: a JSON object with a numeric ErrorCode and a Message."""
    body = json_body(response)
    return isinstance(body, dict) and _is_code(body.get("ErrorCode")) and isinstance(body.get("Message"), str)


def _is_code(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
            error_body=is_postmark_error,
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
        # Each message goes into the body as soon as it is made: a batch of 500 issues of
        # 14 KB is 7 MB, held once rather than as a list, then a string, then bytes.
        payload = bytearray(b"[")
        for n, env in enumerate(batch.envelopes):
            values = field_values(env.recipient, env.unsubscribe_url, t.web_url)
            headers = [{"Name": k, "Value": v} for k, v in t.headers_for(env.unsubscribe_url).items()]
            if n:
                payload += b","
            payload += (
                f'{{{shared},"To":{json.dumps(env.recipient.mailbox)},'
                f'"HtmlBody":{t.personalizer.html_json(values)},'
                f'"TextBody":{t.personalizer.text_json(values)},'
                f'"Headers":{json.dumps(headers)},"Metadata":{{"delivery":"{env.key}"}}}}'
            ).encode("ascii")
        payload += b"]"
        response = self.client.request("POST", "/email/batch", data=payload)
        self.client.refuse_auth(response, "POSTMARK_SERVER_TOKEN")
        status = response.status_code
        if status == 422:
            body = json_object(response)
            code = body.get("ErrorCode")
            if code == 10:
                raise FatalError("postmark: the server token was refused (ErrorCode 10); check POSTMARK_SERVER_TOKEN")
            raise FatalError(f"postmark: the batch was refused (422, ErrorCode {code}): {_message(response)}")
        if 200 <= status < 300 and status != 200:
            raise UnknownOutcome(
                f"postmark: answer {status} ({describe_body(response)}) instead of Postmark's 200; "
                "the batch may have been accepted"
            )
        if status != 200:
            raise FatalError(f"postmark: unexpected answer {status}: {_message(response)}")
        results = json_body(response)
        if (not isinstance(results, list) or len(results) != len(batch.envelopes)
                or not all(isinstance(r, dict) and _is_code(r.get("ErrorCode")) for r in results)):
            raise UnknownOutcome(
                f"postmark: the 200 answer ({describe_body(response)}) did not list one result per "
                "message; the batch may have been accepted"
            )
        outcomes = []
        for env, result in zip(batch.envelopes, results, strict=True):
            code = result["ErrorCode"]
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
    message = json_object(response).get("Message")
    return one_line(message, 200) if message else describe_body(response)
