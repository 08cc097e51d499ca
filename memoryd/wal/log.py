"""The log a write goes into before it is acknowledged: appends, group commit, checkpoints.

Appends made during one loop iteration are written together and covered by
one fdatasync, run in a worker thread so the loop keeps accepting the next
group meanwhile.  With ``always`` an append completes only after the
fdatasync that covers it has returned; with ``everysec`` after the write, a
background task syncing once a second; with ``no`` after the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from memoryd.atomicfile import fsync_directory
from memoryd.clock import SYSTEM_CLOCK, Clock
from memoryd.config import Settings
from memoryd.ops import Entry, Op, encode_op
from memoryd.permissions import open_private
from memoryd.wal.errors import WalError, WalFatalError, WalFullError, write_error
from memoryd.wal.format import (
    MAGIC,
    SEGMENT_SUFFIX,
    encode_frame,
    list_segments,
    segment_name,
    write_checkpoint,
)
from memoryd.wal.recovery import Recovery, recover

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "everysec", "no"]


@dataclass(slots=True)
class _Segment:
    path: Path
    first_seq: int
    fd: int
    size: int


@dataclass(slots=True)
class _Waiter:
    seq: int
    future: asyncio.Future[None]
    since: float  # the clock's monotonic time of the append


OnDurable = Callable[[Sequence[Entry]], None]


@dataclass(frozen=True, slots=True)
class WalSettings:
    """What the log takes from the settings (``wal_fsync``, ``wal_max_bytes``,
    ``wal_segment_bytes``, ``min_free_disk_bytes``)."""

    fsync: FsyncPolicy
    max_bytes: int
    segment_bytes: int
    min_free_disk_bytes: int = 0

    @classmethod
    def of(cls, settings: Settings) -> WalSettings:
        return cls(
            fsync=settings.wal_fsync,
            max_bytes=settings.wal_max_bytes,
            segment_bytes=settings.wal_segment_bytes,
            min_free_disk_bytes=settings.min_free_disk_bytes,
        )


class Wal:
    """Appends operations durably and hands them, in order, to ``on_durable``."""

    def __init__(
        self,
        wal_dir: Path,
        settings: WalSettings,
        *,
        on_durable: OnDurable,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        # Long on purpose: the log's whole state, set in one place.
        self.wal_dir = wal_dir
        self.settings = settings
        self._clock = clock
        self._free_disk_bytes = 0
        self._free_disk_checked_at = -1.0
        self._on_durable = on_durable
        self._segment: _Segment | None = None
        self._closed_segments: dict[Path, int] = {}  # path -> first seq, oldest first
        self._retired_fds: list[int] = []
        self._next_seq = 1
        self.written_seq = 0
        self.synced_seq = 0
        # The highest seq the checkpoint on disk says the store applied.
        self.checkpointed_seq = 0
        self.total_bytes = 0
        self._buffer: list[Entry] = []
        self._frames: list[bytes] = []
        self._frames_bytes = 0  # sum of len(self._frames), kept so appends stay O(1)
        self._awaiting_sync: list[Entry] = []
        self._waiters: list[_Waiter] = []
        self._flush_scheduled = False
        self._sync_task: asyncio.Task[None] | None = None
        self._everysec_task: asyncio.Task[None] | None = None
        self.fatal_error: BaseException | None = None
        self._fatal_seen = asyncio.Event()
        self.recovery = Recovery()
        # Why the WAL could not open a segment at start (None once it has one).
        self.open_error: WalError | None = None
        self._reuse_newest = True

    # ----------------------------------------------------------- lifecycle

    def reconfigure(self, settings: WalSettings) -> None:
        """New limits (SIGHUP hands the fsync policy and the segment size on unchanged:
        they take a restart)."""
        self.settings = settings

    def open(self) -> Recovery:
        """Recover the directory and get ready to append (blocking; call at start)."""
        self.recovery = recover(self.wal_dir)
        self.checkpointed_seq = self.recovery.applied_seq
        self._next_seq = self.recovery.last_seq + 1
        self.written_seq = self.synced_seq = self.recovery.last_seq
        segments = list_segments(self.wal_dir)
        for path in segments:
            self._closed_segments[path] = int(path.name.removesuffix(SEGMENT_SUFFIX))
            self.total_bytes += path.stat().st_size
        self._reuse_newest = not self.recovery.newest_keeps_damage
        try:
            self._open_segment(self._next_seq)
        except OSError as exc:
            # A full disk must not keep the daemon from starting: reads go on,
            # and the first write that finds room opens the segment.
            self.open_error = write_error(exc)
            logger.warning("WAL: no segment to append to yet (%s)", self.open_error)
        if self.settings.fsync == "everysec":
            self._everysec_task = asyncio.get_running_loop().create_task(self._sync_every_second())
        return self.recovery

    async def close(self) -> None:
        """Write and sync what is buffered, then release the files."""
        if self._buffer and self.fatal_error is None:
            self._flush()
        while self._sync_task is not None:
            await asyncio.shield(self._sync_task)
        if self._everysec_task is not None:
            self._everysec_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._everysec_task
        if self.fatal_error is None and self.written_seq > self.synced_seq:
            # Even under `no`: a clean stop leaves nothing to the page cache.
            self._start_sync()
            assert self._sync_task is not None
            await self._sync_task
        self._close_files()

    def abandon(self) -> None:
        """Release the files without writing or syncing anything more (after
        an fdatasync failure, whatever is unsynced stays unacknowledged)."""
        self._close_files()

    def _close_files(self) -> None:
        if self._segment is not None:
            os.close(self._segment.fd)
            self._segment = None
        for fd in self._retired_fds:
            os.close(fd)
        self._retired_fds.clear()

    # ----------------------------------------------------------- appending

    async def append(self, ops: Sequence[Op]) -> list[int]:
        """Append ``ops`` as consecutive entries; return their sequence numbers
        once they are durable under the fsync policy."""
        if self.fatal_error is not None:
            raise WalFatalError("the WAL stopped after an fsync failure") from self.fatal_error
        payloads = [encode_op(op) for op in ops]
        frames = [encode_frame(self._next_seq + i, p) for i, p in enumerate(payloads)]
        new_bytes = sum(len(f) for f in frames)
        size = new_bytes + self._frames_bytes
        if self._segment is not None and self._segment.size >= self.settings.segment_bytes:
            size += len(MAGIC)  # the header of the segment this write will start
        problem = self._room_problem(size, disk_margin_bytes=0)
        if problem is not None:
            raise WalFullError(problem)
        seqs = list(range(self._next_seq, self._next_seq + len(ops)))
        self._next_seq += len(ops)
        self._buffer.extend(Entry(seq, op) for seq, op in zip(seqs, ops, strict=True))
        self._frames.extend(frames)
        self._frames_bytes += new_bytes
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(seqs[-1], future, self._clock.monotonic()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        await future
        return seqs

    def _flush(self) -> None:
        """Write everything appended during this loop iteration in one go."""
        self._flush_scheduled = False
        if not self._buffer:
            return
        entries, frames = self._buffer, self._frames
        self._buffer, self._frames = [], []
        self._frames_bytes = 0
        try:
            self._write(frames, entries[0].seq)
        except OSError as exc:
            # Nothing of this group is on disk: its numbers are given back, so
            # a gap in the log always means data went missing.
            self._next_seq = entries[0].seq
            self._fail_waiters(entries[0].seq, entries[-1].seq, write_error(exc))
            return
        self.written_seq = entries[-1].seq
        if self.settings.fsync != "always":
            self._deliver(entries)
            return
        self._awaiting_sync.extend(entries)
        if self._sync_task is None:
            self._start_sync()

    def _write(self, frames: list[bytes], first_seq: int) -> None:
        if self._segment is None:
            self._open_segment(first_seq)
            self.open_error = None
        assert self._segment is not None
        if self._segment.size >= self.settings.segment_bytes:
            self._rotate(first_seq)
        segment = self._segment
        data = b"".join(frames)
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

    def has_room(self) -> bool:
        """Whether a small write would pass both bounds now."""
        return self.room_problem() is None

    def room_problem(self) -> str | None:
        """Why a small write would not pass the bounds now, or None."""
        return self._room_problem(1, disk_margin_bytes=64 * 1024)

    def _room_problem(self, size: int, *, disk_margin_bytes: int) -> str | None:
        """Why ``size`` more bytes would not pass the bounds, or None."""
        max_bytes = self.settings.max_bytes
        if self.total_bytes + size > max_bytes:
            return f"the WAL holds {self.total_bytes} bytes; wal_max_bytes is {max_bytes}"
        free_bytes = self.free_disk_bytes()
        if free_bytes - size < self.settings.min_free_disk_bytes + disk_margin_bytes:
            return (
                f"{free_bytes} bytes free under {self.wal_dir}; "
                f"min_free_disk_bytes is {self.settings.min_free_disk_bytes}"
            )
        return None

    def free_disk_bytes(self) -> int:
        """Free space for the WAL, looked up at most twice a second."""
        now = self._clock.monotonic()
        if now - self._free_disk_checked_at >= 0.5:
            stat = os.statvfs(self.wal_dir)
            self._free_disk_bytes = stat.f_bavail * stat.f_frsize
            self._free_disk_checked_at = now
        return self._free_disk_bytes

    def stalled_for_s(self) -> float:
        """How long the oldest unacknowledged append has waited (0 if none)."""
        if not self._waiters:
            return 0.0
        return self._clock.monotonic() - self._waiters[0].since

    def _deliver(self, entries: Sequence[Entry]) -> None:
        """The entries are durable: hand them on, then release their appenders."""
        self._on_durable(entries)
        last = entries[-1].seq
        keep = []
        for waiter in self._waiters:
            if waiter.seq <= last:
                if not waiter.future.done():
                    waiter.future.set_result(None)
            else:
                keep.append(waiter)
        self._waiters = keep

    def _fail_waiters(self, first_seq: int, last_seq: int, exc: BaseException) -> None:
        keep = []
        for waiter in self._waiters:
            if first_seq <= waiter.seq <= last_seq:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
            else:
                keep.append(waiter)
        self._waiters = keep

    # ----------------------------------------------------------- syncing

    def _start_sync(self) -> None:
        """Sync everything written so far: it is all in the files already."""
        entries, self._awaiting_sync = self._awaiting_sync, []
        fds = [*self._retired_fds]
        retired, self._retired_fds = self._retired_fds, []
        if self._segment is not None:
            fds.append(self._segment.fd)
        loop = asyncio.get_running_loop()
        self._sync_task = loop.create_task(self._sync(fds, retired, entries, self.written_seq))

    async def _sync(
        self, fds: list[int], retired: list[int], entries: list[Entry], upto_seq: int
    ) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, _fdatasync_all, fds)
        except OSError as exc:
            self._fatal(exc)
            return
        finally:
            for fd in retired:
                os.close(fd)
        self.synced_seq = max(self.synced_seq, upto_seq)
        if entries and self.settings.fsync == "always":
            self._deliver(entries)
        self._sync_task = None
        if self._awaiting_sync and self.settings.fsync == "always":
            self._start_sync()

    async def _sync_every_second(self) -> None:
        while True:
            await self._clock.sleep(1.0)
            unsynced = self.written_seq > self.synced_seq or self._retired_fds
            if unsynced and self._sync_task is None:
                self._start_sync()

    def _fatal(self, exc: OSError) -> None:
        # A failed fdatasync may have dropped dirty pages; retrying could report
        # success for data that is gone.  Stop and let replay sort it out.
        logger.critical("WAL fdatasync failed (%s); memoryd must stop and replay on restart", exc)
        self.fatal_error = exc
        self._sync_task = None
        error = WalFatalError(f"WAL fdatasync failed: {exc}")
        self._fail_waiters(0, self._next_seq, error)
        self._fatal_seen.set()

    async def wait_fatal(self) -> BaseException:
        """Return once an fdatasync has failed, with its error: the WAL takes no more writes."""
        await self._fatal_seen.wait()
        assert self.fatal_error is not None
        return self.fatal_error

    # ----------------------------------------------------------- segments

    def _open_segment(self, first_seq: int) -> None:
        path = self.wal_dir / segment_name(first_seq)
        existing = list_segments(self.wal_dir)
        if (
            self._reuse_newest
            and existing
            and existing[-1].stat().st_size < self.settings.segment_bytes
        ):
            # Keep appending to the newest segment rather than starting a file per start.
            path = existing[-1]
            first_seq = int(path.name.removesuffix(SEGMENT_SUFFIX))
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
        self._closed_segments.pop(path, None)
        self._segment = _Segment(path, first_seq, fd, size)

    def _rotate(self, first_seq: int) -> None:
        """Start the next segment; on failure nothing changes (the write that
        wanted it fails and a later one tries again)."""
        assert self._segment is not None
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
        old = self._segment
        if self.settings.fsync == "no":
            os.close(old.fd)
        else:
            # Closed only after the sync that covers its last frames.
            self._retired_fds.append(old.fd)
        self._closed_segments[old.path] = old.first_seq
        self._segment = _Segment(path, first_seq, fd, len(MAGIC))
        self.total_bytes += len(MAGIC)

    # ----------------------------------------------------------- checkpoint

    async def checkpoint(self, applied_seq: int) -> None:
        """Record that the store has applied everything up to ``applied_seq``,
        then delete the segments that hold nothing newer."""
        if applied_seq <= self.checkpointed_seq:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, write_checkpoint, self.wal_dir, applied_seq, self.synced_seq
        )
        self.checkpointed_seq = applied_seq
        for path in list(self._deletable_segments(applied_seq)):
            size = path.stat().st_size
            path.unlink()
            self._closed_segments.pop(path, None)
            self.total_bytes -= size

    def _deletable_segments(self, applied_seq: int) -> Iterator[Path]:
        """Closed segments whose successor starts at or below applied_seq + 1."""
        closed = sorted(self._closed_segments.items(), key=lambda item: item[1])
        starts = [first for _, first in closed]
        if self._segment is not None:
            starts.append(self._segment.first_seq)
        for (path, _), next_first in zip(closed, starts[1:], strict=False):
            if next_first - 1 <= applied_seq:
                yield path

    # ----------------------------------------------------------- status

    def describe(self) -> dict[str, object]:
        return {
            "fsync": self.settings.fsync,
            "segments": len(self._closed_segments) + (1 if self._segment else 0),
            "bytes": self.total_bytes,
            "max_bytes": self.settings.max_bytes,
            "written_seq": self.written_seq,
            "synced_seq": self.synced_seq,
            "checkpointed_seq": self.checkpointed_seq,
            "corrupt_records": self.recovery.corrupt_records,
            "torn_tail_bytes": self.recovery.torn_tail_bytes,
            "quarantined_segments": self.recovery.quarantined_segments,
            "missing_records": self.recovery.missing_records,
        }


def _fdatasync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)
