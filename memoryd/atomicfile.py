"""Small files replaced whole: the reader sees the old version or the new, never half.

The new bytes go to a temporary file beside the target, are fsynced, renamed
over it, and the directory is fsynced so that the rename survives a crash
too.  Files are created ``FILE_MODE`` (memoryd.permissions): nobody else's to read.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from memoryd.permissions import FILE_MODE


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data``, durably; raises OSError (the old file stays)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write", str(tmp))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
