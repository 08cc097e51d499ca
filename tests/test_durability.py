"""Nothing acknowledged is lost: restarts, kill -9, a store that is down or frozen."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from memoryd_client import Client
from tests.harness import Daemon, RedisServer, wait_until


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, to kill and freeze."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def daemon_dir() -> Iterator[Daemon]:
    daemon = Daemon()
    try:
        yield daemon
    finally:
        daemon.cleanup()


def stored_ids(server: RedisServer, agent_id: str) -> list[bytes]:
    with redis.Redis(unix_socket_path=str(server.socket_path)) as conn:
        return conn.zrange(f"agent:{{{agent_id}}}:memories:list", 0, -1)


def test_graceful_restart_keeps_everything(daemon_dir: Daemon) -> None:
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        ids = [client.add("keeper", "note", {"n": n})["id"] for n in range(200)]
    assert daemon.stop() == 0
    assert daemon.notify is not None and daemon.notify.saw("STOPPING=1")
    assert not daemon.socket_path.exists()

    daemon.start()
    with Client(daemon.socket_path) as client:
        records = client.recent("keeper", limit=1000, order="oldest")
        assert [r["id"] for r in records] == ids
        assert client.stats("keeper")["count"] == 200


def test_kill_9_with_the_store_down_loses_nothing(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    private_redis.kill()
    with Client(daemon.socket_path, timeout_s=20) as client:
        ids = [client.add("survivor", "note", {"n": n})["id"] for n in range(100)]
        # Read-your-writes while nothing can reach the store.
        seen = client.recent("survivor", limit=100)
        assert seen.degraded
        assert sorted(r["id"] for r in seen) == sorted(ids)
    daemon.kill()  # SIGKILL: no flush, no checkpoint

    private_redis.start()  # an empty Redis: everything must come from the WAL
    daemon.start()
    wait_until(lambda: len(stored_ids(private_redis, "survivor")) == 100, 20, "the replay")
    assert sorted(i.decode() for i in stored_ids(private_redis, "survivor")) == sorted(ids)
    with Client(daemon.socket_path) as client:
        assert client.stats("survivor")["count"] == 100
        assert client.add("survivor", "note", "after")["id"]


def test_reads_see_writes_the_frozen_store_has_not_applied(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # a hang, not a refusal
    try:
        with Client(daemon.socket_path, timeout_s=20) as client:
            added = client.add("frozen", "note", "while frozen")
            assert client.get("frozen", added["id"])["content"] == "while frozen"
            assert [r["id"] for r in client.recent("frozen")] == [added["id"]]
            assert stored_ids_unavailable(private_redis)
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    wait_until(lambda: len(stored_ids(private_redis, "frozen")) == 1, 20, "the backlog to drain")


def stored_ids_unavailable(server: RedisServer) -> bool:
    with redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=0.2) as conn:
        try:
            conn.ping()
        except redis.exceptions.TimeoutError:
            return True
    return False


def test_client_reconnects_after_a_daemon_restart(daemon_dir: Daemon) -> None:
    daemon = daemon_dir.start()
    client = Client(daemon.socket_path, timeout_s=20)
    try:
        first = client.add("reconnect", "note", 1)["id"]
        daemon.stop()
        daemon.start()
        second = client.add("reconnect", "note", 2)["id"]
        assert {r["id"] for r in client.recent("reconnect")} == {first, second}
    finally:
        client.close()


def test_a_second_daemon_on_the_same_socket_refuses_to_start(daemon_dir: Daemon) -> None:
    daemon = daemon_dir.start()
    second = subprocess.run(
        [sys.executable, "-m", "memoryd", "run"],
        env={**daemon.environment(), "NOTIFY_SOCKET": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 78
    assert "another memoryd is" in second.stderr
    assert daemon.socket_path.exists(), "the refused daemon removed the running one's socket"
    with Client(daemon.socket_path) as client:
        assert client.ping() == "pong"


def test_stale_socket_file_is_replaced(daemon_dir: Daemon) -> None:
    daemon = daemon_dir.start()
    daemon.kill()
    assert daemon.socket_path.exists()  # left behind by kill -9
    daemon.start()
    with Client(daemon.socket_path) as client:
        assert client.ping() == "pong"


def test_sigterm_finishes_in_flight_store_durable_writes(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        ids = [client.add("drained", "note", n, durability="store")["id"] for n in range(20)]
        ids += [client.add("drained", "note", n)["id"] for n in range(20, 300)]
    assert daemon.stop() == 0
    # The shutdown drained the backlog into the store before exiting.
    assert sorted(i.decode() for i in stored_ids(private_redis, "drained")) == sorted(ids)
