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
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from memoryd.clock import SYSTEM_CLOCK, Clock
from memoryd.config import Settings
from memoryd.ops import Entry, Op, encode_op
from memoryd.wal.errors import WalError, WalFatalError, WalFullError, write_error
from memoryd.wal.format import (
    MAGIC,
    SEGMENT_SUFFIX,
    encode_frame,
    list_segments,
    scan_segment,
    write_checkpoint,
)
from memoryd.wal.recovery import Recovery, recover
from memoryd.wal.segments import Segments
from memoryd_client.ids import new_id

logger = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "everysec", "no"]


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
        self.segments = Segments(
            wal_dir, segment_bytes=settings.segment_bytes, synced=settings.fsync != "no"
        )
        self._next_seq = 1
        self.written_seq = 0
        self.synced_seq = 0
        # The highest seq the checkpoint on disk says the store applied.
        self.checkpointed_seq = 0
        # What the stores know this log's numbers by (Sequenced); set by open().
        self.wal_id = ""
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
        self._take_id()
        self.segments.load(reuse_newest=not self.recovery.newest_keeps_damage)
        try:
            self.segments.open(self._next_seq)
        except OSError as exc:
            # A full disk must not keep the daemon from starting: reads go on,
            # and the first write that finds room opens the segment.
            self.open_error = write_error(exc)
            logger.warning("WAL: no segment to append to yet (%s)", self.open_error)
        if self.settings.fsync == "everysec":
            self._everysec_task = asyncio.get_running_loop().create_task(self._sync_every_second())
        return self.recovery

    def _take_id(self) -> None:
        """The id from the checkpoint, or a new one written into it at once, so
        that a restart numbers its replay under the same id as the first apply."""
        if self.recovery.wal_id is not None:
            self.wal_id = self.recovery.wal_id
            return
        self._write_new_id()

    def renew_id(self) -> None:
        """Number what is applied from now on under a new id, written into the
        checkpoint at once (blocking).

        Before writes the store lost are applied again: the store may already
        hold writes applied after it lost the rest, whose numbers under the
        old id are higher, and would have the store skip the ones put back.
        """
        self._write_new_id()

    def _write_new_id(self) -> None:
        self.wal_id = new_id()
        try:
            write_checkpoint(self.wal_dir, self.checkpointed_seq, self.synced_seq, self.wal_id)
        except OSError as exc:
            # A full disk: the next checkpoint writes it.  Until then a replay
            # after a crash is numbered under the id the checkpoint holds.
            logger.warning("WAL: could not write its id into the checkpoint yet (%s)", exc)

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
        self.segments.close()

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
        if self.segments.next_write_starts_one():
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
        if self.segments.current is None:
            self.segments.open(first_seq)
            self.open_error = None
        self.segments.write(b"".join(frames), first_seq)

    def has_room(self) -> bool:
        """Whether a small write would pass both bounds now."""
        return self.room_problem() is None

    def room_problem(self) -> str | None:
        """Why a small write would not pass the bounds now, or None."""
        return self._room_problem(1, disk_margin_bytes=64 * 1024)

    def _room_problem(self, size: int, *, disk_margin_bytes: int) -> str | None:
        """Why ``size`` more bytes would not pass the bounds, or None."""
        max_bytes = self.settings.max_bytes
        held_bytes = self.segments.total_bytes
        if held_bytes + size > max_bytes:
            return f"the WAL holds {held_bytes} bytes; wal_max_bytes is {max_bytes}"
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
        fds, retired = self.segments.take_sync_fds()
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
            unsynced = self.written_seq > self.synced_seq or self.segments.has_retired
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

    def read_back(self, first_seq: int, last_seq: int) -> list[Entry]:
        """The entries numbered ``first_seq`` to ``last_seq`` from the files
        (blocking: run it in a thread).  The checkpoint stays behind everything
        the store has not confirmed, so their segments are all still here."""
        found: list[Entry] = []
        segments = list_segments(self.wal_dir)
        starts = [int(path.name.removesuffix(SEGMENT_SUFFIX)) for path in segments]
        for index, path in enumerate(segments):
            next_start = starts[index + 1] if index + 1 < len(starts) else None
            if starts[index] > last_seq or (next_start is not None and next_start <= first_seq):
                continue
            scan = scan_segment(path, first_seq - 1, newest=next_start is None)
            found.extend(entry for entry in scan.entries if entry.seq <= last_seq)
        return found

    # ----------------------------------------------------------- checkpoint

    async def checkpoint(self, applied_seq: int) -> None:
        """Record that the store has applied everything up to ``applied_seq``,
        then delete the segments that hold nothing newer."""
        if applied_seq <= self.checkpointed_seq:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, write_checkpoint, self.wal_dir, applied_seq, self.synced_seq, self.wal_id
        )
        self.checkpointed_seq = applied_seq
        self.segments.delete_through(applied_seq)

    # ----------------------------------------------------------- status

    def describe(self) -> dict[str, object]:
        return {
            "fsync": self.settings.fsync,
            "segments": len(self.segments),
            "bytes": self.segments.total_bytes,
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
