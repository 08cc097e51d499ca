"""Damage that must not pass silently: a Redis that lost its data, a damaged WAL."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from memoryd import wal as wal_module
from memoryd.ops import Put
from memoryd.wal import segment_name
from memoryd_client import Client
from tests.harness import Daemon, RedisServer, wait_until
from tests.test_store_redis import assert_consistent, orphan_kinds
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
    with Client(daemon.socket_path) as client:
        (lost,) = client.status()["alerts"]
    assert "restarted empty" in lost["message"] and "evict" not in lost["message"]
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


def alerts_of(daemon: Daemon, kind: str) -> list[dict[str, object]]:
    with Client(daemon.socket_path) as client:
        return [alert for alert in client.status()["alerts"] if alert["kind"] == kind]


def consistent(conn: redis.Redis) -> bool:
    """Every index entry has its record, every record is indexed, stats are exact."""
    try:
        assert_consistent(conn)
    except AssertionError:
        return False
    return True


def marker_checks(conn: redis.Redis) -> int:
    """How many times the daemon has read its marker: once per deeper store check."""
    return int(conn.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def test_a_redis_that_evicts_is_reported_and_the_sweep_repairs_it(daemon_dir: Daemon) -> None:
    server = RedisServer().start("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    conn = redis.Redis(unix_socket_path=str(server.socket_path))
    try:
        daemon_dir.env_overrides = {
            "MEMORYD_REDIS_URL": server.url,
            "MEMORYD_SWEEP_INTERVAL_S": "0.5",
        }
        daemon = daemon_dir.start()
        # The policy is checked when the store is opened.
        (may_evict,) = alerts_of(daemon, "store_may_evict")
        assert "maxmemory-policy allkeys-lru" in str(may_evict["message"])
        assert "noeviction" in str(may_evict["message"])
        screen = status_exit(daemon)[1]
        assert "maxmemory 4.0MiB  policy allkeys-lru (may evict memoryd's keys)" in screen

        kinds = ["discussion", "speech", "keywords"]
        with Client(daemon.socket_path, timeout_s=30) as client:
            # One agent after the other, so that the first ones go cold and
            # eviction takes their lists and stats as well as their records.
            for agent in range(16):
                for batch in range(10):
                    first = agent * 200 + batch * 20
                    client.add_many(
                        [
                            {
                                "agent_id": f"agent_{agent}",
                                "type": kinds[n % 3],
                                "content": "x" * 400,
                                "ttl_s": 3600 if n % 2 else 0,
                                "durability": "store",
                            }
                            for n in range(first, first + 20)
                        ]
                    )
        assert int(conn.info("stats")["evicted_keys"]) > 0
        # Eviction takes the marker too, in the same step as other keys
        # (one pipeline: the daemon's check cannot come in between).
        with conn.pipeline(transaction=False) as pipe:
            pipe.delete("memoryd:marker")
            pipe.set("not-memoryd", b"j" * 1_000_000)
            pipe.ping()
            pipe.execute()
        wait_until(lambda: alerts_of(daemon, "store_data_lost"), 30, "the lost-marker alert")
        for lost in alerts_of(daemon, "store_data_lost"):
            assert "eviction is the likely cause" in str(lost["message"]), lost

        # Redis gets room: evictions stop, and a sweep repairs what they left.
        conn.config_set("maxmemory", 0)
        wait_until(lambda: consistent(conn), 30, "the sweep's repair")
        assert orphan_kinds(conn) == {"entries": 0, "records": 0}
        with Client(daemon.socket_path, timeout_s=30) as client:
            agents = client.agents(limit=100)
            assert agents
            for agent_id in agents:
                readable = client.recent(agent_id, limit=1000, order="oldest")
                stats = client.stats(agent_id)
                assert stats["count"] == len(readable)
                by_type: dict[str, int] = {}
                for found in readable:
                    by_type[found["type"]] = by_type.get(found["type"], 0) + 1
                assert stats["by_type"] == by_type
                assert stats["oldest"] == readable[0]["created_at"]
                assert stats["newest"] == readable[-1]["created_at"]
                base = f"agent:{{{agent_id}}}:memory:"
                hashes = {key.decode()[len(base) :] for key in conn.scan_iter(base + "*")}
                assert {found["id"] for found in readable} == hashes
                for record_id in hashes:
                    assert client.get(agent_id, record_id)["id"] == record_id
        assert len(alerts_of(daemon, "store_may_evict")) == 1
    finally:
        conn.close()
        server.cleanup()


def test_the_policy_is_checked_again_and_alerted_once_per_value(daemon_dir: Daemon) -> None:
    server = RedisServer().start()
    conn = redis.Redis(unix_socket_path=str(server.socket_path))
    try:
        daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": server.url}
        daemon = daemon_dir.start()
        assert alert_kinds(daemon) == []  # noeviction, the default

        # volatile-* too: record HASHes carry an EXPIRE.
        conn.config_set("maxmemory-policy", "volatile-lru")
        wait_until(lambda: alerts_of(daemon, "store_may_evict"), 30, "the policy alert")
        checks = marker_checks(conn)
        wait_until(lambda: marker_checks(conn) >= checks + 2, 30, "two more store checks")
        (alert,) = alerts_of(daemon, "store_may_evict")
        assert "maxmemory-policy volatile-lru (no maxmemory set yet)" in str(alert["message"])

        # A restarted daemon does not raise it again while it is listed.
        daemon.stop()
        daemon.start()
        assert len(alerts_of(daemon, "store_may_evict")) == 1

        conn.config_set("maxmemory-policy", "allkeys-lfu")
        wait_until(lambda: len(alerts_of(daemon, "store_may_evict")) == 2, 30, "a new alert")
        assert "allkeys-lfu" in str(alerts_of(daemon, "store_may_evict")[-1]["message"])
    finally:
        conn.close()
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
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        raise OSError(errno.EIO, "injected EIO")

    wal, _ = make_wal(tmp_path, fsync="no")
    wal.open()
    await wal.append([Put.of(record(1))])
    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(wal_module.WalError):
        await wal.append([Put.of(record(2))])
    monkeypatch.setattr(os, "write", real_write)
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
