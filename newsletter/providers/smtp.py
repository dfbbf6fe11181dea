"""SMTP: any mail server. One connection per worker, reused for every message, reopened
after a drop; N workers send in parallel.

Each message is sent as MAIL, RCPT, DATA separately so that a failure is placed exactly:
before DATA nothing was delivered and the message is retried on a fresh connection; a
connection lost during DATA leaves that one message's outcome unknown.

When the server offers PIPELINING (RFC 2920), MAIL, RCPT and DATA go in one write, and the
next message's MAIL, RCPT and DATA go in the same write as this message's body and final
dot (message content may open a group, 3.1): one round trip per message instead of two.
Nothing of the next message is delivered by that: without its own body and final dot, its
transaction is dropped if the connection ends, so where a failure falls stays as above.
"""

# What an SMTP answer proves (RFC 5321; AUTH codes from RFC 4954, STARTTLS from RFC 3207)
#
# | answer | when | proves | here |
# |---|---|---|---|
# | 2xx | to the final dot | the server took the message and answers for it from now on (6.1) | sent |
# | 4xx | to RCPT, or to DATA or the final dot | not taken, for now; the same may work later | retry (that reader); after 421 a new connection |
# | 552 | to RCPT | read as "too many recipients", a 452 by an old name (4.5.3.1.10) | retry (that reader) |
# | 5xx | to RCPT, or to DATA or the final dot | not taken, and it will not be | failed (that reader) |
# | 421 | to MAIL, RCPT or DATA | the server is closing the channel; that command was not carried out | reconnect once, then TransientError |
# | 4xx | greeting, EHLO, STARTTLS (454), AUTH (454), MAIL | nothing started | TransientError |
# | 5xx | EHLO/HELO, STARTTLS, AUTH (535 bad login, 534, 538), MAIL (550, 530 login needed); 432 to AUTH | no retry will do better | FatalError |
# | lost line, timeout | before the final dot went out | a transaction without its final dot is dropped (3.8) | reconnect once, then TransientError |
# | lost line, timeout, garbled reply | once the body has started going out | the server may have taken the message | unknown (that message only) |
#
# Anything else that breaks before the body goes out (a Python error, a bad TLS setting) is
# raised as FatalError with what was sent so far: nothing of the rest can have left.

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import ssl
import threading
from typing import NamedTuple

from ..errors import ConfigError
from ..message import HeaderInjection, ascii_address
from . import Batch, BatchError, Envelope, FatalError, Outcome, Provider, TransientError

SECURITY = ("starttls", "ssl", "none")


class SmtpProvider(Provider):
    name = "smtp"
    # Messages go one by one, so a batch only groups them for the journal: if the process
    # dies mid-batch, the whole batch is "unknown". Small batches keep that small.
    max_batch = 20
    default_concurrency = 2

    def setup(self) -> None:
        self.host = self.option("host", required=True)
        port = self.option("port", 587, int)
        self.port = port
        default_security = "ssl" if port == 465 else "starttls" if port == 587 else "none"
        self.security = self.option("security", default_security)
        if self.security not in SECURITY:
            raise ConfigError(f"[provider] security: {self.security!r} is not one of {', '.join(SECURITY)}")
        self.username = self.option("username")
        self.password = self.config.secret("SMTP_PASSWORD")
        if self.username and not self.password:
            self.require_secret("SMTP_PASSWORD")
        self.timeout = float(self.option("timeout", 30, (int, float)))
        envelope_from = self.option("envelope_from", self.config.newsletter.sender.email)
        try:
            self.envelope_from = ascii_address(envelope_from)
        except HeaderInjection as exc:
            raise ConfigError(f"[provider] envelope_from: {exc}") from None
        if any(ch in self.envelope_from for ch in "<> \r\n\x00") or "@" not in self.envelope_from:
            raise ConfigError(f"[provider] envelope_from: {envelope_from!r} is not an email address")
        self.verify_tls = self.option("verify_tls", True, bool)
        self._local = threading.local()
        self._all: list[smtplib.SMTP] = []
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn: smtplib.SMTP | None = None
        try:
            if self.security == "ssl":
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            self._hello(conn)
            if self.security == "starttls":
                self._starttls(conn, context)
                self._hello(conn)
            if self.username:
                self._login(conn)
        except Exception as exc:
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
            if isinstance(exc, BatchError):
                raise
            raise self._connect_error(exc) from None
        with self._lock:
            self._all.append(conn)
        return conn

    def _connect_error(self, exc: Exception) -> BatchError:
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return FatalError(f"smtp {self.where}: {exc}; check [provider] security")
        if isinstance(exc, ssl.SSLError):
            return FatalError(f"smtp {self.where}: TLS failed ({exc.reason}); check [provider] security and port")
        if isinstance(exc, OSError | smtplib.SMTPException):
            return TransientError(f"smtp {self.where}: cannot connect: {_describe(exc)}")
        return FatalError(f"smtp {self.where}: cannot connect: {type(exc).__name__}: {_describe(exc)}")

    def _refused(self, step: str, code: int, reply: bytes, hint: str) -> BatchError:
        """A refusal before any message: 4xx is for now, anything else for good."""
        text = f"smtp {self.where}: {step} refused ({code} {_text(reply)})"
        if 400 <= code < 500:
            return TransientError(f"{text}; will try again later")
        return FatalError(f"{text}; {hint}")

    def _hello(self, conn: smtplib.SMTP) -> None:
        code, reply = conn.ehlo()
        if code == 250:
            return
        if not 400 <= code < 500:  # an old server that knows only HELO
            code, reply = conn.helo()
            if code == 250:
                return
        raise self._refused("the greeting (EHLO)", code, reply, "check [provider] host and port")

    def _starttls(self, conn: smtplib.SMTP, context: ssl.SSLContext) -> None:
        try:
            conn.starttls(context=context)
        except smtplib.SMTPNotSupportedError:
            raise
        except smtplib.SMTPResponseException as exc:  # smtplib raises for anything but 220
            raise self._refused("STARTTLS", exc.smtp_code, exc.smtp_error, "check [provider] security") from None

    def _login(self, conn: smtplib.SMTP) -> None:
        """AUTH PLAIN, else LOGIN, done here so that the credentials go as UTF-8 (RFC 4616);
        smtplib encodes them as ASCII. Other mechanisms (CRAM-MD5) are left to smtplib.
        Nothing raised from here shows the password."""
        if not conn.has_extn("auth"):
            raise FatalError(
                f"smtp {self.where}: the server offers no login (AUTH) here; check [provider] "
                "security (many servers offer it only after STARTTLS) and username"
            )
        offered = conn.esmtp_features["auth"].upper().split()
        username, password = self.username, self.password or ""
        try:
            user_bytes = username.encode("utf-8")
        except UnicodeError:
            raise FatalError(f"smtp {self.where}: [provider] username is not valid UTF-8") from None
        try:
            password_bytes = password.encode("utf-8")
        except UnicodeError:
            raise FatalError(
                f"smtp {self.where}: SMTP_PASSWORD is not valid UTF-8; set it again as text"
            ) from None
        try:
            if "PLAIN" in offered:
                token = _b64(b"\0" + user_bytes + b"\0" + password_bytes)
                code, reply = conn.docmd("AUTH", f"PLAIN {token}")
                if code == 334:  # a server that wants the credentials after an empty challenge
                    code, reply = conn.docmd(token)
            elif "LOGIN" in offered:
                code, reply = conn.docmd("AUTH", "LOGIN")
                if code == 334:
                    code, reply = conn.docmd(_b64(user_bytes))
                if code == 334:
                    code, reply = conn.docmd(_b64(password_bytes))
            else:
                code, reply = self._login_by_smtplib(conn, offered, username, password)
            if code == 334:  # still asking: give up the exchange (RFC 4954 "*")
                code, reply = conn.docmd("*")
        except (BatchError, OSError, smtplib.SMTPException):
            raise
        except Exception as exc:  # its text could quote the password
            raise FatalError(
                f"smtp {self.where}: login as {username} failed ({type(exc).__name__}); check "
                "[provider] username and SMTP_PASSWORD"
            ) from None
        if code == 235:
            return
        text = _text(reply).replace(password, "***") if password else _text(reply)
        if code == 454 or (400 <= code < 500 and code != 432):
            raise TransientError(f"smtp {self.where}: login as {username} failed for now ({code} {text})")
        if code in (534, 538):
            raise FatalError(f"smtp {self.where}: login as {username} refused ({code} {text}); check [provider] security")
        raise FatalError(
            f"smtp {self.where}: login as {username} refused ({code} {text}); check "
            "[provider] username and SMTP_PASSWORD"
        )

    def _login_by_smtplib(self, conn: smtplib.SMTP, offered: list[str], username: str,
                          password: str) -> tuple[int, bytes]:
        """CRAM-MD5, the one other mechanism smtplib knows."""
        if "CRAM-MD5" not in offered:
            raise FatalError(
                f"smtp {self.where}: the server offers no login method this program can use "
                f"({' '.join(offered) or 'none'}); PLAIN, LOGIN and CRAM-MD5 are supported"
            )
        if not (username.isascii() and password.isascii()):
            # smtplib keys CRAM-MD5 with the password as ASCII; checked before anything is sent
            field = "[provider] username" if not username.isascii() else "SMTP_PASSWORD"
            raise FatalError(
                f"smtp {self.where}: {field} has characters outside ASCII, which CRAM-MD5 "
                "cannot carry, and this server offers neither AUTH PLAIN nor LOGIN; use an "
                "ASCII password, or a server that offers AUTH PLAIN"
            )
        try:
            return conn.login(username, password)
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code, exc.smtp_error

    def _connection(self) -> smtplib.SMTP:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        self._local.ahead = None
        if conn is not None:
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def check(self) -> str:
        conn = self._connect()
        try:
            conn.noop()
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"smtp {self.where}: the connection failed: {_describe(exc)}") from None
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.quit()
        login = f" as {self.username}" if self.username else ""
        return f"smtp: connected to {self.where} ({self.security}){login}"

    def send_batch(self, batch: Batch) -> list[Outcome]:
        outcomes: list[Outcome] = []
        envelopes = batch.envelopes
        try:
            message = _prepared(batch, envelopes[0]) if envelopes else None
            for index in range(len(envelopes)):
                following = _prepared(batch, envelopes[index + 1]) if index + 1 < len(envelopes) else None
                outcomes.append(self._send_one(message, following))
                message = following
        except BatchError as exc:
            exc.partial = outcomes
            raise
        except Exception as exc:
            # Only the body is sent in a way that can leave a message unknown, and _exchange
            # says so itself; whatever else breaks, nothing of the rest has gone out.
            self._drop()
            raise FatalError(
                f"smtp {self.where}: stopped before the next message: {type(exc).__name__}: "
                f"{_describe(exc)}", partial=outcomes,
            ) from exc
        return outcomes

    def _send_one(self, message: _Message | Outcome, following: _Message | Outcome | None) -> Outcome:
        if isinstance(message, Outcome):  # it could not be made: nothing was sent for it
            return message
        ahead = following if isinstance(following, _Message) else None
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return self._exchange(conn, message, ahead)
            except _Stop as stop:
                raise stop.error from None
            except _Lost as lost:
                self._drop()
                if lost.body_sent:
                    return Outcome(message.key, "unknown", reason=f"connection lost while sending: {lost.why}")
                if attempt == 2:
                    raise TransientError(
                        f"smtp {self.where}: twice the connection ended before a message "
                        f"went out ({lost.why}); nothing more of this batch was sent"
                    ) from None
        raise AssertionError("unreachable")

    def _commands(self, rcpt: str) -> list[str]:
        return [f"MAIL FROM:<{self.envelope_from}>", f"RCPT TO:<{rcpt}>", "DATA"]

    def _envelope(self, rcpt: str) -> bytes:
        """MAIL, RCPT and DATA in one piece, for a server that pipelines."""
        return "".join(f"{c}\r\n" for c in self._commands(rcpt)).encode("ascii")

    def _exchange(self, conn: smtplib.SMTP, message: _Message, following: _Message | None) -> Outcome:
        """One message. MAIL, RCPT and DATA go in one write when the server offers
        PIPELINING (RFC 2920), else one by one; then the body, and with it the envelope of
        ``following`` when the server pipelines. Raises _Lost when the connection drops or
        closes (421), saying whether the body had gone out, and _Stop when the sender is
        refused."""
        rcpt, data, key = message.rcpt, message.data, message.key
        commands = self._commands(rcpt)
        written, self._local.ahead = getattr(self._local, "ahead", None), None
        pipelining = conn.has_extn("pipelining")
        try:
            if written == (conn, key):  # went out with the last message's body
                replies = [conn.getreply() for _ in commands]
            elif pipelining:
                conn.send(self._envelope(rcpt))
                replies = [conn.getreply() for _ in commands]
            else:
                # docmd, not mail()/rcpt(): the addresses are checked already, and smtplib
                # would parse each one again.
                replies = []
                for command, ok in zip(commands, ((250,), (250, 251), (354,)), strict=True):
                    verb, _, arg = command.partition(" ")
                    replies.append(conn.docmd(verb, arg))
                    if replies[-1][0] not in ok:
                        break
        except (OSError, smtplib.SMTPException) as exc:  # a drop, a timeout, a reply too long
            raise _Lost(False, _describe(exc)) from None
        for code, reply in replies:
            if code == 421 or not 200 <= code < 600:
                # Closing, or not speaking SMTP: this connection is done, and without the
                # final dot no transaction on it can go through.
                raise _Lost(False, f"{code} {_text(reply)}")
        (mail_code, mail_reply), rest = replies[0], replies[1:]
        if len(rest) == 2 and rest[1][0] == 354 and (mail_code != 250 or rest[0][0] not in (250, 251)):
            # A server that took DATA after refusing the envelope gets an empty message,
            # which it cannot deliver to nobody; then the session is reset.
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.send(b".\r\n")
                conn.getreply()
        if mail_code != 250:
            self._reset(conn)
            if 400 <= mail_code < 500:
                raise _Stop(TransientError(f"smtp {self.where}: sender refused for now ({mail_code} {_text(mail_reply)})"))
            if mail_code == 530:
                raise _Stop(FatalError(
                    f"smtp {self.where}: the server wants a login first ({mail_code} "
                    f"{_text(mail_reply)}); set [provider] username and SMTP_PASSWORD"
                ))
            raise _Stop(FatalError(
                f"smtp {self.where}: the server refused the sender {self.envelope_from} "
                f"({mail_code} {_text(mail_reply)}); check [newsletter] from"
            ))
        for index, (code, reply) in enumerate(rest):
            if code not in (250, 251, 354):
                self._reset(conn)
                temporary = 400 <= code < 500 or (index == 0 and code == 552)
                return Outcome(key, "retry" if temporary else "failed", reason=f"{code} {_text(reply)}")
        # The body, dot-stuffed; our messages end every line with CRLF.
        body = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        ahead = self._envelope(following.rcpt) if following is not None and pipelining else b""
        try:
            conn.send(body + b".\r\n" + ahead)
            code, reply = conn.getreply()
        except Exception as exc:  # from the first byte of the body on, it may have been taken
            raise _Lost(True, _describe(exc)) from None
        if not 400 <= code < 600 and not 200 <= code < 300:
            raise _Lost(True, f"unreadable reply {_text(reply)[:100]!r}")
        if code == 421:
            self._drop()  # not taken, and the server is hanging up: the envelope ahead is lost
        elif ahead:
            self._local.ahead = (conn, following.key)
        if 200 <= code < 300:
            return Outcome(key, "sent", provider_id=_text(reply)[:200] or None)
        status = "retry" if code < 500 else "failed"
        return Outcome(key, status, reason=f"{code} {_text(reply)}")

    @staticmethod
    def _reset(conn: smtplib.SMTP) -> None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            conn.rset()

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                with contextlib.suppress(OSError):
                    conn.close()


class _Message(NamedTuple):
    """A message made and ready to go: its journal key, its recipient as the envelope
    carries it, and its bytes."""

    key: int
    rcpt: str
    data: bytes


def _prepared(batch: Batch, env: Envelope) -> _Message | Outcome:
    """The message for ``env``, or its failed outcome when it cannot be made. Made before
    anything of it is written, so an envelope sent ahead always has a body to follow."""
    try:
        data = batch.template.bytes_for(env.recipient, env.unsubscribe_url, env.message_id)
        return _Message(env.key, ascii_address(env.recipient.email), data)
    except HeaderInjection as exc:
        return Outcome(env.key, "failed", reason=str(exc))


class _Lost(Exception):
    def __init__(self, body_sent: bool, why: str) -> None:
        super().__init__(why)
        self.body_sent = body_sent
        self.why = why


class _Stop(Exception):
    """The rest of the batch cannot go: raise ``error`` with what was sent so far."""

    def __init__(self, error: TransientError | FatalError) -> None:
        super().__init__(str(error))
        self.error = error


def _text(reply: bytes | str) -> str:
    """A reply's text on one line (a multi-line reply comes joined with newlines)."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
