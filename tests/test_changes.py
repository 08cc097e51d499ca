"""Change notices between daemons sharing a Redis: what a batch says it wrote,
what a watching daemon hears of it, and a missed notice ending the watch; on
a real Redis and a real Cluster."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Sequence

import pytest
import redis

from memoryd.stores.base import Store, WriterLease
from memoryd.stores.redis import RedisStore
from memoryd.stores.redis_cluster import ClusterStore
from tests.harness import RedisServer
from tests.test_stores import NOW, put


class Heard:
    """A ChangeListener that keeps what it hears."""

    def __init__(self) -> None:
        self.follows = asyncio.Event()
        self.agents: list[str] = []
        self.news = asyncio.Event()

    def following(self) -> None:
        self.follows.set()

    def changed(self, agent_ids: Sequence[str]) -> None:
        self.agents += agent_ids
        self.news.set()

    async def next_news(self) -> list[str]:
        await asyncio.wait_for(self.news.wait(), 5)
        self.news.clear()
        heard, self.agents = self.agents, []
        return heard


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
    store: Store = RedisStore(url) if request.param == "redis" else ClusterStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def watching(store: Store, daemon_id: str) -> tuple[Heard, asyncio.Task[None]]:
    heard = Heard()
    watch = asyncio.create_task(store.watch(daemon_id, heard))
    await asyncio.wait_for(heard.follows.wait(), 5)
    return heard, watch


async def test_a_daemon_hears_which_agents_another_wrote_and_not_its_own(store: Store) -> None:
    heard, watch = await watching(store, "daemon-a")
    try:
        agents = [f"agent_{n}" for n in range(6)]  # over every master of a cluster
        await store.apply([put(str(n), a) for n, a in enumerate(agents)], NOW, WriterLease("b", 5))
        told: list[str] = []
        while len(set(told)) < len(agents):
            told += await heard.next_news()
        assert sorted(set(told)) == agents
        await store.apply([put("9", "agent_0")], NOW, WriterLease("daemon-a", 5))
        await store.apply([put("10", "agent_1")], NOW, WriterLease("b", 5))
        assert await heard.next_news() == ["agent_1"], "its own write is not news to it"
    finally:
        watch.cancel()


async def test_a_sweep_by_another_daemon_is_news_too(store: Store) -> None:
    heard, watch = await watching(store, "daemon-a")
    try:
        await store.apply([put("1", "agent_x", expires_at=NOW + 10)], NOW, WriterLease("b", 5))
        assert await heard.next_news() == ["agent_x"]
        swept = await store.sweep(NOW + 20, WriterLease("b", 5))
        assert swept.removed == 1
        assert await heard.next_news() == ["agent_x"]
    finally:
        watch.cancel()


async def test_a_missed_notice_ends_the_watch(redis_server: RedisServer, redis_url: str) -> None:
    """Another daemon's count skipping (an entry trimmed before it was read, or never
    sent): the watch returns, and the daemon stops trusting what it holds."""
    store = RedisStore(redis_url)
    await store.open()
    try:
        heard, watch = await watching(store, "daemon-a")
        await store.apply([put("1", "agent_x")], NOW, WriterLease("b", 5))
        assert await heard.next_news() == ["agent_x"]
        with redis.Redis(unix_socket_path=str(redis_server.socket_path)) as conn:
            conn.xadd("memoryd:changes", {"w": "b", "n": 5, "a": "agent_y"})
        await asyncio.wait_for(watch, 5)
        assert heard.agents == []
    finally:
        await store.close()


async def test_batches_sent_at_once_by_one_daemon_keep_their_notices_in_order(
    store: Store,
) -> None:
    """The flusher's batches and the sweep's go out concurrently; were their counts
    taken in one order and sent in another, the reader would take it for a missed
    notice and stop answering from memory."""
    heard, watch = await watching(store, "daemon-a")
    lease = WriterLease("b", 5)
    try:
        writes = [store.apply([put(str(n), f"agent_{n % 5}")], NOW, lease) for n in range(40)]
        sweeps = [store.sweep(NOW, lease) for _ in range(10)]
        await asyncio.gather(*writes, *sweeps)
        told: set[str] = set()
        while len(told) < 5:
            told.update(await heard.next_news())
        await asyncio.sleep(0.2)
        assert not watch.done(), "no notice was taken for missed"
    finally:
        watch.cancel()


async def test_a_server_that_stops_answering_ends_the_watch(private_redis: RedisServer) -> None:
    """Frozen (or cut off without a word, as by a firewall dropping an idle
    connection): no FIN ever comes, and the watch still ends, within about one
    wait for news plus a socket timeout, instead of following nothing for ever."""
    store = RedisStore(private_redis.url, socket_timeout_s=0.5)
    await store.open()
    assert private_redis.process is not None
    try:
        heard, watch = await watching(store, "daemon-a")
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:
            await asyncio.wait_for(watch, 5)
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
    finally:
        await store.close()
