"""What the WAL raises: each error says whether a retry may succeed."""

from __future__ import annotations

import errno

from memoryd.errors import MemorydError


class WalError(MemorydError):
    """The WAL could not take a write."""


class WalFullError(WalError):
    """Taking the write would pass ``wal_max_bytes``, the disk is full, or
    writing failed; nothing of it is in the log, and a retry may succeed.

    ``for_space``: the cause is room (bytes or disk), so it is over once there
    is room again; other causes are over at the next write that succeeds.
    """

    def __init__(self, message: str, *, for_space: bool = True) -> None:
        super().__init__(message)
        self.for_space = for_space


class WalBusyError(WalError):
    """The process is out of file descriptors (or memory) for the WAL's files;
    nothing of the write is in the log, and a retry may succeed."""


class WalFatalError(WalError):
    """fdatasync failed: what reached the disk is unknown, so memoryd stops."""


def write_error(exc: OSError) -> WalError:
    """What a failed write (not an fdatasync) tells the client: always retryable."""
    reason = f"{exc.strerror or exc} (errno {exc.errno})"
    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return WalBusyError(f"the WAL could not open its file: {reason}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WalFullError(f"the WAL's disk is full: {reason}")
    return WalFullError(f"the WAL write failed: {reason}", for_space=False)
