"""The write-ahead log: every write is here before it is acknowledged.

Layout under ``<data_dir>/wal/``: segment files of checksummed, numbered
frames; ``checkpoint``, what the store has applied; ``quarantine/``, bytes
recovery could not make sense of, kept for an operator.

- ``format``: the bytes on disk (frames, segments, the checkpoint), an on-disk contract;
- ``recovery``: what start-up does with what it finds, and ``wal inspect``'s report;
- ``log``: ``Wal``, appends with group commit, syncing, checkpoints;
- ``segments``: the segment files, the one appended to and those behind it;
- ``errors``: what it raises, retryable or fatal.
"""

from __future__ import annotations

from memoryd.wal.errors import WalBusyError, WalError, WalFatalError, WalFullError
from memoryd.wal.format import (
    CHECKPOINT_NAME,
    QUARANTINE_DIR,
    SEGMENT_SUFFIX,
    list_segments,
    read_checkpoint,
    segment_name,
    write_checkpoint,
)
from memoryd.wal.log import FsyncPolicy, Wal, WalSettings
from memoryd.wal.recovery import Recovery, inspect_wal, recover

__all__ = [
    "CHECKPOINT_NAME",
    "QUARANTINE_DIR",
    "SEGMENT_SUFFIX",
    "FsyncPolicy",
    "Recovery",
    "Wal",
    "WalBusyError",
    "WalError",
    "WalFatalError",
    "WalFullError",
    "WalSettings",
    "inspect_wal",
    "list_segments",
    "read_checkpoint",
    "recover",
    "segment_name",
    "write_checkpoint",
]
