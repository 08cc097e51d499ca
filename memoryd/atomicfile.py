"""Files replaced whole: a reader sees the old version or the new, never half.

The new bytes go to a temporary file beside the target, created new (a file
or symbolic link found under that name is removed, never written through),
with exactly the mode asked for whatever the umask; the file is fsynced,
renamed over the target, and the directory fsynced so that the rename
survives a crash too.  On any failure the temporary file is removed and the
old file stays.  The default mode is ``FILE_MODE`` (memoryd.permissions):
nobody else's to read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from memoryd.permissions import FILE_MODE

TEMP_SUFFIX = ".tmp"


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replaced_whole(
    path: Path, *, mode: int = FILE_MODE, temp_suffix: str = TEMP_SUFFIX
) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content to; it replaces ``path`` when the block ends."""
    temp = path.with_name(path.name + temp_suffix)
    try:
        temp.unlink(missing_ok=True)  # a stale one of a writer that died, or a planted link
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)
            yield file
            file.flush()
            os.fsync(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_directory(path.parent)


def write_atomically(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data``, durably; raises OSError (the old file stays)."""
    with replaced_whole(path, mode=mode) as file:
        file.write(data)
