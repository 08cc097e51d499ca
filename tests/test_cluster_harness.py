"""The Redis Cluster fixture itself (``tests.harness.ClusterSet``): that it comes up whole,
spreads keys over its masters, moves a slot live (with ASK and TRYAGAIN half-way) and fails
a master over, so that a memoryd test failing on a cluster is memoryd's failure, not the
fixture's."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, TryAgainError

from tests.harness import CLUSTER_HASH_SLOTS, ClusterSet

# Hash tags whose slots (15495, 3300, 7365) fall in the three equal thirds redis-cli gives
# three masters: one tag per master.
TAGS = ("{a}", "{b}", "{c}")


def test_the_cluster_comes_up_with_three_masters_each_with_a_replica(
    own_cluster: ClusterSet,
) -> None:
    masters = own_cluster.master_ports()
    assert len(masters) == 3 and len(own_cluster.servers) == 6
    assert own_cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in masters)
    slot_map = own_cluster.slot_map()
    assert sum(last - first + 1 for first, last, _, _ in slot_map) == CLUSTER_HASH_SLOTS
    for _, _, master, replicas in slot_map:
        assert master in masters
        assert list(replicas) == own_cluster.replica_ports(master) and len(replicas) == 1
    assert {own_cluster.slot_map(port) for port in own_cluster.live_ports()} == {slot_map}
    # A real cluster client finds the whole cluster from one seed and works on it.
    with RedisCluster("127.0.0.1", masters[0], decode_responses=True) as client:
        assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
        for tag in TAGS:
            client.set(f"{tag}k", tag)
        assert [client.get(f"{tag}k") for tag in TAGS] == list(TAGS)


def test_keys_with_different_hash_tags_land_on_different_masters(own_cluster: ClusterSet) -> None:
    owners = [own_cluster.node_for_key(f"{tag}k") for tag in TAGS]
    assert sorted(owners) == own_cluster.master_ports()
    for tag, owner in zip(TAGS, owners, strict=True):
        key = f"{tag}k"
        with own_cluster.connect(owner) as conn:
            conn.set(key, tag)
        for other in own_cluster.master_ports():
            if other != owner:
                with own_cluster.connect(other) as conn, pytest.raises(MovedError) as moved:
                    conn.get(key)
                assert moved.value.port == owner
                assert moved.value.slot_id == own_cluster.key_slot(key)


def test_move_slot_moves_a_key_and_its_slot(own_cluster: ClusterSet) -> None:
    keys = [f"{{b}}k{n}" for n in range(250)]  # more than one GETKEYSINSLOT batch of 100
    slot = own_cluster.key_slot(keys[0])
    source = own_cluster.node_for_key(keys[0])
    target = next(port for port in own_cluster.master_ports() if port != source)
    with own_cluster.connect(source) as conn:
        conn.mset({key: key for key in keys})

    own_cluster.move_slot(slot, target)

    assert own_cluster.node_for_key(keys[0]) == target
    assert {own_cluster.slot_owner(slot, port) for port in own_cluster.live_ports()} == {target}
    assert own_cluster.slot_owner(slot - 1) == source and own_cluster.slot_owner(slot + 1) == source
    assert own_cluster.settled()
    with own_cluster.connect(target) as conn:
        assert conn.mget(keys) == keys
    with own_cluster.connect(source) as conn, pytest.raises(MovedError) as moved:
        conn.get(keys[0])
    assert moved.value.port == target


def test_a_half_moved_slot_answers_ask_and_tryagain(own_cluster: ClusterSet) -> None:
    keys = ["{c}one", "{c}two"]
    slot = own_cluster.key_slot(keys[0])
    source = own_cluster.node_for_key(keys[0])
    target = next(port for port in own_cluster.master_ports() if port != source)
    with own_cluster.connect(source) as conn:
        conn.mset({key: key for key in keys})

    with own_cluster.move_slot_in_steps(slot, target) as move:
        assert move.migrate_keys(1) == 1
        with own_cluster.connect(source, decode=False) as conn:
            [left] = conn.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        gone = next(key for key in keys if key.encode() != left)
        with own_cluster.connect(source) as conn:
            assert conn.get(left) == left.decode()  # still here: served here
            with pytest.raises(AskError) as ask:
                conn.get(gone)
            assert type(ask.value) is AskError and ask.value.port == target
            with pytest.raises(TryAgainError):
                conn.mget(keys)  # one key here, one there: try again later
        with own_cluster.connect(target) as conn:
            with pytest.raises(MovedError):
                conn.get(gone)  # not without ASKING: the slot is not the target's yet
            with conn.pipeline(transaction=False) as pipe:
                pipe.execute_command("ASKING")
                pipe.get(gone)
                assert pipe.execute()[1] == gone

    assert move.keys_moved == 2
    assert own_cluster.node_for_key(keys[0]) == target
    with own_cluster.connect(target) as conn:
        assert conn.mget(keys) == keys


def test_failover_promotes_a_replica(own_cluster: ClusterSet) -> None:
    key = "{a}k"
    old = own_cluster.node_for_key(key)
    [replica] = own_cluster.replica_ports(old)
    with own_cluster.connect(old) as conn:
        conn.set(key, "before")
        assert conn.execute_command("WAIT", 1, 5000) == 1  # the replica has it

    new = own_cluster.failover(old)

    assert new == replica
    assert own_cluster.node_for_key(key) == new
    assert old not in own_cluster.master_ports() and new in own_cluster.master_ports()
    assert len(own_cluster.master_ports()) == 3
    assert own_cluster.server_on(old).process is None
    with own_cluster.connect(new) as conn:
        assert conn.get(key) == "before"
        assert conn.info("replication")["role"] == "master"
    # The seeds stay those of the start: a client must get past the dead one.
    assert f"127.0.0.1:{old}" in own_cluster.url
    with own_cluster.connect(old) as conn, pytest.raises(redis.exceptions.ConnectionError):
        conn.ping()
