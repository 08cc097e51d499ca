"""With wal_fsync = always, no acknowledgement is seen before the fdatasync
that covers it has returned; an fdatasync error stops the daemon, and a
restart replays every acknowledged write."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from memoryd import wal as wal_module
from memoryd.errors import FatalError
from memoryd.ops import Put, decode_op
from memoryd.wal import format as wal_format
from memoryd_client import AsyncClient, Client, errors
from tests.harness import short_tempdir, wait_until
from tests.inprocess import embedded_server


class SyncLog:
    """Every fdatasync: how far the file was written when it started, and
    when it returned (time.monotonic(), the clock the test also reads)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.completed: list[tuple[float, int]] = []
        self.real = os.fdatasync

    def __call__(self, fd: int) -> None:
        covered = os.fstat(fd).st_size
        time.sleep(self.delay_s)
        self.real(fd)
        with self.lock:
            self.completed.append((time.monotonic(), covered))

    def covered_at(self, moment: float) -> int:
        with self.lock:
            return max((size for at, size in self.completed if at <= moment), default=0)


def frame_ends(wal_dir: Path) -> dict[str, int]:
    """Record id -> offset just past its frame, for a single-segment WAL."""
    [segment] = wal_module.list_segments(wal_dir)
    data = segment.read_bytes()
    offset, ends = len(wal_format.MAGIC), {}
    while offset + wal_format.FRAME.size <= len(data):
        length, _, _ = wal_format.FRAME.unpack_from(data, offset)
        payload = data[offset + wal_format.FRAME.size : offset + wal_format.FRAME.size + length]
        offset += wal_format.FRAME.size + length
        op = decode_op(payload)
        if isinstance(op, Put):
            ends[op.record["id"]] = offset
    return ends


@pytest.mark.parametrize("delay_s", [0.0, 0.003, 0.02])
def test_no_ack_before_its_fdatasync_returns(
    monkeypatch: pytest.MonkeyPatch, delay_s: float
) -> None:
    syncs = SyncLog(delay_s)
    monkeypatch.setattr(os, "fdatasync", syncs)
    acked_at: dict[str, float] = {}

    async def pipeline(socket_path: Path) -> None:
        async with AsyncClient(socket_path) as client:

            async def one(n: int) -> None:
                result = await client.add("barrier", "note", {"n": n, "pad": "x" * (n % 7) * 50})
                acked_at[result["id"]] = time.monotonic()

            await asyncio.gather(*(one(n) for n in range(300)))

    with embedded_server(wal_fsync="always", backend="local") as daemon:
        asyncio.run(pipeline(daemon.socket_path))
        ends = frame_ends(daemon.server.parts.settings.data_dir / "wal")
    assert len(acked_at) == 300
    assert len(syncs.completed) < 300, "group commit should share fdatasyncs"
    early = [i for i, at in acked_at.items() if syncs.covered_at(at) < ends[i]]
    assert early == [], f"{len(early)} acknowledged before an fdatasync covered them"


def test_an_fdatasync_error_is_fatal_and_replay_keeps_every_ack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"n": 0}
    real = os.fdatasync

    def failing_fdatasync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 40:
            raise OSError(errno.EIO, "injected EIO")
        real(fd)

    directory = short_tempdir("mdf-")
    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    acked: list[str] = []
    refused = 0
    with embedded_server(directory, wal_fsync="always", backend="local") as daemon:
        with Client(daemon.socket_path, retry=False, timeout_s=5) as client:
            for n in range(100):
                try:
                    acked.append(client.add("fatal", "note", n)["id"])
                except (errors.MemorydError, OSError):
                    refused += 1
                    if daemon.server.fatal_error is not None:
                        break
        wait_until(lambda: not daemon.thread.is_alive(), 30, "the daemon to stop itself")
    assert refused >= 1
    assert daemon.errors and isinstance(daemon.errors[0], FatalError)
    assert "fdatasync" in str(daemon.errors[0])
    assert 30 <= len(acked) < 100

    monkeypatch.setattr(os, "fdatasync", real)
    with (
        embedded_server(directory, wal_fsync="always", backend="local") as daemon,
        Client(daemon.socket_path) as client,
    ):
        stored = {r["id"] for r in client.recent("fatal", limit=1000)}
        assert set(acked) <= stored
        assert client.add("fatal", "note", "after")["id"]
