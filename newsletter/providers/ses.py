"""Amazon SES (API v2) through boto3: one ``SendEmail`` call with Raw content per recipient.

Why raw ``SendEmail`` rather than ``SendBulkEmail``: the message is already assembled for
each recipient by :meth:`MessageTemplate.bytes_for` (a few joins, no render) with their own
List-Unsubscribe and List-Unsubscribe-Post headers, exactly as the SMTP and outbox providers
send it, so SES delivers the same bytes the preview showed. ``SendBulkEmail`` would need a
template stored in the account (created, versioned and cleaned up per issue, in SES's own
``{{var}}`` syntax that clashes with CSS and prose) for a saving that does not matter here:
SES bills per message either way, and throughput is bounded by the account's maximum send
rate, not by the number of calls.

The account's rate (``GetAccount`` → ``SendQuota.MaxSendRate``, lowered by ``[provider]
rate_limit`` when that is smaller) is respected by pacing every call at 90% of it across all
workers. Credentials come from the environment or ``.env`` (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``; or ``AWS_PROFILE`` for a profile in
``~/.aws``) and are handed to boto3 explicitly; signing is boto3's.
"""

from __future__ import annotations

import logging
import re
import threading

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    InvalidRegionError,
    ProfileNotFound,
    ReadTimeoutError,
)

from ..errors import ConfigError
from ..message import HeaderInjection, ascii_address
from . import Batch, FatalError, Outcome, Pacer, Provider, TransientError

THROTTLING = {"TooManyRequestsException", "Throttling", "ThrottlingException", "LimitExceededException"}
UNRECOGNISED = {"UnrecognizedClientException", "InvalidClientTokenId", "MissingAuthenticationTokenException"}
SIGNATURE = {"InvalidSignatureException", "SignatureDoesNotMatch"}
FALLBACK_RATE = 1.0  # the sandbox rate, when GetAccount may not be called


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
                    retries={"total_max_attempts": 1, "mode": "standard"},  # retrying is the campaign's job
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
                account = self._call("GetAccount", self.client.get_account, denied_ok=True)
                if account is None:  # the IAM policy allows sending only
                    rate = limit or FALLBACK_RATE
                    self.rate_note = f"GetAccount is not allowed; pacing at {rate:g}/s"
                else:
                    rate = float((account.get("SendQuota") or {}).get("MaxSendRate") or FALLBACK_RATE)
                if limit:
                    rate = min(rate, limit)
                self.pacer = Pacer(rate * 0.9)
            return self.pacer

    def send_batch(self, batch: Batch) -> list[Outcome]:
        pacer = self._ensure_pacer()
        t = batch.template
        campaign = {"Name": "nl_campaign", "Value": _tag_value(batch.label)}
        outcomes: list[Outcome] = []
        for env in batch.envelopes:
            try:
                destination = ascii_address(env.recipient.email)
                data = t.bytes_for(env.recipient, env.unsubscribe_url, env.message_id)
            except HeaderInjection as exc:
                outcomes.append(Outcome(env.key, "failed", reason=f"ses: not sent: {exc}"))
                continue
            request = {
                "FromEmailAddress": t.sender.addr_spec,
                "Destination": {"ToAddresses": [destination]},
                "Content": {"Raw": {"Data": data}},
                "EmailTags": [{"Name": "nl_delivery", "Value": str(env.key)}, campaign],
            }
            if self.configuration_set:
                request["ConfigurationSetName"] = self.configuration_set
            pacer.wait()
            try:
                response = self.client.send_email(**request)
            except ClientError as exc:
                outcomes.append(self._refusal(exc, env.key, outcomes))
                continue
            except (ReadTimeoutError, ConnectionClosedError) as exc:
                outcomes.append(Outcome(env.key, "unknown", reason=f"ses: no answer: {_transport(exc)}"))
                raise TransientError(f"ses: {_transport(exc)} ({self.where})", partial=outcomes) from None
            except BotoCoreError as exc:
                raise TransientError(f"ses: {_transport(exc)} ({self.where})", partial=outcomes) from None
            outcomes.append(Outcome(env.key, "sent", provider_id=response.get("MessageId")))
        return outcomes

    def _refusal(self, exc: ClientError, key: int, done: list[Outcome]) -> Outcome:
        """The outcome for a recipient SES refused, or the campaign-wide error to raise."""
        code, message, status = _error(exc)
        if code == "MessageRejected":
            sender = self.config.newsletter.sender
            if {sender.email.lower(), sender.domain.lower()} & _failed_identities(message):
                raise FatalError(
                    f"ses: the sender {sender.email} is not a verified identity in {self.where} "
                    f"({message}); verify the address or its domain in SES", partial=done,
                )
            return Outcome(key, "failed", reason=f"ses MessageRejected: {message}")
        if code == "BadRequestException" and "address" in message.lower():
            return Outcome(key, "failed", reason=f"ses BadRequestException: {message}")
        raise self._mapped(code, message, status, "SendEmail", done)

    def _call(self, action: str, call, denied_ok: bool = False, **kwargs):
        try:
            return call(**kwargs)
        except ClientError as exc:
            code, message, status = _error(exc)
            if denied_ok and code == "AccessDeniedException":
                return None
            raise self._mapped(code, message, status, action, []) from None
        except EndpointConnectionError as exc:
            raise TransientError(
                f"ses: cannot reach the SES endpoint for {self.where} ({_transport(exc)}); check [provider] region"
            ) from None
        except BotoCoreError as exc:
            raise TransientError(f"ses: {_transport(exc)} ({self.where})") from None

    def _mapped(self, code: str, message: str, status: int, action: str, done: list[Outcome]):
        """The error to raise for a refusal that concerns the whole campaign."""
        text = f"{code}: {message}" if message else code
        if code in THROTTLING:
            if "daily" in message.lower():
                return FatalError(
                    f"ses: the account's 24-hour sending quota is used up in {self.where} ({text}); "
                    "resume the campaign after the quota window, or ask AWS for a higher quota",
                    partial=done,
                )
            return TransientError(f"ses: throttled ({text})", retry_after=1.0, partial=done)
        if code in UNRECOGNISED:
            return FatalError(
                f"ses: AWS does not recognise the credentials ({text}); check AWS_ACCESS_KEY_ID "
                "and, for temporary credentials, AWS_SESSION_TOKEN", partial=done,
            )
        if code in SIGNATURE:
            if "region" in message.lower():
                return FatalError(
                    f"ses: the request was signed for {self.region}, which this endpoint does not "
                    f"serve ({text}); check [provider] region", partial=done,
                )
            return FatalError(f"ses: AWS refused the signature ({text}); check AWS_SECRET_ACCESS_KEY", partial=done)
        if code == "ExpiredTokenException":
            return FatalError(f"ses: the temporary credentials have expired ({text}); renew AWS_SESSION_TOKEN", partial=done)
        if code == "AccessDeniedException":
            return FatalError(
                f"ses: the AWS identity may not call ses:{action} ({text}); allow it in the IAM policy",
                partial=done,
            )
        if code == "AccountSuspendedException":
            return FatalError(f"ses: the account may no longer send in {self.where} ({text}); see the SES console", partial=done)
        if code == "SendingPausedException":
            return FatalError(
                f"ses: sending is paused for the account or configuration set in {self.where} ({text}); "
                "resume it in the SES console", partial=done,
            )
        if code == "MailFromDomainNotVerifiedException":
            return FatalError(
                f"ses: the custom MAIL FROM domain of {self.config.newsletter.sender.email} is not "
                f"verified in {self.where} ({text}); fix its MX and SPF records", partial=done,
            )
        if code == "NotFoundException":
            hint = "; check [provider] configuration_set" if self.configuration_set else ""
            return FatalError(f"ses: {text}{hint}", partial=done)
        if status >= 500:
            return TransientError(f"ses: server error {status} ({text})", partial=done)
        return FatalError(f"ses: {action} was refused ({status} {text})", partial=done)

    def close(self) -> None:
        self.client.close()


def _error(exc: ClientError) -> tuple[str, str, int]:
    error = exc.response.get("Error") or {}
    status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return str(error.get("Code") or "Unknown"), str(error.get("Message") or "").strip(), int(status)


def _failed_identities(message: str) -> set[str]:
    """The identities an SES "not verified" message lists after its colon."""
    if "failed the check" not in message:
        return set()
    return {part.strip().lower() for part in message.rpartition(":")[2].split(",") if part.strip()}


def _transport(exc: BotoCoreError) -> str:
    if isinstance(exc, ReadTimeoutError):
        return "the endpoint took too long to answer"
    if isinstance(exc, ConnectionClosedError):
        return "the connection dropped before an answer"
    if isinstance(exc, EndpointConnectionError):
        return "could not connect"
    return type(exc).__name__


def _tag_value(text: str) -> str:
    """SES tag values take ASCII letters, digits, _ and - only (at most 256)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:256] or "_"
