"""Email services, all behind one small interface.

The campaign engine hands a provider a :class:`Batch` (one prepared issue, up to
``max_batch`` recipients) and gets back one :class:`Outcome` per recipient. When the call as a
whole fails, the exception says what the answer proves:

- :class:`TransientError`: a *proven refusal* — the service cannot have accepted the rest of
  the batch (connection refused, 429, a 5xx whose body is the service's own documented
  error, an SMTP 4xx before the end of DATA). The engine retries it later.
- :class:`UnknownOutcome`: the rest of the batch *may* have been accepted (a timeout after
  the request went out, a connection reset after the body, a 502/504 from a gateway, a 5xx
  without the service's error body). Never retried, except with an idempotency key the
  service honours or when the user asks (``--resend-unknown``).
- :class:`FatalError`: a proven refusal that no retry can cure (bad credentials, a refused
  sender): the campaign stops at once with that one-line message.

Each adapter writes down, beside its code, which of its service's answers are which.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..config import Config
from ..errors import ConfigError, ProviderError
from ..message import HeaderInjection, MessageTemplate, Recipient
from ..placeholders import PLACEHOLDER_RE

# sent: accepted by the service; failed: refused for good (reason says why); retry: refused
# for now, try again later; unknown: the call died after the message may have left.
Status = Literal["sent", "failed", "retry", "unknown"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One recipient of a batch: who, and what is unique to their copy."""

    key: int  # the delivery journal row (or a counter for test sends)
    recipient: Recipient
    unsubscribe_url: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Batch:
    template: MessageTemplate
    envelopes: Sequence[Envelope]
    idempotency_key: str  # the same for every attempt at this batch, across resumes
    label: str = "test"  # names the campaign, e.g. for the outbox folder


@dataclass(frozen=True, slots=True)
class Outcome:
    key: int
    status: Status
    provider_id: str | None = None
    reason: str | None = None
    retry_after: float | None = None  # for "retry": seconds the service asked us to wait


class BatchError(ProviderError):
    """A batch call failed. ``partial`` holds the outcomes of recipients handled before the
    failure (a provider that sends one message at a time may have sent some); every other
    recipient of the batch is covered by the exception's kind."""

    def __init__(self, message: str, partial: Sequence[Outcome] = ()) -> None:
        super().__init__(message)
        self.partial = list(partial)


class TransientError(BatchError):
    """The call failed in a way worth retrying; the rest of the batch was not delivered."""

    def __init__(self, message: str, retry_after: float | None = None,
                 partial: Sequence[Outcome] = ()) -> None:
        super().__init__(message, partial)
        self.retry_after = retry_after


class UnknownOutcome(BatchError):
    """The request went out but no answer came back: the rest of the batch may or may not
    have been delivered."""


class FatalError(BatchError):
    """Retrying cannot help (bad credentials, a refused sender): stop the campaign."""


@dataclass
class Provider:
    """Base class: subclasses set the class attributes and implement send_batch."""

    config: Config
    name: ClassVar[str] = ""
    max_batch: ClassVar[int] = 1
    default_concurrency: ClassVar[int] = 1
    # True when resending a batch with the same idempotency_key can never deliver twice.
    idempotent: ClassVar[bool] = False
    options: dict = field(init=False)

    def __post_init__(self) -> None:
        self.options = dict(self.config.provider.options)
        self.setup()

    def setup(self) -> None:
        """Read and check options; raise ConfigError naming the key."""

    def option(self, key: str, default=None, kind: type | tuple[type, ...] = str, required: bool = False):
        if key not in self.options:
            if required:
                raise ConfigError(
                    f"[provider] {key}: is required for {self.name}; see the README's "
                    f"{self.name} set-up"
                )
            return default
        value = self.options[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"[provider] {key}: {value!r} is not valid for {self.name}")
        return value

    def require_secret(self, name: str) -> str:
        value = self.config.secret(name)
        if not value:
            raise ConfigError(
                f"{name} is not set; put it in the environment or in .env beside "
                f"newsletter.toml (the {self.name} provider needs it)",
                "environment",
            )
        return value

    def http_timeout(self) -> tuple[float, float]:
        """(connect, read) seconds; ``[provider] timeout`` sets the read timeout."""
        read = float(self.option("timeout", 30, (int, float)))
        return (min(5.0, read), read)

    @property
    def concurrency(self) -> int:
        return self.config.provider.concurrency or self.default_concurrency

    @property
    def batch_size(self) -> int:
        size = self.options.get("batch_size")
        if isinstance(size, int) and not isinstance(size, bool) and 0 < size <= self.max_batch:
            return size
        return self.max_batch

    def check(self) -> str:
        """Verify settings and credentials as cheaply as the service allows; say what was checked."""
        return f"{self.name}: settings look complete (this service has no cheap credentials check)"

    def send_batch(self, batch: Batch) -> list[Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; called once when a campaign run ends."""


class Pacer:
    """Spaces calls evenly at no more than ``rate`` per second, across all threads that share
    it: each caller waits for its own slot, so N workers together stay under the limit."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until this caller may go; return the seconds waited."""
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
        delay = start - now
        if delay > 0:
            self.sleep(delay)
        return delay


def retag(text: str, tags: Mapping[str, str]) -> str:
    """``text`` with each ``[[nl:field]]`` placeholder replaced by ``tags[field]``: how a
    provider that personalises on its side turns the rendered issue into its own template
    syntax, once per issue rather than once per recipient."""
    return PLACEHOLDER_RE.sub(lambda match: tags[match.group(1)], text)


class UnsubscribeHeaders:
    """Each recipient's List-Unsubscribe and List-Unsubscribe-Post values, in exactly the form
    :meth:`MessageTemplate.headers_for` gives them, for services that take headers as data:
    the form is taken from it once per issue, and only the recipient's URL goes in."""

    _MARK = "\x00"

    def __init__(self, template: MessageTemplate) -> None:
        shape = template.headers_for(self._MARK)
        self._head, _, self._tail = shape["List-Unsubscribe"].partition(self._MARK)
        self.post = shape["List-Unsubscribe-Post"]

    def for_url(self, url: str) -> str:
        if any(ch in url for ch in "\r\n\x00"):
            raise HeaderInjection("List-Unsubscribe: line breaks are not allowed in header values")
        return f"{self._head}{url}{self._tail}"


KNOWN = {
    "outbox": "newsletter.providers.outbox:OutboxProvider",
    "smtp": "newsletter.providers.smtp:SmtpProvider",
    "postmark": "newsletter.providers.postmark:PostmarkProvider",
    "sendgrid": "newsletter.providers.sendgrid:SendgridProvider",
    "mailgun": "newsletter.providers.mailgun:MailgunProvider",
    "resend": "newsletter.providers.resend:ResendProvider",
    "ses": "newsletter.providers.ses:SesProvider",
}


def provider_class(name: str) -> type[Provider]:
    target = KNOWN.get(name)
    if target is None:
        raise ConfigError(f"[provider] name: {name!r} is not a provider; use one of {', '.join(KNOWN)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith("newsletter"):
            extra = "ses" if name == "ses" else name
            raise ConfigError(
                f"[provider] name: {name} needs the Python package {exc.name}; run "
                f"`pip install 'letterfold[{extra}]'`"
            ) from None
        raise ConfigError(f"[provider] name: {name!r} is not available in this version") from None
    return getattr(module, class_name)


def get_provider(config: Config) -> Provider:
    """The configured provider, its options and secrets checked."""
    return provider_class(config.provider.name)(config)
