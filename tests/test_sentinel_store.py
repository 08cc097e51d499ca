"""The Redis store on a real Sentinel set, below the daemon: what it confirms
durable, and where it sends writes when the sentinels name another master."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import pytest
import redis

from memoryd.records import Query
from memoryd.stores.redis import RedisStore
from tests.harness import LOOPBACK, RedisServer, SentinelSet
from tests.test_stores import NOW, put

AGENT = "craftsman_1"


@pytest.fixture
async def sentinels() -> AsyncIterator[SentinelSet]:
    topology = SentinelSet(replicas=1).start()
    try:
        yield topology
    finally:
        topology.cleanup()


@pytest.fixture
async def store(sentinels: SentinelSet) -> AsyncIterator[RedisStore]:
    store = RedisStore(sentinels.url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _connect(server: RedisServer) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(server.socket_path))


def _address(server: RedisServer) -> str:
    host, port = server.tcp_address
    return f"{host}:{port}"


async def test_a_master_without_replicas_confirms_nothing_however_it_persists(
    sentinels: SentinelSet, store: RedisStore
) -> None:
    """On a Sentinel set a replica may take over: the master's own AOF (always) does
    not keep a write the replica never had, so only replicas confirm."""
    master, replica = sentinels.servers
    await store.apply([put("1", AGENT)], NOW)
    applied_at = time.time()
    assert (await store.durability()).until_s >= applied_at, "its replica confirms it"
    with _connect(master) as conn:
        conn.config_set("appendonly", "yes")
        conn.config_set("appendfsync", "always")
        sentinels.wait(
            lambda: (
                conn.info("persistence")["aof_rewrite_in_progress"] == 0
                and conn.info("persistence")["aof_enabled"] == 1
            ),
            "the AOF on",
        )
    replica.kill()
    with _connect(master) as conn:
        sentinels.wait(lambda: conn.info("replication")["connected_slaves"] == 0, "no replica")
    await store.apply([put("2", AGENT)], NOW)
    assert (await store.durability()).until_s == -math.inf


async def test_a_write_in_flight_to_a_master_the_sentinels_replaced_goes_to_the_new_one(
    sentinels: SentinelSet, store: RedisStore
) -> None:
    """A split brain made by hand: the replica made a master and the sentinels told
    to watch it instead, while a write is on its way to the old master (held up by
    CLIENT PAUSE).  The old master's reply is not taken: the write is sent to the
    master the sentinels name now, where it stays; the old one's copy is what Redis
    drops when it demotes a master."""
    old, new = sentinels.servers
    await store.apply([put("1", AGENT)], NOW)
    with _connect(new) as conn:
        conn.replicaof("NO", "ONE")
    host, port = new.tcp_address
    for sentinel_port in sentinels.sentinel_ports:
        with redis.Redis(LOOPBACK, sentinel_port) as conn:
            conn.execute_command("SENTINEL", "REMOVE", SentinelSet.SERVICE)
            conn.execute_command("SENTINEL", "MONITOR", SentinelSet.SERVICE, host, port, 2)
    sentinels.wait(lambda: sentinels.master_port() == port, "the sentinels to name the new one")

    with _connect(old) as conn:
        conn.execute_command("CLIENT", "PAUSE", "600", "WRITE")  # scripts wait
    writing = asyncio.create_task(store.apply([put("2", AGENT)], NOW))
    await asyncio.sleep(0.2)  # sent, held up by the pause
    await store.durability()  # asks the sentinels, as memoryd does every second
    await writing
    found = await store.query(AGENT, Query(limit=10, order="oldest"), NOW)
    assert [record["id"] for record in found.value] == ["1", "2"]
    assert store.describe()["master"] == _address(new)


async def test_the_store_leaves_the_old_master_as_soon_as_the_sentinels_announce_a_failover(
    sentinels: SentinelSet, store: RedisStore
) -> None:
    """``+switch-master``: with no command of its own to find it out (the old master
    still answers), the store follows the sentinels at once."""
    old, new = sentinels.servers
    await store.apply([put("1", AGENT)], NOW)
    assert store.describe()["master"] == _address(old)
    with redis.Redis(LOOPBACK, sentinels.sentinel_ports[0]) as conn:
        conn.execute_command("SENTINEL", "FAILOVER", SentinelSet.SERVICE)
    deadline = time.monotonic() + 20
    while store.describe()["master"] != _address(new):
        assert time.monotonic() < deadline, "the store did not follow the failover"
        await asyncio.sleep(0.05)
    found = await store.query(AGENT, Query(limit=10, order="oldest"), NOW)
    assert [record["id"] for record in found.value] == ["1"]
