"""Writes that never leave a half-written file: a temporary file in the same folder, then `os.replace`.

A reader (or a crash) sees the old content or the new one, never a truncated mix, and an
interrupted write leaves the file that was there. `os.replace` replaces whatever the name
points at, so an output that exists must be checked first (`check_output_file`): `-o /dev/full`
once replaced the device with a regular file. Every writer here checks it, and every verb that
writes checks it (and `check_output_directory`) before any work, before any lock file is made.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written as asked (a device, a FIFO, a folder where a file goes)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_file(path: Path) -> Path:
    """Refuse `path` as an output file if it exists and is not a regular file (following links), or if
    its parent exists and is not a directory; nothing is written. Returns `path`."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise OutputError(f"cannot use {path} as an output file: {error.strerror or error}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{path} exists and is {_kind(mode)}, not a regular file; choose another output file")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{path.parent} is not a directory; choose another output file")
    return path


def check_output_directory(path: Path, marker: str | None = None) -> Path:
    """Refuse `path` as an output folder if it exists and is not a directory, or (with `marker`, the
    file an earlier output of the same kind holds) if it is a non-empty directory without `marker`:
    replacing it would delete what someone else put there. Returns `path`."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            mode = os.stat(path).st_mode if path.exists() else 0
            raise OutputError(f"{path} exists and is {_kind(mode) if mode else 'a broken link'}, not a directory; "
                              f"choose another output directory")
        if marker is not None and any(path.iterdir()) and not (path / marker).is_file():
            raise OutputError(f"{path} exists and is not a policy directory; choose another output directory")
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically; creates the parent folder. Returns `path`. Refuses a
    `path` that exists and is not a regular file (`check_output_file`)."""
    path = check_output_file(Path(path))
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
