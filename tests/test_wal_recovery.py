"""The WAL's crash-safety proof: truncation sweep, codec properties, the
corruption matrix, a damaged WAL under the real daemon, and disk faults.

tests/test_wal.py covers the basics on a single segment; everything here runs
on real multi-segment logs written by ``memoryd.wal.Wal`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memoryd import wal as wal_module
from memoryd.ops import Clear, Delete, Op, Put, Replace, encode_op
from memoryd.records import Record
from memoryd.wal import (
    CHECKPOINT_NAME,
    QUARANTINE_DIR,
    Recovery,
    Wal,
    WalError,
    WalFatalError,
    WalFullError,
    WalSettings,
    list_segments,
    recover,
    segment_name,
    write_checkpoint,
)
from memoryd.wal.format import FRAME, MAGIC, encode_frame
from memoryd_client import Client
from tests.harness import Daemon, tiny_tmpfs

SEGMENT_BYTES = 512
SOURCE_RECORDS = 12  # 3 frames a segment at 512 bytes: 4 segments
ROOT = Path(__file__).resolve().parent.parent


def record(n: int, agent_id: str = "agent_1") -> Record:
    return {
        "id": f"R{n:06d}",
        "agent_id": agent_id,
        "type": "discussion",
        "content": {"text": f"第{n:04d}条记忆: 多智能体", "n": n, "tags": ["α", "β"]},
        "author": None,
        "importance": 0.5,
        "tags": [],
        "metadata": {},
        "created_at": 1_700_000_000.0 + n,
        "expires_at": None,
    }


def op_for(n: int) -> Op:
    """A deterministic mix of operations: mostly puts, some of each other kind."""
    if n % 5 == 4:
        return Replace.of({**record(n - 1), "content": {"text": f"改{n}", "n": n}})
    if n % 7 == 6:
        return Delete("agent_1", f"R{n - 2:06d}")
    if n == 11:
        return Clear("agent_2")
    return Put.of(record(n))


def counters(recovery: Recovery) -> tuple[int, int, int, int]:
    """(torn_tail_bytes, corrupt_records, quarantined_segments, missing_records)."""
    return (
        recovery.torn_tail_bytes,
        recovery.corrupt_records,
        recovery.quarantined_segments,
        recovery.missing_records,
    )


@dataclass(frozen=True)
class Frame:
    segment: str
    start: int
    end: int
    seq: int


def frames_of(wal_dir: Path) -> list[Frame]:
    """Every frame of an undamaged WAL directory, in order."""
    frames = []
    for path in list_segments(wal_dir):
        data = path.read_bytes()
        assert data[: len(MAGIC)] == MAGIC
        offset = len(MAGIC)
        while offset < len(data):
            length, _, seq = FRAME.unpack_from(data, offset)
            end = offset + FRAME.size + length
            frames.append(Frame(path.name, offset, end, seq))
            offset = end
        assert offset == len(data)
    return frames


def new_wal(wal_dir: Path, **overrides: Any) -> Wal:
    settings = WalSettings(fsync="always", max_bytes=64 * 1024 * 1024, segment_bytes=SEGMENT_BYTES)
    on_durable = overrides.pop("on_durable", lambda entries: None)
    return Wal(wal_dir, dataclasses.replace(settings, **overrides), on_durable=on_durable)


async def write_ops(wal_dir: Path, ops: list[Op], **overrides: Any) -> dict[int, Op]:
    """Append each op on its own through a real Wal; the acknowledged ops by seq."""
    wal = new_wal(wal_dir, **overrides)
    wal.open()
    acked: dict[int, Op] = {}
    try:
        for op in ops:
            [seq] = await wal.append([op])
            acked[seq] = op
    finally:
        await wal.close()
    return acked


@dataclass
class Source:
    wal_dir: Path
    ops: dict[int, Op]
    frames: list[Frame]

    @property
    def segments(self) -> list[str]:
        return list(dict.fromkeys(frame.segment for frame in self.frames))

    def in_segment(self, name: str) -> list[Frame]:
        return [frame for frame in self.frames if frame.segment == name]

    def copy(self, target: Path) -> Path:
        shutil.copytree(self.wal_dir, target)
        return target


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    wal_dir = tmp_path_factory.mktemp("source") / "wal"
    ops = asyncio.run(write_ops(wal_dir, [op_for(n) for n in range(1, SOURCE_RECORDS + 1)]))
    frames = frames_of(wal_dir)
    assert [frame.seq for frame in frames] == list(ops) == list(range(1, SOURCE_RECORDS + 1))
    assert len({frame.segment for frame in frames}) >= 4
    return Source(wal_dir, ops, frames)


@pytest.fixture
def fast_dir() -> Iterator[Path]:
    """A scratch directory on tmpfs when there is one: fsync there costs nothing."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = Path(tempfile.mkdtemp(prefix="walrec-", dir=base))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def assert_entries(recovery: Recovery, source: Source, seqs: list[int]) -> None:
    assert [entry.seq for entry in recovery.entries] == seqs
    for entry in recovery.entries:
        assert entry.op == source.ops[entry.seq], entry.seq


async def append_after(wal_dir: Path, expected_seqs: list[int], expected_seq: int) -> None:
    """Redis's "append a new command after loading an incomplete AOF": a new Wal
    on the repaired directory takes a write that the next recovery reads back."""
    wal = new_wal(wal_dir)
    reopened = wal.open()
    assert counters(reopened)[:3] == (0, 0, 0), "the first recovery left damage behind"
    extra = Put.of(record(900))
    try:
        assert await asyncio.wait_for(wal.append([extra]), 10) == [expected_seq]
    finally:
        await wal.close()
    again = recover(wal_dir)
    assert [e.seq for e in again.entries] == [*expected_seqs, expected_seq]
    assert again.entries[-1].op == extra
    assert counters(again)[:3] == (0, 0, 0)


# ------------------------------------------------------------ 1. truncation sweep


async def test_truncating_the_last_segment_at_every_offset(source: Source, fast_dir: Path) -> None:
    last = source.segments[-1]
    earlier = [frame.seq for frame in source.frames if frame.segment != last]
    last_frames = source.in_segment(last)
    size = (source.wal_dir / last).stat().st_size
    wrong: list[str] = []  # every offset is checked; all that fail are reported
    for cut in range(size + 1):
        wal_dir = source.copy(fast_dir / f"cut{cut}")
        os.truncate(wal_dir / last, cut)
        complete = [frame for frame in last_frames if frame.end <= cut]
        good_end = complete[-1].end if complete else (len(MAGIC) if cut >= len(MAGIC) else 0)
        expected = earlier + [frame.seq for frame in complete]

        recovery = recover(wal_dir)

        assert_entries(recovery, source, expected)
        assert (wal_dir / last).stat().st_size == good_end, cut
        # A cut anywhere in the newest segment is a torn tail, never damage: a
        # crash mid-write (even mid-magic, when the segment was just created).
        if counters(recovery) != (cut - good_end, 0, 0, 0) or recovery.damaged:
            wrong.append(f"cut {cut}: counters {counters(recovery)}, want {cut - good_end} torn")
        await append_after(wal_dir, expected, expected[-1] + 1)
        shutil.rmtree(wal_dir)
    assert not wrong, "\n".join(wrong)


async def test_truncating_a_non_last_segment_keeps_the_later_segments(
    source: Source, fast_dir: Path
) -> None:
    rng = random.Random(3)
    for name in source.segments[:-1]:
        frames = source.in_segment(name)
        size = (source.wal_dir / name).stat().st_size
        offsets = {len(MAGIC), size - 1}
        for frame in frames:
            offsets |= {frame.start, frame.start + 1, frame.start + FRAME.size - 1}
            offsets |= {frame.start + FRAME.size, frame.end - 1}
        offsets |= set(rng.sample(range(len(MAGIC), size), 12))
        for cut in sorted(offsets):
            wal_dir = source.copy(fast_dir / f"{name}.{cut}")
            os.truncate(wal_dir / name, cut)
            kept = [frame for frame in frames if frame.end <= cut]
            lost = [frame.seq for frame in frames if frame.end > cut]
            good_end = kept[-1].end if kept else len(MAGIC)
            expected = [frame.seq for frame in source.frames if frame.seq not in lost]

            recovery = recover(wal_dir)

            assert_entries(recovery, source, expected)
            # An older segment was complete when the next one started: a partial
            # frame in it is damage (quarantined, alerted), not a torn write, and
            # the whole frames after the cut are missing records.
            partial = 1 if cut > good_end else 0
            assert counters(recovery) == (0, 0, partial, len(lost)), (name, cut)
            assert recovery.damaged == bool(lost)
            await append_after(wal_dir, expected, SOURCE_RECORDS + 1)
            shutil.rmtree(wal_dir)


# ------------------------------------------------------------ 2. codec properties

_cjk = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=20)
_text = st.text(st.characters(codec="utf-8"), max_size=30) | _cjk
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | _text
    | st.binary(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(_text | st.integers(-100, 100), children, max_size=4)
    ),
    max_leaves=8,
)
_agents = st.sampled_from(["agent_1", "代理人", "a" * 64]) | _text.filter(bool)


@st.composite
def records(draw: st.DrawFn) -> Record:
    return {
        "id": draw(st.text(st.characters(codec="ascii"), min_size=1, max_size=26)),
        "agent_id": draw(_agents),
        "type": draw(st.sampled_from(["discussion", "observation", "决定"])),
        "content": draw(st.dictionaries(_text, _values, max_size=5)),
        "author": draw(st.none() | _text),
        "importance": draw(st.floats(0, 1)),
        "tags": draw(st.lists(_text, max_size=3)),
        "metadata": draw(st.dictionaries(_text, _values, max_size=3)),
        "created_at": draw(st.floats(0, 4e9)),
        "expires_at": draw(st.none() | st.floats(0, 4e9)),
    }


operations = st.one_of(
    records().map(Put.of),
    records().map(Replace.of),
    st.builds(Delete, _agents, _text),
    st.builds(Clear, _agents),
)


def write_segment(wal_dir: Path, ops: list[Op], first_seq: int = 1) -> list[bytes]:
    """One segment holding ``ops`` from ``first_seq`` on; the frames written."""
    wal_dir.mkdir(parents=True, exist_ok=True)
    frames = [encode_frame(first_seq + i, encode_op(op)) for i, op in enumerate(ops)]
    (wal_dir / segment_name(first_seq)).write_bytes(MAGIC + b"".join(frames))
    return frames


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(operations, min_size=1, max_size=4))
def test_any_operation_round_trips_through_a_frame(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory(prefix="walcodec-") as directory:
        write_segment(Path(directory), ops)
        recovery = recover(Path(directory))
    assert [entry.seq for entry in recovery.entries] == list(range(1, len(ops) + 1))
    assert [entry.op for entry in recovery.entries] == ops
    assert counters(recovery) == (0, 0, 0, 0)


def quarantined_bytes(wal_dir: Path) -> bytes:
    quarantine = wal_dir / QUARANTINE_DIR
    if not quarantine.is_dir():
        return b""
    return b"".join(path.read_bytes() for path in sorted(quarantine.iterdir()))


def check_single_flip(
    wal_dir: Path, ops: list[Op], frame_index: int, offset: int, mask: int
) -> None:
    """Flip one byte of one frame and hold recovery to what a checksummed log owes."""
    frames = write_segment(wal_dir, ops)
    path = wal_dir / segment_name(1)
    data = bytearray(path.read_bytes())
    start = len(MAGIC) + sum(len(frame) for frame in frames[:frame_index])
    data[start + offset] ^= mask
    path.write_bytes(bytes(data))
    flipped_seq = frame_index + 1

    recovery = recover(wal_dir)

    seqs = [entry.seq for entry in recovery.entries]
    # Never a changed record: whatever comes back is exactly what was written.
    for entry in recovery.entries:
        assert entry.op == ops[entry.seq - 1], entry.seq
    assert flipped_seq not in seqs, "a damaged frame was returned"
    assert seqs == sorted(set(seqs))
    # The frames before the damage are all there.
    assert seqs[:frame_index] == list(range(1, flipped_seq))
    # The damage is accounted for: skipped and counted, or the log cut there.
    assert recovery.corrupt_records or recovery.torn_tail_bytes or recovery.quarantined_segments
    # Nothing intact is destroyed: every later good frame is either recovered or
    # kept byte for byte in quarantine/ for the operator.
    kept = quarantined_bytes(wal_dir)
    for index in range(frame_index + 1, len(frames)):
        assert index + 1 in seqs or frames[index] in kept, (
            f"frame seq {index + 1} (intact on disk) was neither recovered nor quarantined; "
            f"recovery: {counters(recovery)}"
        )


# Three frames of 22 bytes (payload length 6): flipping 0x1a into the first
# frame's length makes it 28, which lands exactly on the third frame.  Recovery
# took that for the end of one bad frame and dropped the intact second one.
_LENGTH_ONTO_A_LATER_FRAME = [Delete("a", "x"), Delete("a", "y"), Delete("a", "z")]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=st.lists(operations, min_size=2, max_size=5),
    frame=st.integers(0, 4),
    offset=st.integers(0, 2**16),
    mask=st.integers(1, 255),
)
@example(ops=_LENGTH_ONTO_A_LATER_FRAME, frame=0, offset=0, mask=0x1A)
def test_every_single_byte_flip_is_detected(
    ops: list[Op], frame: int, offset: int, mask: int
) -> None:
    """``frame`` and ``offset`` are taken modulo the log drawn, so that a failing case
    can be pinned as an ``@example`` (a value drawn with ``st.data()`` cannot)."""
    frame_index = frame % len(ops)
    offset %= FRAME.size + len(encode_op(ops[frame_index]))
    with tempfile.TemporaryDirectory(prefix="walflip-") as directory:
        check_single_flip(Path(directory), ops, frame_index, offset, mask)


def test_every_byte_of_a_small_log_flipped_in_turn(tmp_path: Path) -> None:
    """The exhaustive version: each byte of each frame of a fixed log, two masks."""
    ops = [op_for(n) for n in (1, 4, 6, 11)]
    sizes = [FRAME.size + len(encode_op(op)) for op in ops]
    wrong: list[str] = []  # every flip is checked; all that fail are reported
    for frame_index, size in enumerate(sizes):
        for offset in range(size):
            for mask in (0x01, 0xFF):
                wal_dir = tmp_path / f"{frame_index}.{offset}.{mask}"
                try:
                    check_single_flip(wal_dir, ops, frame_index, offset, mask)
                except AssertionError as exc:
                    first_line = str(exc).splitlines()[0]
                    wrong.append(f"frame {frame_index} byte {offset} ^{mask:#04x}: {first_line}")
                shutil.rmtree(wal_dir)
    assert not wrong, f"{len(wrong)} flips mishandled:\n" + "\n".join(wrong)


# ------------------------------------------------------------ 3. corruption matrix


def damage(path: Path, edit: Callable[[bytearray], None]) -> None:
    data = bytearray(path.read_bytes())
    edit(data)
    path.write_bytes(bytes(data))


def middle(source: Source) -> tuple[str, Frame]:
    """The middle frame of the second segment (a non-last segment)."""
    name = source.segments[1]
    frames = source.in_segment(name)
    return name, frames[len(frames) // 2]


def seqs_without(source: Source, lost: list[int]) -> list[int]:
    return [frame.seq for frame in source.frames if frame.seq not in lost]


def test_zeroed_length_field(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    name, frame = middle(source)
    damage(wal_dir / name, lambda d: struct.pack_into("<I", d, frame.start, 0))
    rest = [f for f in source.in_segment(name) if f.seq >= frame.seq]

    recovery = recover(wal_dir)

    # The frame boundary is gone: the rest of that segment cannot be resynced
    # and goes to quarantine; the following segments are all recovered.
    assert_entries(recovery, source, seqs_without(source, [f.seq for f in rest]))
    assert recovery.quarantined_segments == 1
    assert recovery.torn_tail_bytes == 0
    assert recovery.missing_records == len(rest)
    # The zero-length header may be counted as a bad record or quarantined with the rest.
    assert recovery.corrupt_records in (0, 1)
    kept = quarantined_bytes(wal_dir)
    original = (source.wal_dir / name).read_bytes()
    for later in rest[1:]:
        assert original[later.start : later.end] in kept


def test_flipped_checksum_in_a_middle_record(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    name, frame = middle(source)
    damage(wal_dir / name, lambda d: d.__setitem__(frame.start + 5, d[frame.start + 5] ^ 0x40))
    before = (wal_dir / name).stat().st_size

    recovery = recover(wal_dir)

    assert_entries(recovery, source, seqs_without(source, [frame.seq]))
    assert counters(recovery) == (0, 1, 0, 0)
    assert recovery.damaged
    assert (wal_dir / name).stat().st_size == before, "a skipped record needs no repair"


def test_garbled_payload(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    name, frame = middle(source)

    def garble(d: bytearray) -> None:
        for i in range(frame.start + FRAME.size + 3, frame.end, 7):
            d[i] = (d[i] * 31 + 7) & 0xFF

    damage(wal_dir / name, garble)

    recovery = recover(wal_dir)

    assert_entries(recovery, source, seqs_without(source, [frame.seq]))
    assert counters(recovery) == (0, 1, 0, 0)


def test_enormous_length_in_a_non_last_segment(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    name, frame = middle(source)
    damage(wal_dir / name, lambda d: struct.pack_into("<I", d, frame.start, 0xFFFFFFF0))
    rest = [f for f in source.in_segment(name) if f.seq >= frame.seq]

    recovery = recover(wal_dir)

    assert_entries(recovery, source, seqs_without(source, [f.seq for f in rest]))
    assert counters(recovery) == (0, 0, 1, len(rest))
    assert (wal_dir / name).stat().st_size == frame.start
    damaged = (source.wal_dir / name).read_bytes()
    damaged = damaged[: frame.start] + struct.pack("<I", 0xFFFFFFF0) + damaged[frame.start + 4 :]
    assert quarantined_bytes(wal_dir) == damaged[frame.start :]


def test_length_enlarged_past_the_end_of_a_non_last_segment(source: Source, tmp_path: Path) -> None:
    """One flipped bit in a length makes a middle frame run past the end of its
    segment.  That is damage, not a torn tail: the intact frames after it must
    not be cut off and thrown away."""
    wal_dir = source.copy(tmp_path / "wal")
    name, frame = middle(source)
    damage(wal_dir / name, lambda d: d.__setitem__(frame.start + 2, d[frame.start + 2] ^ 0x01))
    original = (source.wal_dir / name).read_bytes()
    later = [f for f in source.in_segment(name) if f.seq > frame.seq]
    assert later, "the damaged frame must have a successor in its segment"

    recovery = recover(wal_dir)

    seqs = [entry.seq for entry in recovery.entries]
    assert frame.seq not in seqs
    assert recovery.damaged, "damage mid-segment must raise an alert, not pass as a torn tail"
    kept = quarantined_bytes(wal_dir)
    for f in later:
        assert f.seq in seqs or original[f.start : f.end] in kept, (
            f"intact frame seq {f.seq} destroyed; recovery {counters(recovery)}"
        )


def test_length_garbled_onto_a_later_frame_boundary(source: Source, tmp_path: Path) -> None:
    """A garbled length that happens to end exactly where a later frame starts.

    The frame found there is intact, but it is not the next sequence number:
    skipping to it would drop the intact frame in between as if it were part of
    the bad one.  The bad frame's end cannot be trusted, so the rest of the
    segment goes to quarantine, byte for byte.
    """
    wal_dir = source.copy(tmp_path / "wal")
    name = source.segments[1]
    first, skipped, landing, *_ = source.in_segment(name)
    damage(
        wal_dir / name,
        lambda d: struct.pack_into("<I", d, first.start, landing.start - first.start - FRAME.size),
    )
    rest = [f for f in source.in_segment(name) if f.seq >= first.seq]

    recovery = recover(wal_dir)

    assert_entries(recovery, source, seqs_without(source, [f.seq for f in rest]))
    assert counters(recovery) == (0, 0, 1, len(rest))
    original = (source.wal_dir / name).read_bytes()
    kept = quarantined_bytes(wal_dir)
    assert original[skipped.start : skipped.end] in kept
    assert original[landing.start : landing.end] in kept


@pytest.mark.parametrize("zeros", [5, 64, 4096])
async def test_zero_filled_tail(source: Source, tmp_path: Path, zeros: int) -> None:
    """Zeros after the last frame (a file extended but never written, as after a
    power loss on ext4/xfs) are a torn tail, not damage."""
    wal_dir = source.copy(tmp_path / "wal")
    last = wal_dir / source.segments[-1]
    size = last.stat().st_size
    with last.open("ab") as file:
        file.write(b"\0" * zeros)

    recovery = recover(wal_dir)

    assert_entries(recovery, source, list(source.ops))
    assert counters(recovery) == (zeros, 0, 0, 0)
    assert not recovery.damaged
    assert last.stat().st_size == size
    await append_after(wal_dir, list(source.ops), SOURCE_RECORDS + 1)


async def test_checkpoint_ahead_of_the_data(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    write_checkpoint(wal_dir, SOURCE_RECORDS + 50)

    recovery = recover(wal_dir)

    assert recovery.entries == []
    assert recovery.applied_seq == SOURCE_RECORDS + 50
    assert recovery.checkpoint_ahead_by == 50
    assert counters(recovery) == (0, 0, 0, 0)
    # Sequence numbers keep increasing past the checkpoint: nothing new is
    # mistaken for applied.
    wal = new_wal(wal_dir)
    wal.open()
    try:
        assert await wal.append([Put.of(record(901))]) == [SOURCE_RECORDS + 51]
    finally:
        await wal.close()
    again = recover(wal_dir)
    assert [e.seq for e in again.entries] == [SOURCE_RECORDS + 51]
    assert again.checkpoint_ahead_by == 0


def test_checkpoint_behind_the_data_replays_more(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    write_checkpoint(wal_dir, 4)

    recovery = recover(wal_dir)

    assert_entries(recovery, source, list(range(5, SOURCE_RECORDS + 1)))
    assert counters(recovery) == (0, 0, 0, 0)
    assert recovery.checkpoint_ahead_by == 0
    assert not recovery.damaged


async def test_missing_segment_not_covered_by_the_checkpoint(
    source: Source, tmp_path: Path
) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    write_checkpoint(wal_dir, 1)
    gone = source.segments[1]
    (wal_dir / gone).unlink()
    lost = [frame.seq for frame in source.in_segment(gone)]

    recovery = recover(wal_dir)

    # The later segments are recovered; the gap is counted as missing records.
    assert_entries(recovery, source, [s for s in range(2, SOURCE_RECORDS + 1) if s not in lost])
    assert counters(recovery) == (0, 0, 0, len(lost))
    assert recovery.damaged
    # Appending again works, and the next start still reports the same gap.
    wal = new_wal(wal_dir)
    assert wal.open().missing_records == len(lost)
    try:
        assert await wal.append([Put.of(record(902))]) == [SOURCE_RECORDS + 1]
    finally:
        await wal.close()


def test_leftover_checkpoint_tmp(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    write_checkpoint(wal_dir, 6)
    # A crash between writing the temp file and the rename: it may claim anything.
    (wal_dir / (CHECKPOINT_NAME + ".tmp")).write_text('{"applied_seq": 999')

    recovery = recover(wal_dir)

    assert recovery.applied_seq == 6
    assert_entries(recovery, source, list(range(7, SOURCE_RECORDS + 1)))
    assert counters(recovery) == (0, 0, 0, 0)
    assert not (wal_dir / (CHECKPOINT_NAME + ".tmp")).exists()


def test_segment_with_a_bad_magic(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    name = source.segments[1]
    original = (wal_dir / name).read_bytes()
    damage(wal_dir / name, lambda d: d.__setitem__(0, ord("X")))
    lost = [frame.seq for frame in source.in_segment(name)]

    recovery = recover(wal_dir)

    assert_entries(recovery, source, seqs_without(source, lost))
    assert counters(recovery) == (0, 0, 1, len(lost))
    assert quarantined_bytes(wal_dir) == b"X" + original[1:]


async def test_empty_newest_segment(source: Source, tmp_path: Path) -> None:
    """A crash right after a rotation created the next segment, before its magic
    reached the disk: an empty file, no damage."""
    wal_dir = source.copy(tmp_path / "wal")
    (wal_dir / segment_name(SOURCE_RECORDS + 1)).write_bytes(b"")

    recovery = recover(wal_dir)

    assert_entries(recovery, source, list(source.ops))
    assert counters(recovery) == (0, 0, 0, 0)
    assert not recovery.damaged
    await append_after(wal_dir, list(source.ops), SOURCE_RECORDS + 1)


def test_empty_middle_segment(source: Source, tmp_path: Path) -> None:
    wal_dir = source.copy(tmp_path / "wal")
    name = source.segments[1]
    (wal_dir / name).write_bytes(b"")
    lost = [frame.seq for frame in source.in_segment(name)]

    recovery = recover(wal_dir)

    assert_entries(recovery, source, seqs_without(source, lost))
    assert counters(recovery) == (0, 0, 0, len(lost))


# ------------------------------------------------------------ 3b. the real daemon


def expected_records(ops: list[Op]) -> dict[str, dict[str, Record]]:
    """What a store holds once ``ops`` are applied in order (no expiry, no trim)."""
    state: dict[str, dict[str, Record]] = {}
    for op in ops:
        match op:
            case Put(record=rec):
                state.setdefault(rec["agent_id"], {}).setdefault(rec["id"], rec)
            case Replace(record=rec):
                agent = state.get(rec["agent_id"], {})
                if rec["id"] in agent:
                    agent[rec["id"]] = rec
            case Delete(agent_id=agent_id, record_id=record_id):
                state.get(agent_id, {}).pop(record_id, None)
            case Clear(agent_id=agent_id):
                state.pop(agent_id, None)
    return state


def run_inspect(data_dir: Path, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "memoryd", "wal", "inspect", "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_daemon_starts_on_a_damaged_wal_and_reports_it(source: Source) -> None:
    daemon = Daemon()
    try:
        wal_dir = source.copy(daemon.data_dir / "wal")
        segments = source.segments
        # A bad checksum in the first segment, an unreadable second segment and
        # a torn tail in the last one.
        bad = source.in_segment(segments[0])[1]
        damage(wal_dir / segments[0], lambda d: d.__setitem__(bad.start + 6, d[bad.start + 6] ^ 1))
        damage(wal_dir / segments[1], lambda d: d.__setitem__(3, 0))
        torn = FRAME.size + 5
        with (wal_dir / segments[-1]).open("ab") as file:
            file.write(encode_frame(SOURCE_RECORDS + 1, encode_op(op_for(99)))[:torn])
        lost = [bad.seq] + [f.seq for f in source.in_segment(segments[1])]

        screen = run_inspect(daemon.data_dir)
        assert "1 bad checksum" in screen
        assert f"torn tail {torn}B" in screen
        assert "unreadable" in screen

        daemon.start()
        with Client(daemon.socket_path) as client:
            status = client.status()
            wal = status["wal"]
            assert wal["corrupt_records"] == 1
            assert wal["torn_tail_bytes"] == torn
            assert wal["quarantined_segments"] == 1
            assert wal["missing_records"] == len(lost) - 1
            kinds = {alert["kind"] for alert in status["alerts"]}
            assert {"wal_corrupt_records", "wal_quarantined"} <= kinds
            # What survived was replayed into the store and reads back.
            survivors = [source.ops[s] for s in source.ops if s not in lost]
            want = expected_records(survivors)["agent_1"]
            got = client.recent("agent_1", limit=1000, order="oldest")
            assert {r["id"]: r["content"] for r in got} == {
                rid: rec["content"] for rid, rec in want.items()
            }
            # ... and it takes new writes.
            client.add("agent_1", "discussion", {"text": "之后"})
        after = wal_module.inspect_wal(daemon.data_dir / "wal")  # same report, in-process
        assert len(after["quarantine"]) == 1
        assert after["quarantine"][0]["name"].startswith(segments[1])
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()


# ------------------------------------------------------------ 4. disk faults


async def test_wal_max_bytes_holds_across_rotations(fast_dir: Path) -> None:
    """Filling the WAL to its bound never leaves more than max_bytes on disk,
    whatever the bound's position relative to a segment rotation."""
    for max_bytes in range(2000, 2500, 7):
        wal_dir = fast_dir / str(max_bytes)
        wal = new_wal(wal_dir, fsync="no", max_bytes=max_bytes)
        wal.open()
        with pytest.raises(WalFullError):
            for n in range(1, 1000):
                await wal.append([Put.of(record(n))])
        await wal.close()
        on_disk = sum(path.stat().st_size for path in list_segments(wal_dir))
        assert on_disk <= max_bytes, f"{on_disk} bytes on disk, wal_max_bytes {max_bytes}"


def _wal_fd(fd: int, wal_dir: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(wal_dir))
    except OSError:
        return False


class FaultyWrite:
    """os.write that fails (or writes short) on the n-th write to a WAL file."""

    def __init__(self, wal_dir: Path, fail_at: int, mode: str) -> None:
        self.wal_dir = wal_dir
        self.fail_at = fail_at
        self.mode = mode
        self.calls = 0
        self.fired = False
        self._real = os.write

    def __call__(self, fd: int, data: bytes) -> int:
        if not _wal_fd(fd, self.wal_dir):
            return self._real(fd, data)
        self.calls += 1
        if self.calls != self.fail_at:
            return self._real(fd, data)
        self.fired = True
        if self.mode == "short":
            return self._real(fd, bytes(data)[: max(1, len(data) // 2)])
        code = errno.ENOSPC if self.mode == "enospc" else errno.EIO
        raise OSError(code, os.strerror(code))


@pytest.mark.parametrize(
    ("where", "mode", "error"),
    [
        ("data", "enospc", WalFullError),
        ("data", "eio", WalError),
        ("data", "short", WalFullError),
        # The failing write is the magic of the segment a rotation starts.
        ("rotation", "enospc", WalFullError),
        ("rotation", "eio", WalError),
    ],
)
async def test_write_fault_acknowledges_nothing_and_truncates_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, error: type[Exception], where: str
) -> None:
    wal_dir = tmp_path / "wal"
    wal = new_wal(wal_dir)
    wal.open()
    acked: list[int] = []
    try:
        for n in range(1, 3):  # two frames, still inside the first segment
            acked += await wal.append([Put.of(record(n))])
        assert wal.segments.current is not None
        size_before = wal.segments.current.size
        segment = wal.segments.current.path
        if where == "rotation":
            # Fill the segment so that the next write starts a new one: the
            # failing write is then the new segment's magic.
            acked += await wal.append([Put.of(record(3))])
            assert wal.segments.current.size >= SEGMENT_BYTES
        faulty = FaultyWrite(wal_dir, 1, mode)
        monkeypatch.setattr(os, "write", faulty)
        with pytest.raises(error):
            await asyncio.wait_for(wal.append([Put.of(record(50)), Put.of(record(51))]), 3)
        assert faulty.fired
        monkeypatch.undo()
        if where == "data":
            assert segment.stat().st_size == size_before, "the partial frame was not cut off"
            assert wal.segments.current.size == size_before
        # The WAL goes on: later writes are taken, acknowledged, and numbered
        # right after the last good one (the failed group's numbers are given back).
        for n in range(4, 7):
            [seq] = await asyncio.wait_for(wal.append([Put.of(record(n))]), 3)
            assert seq == acked[-1] + 1
            acked.append(seq)
    except BaseException:
        monkeypatch.undo()
        with contextlib.suppress(Exception):  # the first failure is the one to see
            await asyncio.wait_for(wal.close(), 3)
        raise
    await asyncio.wait_for(wal.close(), 3)
    recovery = recover(wal_dir)
    assert [e.seq for e in recovery.entries] == acked
    assert counters(recovery) == (0, 0, 0, 0)


async def test_fdatasync_failure_is_fatal_and_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal_dir = tmp_path / "wal"
    wal = new_wal(wal_dir)
    wal.open()
    acked: list[int] = []
    for n in range(1, 6):  # across a rotation
        acked += await wal.append([Put.of(record(n))])

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(WalFatalError):
        await asyncio.wait_for(wal.append([Put.of(record(6))]), 10)
    fatal = await asyncio.wait_for(wal.wait_fatal(), 1)
    assert isinstance(fatal, OSError) and fatal.errno == errno.EIO
    monkeypatch.undo()
    # A failed fsync is never retried: every later write is refused.
    with pytest.raises(WalFatalError):
        await asyncio.wait_for(wal.append([Put.of(record(7))]), 10)
    await asyncio.wait_for(wal.close(), 10)

    recovery = recover(wal_dir)
    seqs = [e.seq for e in recovery.entries]
    # Every acknowledged record is there; the failed one may or may not be.
    assert seqs[: len(acked)] == acked
    assert seqs in (acked, [*acked, acked[-1] + 1])
    assert counters(recovery) == (0, 0, 0, 0)


_FSIZE_CHILD = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys
    from pathlib import Path
    from memoryd.ops import Put
    from memoryd.wal import Wal, WalError, WalSettings
    from tests.test_wal_recovery import record

    limit = int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    async def main():
        wal = Wal(Path(sys.argv[1]), WalSettings("always", 1 << 30, 1 << 30),
                  on_durable=lambda entries: None)
        wal.open()
        acked = []
        error = None
        for n in range(1, 100_000):
            try:
                acked += await wal.append([Put.of(record(n))])
            except WalError as exc:
                error = exc
                break
        await wal.close()
        print(json.dumps({"acked": acked, "error": type(error).__name__,
                          "message": str(error)}))

    asyncio.run(main())
    """
)


def test_file_size_limit_fails_with_wal_full_and_recovers_cleanly(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    frame = len(encode_frame(1, encode_op(Put.of(record(1)))))
    assert frame == len(encode_frame(99, encode_op(Put.of(record(99)))))
    # The limit falls on a frame boundary, so the next write gets EFBIG outright.
    limit = len(MAGIC) + 20 * frame
    result = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, str(wal_dir), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["error"] == "WalFullError", outcome
    assert os.strerror(errno.EFBIG) in outcome["message"]
    assert outcome["acked"] == list(range(1, 21))
    recovery = recover(wal_dir)
    assert [e.seq for e in recovery.entries] == outcome["acked"]
    assert counters(recovery) == (0, 0, 0, 0)
    assert sum(p.stat().st_size for p in list_segments(wal_dir)) == limit


async def test_a_full_tmpfs_gives_wal_full_then_recovers_cleanly(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    with tiny_tmpfs(tmp_path / "mnt", "256k") as mount:
        wal_dir = mount / "wal"
        # One big segment: the disk fills on a data write, never mid-rotation.
        wal = new_wal(wal_dir, segment_bytes=1 << 30)
        wal.open()
        acked: list[int] = []
        try:
            with pytest.raises(WalFullError):
                for n in range(1, 100_000):
                    acked += await asyncio.wait_for(wal.append([Put.of(record(n))]), 10)
        finally:
            await wal.close()
        assert len(acked) > 100
        recovery = recover(wal_dir)
        assert [e.seq for e in recovery.entries] == acked
        assert counters(recovery) == (0, 0, 0, 0)
        # Still full after a restart: refused again, cleanly, nothing torn.
        reopened = new_wal(wal_dir, segment_bytes=1 << 30)
        reopened.open()
        try:
            with pytest.raises(WalFullError):
                await asyncio.wait_for(reopened.append([Put.of(record(1))]), 10)
        finally:
            await reopened.close()
        assert [e.seq for e in recover(wal_dir).entries] == acked
