"""Amazon SES (API v2) through boto3: one ``SendEmail`` call with Raw content per recipient.

Why raw ``SendEmail`` rather than ``SendBulkEmail``: the message is already assembled for
each recipient by :meth:`MessageTemplate.bytes_for` (a few joins, no render) with their own
List-Unsubscribe and List-Unsubscribe-Post headers, exactly as the SMTP and outbox providers
send it, so SES delivers the same bytes the preview showed. ``SendBulkEmail`` would need a
template stored in the account (created, versioned and cleaned up per issue, in SES's own
``{{var}}`` syntax that clashes with CSS and prose) for a saving that does not matter here:
SES bills per message either way, and throughput is bounded by the account's maximum send
rate, not by the number of calls.

With ``[provider] rate_limit`` set, every call is paced at that rate across all workers and
``GetAccount`` is never called (an IAM policy may allow sending only). Without it the pace is
90% of the account's maximum send rate (``GetAccount`` → ``SendQuota.MaxSendRate``); when
``GetAccount`` is refused for any reason but the credentials, the pace is the sandbox's 1/s
and ``rate_note`` says why. Credentials come from the environment or ``.env``
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; or ``AWS_PROFILE``
for a profile in ``~/.aws``) and are handed to boto3 explicitly; signing is boto3's.
"""

from __future__ import annotations

import html
import logging
import re
import threading

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    HTTPClientError,
    InvalidRegionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import ConfigError
from ..message import HeaderInjection, ascii_address
from . import (
    Batch,
    BatchError,
    FatalError,
    Outcome,
    Pacer,
    Provider,
    TransientError,
    UnknownOutcome,
)

# What SES's answers to SendEmail prove
#
# From the SES API v2 reference (SendEmail's errors, the common errors) and the SES developer
# guide's pages on sending errors and sending quotas. The guide says that when a call fails
# with an error, SES has not sent that email (and does not bill it): every answer that
# carries an SES error code is a proven refusal of that one message. The code, not the
# wording of the message, decides what follows; wording differs between SES and emulators.
#
# | answer (code, HTTP status) | what SES means | here |
# |---|---|---|
# | 200 with `MessageId` | accepted for delivery | sent |
# | `MessageRejected` (400) | SES will not send this message: an unverified From, Sender or Return-Path identity, in the sandbox an unverified recipient, or content it refuses | names the sender (address or bare domain): fatal; names the reader: failed; names nobody: failed if SES took another copy of the issue in this run, else the next reader decides (taken: failed; refused too, or none left: fatal, both left queued) |
# | `BadRequestException`, `ValidationError`, `ValidationException` (400) | the input is invalid | as `MessageRejected` |
# | `MailFromDomainNotVerifiedException` (400) | the custom MAIL FROM domain is not verified | fatal |
# | `AccountSuspendedException` (400) | the account may not send any more | fatal |
# | `SendingPausedException` (400) | sending is paused for the account or the configuration set | fatal |
# | `NotFoundException` (404) | a named resource (the configuration set) does not exist | fatal |
# | `TooManyRequestsException` (429), `ThrottlingException`, `Throttling`, `LimitExceededException` (400) | over a rate or a quota; SES says to wait (up to 10 minutes) and send again | proven refusal (TransientError, wait 1 s); "Daily message quota exceeded" in the text: fatal until the 24-hour window moves |
# | credentials: `UnrecognizedClientException`, `InvalidClientTokenId`, `MissingAuthenticationToken(Exception)`, `InvalidSignatureException`, `SignatureDoesNotMatch`, `IncompleteSignature(Exception)`, `ExpiredToken(Exception)`, `RequestExpired`, `OptInRequired` (400/403) | the request was not accepted as the account's | fatal |
# | `AccessDeniedException`, `AccessDenied`, `NotAuthorized` (400/403) | the IAM identity may not call the action | fatal (for GetAccount: pace at the sandbox rate) |
# | `InternalFailure` (500), `ServiceUnavailable` (503), any other 5xx with an SES code | SES failed or is overloaded and says so | proven refusal (TransientError) |
# | 502, 504, or a 5xx without an SES code in the answer | a gateway or proxy answered; SES may have taken the message | unknown |
# | read timeout, connection closed before the answer | the request went out; no answer | unknown |
# | connection refused, connect timeout, TLS failure | the request never went out | proven refusal (TransientError) |
# | 404 without an SES code | the endpoint has no such action (a wrong base_url, an emulator) | fatal |
# | any other 4xx | refused; a retry sends the same request | fatal |
#
# One call carries one message, so "unknown" covers that reader alone: its outcome is
# "unknown" and the rest of the batch, never sent, is a TransientError (an UnknownOutcome when
# it was the batch's last reader). SES has no idempotency key, so botocore must not retry
# either (one attempt per call): the campaign decides, and never resends an unknown message
# on its own.
#
# GetAccount (read only; asked once per run, and only without `[provider] rate_limit`): the
# credentials codes are fatal; throttling and 5xx are a TransientError, so it is asked again;
# any other refusal (a send-only IAM policy, an emulator's 404 page) paces at the sandbox's 1/s
# and `rate_note` says why.

THROTTLING = {"TooManyRequestsException", "Throttling", "ThrottlingException", "LimitExceededException"}
UNRECOGNISED = {
    "UnrecognizedClientException", "InvalidClientTokenId", "MissingAuthenticationTokenException",
    "MissingAuthenticationToken", "InvalidAccessKeyId", "AuthFailure",
}
SIGNATURE = {"InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature", "IncompleteSignatureException"}
EXPIRED = {"ExpiredTokenException", "ExpiredToken"}
CLOCK = {"RequestExpired", "RequestTimeTooSkewed", "RequestInTheFuture"}
CREDENTIALS = UNRECOGNISED | SIGNATURE | EXPIRED | CLOCK | {"OptInRequired"}
DENIED = {"AccessDeniedException", "AccessDenied", "NotAuthorized"}
# Refusals of one message that may concern this reader's copy or every copy.
READER_OR_MESSAGE = {"MessageRejected", "BadRequestException", "ValidationError", "ValidationException"}
GATEWAY = {502, 504}
NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, TokenRetrievalError, SSOError)
FALLBACK_RATE = 1.0  # the sandbox rate, when GetAccount does not answer
CAP = 200  # the longest error message, in characters


def _keep_secrets_out_of_logs() -> None:
    """botocore's DEBUG output shows request headers, the session token among them."""
    logger = logging.getLogger("botocore")
    if logger.getEffectiveLevel() < logging.INFO:
        logger.setLevel(logging.INFO)


class SesProvider(Provider):
    name = "ses"
    # One call per message, so a batch only groups messages for the journal: if the process
    # dies mid-batch, the whole batch is "unknown". Small batches keep that small.
    max_batch = 20
    default_concurrency = 4

    def setup(self) -> None:
        _keep_secrets_out_of_logs()
        env = self.config.secret
        self.region = self.option("region") or env("AWS_REGION") or env("AWS_DEFAULT_REGION")
        if not self.region:
            raise ConfigError(
                '[provider] region: is required for ses, e.g. region = "eu-west-1" (or set AWS_REGION)'
            )
        self.configuration_set = self.option("configuration_set")
        key_id, secret = env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")
        try:
            if key_id or secret:
                if not key_id:
                    self.require_secret("AWS_ACCESS_KEY_ID")
                if not secret:
                    self.require_secret("AWS_SECRET_ACCESS_KEY")
                session = boto3.session.Session(
                    aws_access_key_id=key_id,
                    aws_secret_access_key=secret,
                    aws_session_token=env("AWS_SESSION_TOKEN"),
                    region_name=self.region,
                )
            elif env("AWS_PROFILE"):
                session = boto3.session.Session(profile_name=env("AWS_PROFILE"), region_name=self.region)
            else:
                raise ConfigError(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set; put them in the "
                    "environment or in .env beside newsletter.toml (or set AWS_PROFILE)",
                    "environment",
                )
            connect, read = self.http_timeout()
            self.client = session.client(
                "sesv2",
                endpoint_url=self.config.provider.base_url,
                config=BotoConfig(
                    # One attempt, whatever AWS_MAX_ATTEMPTS says: a retry after an answer that
                    # never came could deliver twice. Retrying is the campaign's job.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=connect,
                    read_timeout=read,
                    max_pool_connections=max(10, self.concurrency),
                ),
            )
        except ProfileNotFound:
            raise ConfigError(f"AWS_PROFILE names a profile that is not in ~/.aws: {env('AWS_PROFILE')}", "environment") from None
        except InvalidRegionError:
            raise ConfigError(f"[provider] region: {self.region!r} is not an AWS region name, e.g. eu-west-1") from None
        self.pacer: Pacer | None = None
        self.rate_note = ""
        self._lock = threading.Lock()
        self._accepted = False  # SES has taken a copy of the issue in this run

    @property
    def where(self) -> str:
        return f"region {self.region}" + (f" at {self.config.provider.base_url}" if self.config.provider.base_url else "")

    # -- checking --------------------------------------------------------------------------

    def check(self) -> str:
        account = self._call("GetAccount", self.client.get_account)
        quota = account.get("SendQuota") or {}
        rate, day, sent = quota.get("MaxSendRate", 0), quota.get("Max24HourSend", 0), quota.get("SentLast24Hours", 0)
        status = account.get("EnforcementStatus", "")
        if not account.get("SendingEnabled", True):
            raise FatalError(
                f"ses: sending is disabled for this account in {self.where}"
                + (f" (enforcement status {status})" if status else "")
                + "; see the SES console's reputation page"
            )
        if account.get("ProductionAccessEnabled"):
            mode = "production access"
        else:
            mode = (
                "in the sandbox (only verified recipients; request production access in the "
                f"SES console, or check [provider] region if {self.region} is not where you have it)"
            )
        health = f", enforcement status {status}" if status and status != "HEALTHY" else ""
        return (
            f"ses: credentials accepted in {self.where}; sending enabled, {mode}; max send rate "
            f"{rate:g}/s, {sent:g} of {day:g} sent in the last 24 h{health}"
        )

    # -- sending ---------------------------------------------------------------------------

    def _ensure_pacer(self) -> Pacer:
        with self._lock:
            if self.pacer is None:
                limit = self.config.provider.rate_limit
                if limit:
                    self.pacer = Pacer(limit)
                    self.rate_note = f"pacing at [provider] rate_limit, {limit:g}/s"
                else:
                    self.pacer = Pacer(self._account_rate() * 0.9)
            return self.pacer

    def _account_rate(self) -> float:
        """The account's maximum send rate, or the sandbox's when GetAccount is refused for
        a reason that does not stop sending too (a send-only IAM policy, an emulator)."""
        try:
            account = self.client.get_account()
        except ClientError as exc:
            code, message, status = _error(exc)
            if code in CREDENTIALS or code in THROTTLING or status == 429 or status >= 500:
                raise self._mapped(code, message, status, "GetAccount") from None
            self.rate_note = _line(
                "ses: GetAccount was refused", _what(code, message, status),
                f"; pacing at the sandbox rate, {FALLBACK_RATE:g}/s (set [provider] rate_limit to choose)",
            )
            return FALLBACK_RATE
        except BotoCoreError as exc:
            raise self._transport(exc, "GetAccount") from None
        return float((account.get("SendQuota") or {}).get("MaxSendRate") or FALLBACK_RATE)

    def send_batch(self, batch: Batch) -> list[Outcome]:
        pacer = self._ensure_pacer()
        t = batch.template
        sender = t.sender.addr_spec
        campaign = {"Name": "nl_campaign", "Value": _tag_value(batch.label)}
        outcomes: list[Outcome] = []
        # Readers refused by a rejection that names nobody, before SES took any copy of the
        # issue: failed if a later copy gets through, left unsent if the campaign stops.
        doubtful: list[Outcome] = []
        for env in batch.envelopes:
            try:
                destination = ascii_address(env.recipient.email)
                data = t.bytes_for(env.recipient, env.unsubscribe_url, env.message_id)
            except HeaderInjection as exc:
                outcomes.append(Outcome(env.key, "failed", reason=_short(f"ses: not sent: {exc}", CAP)))
                continue
            request = {
                "FromEmailAddress": sender,
                "Destination": {"ToAddresses": [destination]},
                "Content": {"Raw": {"Data": data}},
                "EmailTags": [{"Name": "nl_delivery", "Value": str(env.key)}, campaign],
            }
            if self.configuration_set:
                request["ConfigurationSetName"] = self.configuration_set
            pacer.wait()
            try:
                response = self.client.send_email(**request)
            except (ClientError, BotoCoreError) as exc:
                try:
                    reason, certain = self._refusal(exc, sender, {destination, env.recipient.email})
                except UnknownOutcome as lost:
                    outcomes.append(Outcome(env.key, "unknown", reason=str(lost)))
                    if len(outcomes) == len(batch.envelopes):
                        raise UnknownOutcome(str(lost), partial=outcomes) from None
                    # SES takes one message per call: the rest of the batch was never sent.
                    raise TransientError(str(lost), partial=outcomes) from None
                except BatchError as stop:
                    stop.partial = outcomes
                    raise stop from None
                failed = Outcome(env.key, "failed", reason=reason)
                if certain or self._accepted:
                    outcomes.append(failed)
                elif doubtful:
                    raise self._refused_message(reason, len(doubtful) + 1, outcomes) from None
                else:
                    doubtful.append(failed)
                continue
            self._accepted = True
            outcomes.append(Outcome(env.key, "sent", provider_id=response.get("MessageId")))
            outcomes += doubtful
            doubtful.clear()
        if doubtful:
            raise self._refused_message(doubtful[0].reason or "", len(doubtful), outcomes)
        return outcomes

    def _refused_message(self, reason: str, readers: int, done: list[Outcome]) -> FatalError:
        detail = reason.removeprefix("ses ")
        return FatalError(_line(
            f"ses: SES refused the message for {readers} reader{'s' if readers > 1 else ''} and "
            f"accepted none in {self.where}", detail, "; fix the issue or the sender, then resume",
        ), partial=done)

    def _refusal(self, exc: ClientError | BotoCoreError, sender: str, reader: set[str]) -> tuple[str, bool]:
        """Why SES refused this reader's copy, and whether its answer named the reader; or
        raises the error that covers the rest of the batch (UnknownOutcome: this copy too)."""
        if isinstance(exc, BotoCoreError):
            raise self._transport(exc, "SendEmail")
        code, message, status = _error(exc)
        if code not in READER_OR_MESSAGE:
            raise self._mapped(code, message, status, "SendEmail")
        if _names(message, sender) or _names(message, sender.rpartition("@")[2]):
            raise FatalError(_line(
                f"ses: the sender {sender} was refused in {self.where}", _what(code, message, status),
                "; verify it or its domain in SES in this region",
            ))
        return _short(f"ses {_what(code, message, status)}", CAP), any(_names(message, r) for r in reader)

    def _call(self, action: str, call, **kwargs):
        try:
            return call(**kwargs)
        except ClientError as exc:
            raise self._mapped(*_error(exc), action) from None
        except BotoCoreError as exc:
            raise self._transport(exc, action) from None

    def _transport(self, exc: BotoCoreError, action: str) -> BatchError:
        """The error for a call that got no answer from SES."""
        if isinstance(exc, BotoConnectionError):  # refused, timed out or TLS failed: nothing went out
            return TransientError(
                f"ses: cannot reach the SES endpoint for {self.where} ({_transport_text(exc)}); check [provider] region"
            )
        if isinstance(exc, NO_CREDENTIALS):
            return FatalError(_line(
                "ses: no usable AWS credentials", f"{type(exc).__name__}: {exc}",
                "; check AWS_PROFILE, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ))
        if isinstance(exc, ParamValidationError):
            return FatalError(_line(f"ses: boto3 refused to send the {action} request", str(exc)))
        if action != "SendEmail":  # reading the account: asking again is harmless
            return TransientError(f"ses: {action}: {_transport_text(exc)} ({self.where})")
        return UnknownOutcome(
            f"ses: no answer to SendEmail from {self.where} ({_transport_text(exc)}); the message may have been accepted"
        )

    def _mapped(self, code: str, message: str, status: int, action: str) -> BatchError:
        """The error to raise for a refusal that concerns the whole campaign."""
        text = _what(code, message, status)
        has_code = _has_code(code)
        if code in THROTTLING or (status == 429 and not has_code):
            if "daily" in message.lower():  # SES's one hint that waiting seconds will not do
                return FatalError(_line(
                    f"ses: the account's 24-hour sending quota is used up in {self.where}", text,
                    "; resume the campaign once the 24-hour window allows",
                ))
            return TransientError(_line("ses: throttled", text), retry_after=1.0)
        if code in UNRECOGNISED:
            return FatalError(_line(
                "ses: AWS does not recognise the credentials", text,
                "; check AWS_ACCESS_KEY_ID and, for temporary credentials, AWS_SESSION_TOKEN",
            ))
        if code in SIGNATURE:
            if "region" in message.lower():
                return FatalError(_line(
                    f"ses: the request was signed for {self.region}, which this endpoint does not serve",
                    text, "; check [provider] region",
                ))
            return FatalError(_line("ses: AWS refused the signature", text, "; check AWS_SECRET_ACCESS_KEY"))
        if code in EXPIRED:
            return FatalError(_line("ses: the temporary credentials have expired", text, "; renew AWS_SESSION_TOKEN"))
        if code in CLOCK:
            return FatalError(_line("ses: AWS refused the request's time", text, "; check this computer's clock"))
        if code == "OptInRequired":
            return FatalError(_line(f"ses: the AWS account is not signed up for SES in {self.where}", text))
        if code in DENIED:
            return FatalError(_line(
                f"ses: the AWS identity may not call ses:{action}", text, "; allow it in the IAM policy",
            ))
        if code == "AccountSuspendedException":
            return FatalError(_line(f"ses: the account may no longer send in {self.where}", text, "; see the SES console"))
        if code == "SendingPausedException":
            return FatalError(_line(
                f"ses: sending is paused for the account or configuration set in {self.where}", text,
                "; resume it in the SES console",
            ))
        if code == "MailFromDomainNotVerifiedException":
            return FatalError(_line(
                f"ses: the custom MAIL FROM domain of {self.config.newsletter.sender.email} is not "
                f"verified in {self.where}", text, "; fix its MX and SPF records",
            ))
        if code == "NotFoundException":
            hint = "; check [provider] configuration_set" if self.configuration_set else ""
            return FatalError(_line("ses: SES does not know a resource this send names", text, hint))
        if status in GATEWAY or (status >= 500 and not has_code):
            if action == "SendEmail":
                return UnknownOutcome(_line(
                    f"ses: no clear answer to SendEmail from {self.where}", text,
                    "; the message may have been accepted",
                ))
            return TransientError(_line(f"ses: server error {status}", text))
        if status >= 500:
            return TransientError(_line(f"ses: server error {status}", text))
        if status == 404 and not has_code:
            setting = "base_url" if self.config.provider.base_url else "region"
            return FatalError(_line(f"ses: {self.where} does not answer {action}", text, f"; check [provider] {setting}"))
        return FatalError(_line(f"ses: {action} was refused", text))

    def close(self) -> None:
        self.client.close()


def _error(exc: ClientError) -> tuple[str, str, int]:
    error = exc.response.get("Error") or {}
    status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return str(error.get("Code") or "Unknown"), str(error.get("Message") or "").strip(), int(status)


def _has_code(code: str) -> bool:
    """Whether the answer carried an AWS error code (botocore puts the HTTP status in its
    place when the body is not SES's JSON error, e.g. a proxy's HTML page)."""
    return bool(code) and not code.isdigit() and code != "Unknown"


def _what(code: str, message: str, status: int) -> str:
    """``Code: message`` for an SES error, ``HTTP 404: page text`` for anything else."""
    head = code if _has_code(code) else f"HTTP {status}"
    text = _plain(message)
    return f"{head}: {text}" if text else head


_MARKUP = re.compile(r"</\w+\s*>|<!doctype|<html|<br\s*/?>", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_HIDDEN = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


def _plain(text: str) -> str:
    """The text on one line: an HTML page reduced to its title (or its text without tags),
    runs of white space made one."""
    if _MARKUP.search(text):  # a page, not SES's prose (which may quote <names> in brackets)
        title = _TITLE.search(text)
        page = title.group(1) if title and title.group(1).strip() else _TAG.sub(" ", _HIDDEN.sub(" ", text))
        text = html.unescape(_TAG.sub(" ", page))
    return " ".join(text.split())


def _short(text: str, limit: int) -> str:
    text = _plain(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _line(head: str, detail: str = "", tail: str = "") -> str:
    """``head (detail)tail`` on one line, the detail cut so that the whole stays within CAP."""
    room = CAP - len(head) - len(tail) - 3
    detail = _short(detail, room) if room >= 20 else ""
    return f"{head} ({detail}){tail}" if detail else f"{head}{tail}"


_ADDRESS_CHAR = r"[\w.%+@-]"


def _names(text: str, identity: str) -> bool:
    """Whether ``text`` mentions ``identity`` (an address or a domain) as a whole: ann@x.org
    is not named by joann@x.org, nor the domain x.org by ann@x.org."""
    if not identity:
        return False
    pattern = rf"(?<!{_ADDRESS_CHAR}){re.escape(identity)}(?![\w%+@-]|\.\w)"
    return re.search(pattern, text, re.IGNORECASE) is not None


def _transport_text(exc: BotoCoreError) -> str:
    if isinstance(exc, ReadTimeoutError):
        return "the endpoint took too long to answer"
    if isinstance(exc, ConnectTimeoutError):
        return "the connection timed out"
    if isinstance(exc, BotoConnectionError):
        return "could not connect"
    if isinstance(exc, HTTPClientError):
        return "the connection dropped before an answer"
    return type(exc).__name__


def _tag_value(text: str) -> str:
    """SES tag values take ASCII letters, digits, _ and - only (at most 256)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:256] or "_"
