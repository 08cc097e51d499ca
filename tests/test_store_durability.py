"""What a Redis says about keeping applied writes (Store.durability), on real
servers with each persistence setting, and the rule itself on INFO's fields."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis

from memoryd.stores.redis import RedisStore
from memoryd.stores.redis_commands import EVERYSEC_LAG_S, durable_until
from tests.harness import RedisServer
from tests.test_stores import NOW, put

PERSISTENCE = {
    "none": (),
    "aof always": ("--appendonly", "yes", "--appendfsync", "always"),
    "aof everysec": ("--appendonly", "yes", "--appendfsync", "everysec"),
}


@pytest.fixture(params=list(PERSISTENCE))
async def persisted(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, RedisStore]]:
    server = RedisServer().start(*PERSISTENCE[request.param])
    store = RedisStore(server.url)
    await store.open()
    try:
        yield request.param, store
    finally:
        await store.close()
        server.cleanup()


async def test_each_persistence_setting_confirms_what_it_can(
    persisted: tuple[str, RedisStore],
) -> None:
    kind, store = persisted
    # A write, so that "no change since the last save" does not say all.
    await store.apply([put("1")], NOW)
    before = time.time()
    durability = await store.durability()
    if kind == "aof always":
        assert durability.until_s == math.inf
    elif kind == "aof everysec":
        assert before - EVERYSEC_LAG_S - 1 < durability.until_s <= time.time() - EVERYSEC_LAG_S
    else:
        assert durability.until_s == -math.inf
    assert durability.server_run


def test_the_rule_on_info_persistence() -> None:
    now = 1000.0
    ok_rdb = {"rdb_last_bgsave_status": "ok", "rdb_bgsave_in_progress": 0}
    assert durable_until({**ok_rdb, "rdb_changes_since_last_save": 5}, None, now) == -math.inf
    assert durable_until({**ok_rdb, "rdb_changes_since_last_save": 0}, None, now) == now
    busy = {**ok_rdb, "rdb_changes_since_last_save": 0, "rdb_bgsave_in_progress": 1}
    assert durable_until(busy, None, now) == -math.inf
    aof = {"aof_enabled": 1, "aof_last_write_status": "ok", "rdb_changes_since_last_save": 9}
    assert durable_until(aof, "always", now) == math.inf
    assert durable_until(aof, "everysec", now) == now - EVERYSEC_LAG_S
    assert durable_until(aof, "no", now) == -math.inf
    assert durable_until(aof, None, now) == -math.inf, "CONFIG denied: the policy is unknown"
    failing = {**aof, "aof_last_write_status": "err"}
    assert durable_until(failing, "always", now) == -math.inf


@pytest.fixture
async def replicated() -> AsyncIterator[tuple[RedisServer, RedisServer]]:
    master = RedisServer(tcp=True).start()
    replica = RedisServer().start("--replicaof", *map(str, master.tcp_address))
    try:
        with redis.Redis(unix_socket_path=str(replica.socket_path)) as conn:
            deadline = time.monotonic() + 10
            while conn.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.05)
        yield master, replica
    finally:
        replica.cleanup()
        master.cleanup()


async def test_with_a_replica_a_write_is_confirmed_once_it_has_it(
    replicated: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = replicated
    store = RedisStore(master.url)
    await store.open()
    try:
        await store.apply([put("1")], NOW)
        applied_at = time.time()
        durability = await store.durability()
        assert durability.until_s >= applied_at, "WAIT saw the replica take it"
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)  # it stops acknowledging
        try:
            await store.apply([put("2")], NOW)
            assert (await store.durability()).until_s == -math.inf, "a WAIT timeout fails nothing"
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        assert (await store.durability()).until_s > applied_at
        wanting_two = RedisStore(master.url, min_replicas=2)
        await wanting_two.open()
        try:
            assert (await wanting_two.durability()).until_s == -math.inf
        finally:
            await wanting_two.close()
    finally:
        await store.close()
