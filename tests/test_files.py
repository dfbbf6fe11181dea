"""Writing a file whole or not at all (newsletter/files.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from newsletter.files import write_atomically


def test_writes_and_replaces_leaving_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "00000001-reader@example.com.eml"
    write_atomically(target, b"first")
    write_atomically(target, b"second, longer than the first")
    assert target.read_bytes() == b"second, longer than the first"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.stat().st_mode & 0o077 == 0  # readers' addresses: the owner's eyes only


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    write_atomically(target, b"old")

    with pytest.raises(TypeError):  # fails after the temporary file is open
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_threads_writing_one_path_leave_one_whole_version(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    versions = [bytes([n]) * 200_000 for n in range(8)]
    threads = [threading.Thread(target=lambda v=v: [write_atomically(target, v) for _ in range(20)])
               for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_a_missing_folder_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "no-such-folder" / "x.eml", b"data")
    assert list(tmp_path.iterdir()) == []


def test_a_link_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """In a shared folder somebody may guess the temporary name: the link is replaced, and
    the file it points at is left alone."""
    target = tmp_path / "report.html"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    temp = tmp_path / f".tmp-{os.getpid()}-{threading.get_ident()}-report.html"
    temp.symlink_to(victim)
    write_atomically(target, b"<p>report</p>")
    assert victim.read_text() == "keep me"
    assert target.read_bytes() == b"<p>report</p>" and not target.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "victim.txt"]


def test_a_temporary_file_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "x.eml"
    stale = tmp_path / f".tmp-{os.getpid()}-{threading.get_ident()}-x.eml"
    stale.write_bytes(b"half a message")
    write_atomically(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["x.eml"]
