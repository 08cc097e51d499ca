"""What a Redis says about keeping applied writes (Store.durability), on real
servers with each persistence setting, and the rule itself on INFO's fields."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import pytest

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
