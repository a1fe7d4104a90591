"""Atomic writes: the new content or the old one, never a part, and no temporary file left behind."""

import pytest

from adainfer.engine import files
from adainfer.engine.files import write_bytes_atomic, write_text_atomic


def test_a_write_replaces_the_file_and_creates_its_folder(tmp_path):
    path = write_text_atomic(tmp_path / "a" / "b.txt", "first")
    write_text_atomic(path, "second é")
    assert path.read_text(encoding="utf-8") == "second é"
    assert [entry.name for entry in path.parent.iterdir()] == ["b.txt"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary_file(tmp_path, monkeypatch):
    path = write_bytes_atomic(tmp_path / "data.bin", b"old")

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [entry.name for entry in tmp_path.iterdir()] == ["data.bin"]
