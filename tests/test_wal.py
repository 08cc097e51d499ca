"""The WAL on its own: framing, group commit, rotation, checkpoint, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from memoryd import wal as wal_module
from memoryd.clock import SYSTEM_CLOCK, Clock
from memoryd.ops import Clear, Delete, Entry, Put, encode_op
from memoryd.records import Record
from memoryd.wal import (
    Wal,
    WalFullError,
    WalSettings,
    list_segments,
    read_checkpoint,
    recover,
)
from memoryd.wal.format import MAGIC, encode_frame
from tests.fakeclock import FakeClock


def record(n: int, agent_id: str = "agent_1") -> Record:
    return {
        "id": f"R{n:06d}",
        "agent_id": agent_id,
        "type": "discussion",
        "content": {"text": f"第{n}条记忆", "n": n},
        "author": None,
        "importance": 0.5,
        "tags": [],
        "metadata": {},
        "created_at": 1_700_000_000.0 + n,
        "expires_at": None,
    }


class Collected:
    """What the WAL hands on as durable, in order."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def __call__(self, entries: Sequence[Entry]) -> None:
        self.entries.extend(entries)


def make_wal(
    directory: Path, *, clock: Clock = SYSTEM_CLOCK, **overrides: Any
) -> tuple[Wal, Collected]:
    collected = Collected()
    settings = dataclasses.replace(
        WalSettings(fsync="always", max_bytes=64 << 20, segment_bytes=1 << 20), **overrides
    )
    return Wal(directory, settings, on_durable=collected, clock=clock), collected


async def test_append_assigns_increasing_seqs_and_hands_on_in_order(tmp_path: Path) -> None:
    wal, collected = make_wal(tmp_path)
    wal.open()
    first = await wal.append([Put.of(record(1))])
    rest = await wal.append([Put.of(record(2)), Delete("agent_1", "R000001"), Clear("agent_1")])
    await wal.close()
    assert first == [1]
    assert rest == [2, 3, 4]
    assert [e.seq for e in collected.entries] == [1, 2, 3, 4]
    assert isinstance(collected.entries[3].op, Clear)


async def test_reopen_recovers_every_unapplied_entry(tmp_path: Path) -> None:
    wal, _ = make_wal(tmp_path)
    wal.open()
    for n in range(1, 51):
        await wal.append([Put.of(record(n))])
    await wal.close()

    reopened, _ = make_wal(tmp_path)
    recovery = reopened.open()
    assert [e.seq for e in recovery.entries] == list(range(1, 51))
    assert [e.op.record["id"] for e in recovery.entries] == [  # type: ignore[union-attr]
        f"R{n:06d}" for n in range(1, 51)
    ]
    assert await reopened.append([Put.of(record(51))]) == [51]
    await reopened.close()


async def test_group_commit_shares_one_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends made in one loop iteration are covered by one fdatasync."""

    calls: list[int] = []
    real = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)
    wal, collected = make_wal(tmp_path)
    wal.open()
    await asyncio.gather(*(wal.append([Put.of(record(n))]) for n in range(1, 101)))
    assert len(collected.entries) == 100
    assert 1 <= len(calls) <= 2  # one group, plus possibly one started before the rest arrived
    await wal.close()


async def test_always_acknowledges_only_after_the_covering_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    release = threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        release.wait(5)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    wal, collected = make_wal(tmp_path)
    wal.open()
    pending = asyncio.ensure_future(wal.append([Put.of(record(1))]))
    await asyncio.sleep(0.1)
    assert not pending.done(), "acknowledged before its fdatasync returned"
    assert collected.entries == []
    release.set()
    assert await pending == [1]
    await wal.close()


async def test_everysec_acknowledges_before_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    synced: list[int] = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    clock = FakeClock()
    wal, _ = make_wal(tmp_path, fsync="everysec", clock=clock)
    wal.open()
    assert await wal.append([Put.of(record(1))]) == [1]
    await clock.advance(0.99)
    assert synced == [] and wal.synced_seq == 0, "acknowledged, not yet synced"
    await clock.advance(0.01)
    for _ in range(500):  # the fdatasync runs in a worker thread
        if wal.synced_seq:
            break
        await asyncio.sleep(0.01)
    assert synced and wal.synced_seq == 1, "synced once a second of the clock passed"
    await wal.close()


async def test_wal_max_bytes_refuses_writes_and_keeps_what_it_has(tmp_path: Path) -> None:
    wal, collected = make_wal(tmp_path, max_bytes=4096, fsync="no")
    wal.open()
    with pytest.raises(WalFullError):
        for n in range(1, 1000):
            await wal.append([Put.of(record(n))])
    accepted = len(collected.entries)
    assert accepted > 0
    await wal.close()
    reopened, _ = make_wal(tmp_path, max_bytes=4096)
    assert len(reopened.open().entries) == accepted
    await reopened.close()


async def test_rotation_and_checkpoint_delete_applied_segments(tmp_path: Path) -> None:
    wal, _ = make_wal(tmp_path, segment_bytes=4096, fsync="no")
    wal.open()
    for n in range(1, 201):
        await wal.append([Put.of(record(n))])
    segments = list_segments(tmp_path)
    assert len(segments) > 3
    await wal.checkpoint(150)
    assert read_checkpoint(tmp_path) == 150
    remaining = list_segments(tmp_path)
    assert len(remaining) < len(segments)
    await wal.close()
    # Everything above the checkpoint is still there, nothing at or below it is replayed.
    reopened, _ = make_wal(tmp_path, segment_bytes=4096)
    seqs = [e.seq for e in reopened.open().entries]
    assert seqs == list(range(151, 201))
    await reopened.close()


def write_log(directory: Path, count: int) -> list[int]:
    """A single-segment log of ``count`` frames; the frame end offsets."""
    directory.mkdir(parents=True, exist_ok=True)
    data = bytearray(MAGIC)
    ends = []
    for n in range(1, count + 1):
        data += encode_frame(n, encode_op(Put.of(record(n))))
        ends.append(len(data))
    (directory / wal_module.segment_name(1)).write_bytes(bytes(data))
    return ends


def test_truncation_at_every_offset_recovers_exactly_the_prefix(tmp_path: Path) -> None:
    source = tmp_path / "source"
    ends = write_log(source, 4)
    full = (source / wal_module.segment_name(1)).read_bytes()
    for cut in range(len(MAGIC), len(full) + 1):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / wal_module.segment_name(1)).write_bytes(full[:cut])
        recovery = recover(directory)
        expected = sum(1 for end in ends if end <= cut)
        assert [e.seq for e in recovery.entries] == list(range(1, expected + 1)), cut
        # The torn tail is gone from the file, so an append lands after good data.
        assert (directory / wal_module.segment_name(1)).stat().st_size == (
            ends[expected - 1] if expected else len(MAGIC)
        )


def test_bad_checksum_in_a_middle_record_is_skipped_and_counted(tmp_path: Path) -> None:
    ends = write_log(tmp_path, 5)
    path = tmp_path / wal_module.segment_name(1)
    data = bytearray(path.read_bytes())
    data[ends[1] + 5] ^= 0xFF  # inside the crc of frame 3
    path.write_bytes(bytes(data))
    recovery = recover(tmp_path)
    assert [e.seq for e in recovery.entries] == [1, 2, 4, 5]
    assert recovery.corrupt_records == 1


def test_enormous_length_quarantines_the_rest(tmp_path: Path) -> None:
    ends = write_log(tmp_path, 5)
    path = tmp_path / wal_module.segment_name(1)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, ends[2], 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    recovery = recover(tmp_path)
    assert [e.seq for e in recovery.entries] == [1, 2, 3]
    assert recovery.quarantined_segments == 1
    assert list((tmp_path / wal_module.QUARANTINE_DIR).iterdir())
    assert path.stat().st_size == ends[2]


def test_unreadable_checkpoint_replays_everything(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    (tmp_path / wal_module.CHECKPOINT_NAME).write_text("{not json")
    (tmp_path / (wal_module.CHECKPOINT_NAME + ".tmp")).write_text("leftover")
    recovery = recover(tmp_path)
    assert [e.seq for e in recovery.entries] == [1, 2, 3]
    assert not (tmp_path / (wal_module.CHECKPOINT_NAME + ".tmp")).exists()


async def test_checkpoint_ahead_of_the_data_keeps_seqs_increasing(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    wal_module.write_checkpoint(tmp_path, 10)
    wal, _ = make_wal(tmp_path)
    assert wal.open().entries == []
    assert await wal.append([Put.of(record(4))]) == [11]
    await wal.close()


async def test_checkpoint_with_a_single_segment_deletes_nothing(tmp_path: Path) -> None:
    wal, _ = make_wal(tmp_path)
    wal.open()
    await wal.append([Put.of(record(1)), Put.of(record(2))])
    await wal.checkpoint(2)
    assert read_checkpoint(tmp_path) == 2
    assert len(list_segments(tmp_path)) == 1
    await wal.close()


def test_inspect_reports_segments_checkpoint_and_damage_without_changing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from memoryd.cli import main

    wal_dir = tmp_path / "wal"
    ends = write_log(wal_dir, 5)
    path = wal_dir / wal_module.segment_name(1)
    data = bytearray(path.read_bytes())
    data[ends[1] + 5] ^= 0xFF  # bad checksum in record 3
    data += b"\x10\x00"  # a torn tail
    path.write_bytes(bytes(data))
    wal_module.write_checkpoint(wal_dir, 2)
    before = path.read_bytes()

    report = wal_module.inspect_wal(wal_dir)

    assert path.read_bytes() == before, "inspect must never repair"
    assert report["checkpoint"]["applied_seq"] == 2
    [segment] = report["segments"]
    assert (segment["records"], segment["first_seq"], segment["last_seq"]) == (4, 1, 5)
    assert segment["unapplied"] == 2
    assert segment["corrupt_records"] == 1
    assert segment["torn_tail_bytes"] == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["wal", "inspect", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 0
    screen = capsys.readouterr().out
    assert "applied_seq 2" in screen
    assert "1 bad checksum, torn tail 2B" in screen


async def test_free_disk_watermark_refuses_writes(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    wal, collected = make_wal(tmp_path, min_free_disk_bytes=free + 1024**3)
    wal.open()
    with pytest.raises(WalFullError, match="min_free_disk_bytes"):
        await wal.append([Put.of(record(1))])
    assert collected.entries == []
    await wal.close()
    reopened, _ = make_wal(tmp_path)
    assert reopened.open().entries == []
    await reopened.close()


async def test_losing_the_newest_segment_is_counted_as_missing(tmp_path: Path) -> None:
    wal, _ = make_wal(tmp_path, segment_bytes=4096, fsync="always")
    wal.open()
    for n in range(1, 101):
        await wal.append([Put.of(record(n))])
    await wal.checkpoint(10)  # also records how far the log was synced: 100
    await wal.close()
    before = len(recover(tmp_path).entries)
    list_segments(tmp_path)[-1].unlink()
    recovery = recover(tmp_path)
    assert recovery.missing_records == before - len(recovery.entries) > 0
    assert recovery.damaged


async def test_close_syncs_even_under_fsync_no(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    wal, _ = make_wal(tmp_path, fsync="no")
    wal.open()
    await wal.append([Put.of(record(1))])
    assert synced == []
    await wal.close()
    assert synced, "a clean close must leave nothing only in the page cache"
