"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives and can refuse
recipients (for good, or for their first N tries as greylisting does), refuse a message after
its body, stall, drop the connection mid-DATA, close idle connections, answer 421 and hang up,
and require a login checked as UTF-8 bytes, for the SMTP tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import secrets
import socket
import ssl
import threading
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, AuthResult, LoginPassword


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rules: dict[str, str] = {}  # recipient -> SMTP reply, e.g. "450 4.2.0 later"
        # recipient -> how many more RCPTs get "451 4.7.1" before one is accepted
        self.greylist: dict[str, int] = {}
        self.data_rules: dict[str, str] = {}  # recipient -> reply to the end of DATA, not kept
        self.stall_rcpt: dict[str, float] = {}  # recipient -> seconds to sit on its RCPT
        self.per_connection: int | None = None  # after this many messages, 421 and hang up
        self.shut_down_after: int | None = None  # after this many in all, 421 on every MAIL
        self.drop_data_for: set[str] = set()
        self.close_after_each = False
        self.pipelining = False
        self.connections = 0
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads commands one by one, so pipelined ones just work
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            stored = len(self.messages)
        if (self.shut_down_after is not None and stored >= self.shut_down_after) or (
            self.per_connection is not None and getattr(session, "kept", 0) >= self.per_connection
        ):
            asyncio.get_running_loop().call_later(0.01, server.transport.close)
            return "421 4.3.2 Service shutting down, closing channel"
        if self.close_after_each and getattr(session, "kept", 0):
            # The close after the last message has not happened yet (a busy machine): it
            # happens now, before this transaction starts, as on a server that hung up.
            server.transport.close()
            return "421 4.4.2 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.stall_rcpt:
            await asyncio.sleep(self.stall_rcpt[address])
        rule = self.rules.get(address)
        if rule:
            return rule
        with self.lock:
            if self.greylist.get(address, 0) > 0:
                self.greylist[address] -= 1
                return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for address in envelope.rcpt_tos:
            if address in self.data_rules:
                return self.data_rules[address]
        session.kept = getattr(session, "kept", 0) + 1
        if set(envelope.rcpt_tos) & self.drop_data_for:
            with self.lock:
                self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            server.transport.close()  # accepted, but the client never hears so
            return "250 OK"
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        if self.close_after_each:
            asyncio.get_running_loop().call_later(0.01, server.transport.close)
        return "250 2.0.0 Ok: queued as X"


class Authenticator:
    """Checks AUTH PLAIN and LOGIN credentials byte for byte against the UTF-8 form of
    ``username`` and ``password``, and notes each mechanism a client used."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password
        self.mechanisms: list[str] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        self.mechanisms.append(mechanism)
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.username.encode("utf-8")
            and auth_data.password == self.password.encode("utf-8")
        )
        return AuthResult(success=ok, handled=False)


class CramMd5Sink(Sink):
    """A sink that also offers AUTH CRAM-MD5 (RFC 2195), keyed with the UTF-8 password; start
    it with ``auth_exclude_mechanism=["PLAIN", "LOGIN"]`` to offer that alone."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__()
        self.username, self.password = username, password

    async def auth_CRAM__MD5(self, server, args):
        challenge = f"<{secrets.token_hex(8)}@127.0.0.1>".encode("ascii")
        answer = await server.challenge_auth(challenge)
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        login, _, digest = answer.partition(b" ")
        expected = hmac.new(self.password.encode("utf-8"), challenge, "md5").hexdigest().encode("ascii")
        ok = login == self.username.encode("utf-8") and hmac.compare_digest(digest, expected)
        return AuthResult(success=ok, handled=False)


def start_auth_sink(username: str, password: str, sink: Sink | None = None,
                    **kwargs) -> tuple[CountingController, Sink, Authenticator]:
    """A sink that refuses MAIL until the client has logged in (AUTH PLAIN and LOGIN, over
    plain TCP: aiosmtpd wants TLS for AUTH unless told otherwise)."""
    authenticator = Authenticator(username, password)
    kwargs.setdefault("auth_require_tls", False)
    controller, sink = start_sink(sink, authenticator=authenticator, auth_required=True, **kwargs)
    return controller, sink, authenticator


class CountingController(Controller):
    def factory(self):
        server = super().factory()
        self.handler.connections += 1
        return server


def self_signed_context(folder: Path) -> ssl.SSLContext:
    """A TLS context with a fresh self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sink(sink: Sink | None = None, **kwargs) -> tuple[CountingController, Sink]:
    sink = sink or Sink()
    controller = CountingController(sink, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller, sink


def port_of(controller: Controller) -> int:
    return controller.port


class CountingSink(Sink):
    """Keeps only a count, for benchmarks with many messages."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 2.0.0 Ok"


def main() -> None:
    """Serve a counting SMTP sink on a free port; print the port, then the count on each
    line read from stdin ("count")."""
    import sys

    controller, sink = start_sink(CountingSink())
    print(controller.port, flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(sink.count, flush=True)
    controller.stop()


if __name__ == "__main__":
    main()
