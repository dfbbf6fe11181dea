"""How long does a writer wait for a command? Prints the median wall time of whole
`newsletter` processes (interpreter start, imports, the work) on a scratch copy of the sample
newsletter with the sample list imported and one issue sent, so `status` has a campaign to
show and `send --dry-run` an audience to count. `send --dry-run` is also timed with its
counting in the same process (no fork), to show what the second process saves."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = 11
DRY_RUN = ["send", "--dry-run", "2026-12-01-the-quota-is-not-the-goal"]
ONE_PROCESS = "one process"  # marks the run of DRY_RUN without the child
COMMANDS = [  # (arguments, aim in ms)
    (["--help"], 150),
    (["status"], 300),
    (["calendar"], 300),
    (DRY_RUN, 300),
    ([ONE_PROCESS, *DRY_RUN], None),
    (["build"], 350),
]
# The command line with newsletter.beside told there is no fork(): what --dry-run costs
# when the audience is counted after the rendering, in the same process.
WITHOUT_FORK = ("import sys; import newsletter.beside as b; b.FORK = False; "
                "from newsletter.cli import main; main(sys.argv[1:], prog_name='newsletter')")


def newsletter(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NEWSLETTER_") and k != "PYTHONDONTWRITEBYTECODE"}
    # Bytecode as an installed copy has it (pip compiles it at install), kept out of the
    # repository: a shell with PYTHONDONTWRITEBYTECODE set would otherwise measure the
    # compiling of every module on every run.
    env["PYTHONPYCACHEPREFIX"] = str(root / ".pycache")
    command = ["-c", WITHOUT_FORK, *args[1:]] if args[:1] == (ONE_PROCESS,) else ["-m", "newsletter", *args]
    return subprocess.run([sys.executable, *command], cwd=root, env=env,
                          capture_output=True, text=True, check=True)


def median_ms(root: Path, commands: list[list[str]]) -> list[float]:
    """Each command's median; the commands take turns, so a machine that slows down or
    speeds up during the run (a shared host) weighs on all of them alike."""
    for args in commands:
        newsletter(root, *args)  # the first run fills the OS file cache and writes .pyc files
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(RUNS):
        for args, kept in zip(commands, times, strict=True):
            start = time.perf_counter()
            newsletter(root, *args)
            kept.append((time.perf_counter() - start) * 1000)
    return [statistics.median(kept) for kept in times]


def main() -> None:
    print(f"cores: {os.cpu_count()}, load average at start: "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    bare = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append((time.perf_counter() - start) * 1000)
    print(f"python -c pass (the interpreter alone): {statistics.median(bare):.0f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "newsletter.toml", root / "newsletter.toml")
        shutil.copytree(REPO / "issues", root / "issues")
        (root / ".env").write_text("NEWSLETTER_SECRET=" + "b" * 43 + "\n", encoding="utf-8")
        newsletter(root, "subscribers", "import", str(REPO / "samples" / "readers.csv"))
        newsletter(root, "send", "--yes", "2026-12-08-listen-before-you-lead")
        medians = median_ms(root, [args for args, _ in COMMANDS])
        for (args, aim), ms in zip(COMMANDS, medians, strict=True):
            if aim is None:
                print(f"  {' '.join(args[1:3])}, counting in the same process: {ms:.0f} ms")
                continue
            verdict = "within" if ms <= aim else "over"
            print(f"newsletter {' '.join(args[:2]):<16} {ms:6.0f} ms  (aim {aim} ms: {verdict})")


if __name__ == "__main__":
    main()
