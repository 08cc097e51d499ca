"""memoryd on a Redis Cluster under 4 writers: a master killed with kill -9 and
replaced by its replica, and the slots of the writers' agents resharded while
they write.  Writes are acknowledged throughout; the oracle reads every
acknowledged id in Redis itself, exactly once."""

from __future__ import annotations

from typing import Any, cast

import redis

from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import LOOPBACK, ClusterSet, Daemon
from tests.test_put_back import Writers


def settled(status: dict[str, Any]) -> bool:
    """Healthy, nothing left to apply, and everything applied confirmed by the
    replicas of the master each shard has now."""
    wal = status["wal"]
    return bool(
        status["state"] == "healthy"
        and wal["backlog_records"] == 0
        and wal["unconfirmed_records"] == 0
    )


def stored_in(cluster: ClusterSet) -> Any:
    def stored(agent: str) -> list[str]:
        with redis.RedisCluster(LOOPBACK, cluster.master_ports()[0]) as conn:
            members = cast(list[bytes], conn.zrange(f"agent:{{{agent}}}:memories:list", 0, -1))
        return [member.decode() for member in members]

    return stored


def test_a_cluster_master_killed_is_replaced_and_no_acknowledged_write_is_lost(
    own_cluster: ClusterSet, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": own_cluster.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client, Writers(daemon) as writers:
        eventually(lambda: writers.count() > 200, timeout_s=30, what="writes before")
        killed = own_cluster.node_for_key("{writer-0}")
        own_cluster.failover(killed)
        before = writers.count()
        eventually(lambda: writers.count() > before + 200, timeout_s=60, what="writes after")
    with Client(daemon.socket_path, timeout_s=20) as client:
        # The promoted replica has no replica of its own: nothing of its shard is
        # confirmed until the old master is back, as its replica.
        assert client.status()["wal"]["unconfirmed_records"] > 0
        eventually(
            daemon.log,
            lambda log: "has no replica: what is applied to it stays unconfirmed" in log,
            timeout_s=10,
            what="a warning that names the shard without a replica",
        )
        own_cluster.restart(killed)
        eventually(client.status, settled, timeout_s=60, what="healthy, applied and confirmed")
        writers.assert_kept(stored_in(own_cluster), client)
    assert writers.refused == 0, "writes are acknowledged throughout"
    assert daemon.stop() == 0


def test_the_slots_of_active_agents_resharded_during_writes_lose_nothing(
    own_cluster: ClusterSet, daemon_dir: Daemon
) -> None:
    """Each writer's slot moved live to another master (IMPORTING, MIGRATING, MIGRATE,
    SETSLOT) while it writes: MOVED, ASK and TRYAGAIN along the way."""
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": own_cluster.url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client, Writers(daemon) as writers:
        eventually(lambda: writers.count() > 200, timeout_s=30, what="writes before")
        for agent in writers.acked:
            slot = own_cluster.key_slot(f"{{{agent}}}")
            owner = own_cluster.slot_owner(slot)
            target = next(port for port in own_cluster.master_ports() if port != owner)
            with own_cluster.move_slot_in_steps(slot, target) as move:
                while move.migrate_keys(10):  # a few keys at a time, writes going on
                    pass
            assert own_cluster.node_for_key(f"{{{agent}}}") == target
        before = writers.count()
        eventually(lambda: writers.count() > before + 200, timeout_s=60, what="writes after")
    with Client(daemon.socket_path, timeout_s=20) as client:
        eventually(client.status, settled, timeout_s=60, what="healthy, applied and confirmed")
        writers.assert_kept(stored_in(own_cluster), client)
    assert writers.refused == 0, "writes are acknowledged throughout"
    assert daemon.stop() == 0
