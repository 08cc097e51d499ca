"""The write-ahead log: every write is here before it is acknowledged.

Layout under ``<data_dir>/wal/``:

- segment files ``<first seq, 20 digits>.wal``: an 8-byte magic, then frames;
- ``checkpoint``: the highest sequence number the store has applied, written
  to a temp file, fsynced, renamed and the directory fsynced;
- ``quarantine/``: bytes recovery could not make sense of, kept for an operator.

A frame is ``length u32 | crc32 u32 | seq u64 | payload``, little-endian; the
checksum covers length, seq and payload, so a torn or garbled frame is never
taken for a good one.  Sequence numbers strictly increase without gaps (a
failed write gives its numbers back), so a gap means lost data.

Group commit: appends made during one loop iteration are written together and
covered by one fdatasync, run in a worker thread so the loop keeps accepting
the next group meanwhile.  With ``always`` an append completes only after the
fdatasync that covers it has returned; with ``everysec`` after the write, a
background task syncing once a second; with ``no`` after the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from memoryd.atomicfile import fsync_directory, write_atomically
from memoryd.errors import MemorydError
from memoryd.ops import Entry, Op, OpDecodeError, decode_op, encode_op
from memoryd.permissions import make_private_dir, open_private

logger = logging.getLogger(__name__)

MAGIC = b"MDWAL\x00\x01\n"
FRAME = struct.Struct("<IIQ")
_CRC_PREFIX = struct.Struct("<IQ")
SEGMENT_SUFFIX = ".wal"
CHECKPOINT_NAME = "checkpoint"
QUARANTINE_DIR = "quarantine"
# A frame longer than this is damage, not data: records are bounded far below.
MAX_FRAME_PAYLOAD_BYTES = 256 * 1024 * 1024
# How far past an unreadable point recovery looks for an intact frame, to tell
# a torn tail (nothing intact after it) from damage (good records after it).
LOOKAHEAD_BYTES = 1024 * 1024

FsyncPolicy = Literal["always", "everysec", "no"]


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


def encode_frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(len(payload), seq)))
    return FRAME.pack(len(payload), crc, seq) + payload


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


# --------------------------------------------------------------------- reading


@dataclass(slots=True)
class SegmentScan:
    """What reading one segment found."""

    path: Path
    first_seq: int
    entries: list[Entry] = field(default_factory=list)
    last_seq: int = 0
    valid_bytes: int = 0
    torn_tail_bytes: int = 0
    corrupt_records: int = 0
    quarantined_bytes: int = 0


def _frame_at(data: bytes, offset: int, min_seq: int) -> tuple[int, int, bytes] | None:
    """(seq, end offset, payload) of an intact frame at ``offset``, else None."""
    if len(data) - offset < FRAME.size:
        return None
    length, crc, seq = FRAME.unpack_from(data, offset)
    start = offset + FRAME.size
    if length > MAX_FRAME_PAYLOAD_BYTES or start + length > len(data) or seq < min_seq:
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload, zlib.crc32(_CRC_PREFIX.pack(length, seq))) != crc:
        return None
    return seq, start + length, payload


def _intact_frame_after(data: bytes, offset: int, min_seq: int) -> bool:
    """Whether an intact frame starts somewhere after ``offset`` (looking a bounded way)."""
    last = min(len(data), offset + LOOKAHEAD_BYTES) - FRAME.size
    return any(_frame_at(data, at, min_seq) for at in range(offset + 1, last + 1))


def _end_of_bad_frame(data: bytes, offset: int, min_seq: int) -> int | None:
    """Where a whole frame with a bad checksum ends, if its length can be
    trusted: the intact frame right after it is the next sequence number.
    None otherwise.

    The bad frame held ``min_seq``, so the frame after it must hold
    ``min_seq + 1`` (numbers have no gaps).  Any intact frame would not do: a
    garbled length can land by chance on a later frame boundary, and skipping
    to it would throw away the intact frames in between.
    """
    if len(data) - offset < FRAME.size:
        return None
    length, _, seq = FRAME.unpack_from(data, offset)
    after = offset + FRAME.size + length
    if length > MAX_FRAME_PAYLOAD_BYTES or after >= len(data) or seq < min_seq:
        return None
    following = _frame_at(data, after, min_seq + 1)
    return after if following is not None and following[0] == min_seq + 1 else None


def _read_frames(data: bytes, scan: SegmentScan, after_seq: int) -> None:
    """Fill ``scan`` from a segment's bytes, up to the first point it cannot read past.

    That point is a torn tail when nothing intact follows it (the end of a
    write cut short: zeros, half a frame), else damage to quarantine.  A bad
    frame is skipped only when an intact frame follows it, so a garbled
    length never makes us skip, or cut away, good records.
    """
    offset = len(MAGIC)
    while offset < len(data):
        frame = _frame_at(data, offset, scan.last_seq + 1)
        if frame is not None:
            seq, offset, payload = frame
            scan.last_seq = seq
            scan.valid_bytes = offset
            if seq > after_seq:
                _keep(scan, seq, payload)
            continue
        skip_to = _end_of_bad_frame(data, offset, scan.last_seq + 1)
        if skip_to is not None:
            scan.corrupt_records += 1
            scan.valid_bytes = offset = skip_to
            continue
        if _intact_frame_after(data, offset, scan.last_seq + 1):
            scan.quarantined_bytes = len(data) - offset
        else:
            scan.torn_tail_bytes = len(data) - offset
        return


def _keep(scan: SegmentScan, seq: int, payload: bytes) -> None:
    try:
        scan.entries.append(Entry(seq, decode_op(payload)))
    except OpDecodeError:
        scan.corrupt_records += 1


def scan_segment(path: Path, after_seq: int, *, newest: bool = True) -> SegmentScan:
    """Read one segment, keeping the entries with a sequence number above ``after_seq``.

    Only the newest segment can end in a torn write; in an older one the same
    bytes are damage (it was complete when the next one started).
    """
    first_seq = int(path.name.removesuffix(SEGMENT_SUFFIX))
    scan = SegmentScan(path, first_seq, last_seq=first_seq - 1)
    data = path.read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        if newest and (MAGIC.startswith(data) or not data.strip(b"\0")):
            scan.torn_tail_bytes = len(data)  # created, cut before its header was whole
        else:
            scan.quarantined_bytes = len(data)
        return scan
    scan.valid_bytes = len(MAGIC)
    _read_frames(data, scan, after_seq)
    if scan.torn_tail_bytes and not newest:
        scan.quarantined_bytes, scan.torn_tail_bytes = scan.torn_tail_bytes, 0
    return scan


def list_segments(wal_dir: Path) -> list[Path]:
    segments = []
    for path in wal_dir.glob(f"*{SEGMENT_SUFFIX}"):
        stem = path.name.removesuffix(SEGMENT_SUFFIX)
        if stem.isdigit():
            segments.append(path)
    return sorted(segments, key=lambda p: int(p.name.removesuffix(SEGMENT_SUFFIX)))


def read_checkpoint(wal_dir: Path) -> int:
    """The applied sequence number on disk; 0 when missing or unreadable
    (replaying everything again is safe: every apply is idempotent)."""
    return _checkpoint_fields(wal_dir)[0]


def _checkpoint_fields(wal_dir: Path) -> tuple[int, int, bool]:
    """(applied_seq, synced_seq, whether a checkpoint was read); zeros when none."""
    try:
        data = json.loads((wal_dir / CHECKPOINT_NAME).read_text())
        applied = int(data["applied_seq"])
        synced = int(data.get("synced_seq", 0))
    except FileNotFoundError:
        return 0, 0, False
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        logger.warning("WAL checkpoint unreadable (%s); replaying every segment", exc)
        return 0, 0, False
    return max(applied, 0), max(synced, 0), True


def write_checkpoint(wal_dir: Path, applied_seq: int, synced_seq: int = 0) -> None:
    """Record what the store applied, and how far the log was synced then:
    a later start that finds less on disk knows segments went missing."""
    body = json.dumps(
        {"applied_seq": applied_seq, "synced_seq": synced_seq, "written_at": time.time()}
    )
    write_atomically(wal_dir / CHECKPOINT_NAME, body.encode())


# --------------------------------------------------------------------- inspection


@dataclass(frozen=True, slots=True)
class SegmentReport:
    name: str
    bytes: int
    records: int
    first_seq: int | None
    last_seq: int | None
    unapplied: int
    corrupt_records: int
    torn_tail_bytes: int
    unreadable_bytes: int


def _report(path: Path, applied_seq: int, newest: bool) -> SegmentReport:
    scan = scan_segment(path, 0, newest=newest)
    seqs = [entry.seq for entry in scan.entries]
    return SegmentReport(
        name=path.name,
        bytes=path.stat().st_size,
        records=len(seqs),
        first_seq=seqs[0] if seqs else None,
        last_seq=seqs[-1] if seqs else None,
        unapplied=sum(1 for seq in seqs if seq > applied_seq),
        corrupt_records=scan.corrupt_records,
        torn_tail_bytes=scan.torn_tail_bytes,
        unreadable_bytes=scan.quarantined_bytes,
    )


def inspect_wal(wal_dir: Path) -> dict[str, Any]:
    """What an operator needs to see of a WAL directory; reads, never writes.

    Safe while the daemon runs: the segment being appended to may show a
    torn tail that is only a write in progress.
    """
    applied_seq = read_checkpoint(wal_dir)
    paths = list_segments(wal_dir)
    segments = [_report(path, applied_seq, path == paths[-1]) for path in paths]
    quarantine = wal_dir / QUARANTINE_DIR
    quarantined = sorted(quarantine.iterdir()) if quarantine.is_dir() else []
    return {
        "wal_dir": str(wal_dir),
        "checkpoint": {
            "applied_seq": applied_seq,
            "exists": (wal_dir / CHECKPOINT_NAME).exists(),
            "leftover_temp_file": (wal_dir / (CHECKPOINT_NAME + ".tmp")).exists(),
        },
        "segments": [dataclasses.asdict(segment) for segment in segments],
        "quarantine": [{"name": q.name, "bytes": q.stat().st_size} for q in quarantined],
        "totals": {
            "segments": len(segments),
            "bytes": sum(segment.bytes for segment in segments),
            "records": sum(segment.records for segment in segments),
            "unapplied": sum(segment.unapplied for segment in segments),
            "corrupt_records": sum(segment.corrupt_records for segment in segments),
        },
    }


# --------------------------------------------------------------------- recovery


@dataclass(slots=True)
class Recovery:
    """What start-up found in the WAL directory."""

    applied_seq: int = 0
    last_seq: int = 0
    entries: list[Entry] = field(default_factory=list)
    segments: int = 0
    torn_tail_bytes: int = 0
    corrupt_records: int = 0
    quarantined_segments: int = 0
    # Unapplied sequence numbers no segment holds: a segment went missing.
    missing_records: int = 0
    # The checkpoint claims more than the files ever held: files were removed.
    checkpoint_ahead_by: int = 0
    # Damage in the newest segment could not be moved away (a full disk):
    # appends go to a new segment, never after the damage.
    newest_keeps_damage: bool = False

    @property
    def damaged(self) -> bool:
        """Damage beyond a torn tail, which every crash mid-write leaves."""
        return bool(
            self.corrupt_records
            or self.quarantined_segments
            or self.missing_records
            or self.checkpoint_ahead_by
        )


def _quarantine(wal_dir: Path, scan: SegmentScan) -> bool:
    """Copy the bytes past the last readable frame out of the log; whether the
    copy is safe on disk (only then may the segment be cut back)."""
    quarantine = wal_dir / QUARANTINE_DIR
    data = scan.path.read_bytes()[scan.valid_bytes :]
    target = quarantine / f"{scan.path.name}.{int(time.time())}.{scan.valid_bytes}"
    try:
        make_private_dir(quarantine)
        fd = open_private(target, os.O_WRONLY | os.O_TRUNC)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        # A full disk at start must not stop the daemon: the damage stays where
        # it is, nothing is appended after it, and the next start tries again.
        logger.warning(
            "WAL segment %s: %d unreadable bytes from offset %d could not be moved to %s "
            "(%s); they stay in place until a start can move them",
            scan.path.name,
            len(data),
            scan.valid_bytes,
            quarantine,
            exc.strerror or exc,
        )
        with contextlib.suppress(OSError):
            target.unlink()
        return False
    logger.warning(
        "WAL segment %s: %d unreadable bytes from offset %d moved to %s",
        scan.path.name,
        len(data),
        scan.valid_bytes,
        target,
    )
    return True


def recover(wal_dir: Path) -> Recovery:
    """Scan every segment, repair what can be repaired, return the unapplied entries.

    Never raises for damage: a torn tail is truncated, a bad record skipped
    and counted, unreadable bytes moved to ``quarantine/``.
    """
    make_private_dir(wal_dir)
    with contextlib.suppress(FileNotFoundError):
        (wal_dir / (CHECKPOINT_NAME + ".tmp")).unlink()
    applied_seq, synced_seq, checkpoint_read = _checkpoint_fields(wal_dir)
    result = Recovery(applied_seq=applied_seq)
    result.last_seq = result.applied_seq
    newest_on_disk = 0
    segments = list_segments(wal_dir)
    for path in segments:
        scan = scan_segment(path, result.applied_seq, newest=path == segments[-1])
        # Sequence numbers have no gaps (a failed write gives its numbers
        # back), so a segment starting past the last number seen means lost
        # data; before the first one, only a checkpoint says where to start.
        if checkpoint_read or path != segments[0]:
            result.missing_records += max(0, scan.first_seq - result.last_seq - 1)
        moved = False
        if scan.quarantined_bytes:
            moved = _quarantine(wal_dir, scan)
            result.quarantined_segments += 1
            if not moved and path == segments[-1]:
                result.newest_keeps_damage = True
        if scan.torn_tail_bytes:
            logger.warning(
                "WAL segment %s: torn tail of %d bytes truncated", path.name, scan.torn_tail_bytes
            )
        if moved or scan.torn_tail_bytes:
            os.truncate(path, scan.valid_bytes)
        result.torn_tail_bytes += scan.torn_tail_bytes
        result.corrupt_records += scan.corrupt_records
        result.segments += 1
        result.entries.extend(e for e in scan.entries if e.seq > result.last_seq)
        result.last_seq = max(result.last_seq, scan.last_seq)
        newest_on_disk = max(newest_on_disk, scan.last_seq)
    if result.segments and newest_on_disk < result.applied_seq:
        result.checkpoint_ahead_by = result.applied_seq - newest_on_disk
    # Synced before the checkpoint was written, yet gone: the newest segments
    # were lost (a gap between segments would not show it).
    result.missing_records += max(0, synced_seq - max(newest_on_disk, result.applied_seq))
    if result.corrupt_records:
        logger.warning("WAL: %d damaged records skipped", result.corrupt_records)
    return result


# --------------------------------------------------------------------- writing


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
    since: float = field(default_factory=time.monotonic)


OnDurable = Callable[[Sequence[Entry]], None]


class Wal:
    """Appends operations durably and hands them, in order, to ``on_durable``."""

    def __init__(
        self,
        wal_dir: Path,
        *,
        fsync: FsyncPolicy,
        max_bytes: int,
        segment_bytes: int,
        on_durable: OnDurable,
        min_free_disk_bytes: int = 0,
    ) -> None:
        self.wal_dir = wal_dir
        self.fsync_policy: FsyncPolicy = fsync
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self._free_disk_bytes = 0
        self._free_disk_checked_at = -1.0
        self._on_durable = on_durable
        self._segment: _Segment | None = None
        self._closed_segments: dict[Path, int] = {}  # path -> first seq, oldest first
        self._retired_fds: list[int] = []
        self._next_seq = 1
        self.written_seq = 0
        self.synced_seq = 0
        self.applied_seq = 0
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
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None
        self.recovery = Recovery()
        # Why the WAL could not open a segment at start (None once it has one).
        self.open_error: WalError | None = None
        self._reuse_newest = True

    # ----------------------------------------------------------- lifecycle

    def open(self) -> Recovery:
        """Recover the directory and get ready to append (blocking; call at start)."""
        self.recovery = recover(self.wal_dir)
        self.applied_seq = self.recovery.applied_seq
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
            self.open_error = _write_error(exc)
            logger.warning("WAL: no segment to append to yet (%s)", self.open_error)
        if self.fsync_policy == "everysec":
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
        if self._segment is not None:
            os.close(self._segment.fd)
            self._segment = None
        for fd in self._retired_fds:
            os.close(fd)
        self._retired_fds.clear()

    def abandon(self) -> None:
        """Release the files without writing or syncing anything more (after
        an fdatasync failure, whatever is unsynced stays unacknowledged)."""
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
        if self._segment is not None and self._segment.size >= self.segment_bytes:
            size += len(MAGIC)  # the header of the segment this write will start
        if self.total_bytes + size > self.max_bytes:
            raise WalFullError(
                f"the WAL holds {self.total_bytes} bytes; wal_max_bytes is {self.max_bytes}"
            )
        if self.free_disk_bytes() - size < self.min_free_disk_bytes:
            raise WalFullError(
                f"{self.free_disk_bytes()} bytes free under {self.wal_dir}; "
                f"min_free_disk_bytes is {self.min_free_disk_bytes}"
            )
        seqs = list(range(self._next_seq, self._next_seq + len(ops)))
        self._next_seq += len(ops)
        self._buffer.extend(Entry(seq, op) for seq, op in zip(seqs, ops, strict=True))
        self._frames.extend(frames)
        self._frames_bytes += new_bytes
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(seqs[-1], future))
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
            self._fail_waiters(entries[0].seq, entries[-1].seq, _write_error(exc))
            return
        self.written_seq = entries[-1].seq
        if self.fsync_policy != "always":
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
        if self._segment.size >= self.segment_bytes:
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
        if self.total_bytes >= self.max_bytes:
            return f"the WAL holds {self.total_bytes} bytes; wal_max_bytes is {self.max_bytes}"
        free_bytes = self.free_disk_bytes()
        if free_bytes < self.min_free_disk_bytes + 64 * 1024:
            return (
                f"{free_bytes} bytes free under {self.wal_dir}; "
                f"min_free_disk_bytes is {self.min_free_disk_bytes}"
            )
        return None

    def free_disk_bytes(self) -> int:
        """Free space for the WAL, looked up at most twice a second."""
        now = time.monotonic()
        if now - self._free_disk_checked_at >= 0.5:
            stat = os.statvfs(self.wal_dir)
            self._free_disk_bytes = stat.f_bavail * stat.f_frsize
            self._free_disk_checked_at = now
        return self._free_disk_bytes

    def stalled_for_s(self) -> float:
        """How long the oldest unacknowledged append has waited (0 if none)."""
        if not self._waiters:
            return 0.0
        return time.monotonic() - self._waiters[0].since

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
        if entries and self.fsync_policy == "always":
            self._deliver(entries)
        self._sync_task = None
        if self._awaiting_sync and self.fsync_policy == "always":
            self._start_sync()

    async def _sync_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
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
        self.on_fatal(exc)

    # ----------------------------------------------------------- segments

    def _open_segment(self, first_seq: int) -> None:
        path = self.wal_dir / segment_name(first_seq)
        existing = list_segments(self.wal_dir)
        if self._reuse_newest and existing and existing[-1].stat().st_size < self.segment_bytes:
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
        if self.fsync_policy == "no":
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
        if applied_seq <= self.applied_seq:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None, write_checkpoint, self.wal_dir, applied_seq, self.synced_seq
        )
        self.applied_seq = applied_seq
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
            "fsync": self.fsync_policy,
            "segments": len(self._closed_segments) + (1 if self._segment else 0),
            "bytes": self.total_bytes,
            "max_bytes": self.max_bytes,
            "written_seq": self.written_seq,
            "synced_seq": self.synced_seq,
            "applied_seq": self.applied_seq,
            "corrupt_records": self.recovery.corrupt_records,
            "torn_tail_bytes": self.recovery.torn_tail_bytes,
            "quarantined_segments": self.recovery.quarantined_segments,
            "missing_records": self.recovery.missing_records,
        }


def _fdatasync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fdatasync(fd)


def _write_error(exc: OSError) -> WalError:
    """What a failed write (not an fdatasync) tells the client: always retryable."""
    reason = f"{exc.strerror or exc} (errno {exc.errno})"
    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return WalBusyError(f"the WAL could not open its file: {reason}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WalFullError(f"the WAL's disk is full: {reason}")
    return WalFullError(f"the WAL write failed: {reason}", for_space=False)
