"""Damage that must not pass silently: a Redis that lost its data, a damaged WAL."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from memoryd import wal as wal_module
from memoryd.ops import Put
from memoryd.wal import segment_name
from memoryd_client import Client
from tests.harness import Daemon, RedisServer, wait_until
from tests.test_wal import make_wal, record


def status_exit(daemon: Daemon) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "memoryd", "status", "--socket", str(daemon.socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, result.stdout


def alert_kinds(daemon: Daemon) -> list[str]:
    with Client(daemon.socket_path) as client:
        return [alert["kind"] for alert in client.status()["alerts"]]


def test_redis_restarted_empty_is_reported(private_redis: RedisServer, daemon_dir: Daemon) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client:
        client.add("lost", "note", "applied before the restart", durability="store")
    assert alert_kinds(daemon) == []
    assert status_exit(daemon)[0] == 0

    private_redis.kill()
    private_redis.start()  # no persistence: it comes back empty
    wait_until(lambda: "store_data_lost" in alert_kinds(daemon), 30, "the data-loss alert")
    code, screen = status_exit(daemon)
    assert code == 1, screen  # healthy, but an operator must look
    assert "ALERTS" in screen and "store_data_lost" in screen

    # The alert survives a restart of the daemon until an operator clears it.
    daemon.stop()
    daemon.start()
    assert alert_kinds(daemon) == ["store_data_lost"]
    cleared = subprocess.run(
        [sys.executable, "-m", "memoryd", "alerts", "clear", "--data-dir", str(daemon.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "cleared 1 alerts" in cleared.stdout
    assert alert_kinds(daemon) == []
    assert status_exit(daemon)[0] == 0


def test_a_redis_that_kept_its_data_raises_no_alert(daemon_dir: Daemon) -> None:
    server = RedisServer()
    try:
        server.start("--appendonly", "yes", "--appendfsync", "always")
        daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": server.url}
        daemon = daemon_dir.start()
        with Client(daemon.socket_path, timeout_s=20) as client:
            client.add("kept", "note", "persisted", durability="store")
            server.kill()
            server.start("--appendonly", "yes", "--appendfsync", "always")
            wait_until(lambda: client.status()["state"] == "healthy", 30, "recovery")
            assert client.status()["alerts"] == []
            assert client.stats("kept")["count"] == 1
    finally:
        server.cleanup()


def test_a_missing_wal_segment_is_an_alert(daemon_dir: Daemon) -> None:
    daemon_dir.env_overrides = {"MEMORYD_WAL_SEGMENT_BYTES": "4096", "MEMORYD_BACKEND": "local"}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        for n in range(60):
            client.add("gap", "note", "x" * 200, id=f"R{n:04d}")
    daemon.kill()
    wal_dir = daemon.data_dir / "wal"
    segments = sorted(wal_dir.glob("*.wal"))
    assert len(segments) >= 3
    # Make the checkpoint cover nothing, then lose a middle segment.
    (wal_dir / "checkpoint").unlink(missing_ok=True)
    segments[1].unlink()
    daemon.start()
    kinds = alert_kinds(daemon)
    assert "wal_missing_records" in kinds
    with Client(daemon.socket_path) as client:
        assert client.status()["wal"]["missing_records"] > 0


async def test_seq_numbers_of_a_failed_write_are_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gap in the log must mean lost data, so a failed write leaves none."""
    real_write = wal_module.os.write

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, "injected EIO")

    wal, _ = make_wal(tmp_path, fsync="no")
    wal.open()
    await wal.append([Put.of(record(1))])
    monkeypatch.setattr(wal_module.os, "write", failing_write)
    with pytest.raises(wal_module.WalError):
        await wal.append([Put.of(record(2))])
    monkeypatch.setattr(wal_module.os, "write", real_write)
    assert await wal.append([Put.of(record(3))]) == [2]
    await wal.close()

    recovery = wal_module.recover(tmp_path)
    assert [e.seq for e in recovery.entries] == [1, 2]
    assert recovery.missing_records == 0
    assert (tmp_path / segment_name(1)).exists()


def test_switching_a_data_dir_between_stores_is_no_data_loss(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    """The README's "Redis instead of the local store" step, and back (the rollback)."""
    local = {"MEMORYD_BACKEND": "local"}
    on_redis = {"MEMORYD_REDIS_URL": private_redis.url}
    for env in (local, on_redis, local, on_redis):
        daemon_dir.env_overrides = env
        daemon = daemon_dir.start()
        with Client(daemon.socket_path) as client:
            client.add("switch", "note", "kept where it was written", durability="store")
        assert alert_kinds(daemon) == []
        assert status_exit(daemon)[0] == 0
        assert daemon.stop() == 0
    # A loss is still a loss: the Redis this data_dir used comes back empty.
    private_redis.kill()
    private_redis.start()
    daemon = daemon_dir.start()
    assert alert_kinds(daemon) == ["store_data_lost"]
    daemon.stop()


def test_an_older_marker_file_is_taken_for_the_store_that_holds_it(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    """An older memoryd kept one bare token: upgrading must not raise a false alarm."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        client.add("upgrade", "note", "x", durability="store")
    daemon.stop()
    marker = daemon.data_dir / "store-marker"
    token = json.loads(marker.read_text())["stores"].popitem()[1]
    marker.write_text(token)  # the older format
    daemon.start()
    assert alert_kinds(daemon) == []
    assert json.loads(marker.read_text())["stores"]  # rewritten in the new format
    daemon.stop()
    daemon_dir.env_overrides = {"MEMORYD_BACKEND": "local"}
    marker.write_text(token)  # the older format, of another store than the one now used
    daemon.start()
    assert alert_kinds(daemon) == []
    daemon.stop()
