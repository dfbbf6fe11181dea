"""A local Amazon SES v2 endpoint as boto3 calls it (``endpoint_url`` pointed here):
``GET /v2/email/account`` (GetAccount) and ``POST /v2/email/outbound-emails`` (SendEmail).

Authentication: the SigV4 ``Authorization`` header must name ``access_key`` with a credential
scope of ``region`` and service ``ses``, carry ``session_token`` when one is set, and its
signature must verify with ``secret`` (recomputed with botocore's own signer over the signed
headers); otherwise 403 with ``UnrecognizedClientException``, ``InvalidSignatureException``
or ``MissingAuthenticationTokenException``. Actions in ``denied`` get
``AccessDeniedException``.

SendEmail takes Raw content (base64 in JSON, as boto3 sends it) and refuses, in SES's error
format (status, ``x-amzn-ErrorType`` header, JSON ``message``): a From address that is not a
verified identity (``MessageRejected`` listing it), in the sandbox a recipient that is not
verified (``MessageRejected``), an unknown configuration set (``NotFoundException``), a
suspended or paused account, an unverified MAIL FROM domain, more than ``max_send_rate``
calls in a second (``ThrottlingException``, "Maximum sending rate exceeded.") or more than
``max_24h`` messages in a day ("Daily message quota exceeded."), and (this server's own rule)
a message without List-Unsubscribe and List-Unsubscribe-Post headers
(``BadRequestException``). Scripted 429s are ``TooManyRequestsException``, 5xx
``InternalFailure``/``ServiceUnavailable``.

Run it alone with ``python -m tests.fakes.ses`` (prints its URL).
"""

from __future__ import annotations

import argparse
import base64
import collections
import email
import re
import time
import uuid
from email import policy
from email.utils import getaddresses

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .httpbase import FakeService, Reply, Request, json_reply

ACCESS_KEY = "AKIDNEWSLETTERTEST01"
SECRET = "test/Secret+Key/For/The/Local/SES/0123"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


def aws_error(status: int, code: str, message: str, in_header: bool = True) -> Reply:
    """SES's error shape: the type in ``x-amzn-ErrorType`` (service errors) or in the body's
    ``__type`` (front-door errors such as authentication), the text in ``message``."""
    headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    body: dict = {"message": message}
    if in_header:
        headers["x-amzn-ErrorType"] = f"{code}:http://internal.amazon.com/coral/com.amazonaws.sesv2/"
    else:
        body["__type"] = code
    return json_reply(status, body, **headers)


class FakeSes(FakeService):
    fault_paths = ("/v2/email/outbound-emails",)

    def __init__(self, access_key: str = ACCESS_KEY, secret: str = SECRET, region: str = REGION,
                 identities: tuple[str, ...] = ("example.com",), production: bool = True,
                 max_send_rate: float = 200.0, max_24h: float = 50_000, keep_bodies: bool = True) -> None:
        super().__init__()
        self.access_key = access_key
        self.secret = secret
        self.region = region
        self.session_token: str | None = None
        self.identities = {i.lower() for i in identities}
        self.production = production
        self.max_send_rate = max_send_rate
        self.max_24h = max_24h
        self.sending_enabled = True
        self.enforcement = "HEALTHY"
        self.suspended = False
        self.paused = False
        self.mail_from_verified = True
        self.configuration_sets: set[str] = set()
        self.denied: set[str] = set()  # actions the IAM identity may not call
        self.keep_bodies = keep_bodies
        self.messages: list[dict] = []
        self.throttled = 0
        self._sends: collections.deque[float] = collections.deque()

    def next_fault(self, request: Request):
        fault = super().next_fault(request)
        if isinstance(fault, Reply) and isinstance(fault.body, dict) and "ErrorCode" in fault.body:
            if fault.status == 429:
                return aws_error(429, "TooManyRequestsException", "Too many requests have been made to the operation.")
            code = "ServiceUnavailable" if fault.status == 503 else "InternalFailure"
            return aws_error(fault.status, code, "The request processing has failed because of an unknown error.")
        return fault

    # -- authentication --------------------------------------------------------------------

    def _auth(self, request: Request) -> Reply | None:
        header = request.headers.get("authorization")
        if not header:
            return aws_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token", in_header=False)
        match = AUTH.match(header)
        if not match:
            return aws_error(403, "IncompleteSignatureException", "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'.", in_header=False)
        if match["key"] != self.access_key:
            return aws_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.", in_header=False)
        if request.headers.get("x-amz-security-token") != self.session_token:
            return aws_error(403, "UnrecognizedClientException", "The security token included in the request is invalid.", in_header=False)
        if match["service"] != "ses":
            return aws_error(403, "InvalidSignatureException", "Credential should be scoped to correct service: 'ses'.", in_header=False)
        if match["region"] != self.region:
            return aws_error(403, "InvalidSignatureException", f"Credential should be scoped to a valid region, not '{match['region']}'.", in_header=False)
        if not self._signature_matches(request, match):
            return aws_error(403, "InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.", in_header=False)
        return None

    def _signature_matches(self, request: Request, match: re.Match) -> bool:
        names = match["signed"].split(";")
        if "host" not in names or any(n not in request.headers for n in names):
            return False
        query = "&".join(f"{k}={v}" for k, values in request.query.items() for v in values)
        signed = AWSRequest(
            method=request.method,
            url=f"http://{request.headers['host']}{request.path}" + (f"?{query}" if query else ""),
            headers={n: request.headers[n] for n in names},
            data=request.body,
        )
        signed.context["timestamp"] = request.headers.get("x-amz-date", "")
        signer = SigV4Auth(Credentials(self.access_key, self.secret, self.session_token), "ses", self.region)
        canonical = signer.canonical_request(signed)
        return signer.signature(signer.string_to_sign(signed, canonical), signed) == match["signature"]

    # -- operations ------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Reply:
        refused = self._auth(request)
        if refused:
            return refused
        if request.path == "/v2/email/account" and request.method == "GET":
            return self._get_account()
        if request.path == "/v2/email/outbound-emails" and request.method == "POST":
            return self._send_email(request)
        return aws_error(404, "UnknownOperationException", "Unknown operation")

    def _denied(self, action: str) -> Reply | None:
        if action in self.denied:
            return aws_error(403, "AccessDeniedException", f"User: arn:aws:iam::{ACCOUNT}:user/newsletter is not authorized to perform: ses:{action} on resource: arn:aws:ses:{self.region}:{ACCOUNT}:identity/*", in_header=False)
        return None

    def _sent_last_24h(self) -> int:
        day_ago = time.time() - 24 * 3600
        return sum(1 for m in self.messages if m["at"] > day_ago)

    def _get_account(self) -> Reply:
        refused = self._denied("GetAccount")
        if refused:
            return refused
        return json_reply(200, {
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": self.enforcement,
            "ProductionAccessEnabled": self.production,
            "SendQuota": {"Max24HourSend": float(self.max_24h), "MaxSendRate": float(self.max_send_rate),
                          "SentLast24Hours": float(self._sent_last_24h())},
            "SendingEnabled": self.sending_enabled,
        })

    def _send_email(self, request: Request) -> Reply:
        refused = self._denied("SendEmail")
        if refused:
            return refused
        try:
            body = request.json()
            raw = base64.b64decode(body["Content"]["Raw"]["Data"], validate=True)
        except (ValueError, KeyError, TypeError):
            return aws_error(400, "BadRequestException", "Content.Raw.Data must be a base64-encoded MIME message.")
        message = email.message_from_bytes(raw, policy=policy.default)
        if self.suspended:
            return aws_error(400, "AccountSuspendedException", "The message can't be sent because the account's ability to send email has been permanently restricted.")
        if self.paused or not self.sending_enabled:
            return aws_error(400, "SendingPausedException", "The message can't be sent because the account's ability to send email is currently paused.")
        config_set = body.get("ConfigurationSetName")
        if config_set is not None and config_set not in self.configuration_sets:
            return aws_error(404, "NotFoundException", f"Configuration set <{config_set}> does not exist.")
        sender = body.get("FromEmailAddress") or getaddresses([str(message.get("From", ""))])[0][1]
        if not self._verified(sender):
            return self._not_verified([sender])
        if not self.mail_from_verified:
            return aws_error(400, "MailFromDomainNotVerifiedException", "The message can't be sent because the sending domain isn't verified.")
        recipients = (body.get("Destination") or {}).get("ToAddresses") or [a for _, a in getaddresses(message.get_all("To", []))]
        if not recipients:
            return aws_error(400, "BadRequestException", "Missing final '@domain'")
        if not self.production:
            strangers = [r for r in recipients if not self._verified(r)]
            if strangers:
                return self._not_verified(strangers)
        if not (message.get("List-Unsubscribe") and message.get("List-Unsubscribe-Post")):
            return aws_error(400, "BadRequestException", "Bulk mail needs List-Unsubscribe and List-Unsubscribe-Post headers (this server's rule).")
        with self.lock:
            now = time.monotonic()
            while self._sends and now - self._sends[0] >= 1.0:
                self._sends.popleft()
            if len(self._sends) >= self.max_send_rate:
                self.throttled += 1
                return aws_error(400, "ThrottlingException", "Maximum sending rate exceeded.")
            if self._sent_last_24h() + len(recipients) > self.max_24h:
                self.throttled += 1
                return aws_error(400, "ThrottlingException", "Daily message quota exceeded.")
            self._sends.append(now)
            message_id = f"0102019{uuid.uuid4().hex[:9]}-{uuid.uuid4()}-000000"
            self.messages.append({
                "id": message_id,
                "at": time.time(),
                "from": sender,
                "to": recipients,
                "tags": {t["Name"]: t["Value"] for t in body.get("EmailTags") or []},
                "configuration_set": config_set,
                "message": message if self.keep_bodies else None,
                "size": len(raw),
            })
        return json_reply(200, {"MessageId": message_id})

    def _verified(self, address: str) -> bool:
        address = address.lower()
        return address in self.identities or address.rpartition("@")[2] in self.identities

    def _not_verified(self, identities: list[str]) -> Reply:
        return aws_error(400, "MessageRejected", "Email address is not verified. The following identities failed "
                         f"the check in region {self.region.upper()}: {', '.join(identities)}")


def main() -> None:
    argparse.ArgumentParser(description="Serve a local Amazon SES v2 endpoint on a free port.").parse_args()
    service = FakeSes(keep_bodies=False, identities=("example.com", "letter.example.com"))
    service.record_requests = False
    print(service.url, flush=True)
    print(f"AWS_ACCESS_KEY_ID={ACCESS_KEY} AWS_SECRET_ACCESS_KEY={SECRET} AWS_REGION={REGION}", flush=True)
    service.server.serve_forever()


if __name__ == "__main__":
    main()
