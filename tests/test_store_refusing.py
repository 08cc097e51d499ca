"""A store that answers but refuses writes is not an outage.

An adversarial run found an out-of-memory Redis flapping the state between
``degraded`` and ``recovering`` (119 log lines in 25 s), reported as "store
unreachable" and "draining" while Redis refused every write.  A Redis out of
memory (OOM), turned into a replica (READONLY) or failing to save (MISCONF)
is reachable: reads go on from it, writes wait in the WAL, the state is
``degraded`` with the reason ``refusing: ...``, an alert is kept, and the
state changes once into it and once out of it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from memoryd_client import Client
from tests.daemons import eventually, run_cli
from tests.harness import Daemon, RedisServer, free_tcp_port

HEALTH_LINE = re.compile(r"memoryd\.health: health ")


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    server = RedisServer().start("--maxmemory-policy", "noeviction")
    try:
        yield server
    finally:
        server.cleanup()


def _out_of_memory(admin: redis.Redis) -> Callable[[], None]:
    """Well past maxmemory, not hovering at it: every write is refused until undone."""
    for n in range(64):
        admin.set(f"junk:{n}", b"j" * 65536)
    admin.config_set("maxmemory", "1mb")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("junk:probe", b"x")

    def free() -> None:
        admin.config_set("maxmemory", "0")

    return free


def _read_only(admin: redis.Redis) -> Callable[[], None]:
    admin.replicaof("127.0.0.1", str(free_tcp_port()))  # a master nobody runs: stays a replica

    def promote() -> None:
        admin.replicaof("NO", "ONE")

    return promote


@pytest.mark.parametrize(
    ("refuse", "reason"), [(_out_of_memory, "refusing: OOM"), (_read_only, "refusing: READONLY")]
)
def test_a_store_refusing_writes_is_degraded_with_its_reason_and_recovers(
    small_redis: RedisServer, refuse: Callable[[redis.Redis], Callable[[], None]], reason: str
) -> None:
    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": small_redis.url})
    admin = redis.Redis(unix_socket_path=str(small_redis.socket_path))
    try:
        daemon.start()
        with Client(daemon.socket_path, timeout_s=20) as client:
            before = [client.add("agent-1", "note", f"before {n}")["id"] for n in range(5)]
            eventually(lambda: client.status()["wal"]["backlog_records"] == 0, timeout_s=10)
            undo = refuse(admin)
            during = [client.add("agent-1", "note", f"during {n}")["id"] for n in range(50)]
            status = eventually(
                client.status,
                lambda s: s["state"] == "degraded" and reason in s["reason"],
                timeout_s=20,
                what=f"degraded, {reason}",
            )
            assert "unreachable" not in status["reason"]
            assert "draining" not in status["reason"]
            assert any(a["kind"] == "store_refusing_writes" for a in status["alerts"])
            # Reads still go to the store, with the writes it refused laid over them.
            answer = client.recent("agent-1", limit=100)
            assert {r["id"] for r in answer} == {*before, *during}
            # A backup still works: the store answers reads.
            exported = run_cli("export", "--agent", "agent-1", "--socket", str(daemon.socket_path))
            assert exported.returncode == 0, exported.stderr
            assert len(exported.stdout.splitlines()) == len(before) + len(during)
            assert status["store"]["reachable"] and status["store"]["problem"] == reason
            lines_before = len(HEALTH_LINE.findall(daemon.log()))
            time.sleep(4)  # the probe tries writes meanwhile, and the flusher its batch
            assert client.status()["state"] == "degraded", daemon.log()
            assert len(HEALTH_LINE.findall(daemon.log())) == lines_before, "the state flapped"

            undo()
            eventually(
                lambda: client.status()["state"] == "healthy", timeout_s=30, what="healthy again"
            )
            stored = {
                key.decode().rsplit(":", 1)[1]
                for key in admin.scan_iter("agent:{agent-1}:memory:*", count=1000)
            }
            assert stored == {*before, *during}
        assert daemon.stop() == 0
        changes = HEALTH_LINE.findall(daemon.log())
        assert len(changes) <= 3, daemon.log()  # into degraded, maybe via recovering, out
    finally:
        admin.close()
        daemon.cleanup()


def test_a_store_answering_with_an_error_is_reachable_and_writes_wait(
    small_redis: RedisServer,
) -> None:
    """An error reply (here WRONGTYPE: a key of one agent overwritten by hand) says the
    store is there: other agents' reads go on from it, not degraded; the writes wait in
    the WAL, with the error as the reason, and are applied once the key is fixed."""
    daemon = Daemon(env_overrides={"MEMORYD_REDIS_URL": small_redis.url})
    admin = redis.Redis(unix_socket_path=str(small_redis.socket_path))
    poisoned = "agent:{agent-2}:memories:list"
    try:
        daemon.start()
        with Client(daemon.socket_path, timeout_s=20) as client:
            kept = client.add("agent-1", "note", "kept")["id"]
            eventually(lambda: client.status()["wal"]["backlog_records"] == 0, timeout_s=10)
            admin.set(poisoned, "not a zset")
            waiting = client.add("agent-2", "note", "waits")["id"]
            status = eventually(
                client.status,
                lambda s: s["state"] == "degraded",
                timeout_s=20,
                what="degraded by the error reply",
            )
            assert status["store"]["reachable"] and status["store"]["problem"] == "error"
            assert "WRONGTYPE" in status["reason"] and "unreachable" not in status["reason"]
            answer = client.recent("agent-1")
            assert [r["id"] for r in answer] == [kept] and not answer.degraded
            assert [r["id"] for r in client.recent("agent-2")] == [waiting]  # from the WAL

            admin.delete(poisoned)
            eventually(
                lambda: client.status()["state"] == "healthy", timeout_s=30, what="healthy again"
            )
            assert admin.exists(f"agent:{{agent-2}}:memory:{waiting}")
        assert daemon.stop() == 0
    finally:
        admin.close()
        daemon.cleanup()
