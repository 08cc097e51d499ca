"""The original system's Redis code path, re-implemented from tableround.md sections 2.3-2.5.

Personal memories (RedisMemory v2), for agent ``id``:

- ``agent:{id}:memory:{memory_id}`` HASH id, type, content (JSON), timestamp, agent_id, created_at
- ``agent:{id}:memories:list`` and ``agent:{id}:memories:types:{type}`` ZSETs id -> timestamp
- ``agent:{id}:stats`` HASH total_memories, type_<type>, last_update

An add is one MULTI/EXEC pipeline (HSET + EXPIRE the record, ZADD + EXPIRE the list, ZADD +
EXPIRE the type set, HINCRBY total, HINCRBY type_<t>, HSET last_update, EXPIRE stats), then a
ZCARD, and when over ``max_memories`` a ZRANGE of the oldest and a pipeline of DELs plus
ZREMRANGEBYRANK.  newest-N and by-type are a ZREVRANGE then a pipeline of HGETALLs; search
fetches up to ``max_memories`` records that way and matches substrings in the client.  The
original's 50-entry per-instance record cache is left out: every read goes to Redis.

The shared meeting stream (GlobalMemory), for session ``sid``: ``meeting:{sid}:timeline`` ZSET,
``meeting:{sid}:speech:{speech_id}`` HASH, ``meeting:{sid}:participants`` and
``meeting:{sid}:stage`` HASHes.  record_speech is three separate round trips (ZADD, HSET,
EXPIRE); the context read is a ZREVRANGE of the newest ``n`` then one HGETALL per id in turn,
dropping the caller's own speeches afterwards (so it returns at most ``n``).  One deviation: the
speech id gets a random suffix, since the original ``{epoch_ms}_{agent_id}`` lets two speeches of
one agent in the same millisecond overwrite each other.

Both clients reach Redis over TCP, ``redis://127.0.0.1:<port>/0``: a host/port connection pool,
as the original's users ran it (``REDIS_HOST``/``REDIS_PORT``, localhost:6379 there).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from bench.backends.base import Records, contains_text
from bench.workload import Rec

TTL_S = 7 * 86400
MAX_MEMORIES = 1000
SCAN_BATCH = 100


def _memory_id() -> str:
    return f"{int(time.time() * 1000)}_{uuid.uuid4().hex[:8]}"


def _agent(stream: str) -> str:
    return f"agent:{stream}"


def _meeting(stream: str) -> str:
    return f"meeting:{stream}"


def _record_hash(stream: str, record: Rec, memory_id: str, ts: float) -> dict[Any, Any]:
    return {
        "id": memory_id,
        "type": record.type,
        "content": json.dumps(record.content, ensure_ascii=False),
        "timestamp": str(ts),
        "agent_id": stream,
        "created_at": datetime.fromtimestamp(ts).isoformat(),
    }


def _speech_hash(record: Rec, speech_id: str, ts: float) -> dict[Any, Any]:
    content = record.content
    return {
        "speech_id": speech_id,
        "agent_id": record.author,
        "agent_name": str(content.get("agent_name", "")),
        "speech_type": record.type,
        "content": str(content.get("content", "")),
        "stage": str(content.get("stage", "")),
        "timestamp": str(ts),
        "datetime": datetime.fromtimestamp(ts).isoformat(),
        "additional_data": json.dumps(content.get("additional_data", {}), ensure_ascii=False),
    }


def _strs(values: Any) -> list[str]:
    """A reply of strings (the clients run with ``decode_responses=True``)."""
    return cast(list[str], values)


def _hash(value: Any) -> dict[str, str]:
    return cast(dict[str, str], value)


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = dict(raw)
    record["content"] = json.loads(raw["content"])
    return record


def _add_pipeline(pipe: Any, stream: str, record: Rec) -> str:
    """Queue RedisMemory.add_memory's commands on ``pipe``; the new memory id."""
    memory_id = _memory_id()
    ts = time.time()
    base = _agent(stream)
    memory_key = f"{base}:memory:{memory_id}"
    list_key = f"{base}:memories:list"
    type_key = f"{base}:memories:types:{record.type}"
    stats_key = f"{base}:stats"
    pipe.hset(memory_key, mapping=_record_hash(stream, record, memory_id, ts))
    pipe.expire(memory_key, TTL_S)
    pipe.zadd(list_key, {memory_id: ts})
    pipe.expire(list_key, TTL_S)
    pipe.zadd(type_key, {memory_id: ts})
    pipe.expire(type_key, TTL_S)
    pipe.hincrby(stats_key, "total_memories", 1)
    pipe.hincrby(stats_key, f"type_{record.type}", 1)
    pipe.hset(stats_key, "last_update", datetime.fromtimestamp(ts).isoformat())
    pipe.expire(stats_key, TTL_S)
    return memory_id


def _meta_mapping(record: Rec) -> tuple[str, dict[Any, Any]]:
    if record.type == "participant":
        agent_id = str(record.content["agent_id"])
        value = json.dumps({**record.content, "join_time": time.time()}, ensure_ascii=False)
        return "participants", {agent_id: value}
    return "stage", {
        "current_stage": str(record.content.get("current_stage", "")),
        "update_time": datetime.now().isoformat(),
    }


class DirectRedis:
    """RedisMemory + GlobalMemory with redis-py's blocking client."""

    name = "direct-redis"

    def __init__(self, url: str, max_memories: int = MAX_MEMORIES) -> None:
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.max_memories = max_memories

    def add(self, stream: str, record: Rec) -> str:
        if record.kind == "speech":
            return self._record_speech(stream, record)
        if record.kind == "meta":
            suffix, mapping = _meta_mapping(record)
            self.redis.hset(f"{_meeting(stream)}:{suffix}", mapping=mapping)
            return ""
        pipe = self.redis.pipeline()
        memory_id = _add_pipeline(pipe, stream, record)
        results = pipe.execute()
        if all(results[:4]):
            self._cleanup(stream)
        return memory_id

    def _cleanup(self, stream: str) -> None:
        list_key = f"{_agent(stream)}:memories:list"
        count = int(self.redis.zcard(list_key))
        if count <= self.max_memories:
            return
        excess = count - self.max_memories
        oldest = _strs(self.redis.zrange(list_key, 0, excess - 1))
        pipe = self.redis.pipeline()
        for memory_id in oldest:
            pipe.delete(f"{_agent(stream)}:memory:{memory_id}")
        pipe.zremrangebyrank(list_key, 0, excess - 1)
        pipe.execute()

    def _record_speech(self, stream: str, record: Rec) -> str:
        ts = time.time()
        speech_id = f"{int(ts * 1000)}_{record.author}_{uuid.uuid4().hex[:4]}"
        base = _meeting(stream)
        speech_key = f"{base}:speech:{speech_id}"
        self.redis.zadd(f"{base}:timeline", {speech_id: ts})
        self.redis.hset(speech_key, mapping=_speech_hash(record, speech_id, ts))
        self.redis.expire(speech_key, TTL_S)
        return speech_id

    def add_many(self, items: Sequence[tuple[str, Rec]]) -> int:
        for stream, record in items:
            self.add(stream, record)
        return len(items)

    def _fetch(self, stream: str, index_key: str, n: int) -> Records:
        ids = _strs(self.redis.zrevrange(index_key, 0, n - 1))
        if not ids:
            return []
        pipe = self.redis.pipeline()
        for memory_id in ids:
            pipe.hgetall(f"{_agent(stream)}:memory:{memory_id}")
        return [_decode(raw) for raw in pipe.execute() if raw]

    def newest_n(self, stream: str, n: int) -> Records:
        return self._fetch(stream, f"{_agent(stream)}:memories:list", n)

    def by_type(self, stream: str, record_type: str, n: int) -> Records:
        return self._fetch(stream, f"{_agent(stream)}:memories:types:{record_type}", n)

    def context(self, stream: str, n: int, exclude_author: str) -> Records:
        base = _meeting(stream)
        speeches = []
        for speech_id in _strs(self.redis.zrevrange(f"{base}:timeline", 0, n - 1)):
            speech = _hash(self.redis.hgetall(f"{base}:speech:{speech_id}"))
            if speech:
                speeches.append(speech)
        speeches.reverse()
        return [dict(s) for s in speeches if s.get("agent_id") != exclude_author]

    def search(self, stream: str, query: str, n: int) -> Records:
        needle = query.lower()
        found = self._fetch(stream, f"{_agent(stream)}:memories:list", self.max_memories)
        return [r for r in found if contains_text(r["content"], needle)][:n]

    def clear(self, stream: str, *, shared: bool = False) -> None:
        pattern = f"{_meeting(stream) if shared else _agent(stream)}:*"
        keys = list(self.redis.scan_iter(match=pattern, count=SCAN_BATCH))
        for start in range(0, len(keys), SCAN_BATCH):
            self.redis.delete(*keys[start : start + SCAN_BATCH])

    def close(self) -> None:
        self.redis.close()


class AsyncDirectRedis:
    """The same with ``redis.asyncio``, as the original's async code used it."""

    name = "direct-redis-async"

    def __init__(self, url: str, max_memories: int = MAX_MEMORIES) -> None:
        self.redis = aioredis.Redis.from_url(url, decode_responses=True)
        self.max_memories = max_memories

    async def add(self, stream: str, record: Rec) -> str:
        if record.kind == "speech":
            return await self._record_speech(stream, record)
        if record.kind == "meta":
            suffix, mapping = _meta_mapping(record)
            await self.redis.hset(f"{_meeting(stream)}:{suffix}", mapping=mapping)
            return ""
        pipe = self.redis.pipeline()
        memory_id = _add_pipeline(pipe, stream, record)
        results = await pipe.execute()
        if all(results[:4]):
            await self._cleanup(stream)
        return memory_id

    async def _cleanup(self, stream: str) -> None:
        list_key = f"{_agent(stream)}:memories:list"
        count = int(await self.redis.zcard(list_key))
        if count <= self.max_memories:
            return
        excess = count - self.max_memories
        oldest = _strs(await self.redis.zrange(list_key, 0, excess - 1))
        pipe = self.redis.pipeline()
        for memory_id in oldest:
            pipe.delete(f"{_agent(stream)}:memory:{memory_id}")
        pipe.zremrangebyrank(list_key, 0, excess - 1)
        await pipe.execute()

    async def _record_speech(self, stream: str, record: Rec) -> str:
        ts = time.time()
        speech_id = f"{int(ts * 1000)}_{record.author}_{uuid.uuid4().hex[:4]}"
        base = _meeting(stream)
        speech_key = f"{base}:speech:{speech_id}"
        await self.redis.zadd(f"{base}:timeline", {speech_id: ts})
        await self.redis.hset(speech_key, mapping=_speech_hash(record, speech_id, ts))
        await self.redis.expire(speech_key, TTL_S)
        return speech_id

    async def add_many(self, items: Sequence[tuple[str, Rec]]) -> int:
        for stream, record in items:
            await self.add(stream, record)
        return len(items)

    async def _fetch(self, stream: str, index_key: str, n: int) -> Records:
        ids = _strs(await self.redis.zrevrange(index_key, 0, n - 1))
        if not ids:
            return []
        pipe = self.redis.pipeline()
        for memory_id in ids:
            pipe.hgetall(f"{_agent(stream)}:memory:{memory_id}")
        return [_decode(raw) for raw in await pipe.execute() if raw]

    async def newest_n(self, stream: str, n: int) -> Records:
        return await self._fetch(stream, f"{_agent(stream)}:memories:list", n)

    async def by_type(self, stream: str, record_type: str, n: int) -> Records:
        return await self._fetch(stream, f"{_agent(stream)}:memories:types:{record_type}", n)

    async def context(self, stream: str, n: int, exclude_author: str) -> Records:
        base = _meeting(stream)
        speeches = []
        for speech_id in _strs(await self.redis.zrevrange(f"{base}:timeline", 0, n - 1)):
            speech = _hash(await self.redis.hgetall(f"{base}:speech:{speech_id}"))
            if speech:
                speeches.append(speech)
        speeches.reverse()
        return [dict(s) for s in speeches if s.get("agent_id") != exclude_author]

    async def search(self, stream: str, query: str, n: int) -> Records:
        needle = query.lower()
        found = await self._fetch(stream, f"{_agent(stream)}:memories:list", self.max_memories)
        return [r for r in found if contains_text(r["content"], needle)][:n]

    async def clear(self, stream: str, *, shared: bool = False) -> None:
        pattern = f"{_meeting(stream) if shared else _agent(stream)}:*"
        keys = [key async for key in self.redis.scan_iter(match=pattern, count=SCAN_BATCH)]
        for start in range(0, len(keys), SCAN_BATCH):
            await self.redis.delete(*keys[start : start + SCAN_BATCH])

    async def close(self) -> None:
        await self.redis.aclose()
