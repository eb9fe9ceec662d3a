"""Atomic file writes: a temp file in the target's directory, fsync, then a rename into place.

A reader (or a crash) sees the old file or the new one, never half of one. Without `force` an
existing file is never replaced, even if it appears between the check and the rename.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644


class ExportError(Exception):
    """An export cannot be written or read: `title` is short, `message` says what happened and what to do."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message


def write_atomic(path: Path | str, data: bytes, *, force: bool = False, mode: int = FILE_MODE) -> Path:
    """Write `data` to `path` atomically, with permissions `mode`. Refuses to replace an existing
    file unless `force`."""
    target = Path(path)
    if target.is_dir():
        raise ExportError("Not a file", f"{target} is a directory; give a file name to write to")
    if not target.parent.is_dir():
        raise ExportError(
            "No such directory", f"{target.parent} does not exist; create it or choose another --out"
        )
    if target.exists() and not force:
        raise ExportError("File exists", f"{target} already exists; use --force to replace it")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ExportError("Cannot write", f"{target.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        _place(tmp, target, force)
    except OSError as exc:
        raise ExportError("Cannot write", f"{target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(target.parent)
    return target


def _place(tmp: Path, target: Path, force: bool) -> None:
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if target exists: no clobbering even in a race
    except FileExistsError:
        raise ExportError("File exists", f"{target} already exists; use --force to replace it") from None
    except OSError:  # file systems without hard links
        if target.exists():
            raise ExportError("File exists", f"{target} already exists; use --force to replace it") from None
        os.replace(tmp, target)


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some platforms cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)
