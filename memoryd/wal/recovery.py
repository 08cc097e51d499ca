"""Start-up recovery of the WAL, and ``memoryd wal inspect``'s read-only report.

Recovery always reaches a usable state: a torn tail is truncated, a record
with a bad checksum skipped and counted, bytes it cannot read past moved to
``quarantine/``; gaps in the sequence numbers, or a checkpoint ahead of the
files, are counted as missing data for the alerts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memoryd.ops import Entry
from memoryd.permissions import make_private_dir, open_private
from memoryd.wal.format import (
    CHECKPOINT_NAME,
    QUARANTINE_DIR,
    SegmentScan,
    checkpoint_fields,
    list_segments,
    read_checkpoint,
    scan_segment,
)

logger = logging.getLogger(__name__)


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
    # The log's id from the checkpoint; None: none yet (Wal.open makes one).
    wal_id: str | None = None

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
    # Long on purpose: the counts of damage are kept across segments as one
    # pass goes through them in order, which is easiest to check in one place.
    make_private_dir(wal_dir)
    with contextlib.suppress(FileNotFoundError):
        (wal_dir / (CHECKPOINT_NAME + ".tmp")).unlink()
    checkpoint = checkpoint_fields(wal_dir)
    checkpoint_read, synced_seq = checkpoint.found, checkpoint.synced_seq
    result = Recovery(applied_seq=checkpoint.applied_seq, wal_id=checkpoint.wal_id)
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
