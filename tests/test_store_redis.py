"""The Redis store, seen from inside Redis: the key layout contract, no orphans, repair, outages."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from memoryd.ops import Clear, Delete, Put, Replace
from memoryd.records import Query, decode_record
from memoryd.stores import (
    RedisStore,
    StoreError,
    StoreMisconfigured,
    StoreRefusing,
    StoreUnavailable,
)
from memoryd.stores.base import Eviction
from memoryd.stores.redis import EXPIRY_GRACE_S
from memoryd.stores.redis_link import translated
from tests import redis_view
from tests.harness import RedisServer
from tests.test_stores import NOW, assert_stats_match, make_record, put

A = "craftsman_1"
BASE = "agent:{craftsman_1}:"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, max_memories=5)
    await store.open()
    yield store
    await store.close()


def text_keys(conn: redis.Redis, prefix: str = "") -> set[str]:
    """Every key but the daemon's own (``memoryd:*``: its change notices, say)."""
    keys = {key.decode() for key in conn.scan_iter(count=1000)}
    return {key for key in keys if not key.startswith(prefix + "memoryd:")}


def agent_keys(conn: redis.Redis, prefix: str = "") -> dict[str, set[str]]:
    """Our keys by agent id, each without the ``{prefix}agent:{A}:`` part."""
    head = prefix + "agent:{"
    found: dict[str, set[str]] = defaultdict(set)
    for key in text_keys(conn):
        if key.startswith(head):
            agent_id, _, rest = key[len(head) :].partition("}:")
            found[agent_id].add(rest)
    return found


def assert_consistent(conn: redis.Redis, prefix: str = "") -> None:
    """Every index entry has its record, every record is indexed, stats are exact."""
    for agent_id, rests in agent_keys(conn, prefix).items():
        base = f"{prefix}agent:{{{agent_id}}}:"
        listed = dict(redis_view.scored(conn, base + "memories:list"))
        assert listed, f"{agent_id}: keys left without records: {sorted(rests)}"
        records = {rest[len("memory:") :] for rest in rests if rest.startswith("memory:")}
        assert records == set(listed), f"{agent_id}: records and list differ"

        types = {t: int(n) for t, n in redis_view.hash_text(conn, base + "memories:types").items()}
        type_zsets = {rest[len("memories:type:") :] for rest in rests if "memories:type:" in rest}
        assert set(types) == type_zsets
        by_type: dict[str, int] = defaultdict(int)
        expiring: dict[str, float] = {}
        for record_id, created_at in listed.items():
            data = redis_view.field_bytes(conn, base + "memory:" + record_id, "data")
            assert data is not None
            record = decode_record(data)
            assert conn.hget(base + "memory:" + record_id, "type") == record["type"].encode()
            assert record["created_at"] == created_at
            type_key = base + "memories:type:" + record["type"]
            assert conn.zscore(type_key, record_id) == created_at
            by_type[record["type"]] += 1
            if record["expires_at"] is not None:
                expiring[record_id] = record["expires_at"]
        assert types == by_type
        assert {t: conn.zcard(base + "memories:type:" + t) for t in types} == by_type
        expiry = dict(redis_view.scored(conn, base + "memories:expiry"))
        assert expiry == expiring

        stats = redis_view.hash_text(conn, base + "stats")
        assert int(stats["count"]) == len(listed)
        size = sum(conn.hstrlen(base + "memory:" + record_id, "data") for record_id in listed)
        assert int(stats["bytes"]) == size
        assert float(stats["oldest"]) == min(listed.values())
        assert float(stats["newest"]) == max(listed.values())


# -- the layout ---------------------------------------------------------------


async def test_key_layout(store: RedisStore, redis_conn: redis.Redis) -> None:
    first = Put.of(make_record("1", A, type="discussion", expires_at=NOW + 100))
    second = Put.of(make_record("2", A, type="speech", content="話す"))
    third = Put.of(make_record("3", A, type="speech"))
    await store.apply([first, second, third], NOW)

    assert agent_keys(redis_conn) == {
        A: {
            "memory:1",
            "memory:2",
            "memory:3",
            "memories:list",
            "memories:types",
            "memories:type:discussion",
            "memories:type:speech",
            "stats",
            "memories:expiry",
        }
    }
    assert redis_conn.type(BASE + "memory:1") == b"hash"
    assert redis_conn.hgetall(BASE + "memory:1") == {b"type": b"discussion", b"data": first.data}
    assert redis_conn.hgetall(BASE + "memory:2") == {b"type": b"speech", b"data": second.data}
    assert redis_conn.zrange(BASE + "memories:list", 0, -1, withscores=True) == [
        (b"1", NOW + 1),
        (b"2", NOW + 2),
        (b"3", NOW + 3),
    ]
    assert redis_conn.hgetall(BASE + "memories:types") == {b"discussion": b"1", b"speech": b"2"}
    assert redis_conn.zrange(BASE + "memories:type:speech", 0, -1, withscores=True) == [
        (b"2", NOW + 2),
        (b"3", NOW + 3),
    ]
    assert redis_conn.zrange(BASE + "memories:expiry", 0, -1, withscores=True) == [
        (b"1", NOW + 100)
    ]
    stats = redis_view.hash_text(redis_conn, BASE + "stats")
    assert set(stats) == {"count", "bytes", "oldest", "newest", "last_write"}
    assert int(stats["count"]) == 3
    assert int(stats["bytes"]) == len(first.data) + len(second.data) + len(third.data)
    assert float(stats["oldest"]) == NOW + 1
    assert float(stats["newest"]) == NOW + 3
    assert float(stats["last_write"]) == NOW

    # The HASH of an expiring record lives until expires_at plus the grace.
    assert redis_conn.pttl(BASE + "memory:1") > 0
    expected_ms = math.ceil((NOW + 100 + EXPIRY_GRACE_S) * 1000)
    assert redis_conn.execute_command("PEXPIRETIME", BASE + "memory:1") == expected_ms  # type: ignore[no-untyped-call]
    assert redis_conn.pttl(BASE + "memory:2") == -1
    assert_consistent(redis_conn)


async def test_replace_updates_the_hash_and_expiry(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    await store.apply([put("1", A, expires_at=NOW + 100), put("2", A)], NOW)
    replacement = Replace.of(make_record("1", A, content="new text", expires_at=None))
    await store.apply([replacement], NOW)

    assert redis_conn.hget(BASE + "memory:1", "data") == replacement.data
    assert redis_conn.pttl(BASE + "memory:1") == -1
    assert redis_conn.exists(BASE + "memories:expiry") == 0
    assert_consistent(redis_conn)


async def test_no_orphans_after_trim_expiry_delete_clear(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    types = ["discussion", "speech", "keywords"]
    ops = [
        put(str(n), agent, type=types[n % 3], expires_at=NOW + n if n % 4 == 0 else None)
        for n in range(1, 13)
        for agent in (A, "consumer_1")
    ]
    await store.apply(ops, NOW)
    assert_consistent(redis_conn)
    assert redis_conn.zcard(BASE + "memories:list") == 5

    await store.apply([Delete(A, "10"), Delete(A, "1")], NOW)
    assert_consistent(redis_conn)

    assert (await store.sweep(NOW + 12)).removed == 4  # "8" and "12" of each agent
    assert_consistent(redis_conn)

    await store.apply([Clear(A)], NOW + 12)
    assert_consistent(redis_conn)
    assert A not in agent_keys(redis_conn)

    await store.apply([Delete("consumer_1", n) for n in ("8", "9", "10", "11")], NOW + 12)
    assert agent_keys(redis_conn) == {}
    assert text_keys(redis_conn) == set()


async def test_key_prefix_is_in_front_of_every_key(redis_url: str, redis_conn: redis.Redis) -> None:
    store = RedisStore(redis_url, key_prefix="mem:", max_memories=5)
    plain = RedisStore(redis_url, max_memories=5)
    await store.open()
    await plain.open()
    try:
        await store.apply([put("1", A, expires_at=NOW + 5), put("2", A, type="speech")], NOW)

        assert all(key.startswith(b"mem:") for key in redis_conn.scan_iter())
        keys = text_keys(redis_conn, prefix="mem:")
        assert keys and all(key.startswith("mem:agent:{craftsman_1}:") for key in keys)
        assert_consistent(redis_conn, prefix="mem:")
        assert await store.agents("", 10) == [A]
        assert await plain.agents("", 10) == []
        assert (await plain.sweep(NOW + 5)).removed == 0
        assert (await store.sweep(NOW + 5)).removed == 1
        assert_consistent(redis_conn, prefix="mem:")
    finally:
        await store.close()
        await plain.close()


async def test_clear_leaves_other_keys_alone(store: RedisStore, redis_conn: redis.Redis) -> None:
    redis_conn.set("unrelated", "keep")
    redis_conn.set("session:{craftsman_1}", "keep")
    await store.apply([put("1", A), put("2", "craftsman_10"), put("3", "craftsman")], NOW)

    await store.apply([Clear(A)], NOW)

    assert redis_conn.get("unrelated") == b"keep"
    assert redis_conn.get("session:{craftsman_1}") == b"keep"
    assert set(agent_keys(redis_conn)) == {"craftsman_10", "craftsman"}
    assert_consistent(redis_conn)


# -- repair -------------------------------------------------------------------


async def test_a_read_repairs_an_expired_record(store: RedisStore, redis_conn: redis.Redis) -> None:
    await store.apply([put("1", A, expires_at=NOW + 10), put("2", A)], NOW)

    assert (await store.query(A, Query(limit=10), NOW + 10)).value == [make_record("2", A)]

    assert redis_conn.exists(BASE + "memory:1") == 0
    assert redis_conn.zscore(BASE + "memories:list", "1") is None
    assert redis_conn.zscore(BASE + "memories:type:discussion", "1") is None
    assert redis_conn.exists(BASE + "memories:expiry") == 0
    assert_consistent(redis_conn)


async def test_get_repairs_an_expired_record(store: RedisStore, redis_conn: redis.Redis) -> None:
    await store.apply([put("1", A, expires_at=NOW + 10)], NOW)

    assert (await store.get(A, "1", NOW + 10)).value is None

    assert text_keys(redis_conn) == set()


async def test_repair_when_the_hash_is_already_gone(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    await store.apply(
        [
            put("1", A, expires_at=NOW + 10),
            put("2", A, type="speech", content="evicted"),
            put("3", A, content="x" * 300),
        ],
        NOW,
    )
    # As if the grace had passed for "1" and Redis had evicted "2".
    redis_conn.delete(BASE + "memory:1", BASE + "memory:2")

    assert (await store.query(A, Query(limit=10), NOW + 10)).value == [
        make_record("3", A, content="x" * 300)
    ]

    assert_consistent(redis_conn)
    stats = (await store.stats(A, NOW + 10)).value
    assert stats.count == 1
    assert stats.by_type == {"discussion": 1}
    assert stats.bytes == len(put("3", A, content="x" * 300).data)


async def test_stats_repair_a_record_whose_hash_expired(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    await store.apply([put("1", A, type="speech", expires_at=NOW + 10), put("2", A)], NOW)
    redis_conn.delete(BASE + "memory:1")

    stats = (await store.stats(A, NOW + 10)).value

    assert stats.as_dict() == {
        "count": 1,
        "by_type": {"discussion": 1},
        "bytes": len(put("2", A).data),
        "oldest": NOW + 2,
        "newest": NOW + 2,
    }
    assert_consistent(redis_conn)


async def test_a_put_over_a_dangling_index_entry_stores_the_record(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    await store.apply([put("1", A), put("2", A)], NOW)
    redis_conn.delete(BASE + "memory:1")

    await store.apply([put("1", A, content="again")], NOW)

    assert (await store.get(A, "1", NOW)).value == make_record("1", A, content="again")
    assert_consistent(redis_conn)


# -- scripts and round trips --------------------------------------------------


async def test_one_script_call_per_agent_and_no_script_checks(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    redis_conn.config_resetstat()
    await store.apply([put(str(n), agent) for n in range(1, 4) for agent in ("a", "b", "c")], NOW)

    commands = redis_conn.info("commandstats")
    assert commands["cmdstat_evalsha"]["calls"] == 3
    assert not any("script" in name for name in commands)


async def test_lost_scripts_are_loaded_again(store: RedisStore, redis_conn: redis.Redis) -> None:
    redis_conn.script_flush()
    await store.apply([put("1", A)], NOW)
    redis_conn.script_flush()
    assert ((await store.stats(A, NOW)).value).count == 1
    redis_conn.script_flush()
    assert len((await store.query(A, Query(), NOW)).value) == 1


async def test_agents_ignore_keys_that_only_look_like_ours(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    await store.apply([put("1", A)], NOW)
    redis_conn.set("agent:{craftsman_1}:memories:type:x}:stats", "not an agent")
    redis_conn.set("agent:{bad agent}:stats", "not an agent")
    redis_conn.set("agent:{craftsman_1}:memories:type:y}:memories:expiry", "not an index")

    assert await store.agents("", 10) == [A]
    assert (await store.sweep(NOW + 10**9)).removed == 0


# -- failures -------------------------------------------------------------------


async def test_store_unavailable_when_redis_is_killed(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url, retries=1, socket_timeout_s=0.5, connect_timeout_s=0.5)
    await store.open()
    try:
        await store.apply([put("1", A)], NOW)
        private_redis.kill()

        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.apply([put("2", A)], NOW),
            lambda: store.get(A, "1", NOW),
            lambda: store.query(A, Query(), NOW),
            lambda: store.stats(A, NOW),
            lambda: store.agents("", 10),
            lambda: store.sweep(NOW),
            store.ping,
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert isinstance(caught.value.__cause__, redis.RedisError | OSError)

        # A new server knows none of the scripts: they are loaded again.
        private_redis.start()
        await store.apply([put("3", A)], NOW)
        assert [r["id"] for r in (await store.query(A, Query(), NOW)).value] == ["3"]
    finally:
        await store.close()


async def test_open_without_a_server_is_store_unavailable(private_redis: RedisServer) -> None:
    private_redis.kill()
    store = RedisStore(private_redis.url, retries=0, connect_timeout_s=0.5)
    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.close()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (BusyLoadingError("Redis is loading the dataset in memory"), StoreUnavailable),
        (ResponseError("LOADING Redis is loading the dataset in memory"), StoreUnavailable),
        (ReadOnlyError("You can't write against a read only replica."), StoreRefusing),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), StoreRefusing),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'."), StoreRefusing),
        (ResponseError("MISCONF Redis is configured to save RDB snapshots"), StoreRefusing),
        (ResponseError("READONLY You can't write against a read only replica."), StoreRefusing),
        (AuthenticationError("invalid username-password pair"), StoreMisconfigured),
        (ResponseError("NOAUTH Authentication required."), StoreMisconfigured),
        (
            NoPermissionError("this user has no permissions to run the 'evalsha' command"),
            StoreMisconfigured,
        ),
        (redis.ConnectionError("refused"), StoreUnavailable),
        (redis.TimeoutError("timed out"), StoreUnavailable),
        (ResponseError("ERR Error running script"), StoreError),
        (redis.DataError("bad value"), StoreError),
    ],
)
def test_redis_errors_aretranslated(error: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as caught, translated("test"):
        raise error
    assert type(caught.value) is expected
    assert caught.value.__cause__ is error


def test_describe_never_shows_the_password() -> None:
    store = RedisStore("redis://memoryd:s3cret@127.0.0.1:1/0")

    description = store.describe()

    assert description["kind"] == "redis"
    assert "s3cret" not in description["address"]
    assert description["address"] == "redis://memoryd:***@127.0.0.1:1/0"


# -- eviction -------------------------------------------------------------------
#
# A Redis whose maxmemory-policy evicts drops whole keys.  The tests below drop
# them by hand (DEL), one kind at a time, on a Redis whose policy evicts (so the
# store's first sweep repairs), then under real eviction.

LIST = BASE + "memories:list"
TYPES = BASE + "memories:types"
STATS = BASE + "stats"
EXPIRY = BASE + "memories:expiry"


def type_key(record_type: str) -> str:
    return BASE + "memories:type:" + record_type


@pytest.fixture(scope="module")
def lru_redis() -> Iterator[RedisServer]:
    """A Redis whose policy evicts, with room enough that it does not (until a test says)."""
    server = RedisServer().start("--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru")
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def lru_conn(lru_redis: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis(unix_socket_path=str(lru_redis.socket_path)) as conn:
        conn.flushall()
        conn.config_set("maxmemory", "256mb")
        conn.config_set("maxmemory-policy", "allkeys-lru")
        yield conn


@pytest.fixture
async def lru_store(lru_redis: RedisServer, lru_conn: redis.Redis) -> AsyncIterator[RedisStore]:
    store = RedisStore(lru_redis.url, max_memories=5)
    await store.open()
    yield store
    await store.close()


def four_records() -> list[Put]:
    return [
        put("1", A, type="speech", expires_at=NOW + 1000),
        put("2", A),
        put("3", A, type="speech"),
        put("4", A, expires_at=NOW + 2000),
    ]


def listed(conn: redis.Redis, key: str) -> list[tuple[str, float]]:
    return redis_view.scored(conn, key)


async def test_describe_and_eviction_report_the_policy(
    lru_store: RedisStore, store: RedisStore
) -> None:
    eviction = await lru_store.eviction()
    assert eviction.policy == "allkeys-lru"
    assert eviction.maxmemory_bytes == 256 * 1024 * 1024
    assert eviction.may_evict
    assert lru_store.describe()["maxmemory_policy"] == "allkeys-lru"
    assert lru_store.describe()["maxmemory_bytes"] == 256 * 1024 * 1024
    assert lru_store.describe()["evicted_keys"] == eviction.evicted_keys

    safe = await store.eviction()
    assert (safe.policy, safe.maxmemory_bytes, safe.evicted_keys) == ("noeviction", 0, 0)
    assert not safe.may_evict
    assert store.describe()["maxmemory_policy"] == "noeviction"


def test_every_policy_but_noeviction_may_evict() -> None:
    # Record HASHes carry an EXPIRE: the volatile-* policies may pick them too.
    for policy in (
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
        "unknown",
    ):
        assert Eviction(policy, 1 << 20, 0, "run").may_evict, policy
    assert not Eviction("noeviction", 1 << 20, 0, "run").may_evict


def test_evicted_since_counts_from_a_restart_or_a_reset() -> None:
    earlier = Eviction("allkeys-lru", 1 << 20, 100, "run-1")
    assert Eviction("allkeys-lru", 1 << 20, 130, "run-1").evicted_since(earlier) == 30
    assert Eviction("allkeys-lru", 1 << 20, 100, "run-1").evicted_since(earlier) == 0
    assert Eviction("allkeys-lru", 1 << 20, 7, "run-2").evicted_since(earlier) == 7  # restarted
    assert Eviction("allkeys-lru", 1 << 20, 7, "run-1").evicted_since(earlier) == 7  # RESETSTAT
    assert Eviction("allkeys-lru", 1 << 20, 7, "run-1").evicted_since(None) == 7


async def test_sweep_removes_index_entries_whose_record_was_evicted(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    await lru_store.apply(four_records(), NOW)
    lru_conn.delete(BASE + "memory:1", BASE + "memory:2")

    await lru_store.sweep(NOW)

    assert listed(lru_conn, LIST) == [("3", NOW + 3), ("4", NOW + 4)]
    assert listed(lru_conn, type_key("speech")) == [("3", NOW + 3)]
    assert listed(lru_conn, type_key("discussion")) == [("4", NOW + 4)]
    assert listed(lru_conn, EXPIRY) == [("4", NOW + 2000)]
    assert lru_conn.hgetall(TYPES) == {b"speech": b"1", b"discussion": b"1"}
    assert_consistent(lru_conn)
    await assert_stats_match(lru_store, A)


async def test_sweep_removes_type_entries_when_the_types_hash_was_evicted_too(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    # Without the types HASH nothing names the type ZSET of "1": SCAN finds it.
    await lru_store.apply(four_records(), NOW)
    lru_conn.delete(BASE + "memory:1", TYPES)

    await lru_store.sweep(NOW)

    assert listed(lru_conn, type_key("speech")) == [("3", NOW + 3)]
    assert lru_conn.hgetall(TYPES) == {b"speech": b"1", b"discussion": b"2"}
    assert_consistent(lru_conn)
    await assert_stats_match(lru_store, A)


async def test_sweep_indexes_again_records_whose_list_was_evicted(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    records = four_records()
    await lru_store.apply(records, NOW)
    lru_conn.delete(LIST)
    # The defect: the record answers `get`, but `recent` and `stats` do not know it.
    assert (await lru_store.get(A, "2", NOW)).value == records[1].record
    assert (await lru_store.query(A, Query(limit=10), NOW)).value == []

    await lru_store.sweep(NOW)

    assert listed(lru_conn, LIST) == [(str(n), NOW + n) for n in range(1, 5)]
    assert (await lru_store.query(A, Query(limit=10, order="oldest"), NOW)).value == [
        op.record for op in records
    ]
    assert_consistent(lru_conn)
    await assert_stats_match(lru_store, A)


async def test_sweep_recounts_stats_after_the_stats_hash_was_evicted(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    records = four_records()
    await lru_store.apply(records, NOW)
    lru_conn.delete(STATS)
    assert ((await lru_store.stats(A, NOW)).value).count == 0

    await lru_store.sweep(NOW)

    assert ((await lru_store.stats(A, NOW)).value).as_dict() == {
        "count": 4,
        "by_type": {"speech": 2, "discussion": 2},
        "bytes": sum(len(op.data) for op in records),
        "oldest": NOW + 1,
        "newest": NOW + 4,
    }
    assert_consistent(lru_conn)


async def test_sweep_rebuilds_an_evicted_type_zset(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    records = four_records()
    await lru_store.apply(records, NOW)
    lru_conn.delete(type_key("speech"))
    assert (await lru_store.query(A, Query(types=frozenset({"speech"})), NOW)).value == []

    await lru_store.sweep(NOW)

    assert listed(lru_conn, type_key("speech")) == [("1", NOW + 1), ("3", NOW + 3)]
    assert (await lru_store.query(A, Query(types=frozenset({"speech"})), NOW)).value == [
        records[2].record,
        records[0].record,
    ]
    assert_consistent(lru_conn)


async def test_sweep_rebuilds_an_evicted_expiry_index_and_expires_on_time(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    await lru_store.apply(four_records(), NOW)
    lru_conn.delete(EXPIRY)

    await lru_store.sweep(NOW)

    # Exact scores: the records' own expires_at, read from their data.
    assert listed(lru_conn, EXPIRY) == [("1", NOW + 1000), ("4", NOW + 2000)]
    assert_consistent(lru_conn)
    assert (await lru_store.sweep(NOW + 1000)).removed == 1
    assert listed(lru_conn, LIST) == [("2", NOW + 2), ("3", NOW + 3), ("4", NOW + 4)]
    await assert_stats_match(lru_store, A, NOW + 1000)


async def test_an_expired_record_without_index_entries_is_removed_not_indexed(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    await lru_store.apply(four_records(), NOW)
    lru_conn.delete(LIST, EXPIRY)

    assert (await lru_store.sweep(NOW + 1000)).removed == 1

    assert lru_conn.exists(BASE + "memory:1") == 0
    assert listed(lru_conn, LIST) == [("2", NOW + 2), ("3", NOW + 3), ("4", NOW + 4)]
    assert_consistent(lru_conn)
    await assert_stats_match(lru_store, A, NOW + 1000)


async def test_sweep_rebuilds_an_agent_of_which_only_the_records_are_left(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    records = four_records()
    await lru_store.apply(records, NOW)
    lru_conn.delete(LIST, TYPES, STATS, EXPIRY, type_key("speech"), type_key("discussion"))
    assert await lru_store.agents("", 10) == []

    await lru_store.sweep(NOW)

    assert await lru_store.agents("", 10) == [A]
    assert (await lru_store.query(A, Query(limit=10, order="oldest"), NOW)).value == [
        op.record for op in records
    ]
    assert_consistent(lru_conn)
    await assert_stats_match(lru_store, A)


async def test_records_indexed_again_are_trimmed_to_max_memories(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    await lru_store.apply([put(str(n), A) for n in range(1, 6)], NOW)
    lru_conn.delete(LIST)
    await lru_store.apply([put("6", A), put("7", A)], NOW)  # max_memories is 5

    await lru_store.sweep(NOW)

    assert [record_id for record_id, _ in listed(lru_conn, LIST)] == ["3", "4", "5", "6", "7"]
    assert lru_conn.exists(BASE + "memory:1", BASE + "memory:2") == 0
    assert_consistent(lru_conn)
    await assert_stats_match(lru_store, A)


async def test_sweep_tells_the_cache_which_agents_it_repaired(
    lru_store: RedisStore, lru_conn: redis.Redis
) -> None:
    await lru_store.apply([put("1", "a"), put("2", "a"), put("1", "b"), put("2", "b")], NOW)
    await lru_store.apply([put("1", "untouched")], NOW)
    lru_conn.delete("agent:{a}:memories:list")  # a's records come back to reads
    lru_conn.delete("agent:{b}:memory:1")  # b's index entries of "1" go

    swept = await lru_store.sweep(NOW)

    assert swept.changed == {"a"}
    assert swept.stale == {"b"}
    assert_consistent(lru_conn)


async def test_repair_runs_again_only_after_more_evictions(
    lru_redis: RedisServer, lru_conn: redis.Redis
) -> None:
    # volatile-lru evicts only keys with an EXPIRE: the records here have none,
    # so the evictions the test causes take its junk keys only.
    lru_conn.config_set("maxmemory-policy", "volatile-lru")
    store = RedisStore(lru_redis.url, max_memories=5)
    await store.open()
    try:
        await store.apply([put("1", A), put("2", A)], NOW)
        await store.sweep(NOW)  # the first sweep under a policy that evicts repairs
        lru_conn.delete(LIST)

        await store.sweep(NOW)
        assert lru_conn.exists(LIST) == 0, "nothing was evicted since: no repair"

        evicted = int(lru_conn.info("stats")["evicted_keys"])
        lru_conn.config_set("maxmemory", int(lru_conn.info("memory")["used_memory"]) + 200_000)
        for n in range(200):
            lru_conn.set(f"junk:{n}", b"j" * 10_000, ex=3600)
        assert int(lru_conn.info("stats")["evicted_keys"]) > evicted
        lru_conn.config_set("maxmemory", "256mb")

        await store.sweep(NOW)
        assert listed(lru_conn, LIST) == [("1", NOW + 1), ("2", NOW + 2)]
        assert_consistent(lru_conn)
    finally:
        await store.close()


async def test_the_sweep_of_a_redis_that_never_evicts_stays_cheap(
    store: RedisStore, redis_conn: redis.Redis
) -> None:
    await store.apply([put("1", A, expires_at=NOW + 100), put("2", A)], NOW)
    redis_conn.config_resetstat()

    await store.sweep(NOW)

    commands = redis_conn.info("commandstats")
    assert commands["cmdstat_scan"]["calls"] == 1  # the expiry indexes only
    assert commands["cmdstat_evalsha"]["calls"] == 1  # the expire step of the one agent
    assert "cmdstat_zscore" not in commands


async def test_sweep_repairs_what_real_eviction_left() -> None:
    server = RedisServer().start("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru")
    store = RedisStore(server.url, max_memories=1000)
    conn = redis.Redis(unix_socket_path=str(server.socket_path))
    try:
        await store.open()
        # One agent after the other: the agents written first go cold, and
        # eviction takes their lists as well as their records.
        kinds = ["discussion", "speech", "keywords"]
        for agent in range(16):
            for batch in range(10):
                first = agent * 200 + batch * 20
                await store.apply(
                    [
                        put(
                            str(n),
                            f"agent_{agent}",
                            type=kinds[n % 3],
                            content="x" * 400,
                            expires_at=NOW + 3600 if n % 2 else None,
                        )
                        for n in range(first, first + 20)
                    ],
                    NOW,
                )
        assert int(conn.info("stats")["evicted_keys"]) > 0
        # No more evictions from here on: the repair's own writes must not race them.
        conn.config_set("maxmemory", 0)
        orphans = orphan_kinds(conn)
        assert orphans["entries"] and orphans["records"], orphans

        await store.sweep(NOW)

        assert orphan_kinds(conn) == {"entries": 0, "records": 0}
        assert_consistent(conn)
        for agent_id in await store.agents("", 100):
            readable = (await store.query(agent_id, Query(limit=1000, order="oldest"), NOW)).value
            await assert_stats_match(store, agent_id)
            base = f"agent:{{{agent_id}}}:memory:"
            hashes = {key.decode()[len(base) :] for key in conn.scan_iter(base + "*")}
            assert {record["id"] for record in readable} == hashes
            for record_id in hashes:
                assert (await store.get(agent_id, record_id, NOW)).value is not None
    finally:
        conn.close()
        await store.close()
        server.cleanup()


def orphan_kinds(conn: redis.Redis) -> dict[str, int]:
    """Index entries without their record HASH, record HASHes their agent's list lacks."""
    entries = records = 0
    for agent_id, rests in agent_keys(conn).items():
        base = f"agent:{{{agent_id}}}:"
        hashes = {rest[len("memory:") :] for rest in rests if rest.startswith("memory:")}
        indexes = ["memories:list", "memories:expiry"]
        indexes += [rest for rest in rests if rest.startswith("memories:type:")]
        named: set[str] = set()
        for index in indexes:
            named |= set(redis_view.members(conn, base + index))
        entries += len(named - hashes)
        in_list = set(redis_view.members(conn, base + "memories:list"))
        records += len(hashes - in_list)
    return {"entries": entries, "records": records}
