"""Writes that never leave a half-written file: a temporary file in the same folder, then `os.replace`.

A reader (or a crash) sees the old content or the new one, never a truncated mix, and an
interrupted write leaves the file that was there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically; creates the parent folder. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`write_bytes_atomic` of `text` encoded as UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def lock_path(path: Path) -> Path:
    """The lock file guarding `path` (a file or a folder): ``.<name>.lock`` beside it.

    Beside, not inside, so the lock outlives replacing `path` itself; `filelock` takes it.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.lock")
