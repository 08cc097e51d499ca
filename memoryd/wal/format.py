"""The WAL's bytes on disk: segment files of frames, and the checkpoint.

A segment ``<first seq, 20 digits>.wal`` is an 8-byte magic, then frames.  A
frame is ``length u32 | crc32 u32 | seq u64 | payload``, little-endian; the
checksum covers length, seq and payload, so a torn or garbled frame is never
taken for a good one.  Sequence numbers strictly increase without gaps (a
failed write gives its numbers back), so a gap means lost data.  The
``checkpoint`` is JSON: the highest sequence number the store has applied and
how far the log was synced then.

These names and this layout are an on-disk contract: a WAL written by an
earlier release must read the same (``tests/test_wal_fixture.py``).
"""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from memoryd.atomicfile import write_atomically
from memoryd.ops import Entry, OpDecodeError, decode_op

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
    return checkpoint_fields(wal_dir).applied_seq


@dataclass(frozen=True, slots=True)
class CheckpointFields:
    """What the checkpoint file says; zeros and None when there is none."""

    applied_seq: int = 0
    synced_seq: int = 0
    found: bool = False
    # The log's id, the source its batches are numbered by in the stores
    # (memoryd.stores.base.Sequenced); None in a checkpoint written before ids.
    wal_id: str | None = None


def checkpoint_fields(wal_dir: Path) -> CheckpointFields:
    try:
        data = json.loads((wal_dir / CHECKPOINT_NAME).read_text())
        applied = int(data["applied_seq"])
        synced = int(data.get("synced_seq", 0))
        wal_id = data.get("wal_id")
    except FileNotFoundError:
        return CheckpointFields()
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        logger.warning("WAL checkpoint unreadable (%s); replaying every segment", exc)
        return CheckpointFields()
    if not isinstance(wal_id, str) or not wal_id:
        wal_id = None
    return CheckpointFields(max(applied, 0), max(synced, 0), True, wal_id)


def write_checkpoint(
    wal_dir: Path, applied_seq: int, synced_seq: int = 0, wal_id: str | None = None
) -> None:
    """Record what the store applied, and how far the log was synced then:
    a later start that finds less on disk knows segments went missing.

    ``wal_id`` lives here because it must go when the numbers start over: a
    log without its checkpoint and segments numbers from 1 again, under a new id.
    """
    fields: dict[str, object] = {
        "applied_seq": applied_seq,
        "synced_seq": synced_seq,
        "written_at": time.time(),
    }
    if wal_id is not None:
        fields["wal_id"] = wal_id
    write_atomically(wal_dir / CHECKPOINT_NAME, json.dumps(fields).encode())
