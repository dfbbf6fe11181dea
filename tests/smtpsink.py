"""Postfix's smtp-sink, an SMTP server written by others, for the SMTP adapter's tests.

It reads pipelined commands in bulk, as a real server does (aiosmtpd reads them one line at
a time), dumps every message it takes into a file of its own, and can hang up on a command
with no reply (``-q``) or with 421 (``-Q``). From Debian's ``postfix`` package; nothing of
Postfix itself is configured or started.
"""

from __future__ import annotations

import contextlib
import email
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path

from .fakes.smtp import free_port

INSTALL = ("Postfix's smtp-sink is not installed; install it with `apt-get install postfix` "
           "(answer 'No configuration': no mail server is started), as .ci/run does")


def find() -> str | None:
    found = shutil.which("smtp-sink")
    if found:
        return found
    return "/usr/sbin/smtp-sink" if os.access("/usr/sbin/smtp-sink", os.X_OK) else None


@dataclass
class Dumped:
    recipients: list[str]
    message: EmailMessage


@dataclass
class Sink:
    port: int
    folder: Path

    def dumped(self, expected: int, settle: float = 0.2) -> list[Dumped]:
        """The messages the sink took, once ``expected`` of them are on disk and nothing more
        came within ``settle`` seconds (so a message taken twice is seen)."""
        deadline = time.monotonic() + 10
        while len(list(self.folder.iterdir())) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle)
        return [_read(path) for path in sorted(self.folder.iterdir())]


def _read(path: Path) -> Dumped:
    """smtp-sink writes X-Rcpt-Args and its own Received header above the message."""
    raw = path.read_bytes().replace(b"\r\n", b"\n")
    lines = raw.split(b"\n")
    recipients = [line.split(b":", 1)[1].strip().strip(b"<>").decode() for line in lines
                  if line.startswith(b"X-Rcpt-Args:")]
    start = next(i for i, line in enumerate(lines) if line.startswith(b"Received:")) + 1
    while lines[start][:1] in (b" ", b"\t"):
        start += 1
    message = email.message_from_bytes(b"\n".join(lines[start:]), policy=policy.default)
    return Dumped(recipients, message)


@contextlib.contextmanager
def running(*options: str) -> Iterator[Sink]:
    """smtp-sink on a free port of 127.0.0.1 with ``options``, dumping into a fresh folder."""
    binary = find()
    if binary is None:
        raise RuntimeError(INSTALL)
    # As root the sink must be told whom to run as; that user writes the dumps.
    folder = Path(tempfile.mkdtemp(prefix="smtp-sink-"))
    folder.chmod(0o777)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    port = free_port()
    proc = subprocess.Popen([binary, *user, *options, "-d", f"{folder}/m.", f"127.0.0.1:{port}", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"smtp-sink did not start: {proc.stderr.read().decode()}") from None
                time.sleep(0.02)
        # the probe above was a session with no message: it dumps nothing
        yield Sink(port, folder)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
