"""newsletter.beside: a function run in a forked child while this process goes on, its
result or its exception handed back, and the child never left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from newsletter import beside
from newsletter.beside import Beside, ChildFailed
from newsletter.errors import ListNotFound

pytestmark = pytest.mark.skipif(not beside.FORK, reason="fork() is POSIX only; elsewhere the work runs in one process")


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh():
    """fresh(scenario): run ``scenario`` (a function of this module) in a new interpreter,
    where no other thread runs (earlier tests in this process may have left some), so the
    work is forked; its assertions decide."""

    def run(scenario, *args: str) -> None:
        code = f"import sys; from tests.test_beside import {scenario.__name__} as s; s(*sys.argv[1:])"
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    return run


def whose() -> int:
    return os.getpid()


def refuse(name: str) -> None:
    raise ListNotFound(f"no list named {name!r}")


class Odd(Exception):
    def __init__(self, code: int, why: str) -> None:  # pickling cannot rebuild it from args
        super().__init__(f"{code} {why}")


def raise_odd() -> None:
    raise Odd(7, "the sink hung up")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def linger(path: str) -> None:
    with open(path, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(60)


def forked(fn, *args) -> Beside:
    pending = Beside(fn, *args)
    assert pending.forked, threading.enumerate()
    return pending


def results_come_back() -> None:
    with forked(whose) as pending:
        assert pending.result() != os.getpid()
    with forked(bytes, 5_000_000) as pending:  # more than a pipe holds at once
        assert pending.result() == bytes(5_000_000)


def exceptions_come_back() -> None:
    with forked(refuse, "vip") as pending, pytest.raises(ListNotFound, match="no list named 'vip'"):
        pending.result()
    with forked(raise_odd) as pending, pytest.raises(ChildFailed, match="Odd: 7 the sink hung up"):
        pending.result()


def a_death_is_reported() -> None:
    with forked(die) as pending, pytest.raises(
            ChildFailed, match=r"die stopped without a result \(killed by signal 9\)"):
        pending.result()


def leaving_early_stops_the_child(marker: str) -> None:
    with pytest.raises(RuntimeError, match="rendering failed"), forked(linger, marker):
        deadline = time.monotonic() + 10
        while not Path(marker).exists() or not Path(marker).read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise RuntimeError("rendering failed")
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process
        os.kill(int(Path(marker).read_text()), 0)


def test_the_function_runs_in_a_child_and_its_result_comes_back_whole(fresh):
    fresh(results_come_back)


def test_the_childs_exception_is_raised_here_or_its_name_and_message_when_it_cannot_be(fresh):
    fresh(exceptions_come_back)


def test_a_child_that_dies_is_an_error_saying_how(fresh):
    fresh(a_death_is_reported)


def test_leaving_early_stops_the_child(fresh, tmp_path):
    fresh(leaving_early_stops_the_child, str(tmp_path / "pid"))


def test_without_fork_it_runs_here_when_asked(monkeypatch):
    monkeypatch.setattr(beside, "FORK", False)
    with Beside(whose) as pending:
        assert not pending.forked and pending.result() == os.getpid()


def test_with_other_threads_running_it_runs_here():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        with Beside(whose) as pending:
            assert not pending.forked and pending.result() == os.getpid()
    finally:
        stop.set()
        thread.join()
