"""SMTP: any mail server. One connection per worker, reused for every message, reopened
after a drop; N workers send in parallel.

Each message is sent as MAIL, RCPT, DATA separately so that a failure is placed exactly:
before DATA nothing was delivered and the message is retried on a fresh connection; a
connection lost during DATA leaves that one message's outcome unknown.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading

from ..message import ascii_address
from . import Batch, FatalError, Outcome, Provider, TransientError

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
            from ..errors import ConfigError

            raise ConfigError(f"[provider] security: {self.security!r} is not one of {', '.join(SECURITY)}")
        self.username = self.option("username")
        self.password = self.config.secret("SMTP_PASSWORD")
        if self.username and not self.password:
            self.require_secret("SMTP_PASSWORD")
        self.timeout = float(self.option("timeout", 30, (int, float)))
        self.envelope_from = self.option("envelope_from", self.config.newsletter.sender.email)
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
        try:
            if self.security == "ssl":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=context)
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise FatalError(
                f"smtp {self.where}: login as {self.username} refused ({exc.smtp_code}); check "
                "[provider] username and SMTP_PASSWORD"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise FatalError(f"smtp {self.where}: {exc}; check [provider] security") from None
        except ssl.SSLError as exc:
            raise FatalError(f"smtp {self.where}: TLS failed ({exc.reason}); check [provider] security and port") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"smtp {self.where}: cannot connect: {_describe(exc)}") from None
        with self._lock:
            self._all.append(conn)
        return conn

    def _connection(self) -> smtplib.SMTP:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def check(self) -> str:
        conn = self._connect()
        try:
            conn.noop()
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.quit()
        login = f" as {self.username}" if self.username else ""
        return f"smtp: connected to {self.where} ({self.security}){login}"

    def send_batch(self, batch: Batch) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, env in enumerate(batch.envelopes):
            data = batch.template.bytes_for(env.recipient, env.unsubscribe_url, env.message_id)
            rcpt = ascii_address(env.recipient.email)
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                except (TransientError, FatalError) as exc:
                    exc.partial = outcomes
                    raise
                try:
                    outcomes.append(self._exchange(conn, rcpt, data, env.key))
                    break
                except _SenderRefused as refused:
                    exc = refused.error
                    exc.partial = outcomes
                    raise exc from None
                except _Lost as lost:
                    self._drop()
                    if lost.body_sent:
                        outcomes.append(Outcome(env.key, "unknown", reason=f"connection lost while sending: {lost.why}"))
                        break
                    if attempt == 2:
                        remaining = [Outcome(e.key, "retry", reason=f"connection lost: {lost.why}")
                                     for e in batch.envelopes[index:]]
                        return outcomes + remaining
        return outcomes

    def _exchange(self, conn: smtplib.SMTP, rcpt: str, data: bytes, key: int) -> Outcome:
        """One message. MAIL, RCPT and DATA go in one write when the server offers
        PIPELINING (RFC 2920), else one by one; then the body. Raises _Lost when the
        connection drops, saying whether the body had gone out."""
        commands = [f"MAIL FROM:<{self.envelope_from}>", f"RCPT TO:<{rcpt}>", "DATA"]
        try:
            if conn.has_extn("pipelining"):
                conn.send("".join(f"{c}\r\n" for c in commands).encode("ascii"))
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
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Lost(False, _describe(exc)) from None
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
                raise _SenderRefused(TransientError(f"smtp {self.where}: sender refused for now ({mail_code})"))
            raise _SenderRefused(FatalError(
                f"smtp {self.where}: the server refused the sender {self.envelope_from} "
                f"({mail_code} {_text(mail_reply)}); check [newsletter] from"
            ))
        for code, reply in rest:
            if code not in (250, 251, 354):
                self._reset(conn)
                status = "retry" if 400 <= code < 500 else "failed"
                return Outcome(key, status, reason=f"{code} {_text(reply)}")
        # The body, dot-stuffed; our messages end every line with CRLF.
        body = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        try:
            conn.send(body + b".\r\n")
            code, reply = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Lost(True, _describe(exc)) from None
        if code == 250:
            return Outcome(key, "sent", provider_id=_text(reply)[:200] or None)
        status = "retry" if 400 <= code < 500 else "failed"
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


class _Lost(Exception):
    def __init__(self, body_sent: bool, why: str) -> None:
        super().__init__(why)
        self.body_sent = body_sent
        self.why = why


class _SenderRefused(Exception):
    def __init__(self, error: TransientError | FatalError) -> None:
        super().__init__(str(error))
        self.error = error


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
