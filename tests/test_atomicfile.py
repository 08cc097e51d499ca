"""memoryd.atomicfile: the one way memoryd replaces a file (checkpoint, alerts, marker, export)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from memoryd.atomicfile import replaced_whole, write_atomically


def test_a_file_is_replaced_whole_with_exactly_its_mode_whatever_the_umask(
    tmp_path: Path,
) -> None:
    target = tmp_path / "checkpoint"
    target.write_bytes(b"old")
    previous = os.umask(0)
    try:
        write_atomically(target, b"new", mode=0o640)
    finally:
        os.umask(previous)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_planted_temp_link_is_removed_never_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "alerts"
    (tmp_path / "alerts.tmp").symlink_to(victim)
    write_atomically(target, b"memories")
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"memories" and not target.is_symlink()


def test_a_failure_while_writing_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "export.jsonl"
    target.write_bytes(b"old export")
    with pytest.raises(RuntimeError), replaced_whole(target, temp_suffix=".partial") as file:
        file.write(b"half of the new")
        raise RuntimeError("the writer died")
    assert target.read_bytes() == b"old export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.jsonl"]
