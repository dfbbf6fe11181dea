"""Run a command so that the peak memory measured is the command's own.

Linux counts a process's peak resident size (``ru_maxrss``) from the moment it was forked,
and when it starts a new program (exec) it keeps the peak of the memory it had until then:
a copy of its parent's. A benchmark that has grown itself (it rendered an issue, it listed a
million files) floors every command it starts at its own size; bench/send.py reported
213.5 MB for every send after its million-file outbox run.

Commands started here are forked from a small process of their own, started once, so a
figure is the command's peak (and that of the children it waited for), floored only at the
launcher's own size, about 10 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

_SERVE = r"""
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    job = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(job["cmd"], cwd=job["cwd"], env=job["env"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        reply = {"seconds": seconds, "returncode": os.waitstatus_to_exitcode(status),
                 "peak_kb": usage.ru_maxrss, "stdout": out.read().decode("utf-8", "replace"),
                 "stderr": err.read().decode("utf-8", "replace")}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


@dataclass(frozen=True)
class Ran:
    seconds: float
    returncode: int
    peak_mb: float  # the command's peak resident size (Linux ru_maxrss, in MB)
    stdout: str
    stderr: str


class Launcher:
    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _SERVE], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)

    def run(self, cmd: list[str], cwd: str, env: dict[str, str]) -> Ran:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"cmd": cmd, "cwd": cwd, "env": env}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the launcher stopped (exit {self._proc.wait()})")
        reply = json.loads(line)
        return Ran(reply["seconds"], reply["returncode"], reply["peak_kb"] / 1024, reply["stdout"],
                   reply["stderr"])


_shared: Launcher | None = None


def run(cmd: list[str], cwd: str, env: dict[str, str]) -> Ran:
    """``cmd`` run from the shared launcher (started on first use)."""
    global _shared
    if _shared is None:
        _shared = Launcher()
    return _shared.run([str(part) for part in cmd], str(cwd), env)
