"""Nothing acknowledged is lost: restarts, kill -9, a store that is down or frozen."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis

from memoryd_client import Client, errors
from tests import redis_view
from tests.harness import Daemon, RedisServer, wait_until


def stored_ids(server: RedisServer, agent_id: str) -> list[str]:
    with redis.Redis(unix_socket_path=str(server.socket_path)) as conn:
        return redis_view.members(conn, f"agent:{{{agent_id}}}:memories:list")


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
    assert sorted(stored_ids(private_redis, "survivor")) == sorted(ids)
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
    assert sorted(stored_ids(private_redis, "drained")) == sorted(ids)


def test_reads_of_unknown_records_while_the_store_is_down_say_so(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {
        "MEMORYD_REDIS_URL": private_redis.url,
        "MEMORYD_READ_CACHE_PER_AGENT": "0",  # nothing cached: the store alone knows
    }
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client:
        stored = client.add("outage", "note", "in the store", durability="store")["id"]
        private_redis.kill()
        pending = client.add("outage", "note", "in the WAL")["id"]
        with Client(daemon.socket_path, retry=False) as once:
            # Neither "not found" nor "deleted: false": memoryd cannot know.
            with pytest.raises(errors.BackendUnavailable):
                once.get("outage", stored)
            with pytest.raises(errors.BackendUnavailable):
                once.delete("outage", stored)
            with pytest.raises(errors.BackendUnavailable):
                once.update("outage", stored, importance=0.9)
            assert once.get("outage", pending)["content"] == "in the WAL"
            assert once.delete("outage", pending) is True
            with pytest.raises(errors.NotFound):
                once.get("outage", pending)


def test_a_second_sigterm_skips_the_drain(private_redis: RedisServer, daemon_dir: Daemon) -> None:
    daemon_dir.env_overrides = {
        "MEMORYD_REDIS_URL": private_redis.url,
        "MEMORYD_SHUTDOWN_TIMEOUT_S": "60",
    }
    daemon = daemon_dir.start()
    private_redis.kill()
    with Client(daemon.socket_path, timeout_s=20) as client:
        client.add("impatient", "note", "buffered")
    daemon.signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in daemon.log(), 10, "the shutdown to start")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.stop(timeout_s=15) == 0
    assert time.monotonic() - started < 10
    # What was acknowledged is still in the WAL for the next start.
    private_redis.start()
    daemon.start()
    wait_until(lambda: len(stored_ids(private_redis, "impatient")) == 1, 20, "the replay")


def test_a_full_wal_refuses_writes_and_reports_failing(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {
        "MEMORYD_REDIS_URL": private_redis.url,
        "MEMORYD_WAL_MAX_BYTES": str(1024 * 1024),
    }
    daemon = daemon_dir.start()
    private_redis.kill()  # nothing drains: the WAL only grows
    with Client(daemon.socket_path, retry=False, timeout_s=20) as client:
        accepted = []
        with pytest.raises(errors.WalFull):
            for n in range(100):
                accepted.append(client.add("full", "note", "x" * 30_000, id=f"R{n:04d}")["id"])
        assert 0 < len(accepted) < 100
        assert client.status()["state"] == "failing"
        # Reads keep working, and everything accepted is still readable.
        assert len(client.recent("full", limit=100)) == len(accepted)
    private_redis.start()
    wait_until(lambda: len(stored_ids(private_redis, "full")) == len(accepted), 20, "the drain")
    with Client(daemon.socket_path, timeout_s=20) as client:
        assert client.add("full", "note", "room again")["id"]
        # An accepted write ends `failing` at once; the store's own state
        # (degraded until enough probes succeed) is another matter.
        assert client.status()["state"] != "failing"


def test_a_local_store_that_cannot_open_stops_the_start(daemon_dir: Daemon) -> None:
    (daemon_dir.data_dir / "store.sqlite3").mkdir(parents=True)  # a directory, not a database
    result = subprocess.run(
        [sys.executable, "-m", "memoryd", "run"],
        env={**daemon_dir.environment(), "NOTIFY_SOCKET": ""},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78
    assert "data_dir" in result.stderr.splitlines()[-1]


def test_degraded_reads_answer_from_the_cache_and_the_backlog(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {
        "MEMORYD_REDIS_URL": private_redis.url,
        "MEMORYD_READ_CACHE_PER_AGENT": "3",
    }
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client:
        old = [client.add("cached", "note", n, durability="store")["id"] for n in range(5)]
        private_redis.kill()
        new = client.add("cached", "note", "while down")["id"]
        started = time.monotonic()
        answer = client.recent("cached", limit=10)
        assert time.monotonic() - started < 2, "a degraded read must not wait on the store"
        assert answer.degraded
        # The newest 3 applied records (the cache) plus the one not yet applied.
        assert [r["id"] for r in answer] == [new, *reversed(old[2:])]
        assert client.get("cached", old[4])["content"] == 4
        with pytest.raises(errors.BackendUnavailable):
            client.get("cached", old[0], timeout_s=1)
        status = client.status()
        assert status["state"] == "degraded" and status["read_cache"]["records"] == 3


def test_store_durability_times_out_with_backend_unavailable_and_still_applies(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {
        "MEMORYD_REDIS_URL": private_redis.url,
        "MEMORYD_REQUEST_TIMEOUT_S": "1",
    }
    daemon = daemon_dir.start()
    private_redis.kill()
    with (
        Client(daemon.socket_path, retry=False, timeout_s=10) as client,
        pytest.raises(errors.BackendUnavailable),
    ):
        client.add("patient", "note", "later", id="R0001", durability="store")
    # It was in the WAL all along: it reaches the store once the store is back.
    private_redis.start()
    wait_until(lambda: len(stored_ids(private_redis, "patient")) == 1, 30, "the late apply")


def test_a_second_daemon_on_the_same_data_dir_refuses_to_start(daemon_dir: Daemon) -> None:
    daemon = daemon_dir.start()
    other_socket = daemon.directory / "other.sock"
    second = subprocess.run(
        [sys.executable, "-m", "memoryd", "run"],
        env={**daemon.environment(), "NOTIFY_SOCKET": "", "MEMORYD_SOCKET_PATH": str(other_socket)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 78
    assert "another memoryd is using it" in second.stderr
    assert not other_socket.exists()
    with Client(daemon.socket_path) as client:
        assert client.ping() == "pong"
