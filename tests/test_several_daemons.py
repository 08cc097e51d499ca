"""Three daemons on one Redis (one per host, in production) writing one meeting's
stream at once: the store's rules hold across them (order by created_at, the
trim to max_memories, exact stats), and each daemon's reads, from memory,
agree with the store once the writes are applied."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis

from memoryd_client import Client
from tests.daemons import eventually
from tests.harness import Daemon, RedisServer
from tests.test_store_redis import assert_consistent

MAX_MEMORIES = 40
STREAM = "meeting:retro"


@pytest.fixture
def three_daemons(private_redis: RedisServer) -> Iterator[list[Daemon]]:
    env = {"MEMORYD_REDIS_URL": private_redis.url, "MEMORYD_MAX_MEMORIES": str(MAX_MEMORIES)}
    daemons = [Daemon(env_overrides=env) for _ in range(3)]
    try:
        for daemon in daemons:
            daemon.start()
        yield daemons
    finally:
        for daemon in daemons:
            daemon.cleanup()


def read_cache(client: Client) -> dict[str, Any]:
    cache: dict[str, Any] = client.status()["read_cache"]
    return cache


def newest_ids(client: Client) -> list[str]:
    return [record["id"] for record in client.recent(STREAM, limit=10)]


def _write(daemon: Daemon, writer: str, count: int) -> None:
    with Client(daemon.socket_path, timeout_s=20) as client:
        for n in range(count):
            client.add(STREAM, "discussion", f"{writer} says {n}", author=writer)
            if n % 7 == 0:
                client.recent(STREAM, limit=5)  # the views are filled while others write


def test_three_daemons_writing_one_stream_keep_its_rules_and_agree(
    three_daemons: list[Daemon], private_redis: RedisServer
) -> None:
    for daemon in three_daemons:
        with Client(daemon.socket_path) as client:
            eventually(
                partial(read_cache, client),
                lambda cache: bool(cache["from_memory"] and cache["writers"] == 3),
                timeout_s=10,
                what="each daemon to count three writers and follow their notices",
            )
    threads = [
        threading.Thread(target=_write, args=(daemon, f"writer-{n}-{m}", 60))
        for n, daemon in enumerate(three_daemons)
        for m in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    clients = [Client(daemon.socket_path, timeout_s=20) for daemon in three_daemons]
    try:
        for client in clients:
            eventually(
                client.status,
                lambda s: s["wal"]["backlog_records"] == 0 and s["read_cache"]["writers"] == 3,
                timeout_s=30,
                what="every write applied, three writers seen",
            )
        with redis.Redis(unix_socket_path=str(private_redis.socket_path)) as conn:
            assert_consistent(conn)  # indexes, types and stats exact
            newest = [
                member.decode()
                for member in conn.zrevrange(f"agent:{{{STREAM}}}:memories:list", 0, -1)
            ]
        assert len(newest) == MAX_MEMORIES, "trimmed to max_memories across daemons"
        for client, daemon in zip(clients, three_daemons, strict=True):
            assert client.stats(STREAM)["count"] == MAX_MEMORIES
            eventually(
                partial(newest_ids, client),
                lambda ids: ids == newest[:10],
                timeout_s=2,
                what="each daemon's newest 10 to be the store's",
            )
            hits_before = int(read_cache(client)["hits"])
            for _ in range(3):
                assert newest_ids(client) == newest[:10]
            cache = read_cache(client)
            assert cache["from_memory"], daemon.log()[-3000:]
            assert int(cache["hits"]) == hits_before + 3, "answered from memory"
    finally:
        for client in clients:
            client.close()
