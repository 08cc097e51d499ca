"""The fault drill (``make drill``): a minute of writes through real faults.

Concurrent writers add records through the real client while Redis is
killed for a while and brought back, and then the daemon is killed -9 and
restarted.  At the end every acknowledged record must be in Redis exactly
once.  Prints: acknowledged, lost (must be 0), duplicated (must be 0), the
longest write stall, and the time the backlog took to drain after Redis
returned.  Exit status 1 if anything was lost or duplicated.

    python -m tests.drill [--duration-s 60] [--outage-s 20] [--writers 8]
                          [--topology standalone|sentinel|cluster]

With ``--topology sentinel`` the store is a master with two replicas and
three sentinels, and the Redis fault is the master killed with kill -9: a
replica is promoted, and the old master, started again after the outage,
rejoins as a replica.  The oracle then reads the master of the end.  With
``--topology cluster`` it is a Redis Cluster of three masters with a replica
each, and the master serving the first writer's agent is killed the same way;
the oracle reads through a cluster client.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field

import msgpack
import redis

from memoryd_client import Client, errors
from memoryd_client.ids import new_id
from tests.harness import LOOPBACK, ClusterSet, Daemon, RedisServer, SentinelSet, wait_until

REDIS_ARGS = ("--appendonly", "yes", "--appendfsync", "always")


def content_for(record_id: str, writer: int, n: int) -> dict[str, object]:
    return {"writer": writer, "n": n, "digest": hashlib.sha256(record_id.encode()).hexdigest()}


@dataclass
class Writer:
    index: int
    socket_path: str
    stop: threading.Event
    acked: dict[str, tuple[int, int]] = field(default_factory=dict)
    longest_stall_s: float = 0.0
    failures: int = 0

    def run(self) -> None:
        agent_id = f"drill_{self.index}"
        with Client(self.socket_path, timeout_s=60) as client:
            n = 0
            while not self.stop.is_set():
                record_id = new_id()
                started = time.monotonic()
                try:
                    client.add(
                        agent_id, "drill", content_for(record_id, self.index, n), id=record_id
                    )
                except (errors.MemorydError, OSError):
                    self.failures += 1
                    continue
                self.longest_stall_s = max(self.longest_stall_s, time.monotonic() - started)
                self.acked[record_id] = (self.index, n)
                n += 1


def check(conn: redis.Redis | redis.RedisCluster, writers: list[Writer]) -> dict[str, int]:
    """The oracle: what Redis holds against what was acknowledged."""
    acked = {rid: owner for w in writers for rid, owner in w.acked.items()}
    stored: dict[str, tuple[int, int]] = {}
    seen_contents: dict[tuple[int, int], int] = {}
    corrupt = 0
    with conn:
        for writer in writers:
            agent_id = f"drill_{writer.index}"
            for raw_id in conn.zrange(f"agent:{{{agent_id}}}:memories:list", 0, -1):
                record_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                data = conn.hget(f"agent:{{{agent_id}}}:memory:{record_id}", "data")
                record = msgpack.unpackb(data, raw=False) if data else None
                if record is None or record["content"] != content_for(
                    record_id, record["content"]["writer"], record["content"]["n"]
                ):
                    corrupt += 1
                    continue
                owner = (record["content"]["writer"], record["content"]["n"])
                stored[record_id] = owner
                seen_contents[owner] = seen_contents.get(owner, 0) + 1
    return {
        "acknowledged": len(acked),
        "stored": len(stored),
        "lost": sum(1 for rid in acked if rid not in stored),
        "duplicated": sum(count - 1 for count in seen_contents.values() if count > 1),
        "corrupt": corrupt,
    }


def backlog(daemon: Daemon) -> int:
    with Client(daemon.socket_path, timeout_s=10) as client:
        return int(client.status()["wal"]["backlog_records"])


class Standalone:
    """One Redis with AOF always: killed for the outage, started again."""

    def __init__(self) -> None:
        self.server = RedisServer().start(*REDIS_ARGS)
        self.url = self.server.url

    def fail(self, outage_s: float) -> None:
        self.server.kill()
        time.sleep(outage_s)
        self.server.start(*REDIS_ARGS)

    def connect(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.server.socket_path))

    def cleanup(self) -> None:
        self.server.cleanup()


class Sentinels:
    """A Sentinel set: the master killed, a replica promoted, the old one back as a replica."""

    def __init__(self) -> None:
        self.topology = SentinelSet().start()
        self.url = self.topology.url

    def fail(self, outage_s: float) -> None:
        old = self.master()
        old.kill()
        self.topology.wait(
            lambda: self.topology.master_port() not in (None, old.port), "a replica promoted"
        )
        time.sleep(outage_s)
        old.start()  # the sentinels make it a replica of the new master

    def master(self) -> RedisServer:
        port = self.topology.master_port()
        assert port is not None
        return self.topology.server_on(port)

    def connect(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.master().socket_path))

    def cleanup(self) -> None:
        self.topology.cleanup()


class Cluster:
    """A Redis Cluster of 3 masters with a replica each: the master of the first
    writer's agent killed, its replica promoted by the cluster, the old one back as
    a replica after the outage."""

    def __init__(self) -> None:
        self.topology = ClusterSet().start()
        self.url = self.topology.url

    def fail(self, outage_s: float) -> None:
        port = self.topology.node_for_key("{drill_0}")
        self.topology.failover(port)
        time.sleep(outage_s)
        self.topology.restart(port)

    def connect(self) -> redis.RedisCluster:
        return redis.RedisCluster(LOOPBACK, self.topology.master_ports()[0])

    def cleanup(self) -> None:
        self.topology.cleanup()


TOPOLOGIES: dict[str, type[Standalone | Sentinels | Cluster]] = {
    "standalone": Standalone,
    "sentinel": Sentinels,
    "cluster": Cluster,
}


def drill(
    duration_s: float, outage_s: float, writer_count: int, topology: str = "standalone"
) -> dict[str, float]:
    redis_set: Standalone | Sentinels | Cluster = TOPOLOGIES[topology]()
    # No trimming: every acknowledged record must still be there at the end.
    daemon = Daemon(
        env_overrides={"MEMORYD_REDIS_URL": redis_set.url, "MEMORYD_MAX_MEMORIES": "10000000"}
    )
    stop = threading.Event()
    try:
        daemon.start()
        writers = [Writer(i, str(daemon.socket_path), stop) for i in range(writer_count)]
        threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        phase = duration_s / 6

        time.sleep(phase)
        print(f"[{time.monotonic() - started:5.1f}s] {topology}: Redis fails for {outage_s:.0f}s")
        redis_set.fail(outage_s)
        redis_back = time.monotonic()
        print(f"[{redis_back - started:5.1f}s] Redis is back")
        wait_until(lambda: backlog(daemon) == 0, 120, "the backlog to drain")
        drain_s = time.monotonic() - redis_back
        print(f"[{time.monotonic() - started:5.1f}s] backlog drained in {drain_s:.1f}s")

        time.sleep(max(0.0, phase - drain_s))
        print(f"[{time.monotonic() - started:5.1f}s] kill -9 of the daemon, then a restart")
        daemon.kill()
        daemon.start()

        time.sleep(max(0.0, duration_s - (time.monotonic() - started)))
        stop.set()
        for thread in threads:
            thread.join(90)
        wait_until(lambda: backlog(daemon) == 0, 120, "the final drain")
        result: dict[str, float] = {**check(redis_set.connect(), writers)}
        result["longest_write_stall_s"] = round(max(w.longest_stall_s for w in writers), 3)
        result["drain_s"] = round(drain_s, 3)
        result["failed_calls"] = sum(w.failures for w in writers)
        with Client(daemon.socket_path) as client:
            result["fresh_write_ok"] = bool(client.add("drill_0", "drill", "after")["id"])
        return result
    finally:
        stop.set()
        daemon.cleanup()
        redis_set.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), default="standalone")
    args = parser.parse_args()
    result = drill(args.duration_s, args.outage_s, args.writers, args.topology)
    print(json.dumps(result, indent=2))
    failed = result["lost"] or result["duplicated"] or result["corrupt"]
    print("DRILL FAILED" if failed else "drill passed: nothing lost, nothing duplicated")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
