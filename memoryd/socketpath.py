"""Claiming the daemon's socket path, and refusing paths another user controls.

Whoever can write to the socket's directory can remove the socket and put a
listener of their own in its place, and so read what clients send (memories)
and answer what they like.  So the directory must belong to the daemon's user
(or root) and be writable by nobody else; a missing one is created private.
What is already at the path is removed only when it is a stale socket of
ours (a socket file of this euid that nobody listens on, left by a crash):
anything else may be another user's and is refused.  Every refusal is a
``ConfigError`` naming ``socket_path``: memoryd exits 78 without touching it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Final

from memoryd.errors import ConfigError
from memoryd.permissions import make_private_dir
from memoryd_client import wire

logger = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 1024
# Group or others may create or remove entries in a directory with these bits.
_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH


def listen(path: Path, mode: int) -> socket.socket:
    """A non-blocking socket listening on ``path`` with permission bits ``mode``."""
    too_long = wire.socket_path_too_long(str(path))
    if too_long is not None:
        raise ConfigError(f"socket_path {path}: {too_long}")
    _check_directory(path)
    _remove_stale_socket(path)
    return _bind(path, mode)


def _check_directory(path: Path) -> None:
    directory = path.parent
    try:
        make_private_dir(directory)
        info = os.stat(directory)
    except OSError as exc:
        raise ConfigError(f"socket_path {path}: cannot create {directory}: {exc}") from exc
    euid = os.geteuid()
    if info.st_uid not in (euid, 0):
        raise ConfigError(
            f"socket_path {path}: its directory {directory} belongs to uid {info.st_uid}, "
            f"not to uid {euid} that memoryd runs as (or root), so that user could replace "
            "the socket; use a directory of memoryd's own user"
        )
    if info.st_mode & _WRITABLE_BY_OTHERS:
        raise ConfigError(
            f"socket_path {path}: its directory {directory} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}), so they could replace the socket; "
            f"`chmod go-w {directory}` or use a private directory"
        )


def _remove_stale_socket(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(
            f"socket_path {path}: holds {_kind(info.st_mode)}, not a socket; memoryd does not "
            "remove it: move it away or choose another socket_path"
        )
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"socket_path {path}: holds a socket of uid {info.st_uid}, not of uid "
            f"{os.geteuid()} that memoryd runs as; memoryd does not remove it: stop its owner "
            "or choose another socket_path"
        )
    if _is_listening(path):
        raise ConfigError(f"socket_path {path}: another memoryd is listening there")
    path.unlink()
    logger.info("removed the stale socket %s (its daemon did not stop cleanly)", path)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def _is_listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _bind(path: Path, mode: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(str(path))
        bound = True
        # Nobody can connect before listen(), so the mode the umask gave the
        # file at bind() is never usable: no process-wide umask change needed.
        os.chmod(path, mode)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                path.unlink()
        raise ConfigError(f"socket_path {path}: {exc.strerror}") from exc
    sock.setblocking(False)
    return sock
