"""Reads from memory through the real daemon: alone, and beside another daemon on the same Redis."""

from __future__ import annotations

import redis

from memoryd_client import Client
from tests.harness import Daemon, RedisServer, wait_until


def read_cache(client: Client) -> dict[str, int | bool]:
    section: dict[str, int | bool] = client.status()["read_cache"]
    return section


def test_a_lone_daemon_answers_repeated_reads_from_memory(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        wait_until(lambda: read_cache(client)["from_memory"], 5, "the writer lease")
        ids = [client.add("solo", "discussion", f"发言 {n}")["id"] for n in range(8)]
        before = read_cache(client)
        for _ in range(5):
            newest = client.recent("solo", limit=5)
            assert [r["id"] for r in newest] == ids[::-1][:5]
            by_type = client.recent("solo", limit=3, types=["discussion"])
            assert [r["id"] for r in by_type] == ids[::-1][:3]
        after = read_cache(client)
        assert after["writers"] == 1
        # The first read fills the agent's view; the rest are answered from it.
        assert int(after["hits"]) - int(before["hits"]) >= 8


def test_daemons_sharing_a_redis_answer_from_memory_and_see_each_others_writes(
    private_redis: RedisServer, daemon_dir: Daemon, second_daemon_dir: Daemon
) -> None:
    """Each daemon's writes carry a change notice; the other drops its view of the
    agents named, so both keep answering from memory, and a write applied through
    one shows on the other within the notice's way over (milliseconds here)."""
    env = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon_dir.env_overrides = env
    second_daemon_dir.env_overrides = env
    first = daemon_dir.start()
    with Client(first.socket_path) as one:
        wait_until(lambda: read_cache(one)["from_memory"], 5, "the writer lease")
        one.add("shared", "discussion", "from the first daemon", durability="store")
        assert [r["content"] for r in one.recent("shared", limit=5)] == ["from the first daemon"]
        second = second_daemon_dir.start()
        with Client(second.socket_path) as two:
            wait_until(lambda: read_cache(two)["from_memory"], 5, "the second's writer lease")
            wait_until(lambda: read_cache(one)["writers"] == 2, 3, "the lease count")
            before = read_cache(one)
            for n in range(5):
                written = two.add("shared", "discussion", f"more {n}", durability="store")["id"]
                # Applied when acknowledged (durability "store"): its notice is on its way.
                wait_until(
                    lambda written=written: one.recent("shared", limit=1)[0]["id"] == written,
                    1,
                    "the first daemon to see the second one's write",
                )
                for _ in range(3):  # and, until the next write, from memory
                    assert one.recent("shared", limit=1)[0]["id"] == written
            after = read_cache(one)
            assert after["from_memory"] and read_cache(two)["from_memory"]
            assert after["writers"] == 2
            assert int(after["hits"]) - int(before["hits"]) >= 10
        second_daemon_dir.stop()  # a clean stop gives its lease up
        wait_until(lambda: read_cache(one)["writers"] == 1, 5, "the lease count to drop")
        assert len(one.recent("shared", limit=10)) == 6


def test_reads_from_memory_do_not_outlive_a_flushed_redis(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        wait_until(lambda: read_cache(client)["from_memory"], 5, "the writer lease")
        client.add("flushed", "discussion", "soon gone", durability="store")
        assert len(client.recent("flushed")) == 1  # the view is filled and exact
        with redis.Redis(unix_socket_path=str(private_redis.socket_path)) as conn:
            conn.flushall()
        # The next lease renewal finds the lease gone and starts trust over.
        wait_until(lambda: client.recent("flushed") == [], 3, "the flushed record to go")


def test_no_read_from_memory_outlives_a_redis_that_restarted_empty(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    """A Redis killed and started again between two lease renewals (0.5 s apart)
    must not have its old records served from memory afterwards as if it held them.
    Served they may be once memoryd has put them back (they were not confirmed
    durable: it applies them again from the WAL); then the store holds them."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        for round_ in range(5):
            agent = f"restart-{round_}"
            wait_until(lambda: read_cache(client)["from_memory"], 5, "the writer lease")
            client.add(agent, "discussion", "applied, then lost", durability="store")
            assert len(client.recent(agent, limit=5)) == 1  # now in the agent's view
            private_redis.kill()
            private_redis.start()  # within a few ms: no persistence, so empty
            answer = client.recent(agent, limit=5)
            if answer and not answer.degraded:
                wait_until(lambda: client.status()["wal"]["backlog_records"] == 0, 5, "applied")
                with redis.Redis(unix_socket_path=str(private_redis.socket_path)) as conn:
                    held = bool(conn.exists(f"agent:{{{agent}}}:memory:{answer[0]['id']}"))
                assert held, (
                    f"round {round_}: a record the store no longer has, answered as if it had it"
                    + daemon.log()[-3000:]
                )


def test_a_daemon_that_sends_no_change_notices_turns_reads_from_memory_off(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    """An older memoryd writing the same Redis holds a lease under an id without the
    notices mark: its writes would go unheard, so reads go to the store meanwhile."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path) as client:
        wait_until(lambda: read_cache(client)["from_memory"], 5, "the writer lease")
        with redis.Redis(unix_socket_path=str(private_redis.socket_path)) as conn:
            now_ms = int(conn.time()[0]) * 1000
            conn.zadd("memoryd:writers", {"01OLDDAEMONWITHOUTNOTICES": now_ms + 60_000})
            wait_until(lambda: not read_cache(client)["from_memory"], 3, "reads to the store")
            assert "send no change notices" in daemon.log()
            conn.zrem("memoryd:writers", "01OLDDAEMONWITHOUTNOTICES")
        wait_until(lambda: read_cache(client)["from_memory"], 3, "reads from memory again")
