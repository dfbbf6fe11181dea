"""Two independent pieces of work on two cores: one runs in a child process while this one
does the other.

What a command waits for is mostly imports (the database's library in one piece of work,
Markdown's and the templates' in the other), and one interpreter runs them one after the
other however many cores there are. A child made with fork() starts with everything this
process has already loaded, imports what its piece needs and sends back the result,
pickled through a pipe; an exception raised there is raised here.

Where fork() is missing (Windows), or this process runs threads (a fork copies only the
calling thread, and a lock another thread held stays locked in the child), the function runs
here instead, when its result is asked for: slower, never different.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

FORK = hasattr(os, "fork")


class ChildFailed(RuntimeError):
    """The child stopped without a result, or its exception could not be sent back."""


class Beside(Generic[T]):
    """``fn(*args)`` started beside this process; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._fn, self._args = fn, args
        self._pid: int | None = None
        self._pipe: int | None = None
        self.forked = FORK and threading.active_count() == 1
        if self.forked:
            self._start()

    def _start(self) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller's code
            status = 0
            try:
                os.close(read)
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent says so
                with os.fdopen(write, "wb") as out:
                    out.write(_outcome(self._fn, self._args))
            except BaseException:
                status = 1
            finally:
                os._exit(status)  # no atexit handlers, no flushing of the parent's buffers
        os.close(write)
        self._pid, self._pipe = pid, read

    def result(self) -> T:
        """The function's return value, or its exception raised here."""
        if not self.forked:
            return self._fn(*self._args)
        assert self._pipe is not None and self._pid is not None
        with os.fdopen(self._pipe, "rb") as pipe:
            self._pipe = None
            data = pipe.read()
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        if not data:
            raise ChildFailed(f"{_name(self._fn)} stopped without a result ({_status(status)})")
        ok, value = pickle.loads(data)
        if ok:
            return value
        if isinstance(value, BaseException):
            raise value
        raise ChildFailed(value)

    def cancel(self) -> None:
        """Stop the child, if it still runs, and reap it."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = None

    def __enter__(self) -> Beside[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """``fn(*args)``'s value or exception, pickled; an exception that pickling would lose
    (its class cannot be rebuilt from its arguments) is sent as its type and message."""
    try:
        value = fn(*args)
    except BaseException as exc:  # every exception goes back to the parent
        try:
            data = pickle.dumps((False, exc))
            pickle.loads(data)
            return data
        except Exception:
            return pickle.dumps((False, f"{type(exc).__name__}: {exc}"))
    return pickle.dumps((True, value))


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
