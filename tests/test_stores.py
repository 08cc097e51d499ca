"""The Store contract, checked the same way on Redis and on the local store."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from memoryd.config import Settings
from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Query, Record, select
from memoryd.stores import LocalStore, RedisStore, Store, create_store
from memoryd.stores.base import APPLIED_KEPT_S, Sequenced, numbered
from memoryd.stores.memory import MemoryStore
from memoryd.stores.redis_cluster import ClusterStore

# Real time, not a fixed date: Redis expires record HASHes on its own clock
# (expires_at plus a grace), so expiries in the tests must lie in its future.
NOW = float(int(time.time()))
MAX_MEMORIES = 5

StoreFactory = Callable[[int], Awaitable[Store]]


def make_record(
    record_id: str,
    agent_id: str = "craftsman_1",
    *,
    type: str = "discussion",
    content: Any = "hello",
    author: str | None = None,
    tags: list[str] | None = None,
    created_at: float | None = None,
    expires_at: float | None = None,
    importance: float = 0.5,
    metadata: dict[str, Any] | None = None,
) -> Record:
    return {
        "id": record_id,
        "agent_id": agent_id,
        "type": type,
        "content": content,
        "author": author,
        "importance": importance,
        "tags": tags or [],
        "metadata": metadata or {},
        "created_at": NOW + int(record_id) if created_at is None else created_at,
        "expires_at": expires_at,
    }


def put(record_id: str, agent_id: str = "craftsman_1", **fields: Any) -> Put:
    return Put.of(make_record(record_id, agent_id, **fields))


@pytest.fixture(params=["redis", "cluster", "local", "memory"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    opened: list[Store] = []

    async def make(max_memories: int) -> Store:
        store: Store
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            store = RedisStore(url, max_memories=max_memories)
        elif request.param == "cluster":
            url = request.getfixturevalue("cluster_url")
            store = ClusterStore(url, max_memories=max_memories)
        elif request.param == "local":
            store = LocalStore(tmp_path / f"data{len(opened)}", max_memories=max_memories)
        else:
            store = MemoryStore(max_memories=max_memories)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(store_factory: StoreFactory) -> Store:
    return await store_factory(MAX_MEMORIES)


async def everything(store: Store, agent_id: str, now_s: float = NOW) -> list[Record]:
    return (await store.query(agent_id, Query(limit=10_000, order="oldest"), now_s)).value


async def ids(store: Store, agent_id: str, now_s: float = NOW) -> list[str]:
    return [record["id"] for record in await everything(store, agent_id, now_s)]


def expected_stats(records: list[Record]) -> dict[str, Any]:
    by_type: dict[str, int] = {}
    for record in records:
        by_type[record["type"]] = by_type.get(record["type"], 0) + 1
    created = [record["created_at"] for record in records]
    return {
        "count": len(records),
        "by_type": by_type,
        "bytes": sum(len(Put.of(record).data) for record in records),
        "oldest": min(created, default=None),
        "newest": max(created, default=None),
    }


async def assert_stats_match(store: Store, agent_id: str, now_s: float = NOW) -> None:
    stored = await everything(store, agent_id, now_s)
    assert ((await store.stats(agent_id, now_s)).value).as_dict() == expected_stats(stored)


# -- writes and reads ---------------------------------------------------------


async def test_put_get_round_trip(store: Store) -> None:
    record = make_record(
        "1",
        type="speech",
        content={
            "text": "木工の技は細部に宿る。職人の知恵を共有しよう 🪚",
            "parts": [1, 2.5, None, True, {"深い": ["入れ子", {"もっと": "深く"}]}],
        },
        author="designer_1",
        tags=["stage:design", "議論"],
        metadata={"source": {"meeting": 7, "seats": ["a", "b"]}},
        importance=0.9,
    )
    await store.apply([Put.of(record)], NOW)

    assert (await store.get("craftsman_1", "1", NOW)).value == record
    assert (await store.get("craftsman_1", "2", NOW)).value is None
    assert (await store.get("consumer_1", "1", NOW)).value is None
    assert await everything(store, "craftsman_1") == [record]
    await assert_stats_match(store, "craftsman_1")


async def test_a_numbered_batch_applied_again_changes_nothing_the_first_changed(
    store_factory: StoreFactory,
) -> None:
    """The flusher applies a batch again when its reply was lost, or after a restart
    before the checkpoint.  Each operation is idempotent on its own, but not the batch:
    with max_memories=2, [Put X, Put Z, Delete W] over {W} trims X and leaves {Z};
    applied again, Put X finds no X and brings it back, {X, Z}.  Numbered, it is skipped."""
    store = await store_factory(2)
    agent = "craftsman_1"
    await store.apply([put("20", created_at=NOW - 50)], NOW, sequenced=Sequenced("wal-a", [1]))
    batch: list[Op] = [put("10", created_at=NOW - 100), put("30"), Delete(agent, "20")]
    numbers = Sequenced("wal-a", [2, 3, 4])
    await store.apply(batch, NOW, sequenced=numbers)
    assert await ids(store, agent) == ["30"]

    await store.apply(batch, NOW, sequenced=numbers)  # the reply was lost: applied again
    await store.apply(batch[1:], NOW, sequenced=Sequenced("wal-a", [3, 4]))  # a replay's tail

    assert await ids(store, agent) == ["30"]
    await assert_stats_match(store, agent)
    # Another source's numbers are its own, and a later number of this one applies.
    await store.apply([put("40")], NOW, sequenced=Sequenced("wal-b", [2]))
    await store.apply([put("50")], NOW, sequenced=Sequenced("wal-a", [5]))
    assert await ids(store, agent) == ["40", "50"]


async def test_the_applied_numbers_outlive_the_agent_s_records(store_factory: StoreFactory) -> None:
    store = await store_factory(5)
    agent = "craftsman_1"
    batch: list[Op] = [put("1"), Clear(agent)]
    await store.apply(batch, NOW, sequenced=Sequenced("wal-a", [7, 8]))
    assert await ids(store, agent) == []
    await store.apply(batch[:1], NOW, sequenced=Sequenced("wal-a", [7]))
    assert await ids(store, agent) == [], "an emptied agent forgot what it had applied"


def test_numbers_must_match_the_operations() -> None:
    with pytest.raises(ValueError, match="2 operations but 1 sequence numbers"):
        list(numbered([put("1"), put("2")], Sequenced("wal-a", [1])))
    with pytest.raises(ValueError, match="needs a source"):
        Sequenced("", [1])


async def test_reapplying_the_same_ops_changes_nothing(store: Store) -> None:
    ops: list[Op] = [
        put("1"),
        put("2", type="speech"),
        put("3", expires_at=NOW + 1000),
        Replace.of(make_record("2", type="speech", content="edited")),
        Delete("craftsman_1", "1"),
        put("4", "consumer_1"),
    ]
    await store.apply(ops, NOW)
    first = (await everything(store, "craftsman_1"), (await store.stats("craftsman_1", NOW)).value)

    await store.apply(ops, NOW)
    await store.apply(ops[2:], NOW)

    assert (
        await everything(store, "craftsman_1"),
        (await store.stats("craftsman_1", NOW)).value,
    ) == first
    assert await ids(store, "craftsman_1") == ["2", "3"]
    assert await ids(store, "consumer_1") == ["4"]


async def test_put_of_an_existing_id_keeps_the_first(store: Store) -> None:
    await store.apply([put("1", content="first")], NOW)
    await store.apply([put("1", content="second", type="speech")], NOW)

    stored = (await store.get("craftsman_1", "1", NOW)).value
    assert stored is not None and stored["content"] == "first"
    await assert_stats_match(store, "craftsman_1")


async def test_replace(store: Store) -> None:
    await store.apply([put("1", content="short"), put("2")], NOW)
    replacement = make_record(
        "1", content="a much longer content " * 10, tags=["edited"], expires_at=NOW + 50
    )
    await store.apply([Replace.of(replacement)], NOW)

    assert (await store.get("craftsman_1", "1", NOW)).value == replacement
    await assert_stats_match(store, "craftsman_1")
    # The new expiry holds.
    assert (await store.get("craftsman_1", "1", NOW + 50)).value is None


async def test_replace_of_an_absent_record_is_a_no_op(store: Store) -> None:
    await store.apply([put("1")], NOW)
    await store.apply([Replace.of(make_record("9", content="ghost"))], NOW)

    assert await ids(store, "craftsman_1") == ["1"]
    assert (await store.get("craftsman_1", "9", NOW)).value is None
    await assert_stats_match(store, "craftsman_1")


async def test_replace_may_change_the_type(store: Store) -> None:
    await store.apply([put("1"), put("2")], NOW)
    await store.apply([Replace.of(make_record("1", type="keywords"))], NOW)

    assert ((await store.stats("craftsman_1", NOW)).value).by_type == {
        "discussion": 1,
        "keywords": 1,
    }
    found = (await store.query("craftsman_1", Query(types=frozenset({"keywords"})), NOW)).value
    assert [record["id"] for record in found] == ["1"]
    await assert_stats_match(store, "craftsman_1")


async def test_replace_with_a_past_expiry_removes_the_record(store: Store) -> None:
    await store.apply([put("1"), put("2")], NOW)
    await store.apply([Replace.of(make_record("1", expires_at=NOW - 1))], NOW)

    assert await ids(store, "craftsman_1") == ["2"]
    await assert_stats_match(store, "craftsman_1")


async def test_delete(store: Store) -> None:
    await store.apply([put("1"), put("2", type="speech"), put("3")], NOW)
    await store.apply([Delete("craftsman_1", "2"), Delete("craftsman_1", "99")], NOW)

    assert await ids(store, "craftsman_1") == ["1", "3"]
    assert (await store.get("craftsman_1", "2", NOW)).value is None
    stats = (await store.stats("craftsman_1", NOW)).value
    assert stats.by_type == {"discussion": 2}
    await assert_stats_match(store, "craftsman_1")


async def test_deleting_the_last_record_forgets_the_agent(store: Store) -> None:
    await store.apply([put("1")], NOW)
    await store.apply([Delete("craftsman_1", "1")], NOW)

    assert ((await store.stats("craftsman_1", NOW)).value).as_dict() == expected_stats([])
    assert await store.agents("", 10) == []


async def test_clear_removes_one_agent_only(store: Store) -> None:
    await store.apply(
        [put("1"), put("2", type="speech"), put("3", "craftsman_10"), put("4", "consumer_1")], NOW
    )
    await store.apply([Clear("craftsman_1")], NOW)

    assert await everything(store, "craftsman_1") == []
    assert (await store.get("craftsman_1", "1", NOW)).value is None
    assert ((await store.stats("craftsman_1", NOW)).value).as_dict() == expected_stats([])
    assert await ids(store, "craftsman_10") == ["3"]
    assert await ids(store, "consumer_1") == ["4"]
    await assert_stats_match(store, "craftsman_10")
    assert await store.agents("", 10) == ["consumer_1", "craftsman_10"]


async def test_clear_then_put_in_one_batch(store: Store) -> None:
    await store.apply([put("1"), put("2")], NOW)
    await store.apply([Clear("craftsman_1"), put("3"), Clear("nobody"), put("4")], NOW)

    assert await ids(store, "craftsman_1") == ["3", "4"]
    await assert_stats_match(store, "craftsman_1")


async def test_ops_of_several_agents_in_one_batch_keep_their_order(store: Store) -> None:
    ops: list[Op] = [
        put("1", "a"),
        put("2", "b"),
        Delete("a", "1"),
        put("3", "a"),
        Clear("b"),
        put("4", "b"),
    ]
    await store.apply(ops, NOW)

    assert await ids(store, "a") == ["3"]
    assert await ids(store, "b") == ["4"]


# -- trimming -------------------------------------------------------------------


async def test_trim_keeps_the_newest_max_memories(store: Store) -> None:
    record_ids = [str(n) for n in range(1, 9)]
    random.Random(7).shuffle(record_ids)
    types = ["discussion", "speech", "keywords"]
    ops: list[Op] = [put(rid, type=types[int(rid) % 3]) for rid in record_ids]
    await store.apply(ops, NOW)

    assert await ids(store, "craftsman_1") == ["4", "5", "6", "7", "8"]
    for trimmed in ("1", "2", "3"):
        assert (await store.get("craftsman_1", trimmed, NOW)).value is None
    for record_type in types:
        query = Query(limit=100, types=frozenset({record_type}))
        found = (await store.query("craftsman_1", query, NOW)).value
        assert all(int(record["id"]) > 3 for record in found)
    await assert_stats_match(store, "craftsman_1")
    assert ((await store.stats("craftsman_1", NOW)).value).count == MAX_MEMORIES

    # Replaying the whole batch trims the re-added old records again.
    await store.apply(ops, NOW)
    assert await ids(store, "craftsman_1") == ["4", "5", "6", "7", "8"]
    await assert_stats_match(store, "craftsman_1")


async def test_trim_breaks_ties_by_id(store: Store) -> None:
    ops: list[Op] = [put(rid, created_at=NOW) for rid in ("b", "a", "f", "d", "c", "e", "g")]
    await store.apply(ops, NOW)

    assert await ids(store, "craftsman_1") == ["c", "d", "e", "f", "g"]
    await assert_stats_match(store, "craftsman_1")


async def test_trim_happens_after_each_put(store: Store) -> None:
    await store.apply([put(str(n)) for n in range(1, 6)], NOW)
    # The sixth record trims "1" at once, before the delete would have made room.
    await store.apply([put("6"), Delete("craftsman_1", "2")], NOW)

    assert await ids(store, "craftsman_1") == ["3", "4", "5", "6"]
    await assert_stats_match(store, "craftsman_1")


async def test_an_older_record_than_all_is_trimmed_at_once(store: Store) -> None:
    await store.apply([put(str(n)) for n in range(10, 15)], NOW)
    await store.apply([put("1")], NOW)

    assert await ids(store, "craftsman_1") == ["10", "11", "12", "13", "14"]
    await assert_stats_match(store, "craftsman_1")


async def test_expired_records_do_not_count_towards_the_limit(store: Store) -> None:
    await store.apply([put(str(n), expires_at=NOW + 10) for n in range(1, 6)], NOW)
    await store.apply([put(str(n)) for n in range(6, 10)], NOW + 10)

    assert await ids(store, "craftsman_1", NOW + 10) == ["6", "7", "8", "9"]
    await assert_stats_match(store, "craftsman_1", NOW + 10)


# -- expiry ---------------------------------------------------------------------


async def test_expired_records_are_never_read(store: Store) -> None:
    await store.apply(
        [put("1", expires_at=NOW + 100), put("2", type="speech"), put("3", expires_at=NOW + 200)],
        NOW,
    )
    later = NOW + 100  # expires_at <= now: gone

    assert await ids(store, "craftsman_1", NOW + 99.5) == ["1", "2", "3"]
    assert (await store.get("craftsman_1", "1", later)).value is None
    assert await ids(store, "craftsman_1", later) == ["2", "3"]
    search = Query(text="hello", limit=10)
    assert [r["id"] for r in (await store.query("craftsman_1", search, later)).value] == ["3", "2"]
    stats = (await store.stats("craftsman_1", later)).value
    assert stats.count == 2
    assert stats.oldest == NOW + 2
    await assert_stats_match(store, "craftsman_1", later)


async def test_sweep_removes_due_records(store: Store) -> None:
    await store.apply(
        [
            put("1", expires_at=NOW + 10),
            put("2", expires_at=NOW + 20),
            put("3"),
            put("4", "consumer_1", expires_at=NOW + 10),
        ],
        NOW,
    )

    assert (await store.sweep(NOW)).removed == 0
    assert (await store.sweep(NOW + 10)).removed == 2
    assert (await store.sweep(NOW + 10)).removed == 0
    assert await ids(store, "craftsman_1", NOW + 10) == ["2", "3"]
    await assert_stats_match(store, "craftsman_1", NOW + 10)
    assert await store.agents("", 10) == ["craftsman_1"]

    assert (await store.sweep(NOW + 1000)).removed == 1
    assert await ids(store, "craftsman_1", NOW + 1000) == ["3"]
    await assert_stats_match(store, "craftsman_1", NOW + 1000)


async def test_an_expired_put_is_skipped(store: Store) -> None:
    await store.apply([put("1", expires_at=NOW), put("2", expires_at=NOW - 5), put("3")], NOW)

    assert await ids(store, "craftsman_1") == ["3"]
    await assert_stats_match(store, "craftsman_1")


async def test_stats_of_an_agent_whose_records_all_expired(store: Store) -> None:
    await store.apply([put("1", expires_at=NOW + 1), put("2", expires_at=NOW + 2)], NOW)

    assert ((await store.stats("craftsman_1", NOW + 2)).value).as_dict() == expected_stats([])


# -- queries --------------------------------------------------------------------


def query_fixture_records() -> list[Record]:
    rows = [
        ("1", "discussion", "Oak or WALNUT for the table?", "craftsman_1", ["stage:idea"]),
        ("2", "speech", "I prefer walnut", "consumer_1", ["stage:idea", "vote"]),
        ("3", "keywords", ["walnut", "oak"], None, []),
        ("4", "speech", {"text": "The legs need 木材 that is Strong"}, "craftsman_1", ["vote"]),
        ("5", "discussion", "Budget: 300 EUR", "manufacturer_1", ["stage:cost"]),
        ("6", "speech", "Élégant design", "designer_1", ["stage:idea"]),
        ("7", "speech", "walnut it is", None, ["stage:idea", "vote", "final"]),
    ]
    return [
        make_record(rid, "meeting_1", type=rtype, content=content, author=author, tags=tags)
        for rid, rtype, content, author, tags in rows
    ]


QUERIES = {
    "newest": Query(limit=3),
    "oldest": Query(limit=3, order="oldest"),
    "limit 1": Query(limit=1),
    "one type": Query(limit=10, types=frozenset({"speech"})),
    "one type oldest": Query(limit=2, order="oldest", types=frozenset({"speech"})),
    "several types": Query(limit=10, types=frozenset({"keywords", "discussion"})),
    "unknown type": Query(limit=10, types=frozenset({"nothing"})),
    "no types": Query(limit=10, types=frozenset()),
    "author": Query(limit=10, author="craftsman_1"),
    "exclude author": Query(limit=10, exclude_author="craftsman_1"),
    "one tag": Query(limit=10, tags=frozenset({"vote"})),
    "every tag": Query(limit=10, tags=frozenset({"vote", "stage:idea"})),
    "since": Query(limit=10, since=NOW + 3),
    "until": Query(limit=10, until=NOW + 3),
    "since and until": Query(limit=10, order="oldest", since=NOW + 2, until=NOW + 5),
    "text": Query(limit=10, text="walnut"),
    "text upper": Query(limit=10, text="WaLnUt"),
    "text in a map": Query(limit=10, text="strong"),
    "text cjk": Query(limit=10, text="木材"),
    "text non-ascii": Query(limit=10, text="élégant"),
    "text and type": Query(limit=10, text="walnut", types=frozenset({"speech"})),
    "combined": Query(
        limit=2,
        order="oldest",
        types=frozenset({"speech", "discussion"}),
        exclude_author="consumer_1",
        tags=frozenset({"stage:idea"}),
        since=NOW + 1,
    ),
}

EXPECTED_IDS = {
    "newest": ["7", "6", "5"],
    "oldest": ["1", "2", "3"],
    "limit 1": ["7"],
    "one type": ["7", "6", "4", "2"],
    "one type oldest": ["2", "4"],
    "several types": ["5", "3", "1"],
    "unknown type": [],
    "no types": [],
    "author": ["4", "1"],
    "exclude author": ["7", "6", "5", "3", "2"],
    "one tag": ["7", "4", "2"],
    "every tag": ["7", "2"],
    "since": ["7", "6", "5", "4", "3"],
    "until": ["2", "1"],
    "since and until": ["2", "3", "4"],
    "text": ["7", "3", "2", "1"],
    "text upper": ["7", "3", "2", "1"],
    "text in a map": ["4"],
    "text cjk": ["4"],
    "text non-ascii": [],  # case folding is ASCII-only: "É" is not "é"
    "text and type": ["7", "2"],
    "combined": ["1", "6"],
}


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_query_filters(store_factory: StoreFactory, name: str) -> None:
    store = await store_factory(100)
    records = query_fixture_records()
    await store.apply([Put.of(record) for record in records], NOW)

    found = (await store.query("meeting_1", QUERIES[name], NOW)).value

    assert [record["id"] for record in found] == EXPECTED_IDS[name]
    assert found == select(records, QUERIES[name], NOW)


async def test_query_pages_through_a_long_history(store_factory: StoreFactory) -> None:
    store = await store_factory(1000)
    records = [
        make_record(
            str(n),
            type=("speech", "discussion")[n % 2],
            content=f"needle {n}" if n % 97 == 0 else f"hay {n}",
            expires_at=NOW + 50 if n % 5 == 0 else None,
        )
        for n in range(1, 701)
    ]
    await store.apply([Put.of(record) for record in records], NOW)
    queries = [
        Query(limit=5, text="NEEDLE"),
        Query(limit=500, order="oldest", types=frozenset({"speech"})),
        Query(limit=1000, since=NOW + 100, until=NOW + 600),
        Query(limit=3, text="needle", order="oldest"),
    ]

    for now_s in (NOW, NOW + 50):
        for query in queries:
            assert (await store.query("craftsman_1", query, now_s)).value == select(
                records, query, now_s
            )
    await assert_stats_match(store, "craftsman_1", NOW + 50)


async def test_equal_created_at_orders_by_id(store: Store) -> None:
    await store.apply([put(rid, created_at=NOW) for rid in ("b", "c", "a")], NOW)

    newest = (await store.query("craftsman_1", Query(limit=10), NOW)).value
    assert [record["id"] for record in newest] == ["c", "b", "a"]
    assert await ids(store, "craftsman_1") == ["a", "b", "c"]


# -- agents -----------------------------------------------------------------------


async def test_agents_with_prefix_and_limit(store_factory: StoreFactory) -> None:
    store = await store_factory(100)
    names = ["craftsman_1", "craftsman_2", "consumer_1", "craftsman_10", "meeting:7", "craft"]
    await store.apply([put(str(n), name) for n, name in enumerate(names, 1)], NOW)

    assert await store.agents("", 100) == sorted(names)
    assert await store.agents("craftsman_", 100) == ["craftsman_1", "craftsman_10", "craftsman_2"]
    assert await store.agents("craftsman_", 2) == ["craftsman_1", "craftsman_10"]
    assert await store.agents("meeting:", 100) == ["meeting:7"]
    # Wildcards in the prefix match only themselves.
    assert await store.agents("craft%", 100) == []
    assert await store.agents("craftsman*", 100) == []
    assert await store.agents("c", 0) == []


# -- the rest of the protocol ---------------------------------------------------


async def test_ping_and_describe(store: Store) -> None:
    assert 0 <= await store.ping() < 5
    description = store.describe()
    assert description["kind"] == store.kind
    assert description["address"]
    assert description["server_version"]


async def test_eviction_facts(store: Store) -> None:
    eviction = await store.eviction()
    if store.kind in ("local", "memory"):
        assert eviction is None  # neither SQLite nor a dict drops records on its own
        assert "maxmemory_policy" not in store.describe()
    else:
        # The tests' Redis is started without a memory limit, as memoryd wants it.
        assert eviction is not None
        assert (eviction.policy, eviction.maxmemory_bytes) == ("noeviction", 0)
        assert not eviction.may_evict
        assert store.describe()["maxmemory_policy"] == "noeviction"
        assert store.describe()["evicted_keys"] == eviction.evicted_keys


@pytest.mark.parametrize("kind", ["redis", "local"])
async def test_create_store_follows_the_settings(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    redis_url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    settings = Settings(
        backend="auto", redis_url=redis_url, data_dir=tmp_path, max_memories=2, key_prefix="t:"
    )
    store = create_store(settings)
    assert store.kind == kind
    await store.open()
    try:
        await store.apply([put("1"), put("2"), put("3")], NOW)
        assert await ids(store, "craftsman_1") == ["2", "3"]
    finally:
        await store.close()


async def test_the_sweep_forgets_applied_numbers_after_applied_kept_s(tmp_path: Path) -> None:
    """Redis lets them expire (PEXPIRE, tests/test_methods.py); the stores in this
    process's files and memory forget them at the sweep."""
    for store in (LocalStore(tmp_path, max_memories=5), MemoryStore(max_memories=5)):
        await store.open()
        try:
            numbers = Sequenced("wal-a", [1])
            await store.apply([put("1")], NOW, sequenced=numbers)
            await store.apply([Delete("craftsman_1", "1")], NOW)
            await store.sweep(NOW + APPLIED_KEPT_S - 1)
            await store.apply([put("1")], NOW, sequenced=numbers)
            assert await ids(store, "craftsman_1") == [], "forgotten too early"
            await store.sweep(NOW + APPLIED_KEPT_S + 1)
            await store.apply([put("1")], NOW, sequenced=numbers)
            assert await ids(store, "craftsman_1") == ["1"], "never forgotten"
        finally:
            await store.close()
