"""The segment files of one WAL directory: the one appended to, the closed
ones behind it, and the bytes they hold.

A segment starts with ``MAGIC`` and is named after the first sequence number
it holds (memoryd.wal.format).  Writes go to the current segment until it
reaches ``segment_bytes``; the next write starts a new one.  A closed segment
is deleted once the checkpoint covers everything in it.  The file descriptor
of a segment closed behind a write stays open until the fdatasync that covers
its last frames (``take_sync_fds``), unless nothing is ever synced.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memoryd.atomicfile import fsync_directory
from memoryd.permissions import open_private
from memoryd.wal.format import MAGIC, SEGMENT_SUFFIX, list_segments, segment_name


@dataclass(slots=True)
class Segment:
    path: Path
    first_seq: int
    fd: int
    size: int


def _first_seq(path: Path) -> int:
    return int(path.name.removesuffix(SEGMENT_SUFFIX))


class Segments:
    def __init__(self, wal_dir: Path, *, segment_bytes: int, synced: bool) -> None:
        self.wal_dir = wal_dir
        self.segment_bytes = segment_bytes
        self._synced = synced  # False: fsync "no", nothing waits for a sync
        self.current: Segment | None = None
        self._closed: dict[Path, int] = {}  # path -> first seq, oldest first
        self._retired_fds: list[int] = []
        self.total_bytes = 0
        # Whether the next open may append to the newest segment on disk;
        # not when recovery left damage in it that an operator should see.
        self._reuse_newest = True

    def __len__(self) -> int:
        return len(self._closed) + (1 if self.current is not None else 0)

    def load(self, *, reuse_newest: bool) -> None:
        """Take stock of the segments on disk (at start, after recovery)."""
        for path in list_segments(self.wal_dir):
            self._closed[path] = _first_seq(path)
            self.total_bytes += path.stat().st_size
        self._reuse_newest = reuse_newest

    def next_write_starts_one(self) -> bool:
        """Whether the next write goes to a new segment (and pays for its header)."""
        return self.current is not None and self.current.size >= self.segment_bytes

    def write(self, data: bytes, first_seq: int) -> None:
        """Append ``data`` (whole frames, the first numbered ``first_seq``) to the
        current segment, starting one first if needed.  On an OSError nothing of
        ``data`` stays in the file."""
        if self.current is None:
            self.open(first_seq)
        assert self.current is not None
        if self.current.size >= self.segment_bytes:
            self._rotate(first_seq)
        segment = self.current
        try:
            written = os.write(segment.fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write to the WAL")
        except OSError:
            # Cut the partial frame off so recovery never sees half a write.
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, segment.size)
                os.lseek(segment.fd, segment.size, os.SEEK_SET)
            raise
        segment.size += len(data)
        self.total_bytes += len(data)

    def open(self, first_seq: int) -> None:
        """Open the segment to append to: the newest on disk if it has room, else a new one."""
        path = self.wal_dir / segment_name(first_seq)
        existing = list_segments(self.wal_dir)
        if self._reuse_newest and existing and existing[-1].stat().st_size < self.segment_bytes:
            # Keep appending to the newest segment rather than starting a file per start.
            path = existing[-1]
            first_seq = _first_seq(path)
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                if os.write(fd, MAGIC) != len(MAGIC):
                    raise OSError(errno.ENOSPC, "short write of a WAL segment header")
                os.fsync(fd)
                fsync_directory(self.wal_dir)
                size = len(MAGIC)
                self.total_bytes += size
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                if os.stat(path).st_size < len(MAGIC):
                    path.unlink()  # a header cut short: recovery would take it for damage
            raise
        self._reuse_newest = True
        self._closed.pop(path, None)
        self.current = Segment(path, first_seq, fd, size)

    def _rotate(self, first_seq: int) -> None:
        """Start the next segment; on failure nothing changes (the write that
        wanted it fails and a later one tries again)."""
        assert self.current is not None
        path = self.wal_dir / segment_name(first_seq)
        fd = open_private(path, os.O_WRONLY | os.O_TRUNC | os.O_APPEND)
        try:
            if os.write(fd, MAGIC) != len(MAGIC):
                raise OSError(errno.ENOSPC, "short write of a WAL segment header")
            fsync_directory(self.wal_dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        old = self.current
        if self._synced:
            self._retired_fds.append(old.fd)  # closed after the sync that covers it
        else:
            os.close(old.fd)
        self._closed[old.path] = old.first_seq
        self.current = Segment(path, first_seq, fd, len(MAGIC))
        self.total_bytes += len(MAGIC)

    @property
    def has_retired(self) -> bool:
        """Whether segments closed behind writes wait for a sync."""
        return bool(self._retired_fds)

    def take_sync_fds(self) -> tuple[list[int], list[int]]:
        """The descriptors a sync must cover now, and those of them (segments
        closed behind writes) the caller closes once it has synced them."""
        retired, self._retired_fds = self._retired_fds, []
        fds = [*retired]
        if self.current is not None:
            fds.append(self.current.fd)
        return fds, retired

    def delete_through(self, applied_seq: int) -> None:
        """Delete the closed segments that hold nothing after ``applied_seq``."""
        for path in list(self._deletable(applied_seq)):
            size = path.stat().st_size
            path.unlink()
            self._closed.pop(path, None)
            self.total_bytes -= size

    def _deletable(self, applied_seq: int) -> Iterator[Path]:
        """Closed segments whose successor starts at or below applied_seq + 1."""
        closed = sorted(self._closed.items(), key=lambda item: item[1])
        starts = [first for _, first in closed]
        if self.current is not None:
            starts.append(self.current.first_seq)
        for (path, _), next_first in zip(closed, starts[1:], strict=False):
            if next_first - 1 <= applied_seq:
                yield path

    def close(self) -> None:
        """Close every descriptor (synced or not: the caller decides before)."""
        if self.current is not None:
            os.close(self.current.fd)
            self.current = None
        for fd in self._retired_fds:
            os.close(fd)
        self._retired_fds.clear()
