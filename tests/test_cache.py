"""The read cache answers only what the store would answer, on both real stores.

Random histories of applied writes (old and new creation times, expiring
records, replaces, deletes, clears, trimming), fills from the store's answers,
fills that raced a write, and reads: whenever the cache answers, its answer
must be the store's.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memoryd.cache import CacheSettings, ReadCache
from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Query, Record, is_expired
from memoryd.stores.base import Found, Store
from memoryd.stores.local import LocalStore
from memoryd.stores.redis import RedisStore
from tests.harness import RedisServer

NOW = 1_800_000_000.0
AGENT = "agent_1"
MAX_MEMORIES = 3
# Fewer than MAX_MEMORIES (a view of the newest only) and more (a view that
# must mirror the trimming).
PER_AGENT = (2, 5)
TYPES = ("note", "idea")
AUTHORS = (None, "craftsman", "designer")
_prefixes = itertools.count()


def record(n: int, expiring: int, agent_id: str = AGENT) -> Record:
    # One creation time per id, old or new, as a client assigns it once.
    return {
        "id": f"R{n:04d}",
        "agent_id": agent_id,
        "type": TYPES[n % 2],
        "content": f"记录 {n} {'apple' if n % 3 == 0 else 'pear'}",
        "author": AUTHORS[n % 3],
        "importance": 0.5,
        "tags": [],
        "metadata": {},
        "created_at": NOW + (n * 37) % 101 - 50,
        "expires_at": None if expiring == 0 else NOW + expiring,
    }


queries = st.builds(
    Query,
    limit=st.integers(0, 8),
    order=st.sampled_from(["newest", "oldest"]),
    types=st.one_of(st.none(), st.sets(st.sampled_from(TYPES), min_size=1).map(frozenset)),
    exclude_author=st.sampled_from(AUTHORS),
    text=st.sampled_from([None, "apple"]),
)

steps = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 12), st.sampled_from([0, 0, 5, 30])),
    st.tuples(st.just("put"), st.integers(0, 12), st.sampled_from([0, 0, 5, 30])),
    st.tuples(st.just("replace"), st.integers(0, 12), st.sampled_from([0, 5, 30])),
    st.tuples(st.just("delete"), st.integers(0, 12)),
    st.tuples(
        st.just("clear"),
    ),
    st.tuples(st.just("advance"), st.sampled_from([1, 10])),
    st.tuples(st.just("fill"), st.integers(1, 8)),
    st.tuples(st.just("raced fill"), st.integers(1, 8), st.integers(0, 12)),
    st.tuples(st.just("read"), queries),
    st.tuples(st.just("read"), queries),
)

# Writes that are acknowledged but not applied yet, while a read looks ahead.
pending_writes = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 12), st.sampled_from([0, 0, 5])),
        st.tuples(st.just("replace"), st.integers(0, 12), st.sampled_from([0, 5])),
        st.tuples(st.just("delete"), st.integers(0, 12)),
        st.tuples(
            st.just("clear"),
        ),
    ),
    min_size=1,
    max_size=5,
)
steps = st.one_of(steps, st.tuples(st.just("read ahead"), pending_writes, queries))


@asynccontextmanager
async def opened(kind: str, redis_url: str) -> AsyncIterator[Store]:
    store: Store
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "local":
            store = LocalStore(Path(tmp), max_memories=MAX_MEMORIES)
        else:
            store = RedisStore(
                redis_url, key_prefix=f"cache{next(_prefixes)}:", max_memories=MAX_MEMORIES
            )
        await store.open()
        try:
            yield store
        finally:
            await store.close()


class History:
    """One store and one cache, driven through the same steps."""

    def __init__(self, store: Store, per_agent: int) -> None:
        self.store = store
        self.cache = ReadCache(
            CacheSettings(per_agent=per_agent, max_records=100, max_memories=MAX_MEMORIES)
        )
        self.cache.trust_until(math.inf)
        self.now_s = NOW
        self.seen: dict[str, Record] = {}
        self.answered = 0

    async def apply(self, op: Op) -> None:
        await self.store.apply([op], self.now_s)
        self.cache.applied([op], self.now_s)

    def write(self, step: tuple[Any, ...]) -> Op | None:
        """The operation the daemon would accept for a write step."""
        match step:
            case ("put", n, expiring):
                put = Put.of(record(n, expiring))
                self.seen.setdefault(put.record["id"], put.record)
                return put
            case ("replace", n, expiring):
                known = self.seen.get(f"R{n:04d}")
                if known is not None:  # the daemon replaces only records it has read
                    changed = {**known, "content": f"新 {n}", "expires_at": NOW + expiring}
                    return Replace.of(changed)  # type: ignore[arg-type]
            case ("delete", n):
                return Delete(AGENT, f"R{n:04d}")
            case ("clear",):
                return Clear(AGENT)
        return None

    async def read_ahead(self, writes: list[tuple[Any, ...]], query: Query) -> None:
        """A read while ``writes`` wait in the backlog: the cache must answer what the
        store holds once they are applied."""
        ops = [op for op in map(self.write, writes) if op is not None]
        answer = self.cache.answer(AGENT, query, self.now_s, ops)
        held = {rid: self.cache.get(AGENT, rid, self.now_s, ops) for rid in self.seen}
        for op in ops:
            await self.apply(op)
        if answer is not None:
            self.answered += 1
            assert answer == (await self.store.query(AGENT, query, self.now_s)).value
        for record_id, record in held.items():
            if record is not None:
                stored = (await self.store.get(AGENT, record_id, self.now_s)).value
                assert (None if is_expired(record, self.now_s) else record) == stored

    async def step(self, step: tuple[Any, ...]) -> None:
        match step:
            case ("put" | "replace" | "delete" | "clear", *_):
                op = self.write(step)
                if op is not None:
                    await self.apply(op)
            case ("read ahead", writes, query):
                await self.read_ahead(writes, query)
            case ("advance", seconds):
                self.now_s += seconds
            case ("fill", limit):
                token = self.cache.token()
                found = (await self.store.query(AGENT, Query(limit=limit), self.now_s)).value
                self.cache.fill(AGENT, found, limit, token)
            case ("raced fill", limit, n):
                # The store answers, then a write lands before the answer is used.
                token = self.cache.token()
                found = (await self.store.query(AGENT, Query(limit=limit), self.now_s)).value
                await self.step(("put", n, 0))
                self.cache.fill(AGENT, found, limit, token)
            case ("read", query):
                await self.check(query)

    async def check(self, query: Query) -> None:
        answer = self.cache.answer(AGENT, query, self.now_s)
        truth = (await self.store.query(AGENT, query, self.now_s)).value
        if answer is not None:
            self.answered += 1
            assert [r["id"] for r in answer] == [r["id"] for r in truth]
            assert answer == truth
        for record_id in self.seen:
            held = self.cache.get(AGENT, record_id, self.now_s)
            if held is not None:
                stored = (await self.store.get(AGENT, record_id, self.now_s)).value
                assert (None if is_expired(held, self.now_s) else held) == stored


async def run_history(
    kind: str, redis_url: str, history: list[tuple[Any, ...]], per_agent: int
) -> int:
    async with opened(kind, redis_url) as store:
        state = History(store, per_agent)
        for step in history:
            await state.step(step)
        for limit in (1, per_agent, MAX_MEMORIES + 1):
            await state.check(Query(limit=limit))
            await state.check(Query(limit=limit, order="oldest"))
        return state.answered


@pytest.mark.parametrize("per_agent", PER_AGENT)
@pytest.mark.parametrize("kind", ["local", "redis"])
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=st.lists(steps, max_size=30))
def test_the_cache_answers_what_the_store_answers(
    kind: str, per_agent: int, redis_server: RedisServer, history: list[tuple[Any, ...]]
) -> None:
    asyncio.run(run_history(kind, redis_server.url, history, per_agent))


def test_a_warm_cache_answers_filtered_and_unfiltered_reads(redis_server: RedisServer) -> None:
    """Not vacuous: after a fill, the common reads are answered from memory."""
    history: list[tuple[Any, ...]] = [("put", n, 0) for n in range(3)] + [("fill", 2)]
    reads = [Query(limit=2), Query(limit=1, types=frozenset({"note"})), Query(limit=1)]
    history += [("read", query) for query in reads]
    for kind in ("local", "redis"):
        answered = asyncio.run(run_history(kind, redis_server.url, history, per_agent=2))
        assert answered >= len(reads) + 1


def test_a_fill_that_raced_a_repair_is_refused() -> None:
    """A store that removed stale entries of the agent while a read paged through its index
    may have answered with records missing: the cache must not learn from that answer."""
    cache = ReadCache(CacheSettings(per_agent=4, max_records=100, max_memories=MAX_MEMORIES))
    cache.trust_until(math.inf)
    token = cache.token()
    cache.stale_removed(AGENT, since=token)  # the sweep or another read's repair
    cache.fill(AGENT, [record(1, 0)], 4, token)  # "fewer than asked: the whole agent"
    assert cache.answer(AGENT, Query(limit=4), NOW) is None
    cache.fill(AGENT, [record(1, 0)], 4, cache.token())
    assert cache.answer(AGENT, Query(limit=4), NOW) == [record(1, 0)]


def test_a_fill_made_while_a_sweep_ran_is_undone_when_the_sweep_reports() -> None:
    """The sweep reports the agents it repaired when it is done, after other reads may
    have paged across its removals and filled: those fills are undone, older ones kept."""
    cache = ReadCache(CacheSettings(per_agent=4, max_records=100, max_memories=MAX_MEMORIES))
    cache.trust_until(math.inf)
    cache.fill("older", [record(1, 0, "older")], 4, cache.token())
    sweep_started = cache.token()
    cache.fill(AGENT, [record(1, 0)], 4, cache.token())  # a read during the sweep
    assert cache.answer(AGENT, Query(limit=4), NOW) == [record(1, 0)]

    cache.stale_removed(AGENT, since=sweep_started)
    cache.stale_removed("older", since=sweep_started)

    assert cache.answer(AGENT, Query(limit=4), NOW) is None
    assert cache.answer("older", Query(limit=4), NOW) == [record(1, 0, "older")]


async def test_the_redis_store_reports_the_stale_entries_it_removes(
    redis_server: RedisServer,
) -> None:
    async with opened("redis", redis_server.url) as store:
        await store.apply([Put.of(record(1, 5)), Put.of(record(2, 0))], NOW)
        found = await store.query(AGENT, Query(limit=5), NOW + 10)
        assert found == Found([record(2, 0)], repaired=True)  # the expired one's entries went
        assert await store.query(AGENT, Query(limit=5), NOW + 10) == Found([record(2, 0)])
