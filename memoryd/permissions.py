"""Who may read what memoryd writes: the user it runs as, and nobody else.

Records are agents' memories, so every directory memoryd creates is
``DIR_MODE`` and every file ``FILE_MODE``; these two constants are the one
place that says so.  The modes are given explicitly at creation (``mkdir``,
``os.open``) rather than left to the umask: ``memoryd run`` sets
``DAEMON_UMASK`` for the whole process, but a daemon embedded in another
program (the tests) keeps that program's umask.  What an older version, a
copy or a loose umask left readable by others is tightened at start.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
# Set by `memoryd run` (the umask is process-wide); a safety net under the explicit modes.
DAEMON_UMASK: Final = 0o077
# How many tightened paths the log line names before it only counts the rest.
_LOGGED_PATHS = 10


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with ``DIR_MODE``; an existing one is left as is.

    (``Path.mkdir(parents=True)`` would create the parents with the umask's mode.)
    """
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not directory.is_dir():
                raise
            # Created by someone else meanwhile: theirs, left as it is.


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates a missing file with ``FILE_MODE``."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` whole with ``FILE_MODE``, also when an older, looser file is there."""
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(fd, FILE_MODE)
        file.write(text)


def _own_paths(root: Path, own: Collection[str]) -> Iterator[str]:
    yield str(root)
    for name in sorted(own):
        top = root / name
        if not top.is_dir() or top.is_symlink():
            yield str(top)
            continue
        for directory, _, names in os.walk(top):
            yield directory
            yield from (os.path.join(directory, entry) for entry in names)


def tighten(root: Path, own: Collection[str]) -> list[str]:
    """Take the bits beyond ``DIR_MODE``/``FILE_MODE`` from ``root`` and from the
    entries of it named in ``own`` (what memoryd itself creates there), with
    everything under those.

    Nothing else in ``root`` is touched: a ``data_dir`` set by mistake to a
    home directory must not lose its permissions.  Only bits are taken away,
    never added, and only on what the daemon's user owns; symbolic links are
    not followed.  Logs one line naming what changed and returns those
    changes, named from ``root``'s parent (``"data/wal 0755->0700"``).
    """
    changed: list[str] = []
    euid = os.geteuid()
    for path in _own_paths(root, own):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or info.st_uid != euid:
            continue
        mode = stat.S_IMODE(info.st_mode)
        tight = mode & (DIR_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE)
        if tight != mode:
            os.chmod(path, tight)
            changed.append(f"{os.path.relpath(path, root.parent)} {mode:04o}->{tight:04o}")
    if changed:
        named = ", ".join(changed[:_LOGGED_PATHS])
        more = len(changed) - _LOGGED_PATHS
        logger.warning(
            "permissions under %s were looser than %04o/%04o (left by an older memoryd or a "
            "copy); tightened %d paths: %s%s",
            root,
            DIR_MODE,
            FILE_MODE,
            len(changed),
            named,
            f" and {more} more" if more > 0 else "",
        )
    return changed
