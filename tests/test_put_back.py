"""A store that loses applied writes gets them back from the WAL.

Redis here runs without persistence, as the test servers do: it confirms
nothing durable, so memoryd keeps every applied write in the WAL within
``wal_retain_bytes`` / ``wal_retain_s`` (memoryd.durability).  Killed and
started again empty while agents write, it has lost everything; memoryd sees
the store marker gone, applies again what it kept, and says so in the
``store_data_lost`` alert.  Past the retention, writes are let go and the alert
says that those may be lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from memoryd_client import Client, errors
from tests import redis_view
from tests.daemons import eventually
from tests.harness import Daemon, RedisServer

WRITERS = 4


def stored(server: RedisServer, agent_id: str) -> list[str]:
    with redis.Redis(unix_socket_path=str(server.socket_path)) as conn:
        return redis_view.members(conn, f"agent:{{{agent_id}}}:memories:list")


class Writers:
    """Agents writing without pause, each id kept once the daemon acknowledged it."""

    def __init__(self, daemon: Daemon, *, payload_bytes: int = 0) -> None:
        self.daemon = daemon
        self.payload = "x" * payload_bytes
        self.acked: dict[str, list[str]] = {f"writer-{n}": [] for n in range(WRITERS)}
        self.refused = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(agent,), daemon=True) for agent in self.acked
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def assert_kept_in(self, server: RedisServer, client: Client) -> None:
        """The oracle: every acknowledged write in ``server`` itself, exactly once."""
        self.assert_kept(lambda agent: stored(server, agent), client)

    def assert_kept(self, stored_ids: Callable[[str], list[str]], client: Client) -> None:
        """The oracle, on what ``stored_ids`` reads of an agent in the store itself."""
        for agent, ids in self.acked.items():
            kept = stored_ids(agent)
            missing = len(set(ids) - set(kept))
            assert not missing, (
                f"{missing} of {agent} lost; the daemon's log:\n{self.daemon.log()[-3000:]}"
            )
            assert len(kept) == len(set(kept)) == client.stats(agent)["count"]

    def count(self) -> int:
        return sum(len(ids) for ids in self.acked.values())

    def _write(self, agent: str) -> None:
        with Client(self.daemon.socket_path, timeout_s=20) as client:
            n = 0
            while not self._stop.is_set():
                try:
                    content = f"{agent} {n} {self.payload}"
                    self.acked[agent].append(client.add(agent, "note", content)["id"])
                except errors.MemorydError:
                    self.refused += 1
                n += 1
                time.sleep(0.005)


def wait(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    eventually(condition, timeout_s=timeout_s, what=what)


def test_a_redis_restarted_empty_gets_every_acknowledged_write_back(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": private_redis.url}
    daemon = daemon_dir.start()
    with Writers(daemon) as writers:
        wait(lambda: writers.count() > 200, "writes before the restart")
        private_redis.kill()
        private_redis.start()  # empty: no persistence
        wait(lambda: writers.count() > 600, "writes after the restart")
    with Client(daemon.socket_path, timeout_s=20) as client:
        wait(lambda: client.status()["wal"]["backlog_records"] == 0, "the backlog applied")
        status = client.status()
        assert status["state"] == "healthy", status["reason"]
        writers.assert_kept_in(private_redis, client)
        lost = [a for a in status["alerts"] if a["kind"] == "store_data_lost"]
        assert lost, status["alerts"]
        assert "were applied again" in lost[0]["message"]
        assert "nothing older had left the WAL unconfirmed" in lost[0]["message"]
        assert status["wal"]["unconfirmed_records"] >= writers.count()
    assert daemon.stop() == 0


def test_writes_past_the_retention_are_let_go_and_the_alert_says_so(
    private_redis: RedisServer, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {
        "MEMORYD_REDIS_URL": private_redis.url,
        "MEMORYD_WAL_RETAIN_S": "1",
    }
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client:
        old = [client.add("kept-long", "note", f"old {n}")["id"] for n in range(20)]
        wait(lambda: client.status()["wal"]["released_unconfirmed"] >= 20, "retention to pass")
        wait(
            lambda: client.status()["wal"]["checkpointed_seq"] >= 20,
            "the checkpoint to pass what was let go",
        )
        new = [client.add("kept-long", "note", f"new {n}")["id"] for n in range(5)]
        private_redis.kill()
        private_redis.start()
        wait(
            lambda: set(new) <= set(stored(private_redis, "kept-long")),
            "the writes within the retention back",
        )
        assert not set(old) & set(stored(private_redis, "kept-long"))
        status = client.status()
        lost = [a for a in status["alerts"] if a["kind"] == "store_data_lost"]
        assert lost and "may be lost" in lost[0]["message"], status["alerts"]
    assert daemon.stop() == 0
