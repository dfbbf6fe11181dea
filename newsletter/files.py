"""Writing a file whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``: a
    reader sees the old file or the new one, never half of one.

    The temporary name carries the process and the thread, so two writers of one path never
    share it, and it costs no random name (the outbox writes one per reader). It is created
    exclusively and never through a link: one left by a crash is removed first, and one
    somebody else placed in a shared folder is an error rather than a file overwritten."""
    temp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name[-120:]}")
    try:
        try:
            fd = os.open(temp, _CREATE, 0o600)
        except FileExistsError:
            temp.unlink()
            fd = os.open(temp, _CREATE, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
