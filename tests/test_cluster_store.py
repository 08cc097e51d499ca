"""The Redis store on a real Redis Cluster, below the daemon: slots moved
under it (MOVED), half-moved (ASK, TRYAGAIN), a master killed and replaced,
one shard emptied while the others are fine, and the proof that every key a
script touches shares the slot of a key it declares."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from memoryd.ops import Delete, Replace
from memoryd.records import Query
from memoryd.stores.base import Sequenced, StoreFailure, StoreUnavailable, Writers
from memoryd.stores.keys import AgentKeys
from memoryd.stores.redis import EXPIRY_GRACE_S
from memoryd.stores.redis_cluster import ClusterStore
from memoryd.validation import AGENT_ID_PATTERN, RECORD_ID_PATTERN, TYPE_PATTERN
from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import LOOPBACK, ClusterSet, Daemon
from tests.test_stores import NOW, make_record, put

AGENT = "craftsman_1"


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[ClusterStore]:
    store = ClusterStore(cluster_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def five_numbered_records_and_a_move(
    store: ClusterStore, cluster: ClusterSet
) -> tuple[int, int, int]:
    """Records 1-5 of AGENT, numbered and one expiring, as the daemon writes them:
    every key the apply script declares exists.  The agent's slot, its master, and
    another master to move it to."""
    records = [put(str(n), AGENT) for n in range(1, 5)]
    records.append(put("5", AGENT, expires_at=NOW + 10 * EXPIRY_GRACE_S))
    await store.apply(records, NOW, sequenced=Sequenced("wal-1", range(1, 6)))
    slot = cluster.key_slot(f"{{{AGENT}}}")
    source = cluster.slot_owner(slot)
    return slot, source, next(port for port in cluster.master_ports() if port != source)


async def ids_of(store: ClusterStore, agent_id: str) -> list[str]:
    found = await store.query(agent_id, Query(limit=1000, order="oldest"), NOW)
    return [record["id"] for record in found.value]


@given(
    agent_id=st.from_regex(AGENT_ID_PATTERN, fullmatch=True),
    record_id=st.from_regex(RECORD_ID_PATTERN, fullmatch=True),
    record_type=st.from_regex(TYPE_PATTERN, fullmatch=True),
    prefix=st.sampled_from(["", "app:", "{x}"]),
)
def test_every_key_of_an_agent_is_in_the_slot_of_the_keys_its_scripts_declare(
    agent_id: str, record_id: str, record_type: str, prefix: str
) -> None:
    """The scripts build record HASH and type ZSET names from prefixes in ARGV:
    legal on a cluster only because they hash to the declared keys' slot."""
    keys = AgentKeys(prefix, agent_id)
    slot = key_slot(keys.apply_keys[0].encode())
    built = [keys.memory(record_id), keys.type(record_type), *keys.apply_keys, *keys.repair_keys]
    assert {key_slot(key.encode()) for key in built} == {slot}


async def test_a_batch_spread_over_every_master_is_applied_and_read_back(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    agents = [f"agent_{n}" for n in range(30)]
    assert len({redis_cluster.node_for_key(f"{{{a}}}") for a in agents}) == 3
    await store.apply([put(str(n), agent) for n, agent in enumerate(agents)], NOW)
    for n, agent in enumerate(agents):
        assert await ids_of(store, agent) == [str(n)]
    assert await store.agents("agent_", 100) == sorted(agents)


async def test_writes_follow_a_slot_moved_under_them(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    """MOVED: the store's slot map is old; the batch is sent again where the slot is."""
    await store.apply([put("1", AGENT)], NOW)
    slot = redis_cluster.key_slot(f"{{{AGENT}}}")
    source = redis_cluster.slot_owner(slot)
    target = next(port for port in redis_cluster.master_ports() if port != source)
    redis_cluster.move_slot(slot, target)
    await store.apply([put("2", AGENT)], NOW)
    assert await ids_of(store, AGENT) == ["1", "2"]
    assert redis_cluster.node_for_key(f"{{{AGENT}}}") == target
    with redis_cluster.connect(target) as conn:
        assert conn.execute_command("ZCARD", f"agent:{{{AGENT}}}:memories:list") == 2


async def test_writes_during_a_slot_migration_land_once_it_is_done(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    """A slot half-moved: some of the agent's keys on each side, so its script gets
    TRYAGAIN (or ASK once all are across); sent again, it is applied exactly once."""
    await store.apply([put(str(n), AGENT) for n in range(1, 6)], NOW)
    slot = redis_cluster.key_slot(f"{{{AGENT}}}")
    source = redis_cluster.slot_owner(slot)
    target = next(port for port in redis_cluster.master_ports() if port != source)
    with redis_cluster.move_slot_in_steps(slot, target) as move:
        move.migrate_keys(2)
        writing = asyncio.create_task(store.apply([put("6", AGENT)], NOW))
        await asyncio.sleep(0.1)  # TRYAGAIN, and again: the migration goes on
        assert not writing.done()
    await writing
    assert await ids_of(store, AGENT) == [str(n) for n in range(1, 7)]
    assert (await store.stats(AGENT, NOW)).value.count == 6


async def test_a_delete_whose_record_moved_first_waits_and_leaves_exact_counts(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    """Mid-migration, the record's HASH is on the target while the agent's indexes
    are still on the source.  The script must fail before it writes anything (it
    touches every key first), or the index entry would go and the HASH and its
    bytes stay: the byte count would be wrong from then on.  Numbered writes and an
    expiring record, as the daemon's: every key the script declares exists, so it
    runs on the source instead of getting TRYAGAIN."""
    slot, source, target = await five_numbered_records_and_a_move(store, redis_cluster)
    with redis_cluster.move_slot_in_steps(slot, target):
        with redis_cluster.connect(source, decode=False) as conn:
            conn.execute_command(
                "MIGRATE", LOOPBACK, target, f"agent:{{{AGENT}}}:memory:1", 0, 5000
            )
        deleting = asyncio.create_task(
            store.apply([Delete(AGENT, "1")], NOW, sequenced=Sequenced("wal-1", [6]))
        )
        await asyncio.sleep(0.2)
    await deleting
    assert await ids_of(store, AGENT) == ["2", "3", "4", "5"]
    with redis_cluster.connect(target, decode=False) as conn:
        sizes = [
            conn.execute_command("HSTRLEN", f"agent:{{{AGENT}}}:memory:{n}", "data")
            for n in range(2, 6)
        ]
    stats = (await store.stats(AGENT, NOW)).value
    assert (stats.count, stats.bytes) == (4, sum(sizes))


async def test_a_master_killed_is_replaced_and_the_store_goes_on(
    own_cluster: ClusterSet,
) -> None:
    store = ClusterStore(own_cluster.url)
    await store.open()
    try:
        await store.apply([put("1", AGENT)], NOW)
        await store.durability()  # learns how many replicas to wait for
        assert (await store.durability()).until_s > 0, "the replicas confirm it"
        run_before = (await store.durability()).server_run
        master = own_cluster.node_for_key(f"{{{AGENT}}}")
        new_master = own_cluster.failover(master)
        for _ in range(100):  # the first tries meet the dead master; the map is read again
            try:
                await store.apply([put("2", AGENT)], NOW)
                break
            except StoreFailure:
                await asyncio.sleep(0.1)
        assert await ids_of(store, AGENT) == ["1", "2"]
        durability = await store.durability()
        assert durability.server_run != run_before, "another master: put back what is unconfirmed"
        assert f"127.0.0.1:{new_master}" in store.describe()["masters"]
    finally:
        await store.close()


async def test_one_shard_emptied_shows_in_the_marker_while_the_others_are_fine(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    token = await store.marker("first")
    assert token == "first" and await store.marker("second") == "first"
    with redis.Redis(LOOPBACK, redis_cluster.master_ports()[1]) as conn:
        conn.flushall()  # one shard restarted empty, say
    lost = await store.marker("third")
    assert lost != token, "the emptied shard's markers are new"
    assert await store.marker("fourth") == lost, "and stay so: one alert, not one per check"


async def test_the_writer_lease_counts_every_daemon_on_every_shard(store: ClusterStore) -> None:
    assert await store.renew_writer_lease("n1.daemon-a", 5.0) == Writers(1, False, 0)
    assert await store.renew_writer_lease("n1.daemon-a", 5.0) == Writers(1, True, 0)
    assert await store.renew_writer_lease("n1.daemon-b", 5.0) == Writers(2, False, 0)
    assert await store.renew_writer_lease("old-daemon", 5.0) == Writers(3, False, 1)


async def test_only_replicas_confirm_on_a_cluster(store: ClusterStore) -> None:
    await store.apply([put("1", AGENT)], NOW)
    await store.durability()
    assert (await store.durability()).until_s > 0
    min_two = ClusterStore(store.describe()["address"], min_replicas=2)
    await min_two.open()
    try:
        assert (await min_two.durability()).until_s == -math.inf, "no master has two"
    finally:
        await min_two.close()


def test_the_daemon_runs_on_a_cluster_and_shows_its_masters(
    cluster_url: str, daemon_dir: Daemon
) -> None:
    daemon_dir.env_overrides = {"MEMORYD_REDIS_URL": cluster_url}
    daemon = daemon_dir.start()
    with Client(daemon.socket_path, timeout_s=20) as client:
        for n in range(20):
            client.add(f"agent_{n}", "note", f"hello {n}")
        status = eventually(
            client.status,
            lambda s: s["state"] == "healthy" and s["wal"]["unconfirmed_records"] == 0,
            timeout_s=30,
            what="applied and confirmed by each shard's replica",
        )
        assert len(status["store"]["masters"]) == 3
        assert status["store"]["address"] == cluster_url
        assert [r["content"] for r in client.recent("agent_7", limit=5)] == ["hello 7"]
        assert len(client.agents(prefix="agent_")) == 20
    assert daemon.stop() == 0


async def test_a_cluster_down_is_the_store_unreachable_not_an_error(
    own_cluster: ClusterSet,
) -> None:
    """A shard lost with its replica: the cluster answers CLUSTERDOWN for every key
    (full coverage required), which is "not now" (writes wait in the WAL, the state
    is degraded), not an error in the writes themselves."""
    store = ClusterStore(own_cluster.url)
    await store.open()
    try:
        master = own_cluster.node_for_key("{a}")
        for port in (master, *own_cluster.replica_ports(master)):
            own_cluster.server_on(port).kill()
        survivor = next(port for port in own_cluster.master_ports() if port != master)
        own_cluster.wait(lambda: _cluster_failed(own_cluster, survivor), "the shard seen gone")
        agent = next(
            f"agent_{n}"
            for n in range(100)
            if own_cluster.node_for_key(f"{{agent_{n}}}") == survivor
        )
        with pytest.raises(StoreUnavailable, match="cluster is down"):
            await store.apply([put("1", agent)], NOW)
    finally:
        await store.close()


def _cluster_failed(cluster: ClusterSet, port: int) -> bool:
    with cluster.connect(port) as conn:
        info = cast(Any, conn).execute_command("CLUSTER", "INFO")
    return "cluster_state:fail" in str(info)


async def test_a_write_the_old_node_sends_on_with_ask_waits_for_the_slot(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    """Every key a script declares is across, a record's HASH is not: the old node
    answers ASK.  Followed behind ASKING, the script would run on the new node, take
    the HASH for gone and drop the record from its index; it waits for the slot."""
    slot, source, target = await five_numbered_records_and_a_move(store, redis_cluster)
    declared = AgentKeys("", AGENT).apply_keys
    with redis_cluster.move_slot_in_steps(slot, target):
        with redis_cluster.connect(source, decode=False) as conn:
            conn.execute_command("MIGRATE", LOOPBACK, target, "", 0, 5000, "KEYS", *declared)
        replaced = make_record("1", AGENT, content="replaced")
        replacing = asyncio.create_task(
            store.apply([Replace.of(replaced)], NOW, sequenced=Sequenced("wal-1", [6]))
        )
        await asyncio.sleep(0.2)
        assert not replacing.done(), "it waits while the slot moves"
    await replacing
    assert await ids_of(store, AGENT) == ["1", "2", "3", "4", "5"]
    got = (await store.get(AGENT, "1", NOW)).value
    assert got is not None and got["content"] == "replaced"
    assert (await store.stats(AGENT, NOW)).value.count == 5


async def test_a_reshard_of_a_masters_lowest_slot_moves_its_confirm_key_along(
    store: ClusterStore, redis_cluster: ClusterSet
) -> None:
    """The confirm key of a master lives in its lowest slot; that slot moved, the
    next reading must use the new lowest, not fail on MOVED for ever."""
    await store.apply([put("1", AGENT)], NOW)
    await store.durability()
    assert (await store.durability()).until_s > 0
    lowest = redis_cluster.slot_map()[0][0]
    owner = redis_cluster.slot_owner(lowest)
    other = next(port for port in redis_cluster.master_ports() if port != owner)
    redis_cluster.move_slot(lowest, other)
    for _ in range(3):
        with contextlib.suppress(StoreFailure):
            await store.durability()  # the first reading may meet MOVED
    await store.apply([put("2", AGENT)], NOW)
    await store.durability()
    assert (await store.durability()).until_s > 0


async def test_no_node_answering_is_the_store_unreachable(own_cluster: ClusterSet) -> None:
    """redis-py's own errors for a cluster it cannot map are not RedisErrors; they
    must still reach the flusher as "unreachable", never as a crash."""
    store = ClusterStore(own_cluster.url)
    await store.open()
    try:
        for server in own_cluster.servers:
            server.kill()
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await store.apply([put("1", AGENT)], NOW)
            with pytest.raises(StoreUnavailable):
                await store.durability()
    finally:
        await store.close()
