"""Writing a file whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``: a
    reader sees the old file or the new one, never half of one.

    The temporary name carries the process and the thread, so two writers of one path never
    share it, and it costs no random name and no retry (the outbox writes one per reader)."""
    temp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name[-120:]}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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
