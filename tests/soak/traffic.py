"""Direct clients beside the meetings: noise writers that keep caps and TTLs busy, and readers.

The noise writers (tasks on one ``AsyncClient``) write faster than
``max_memories`` allows per TTL, to a few agents, so every agent is trimmed all
the time; about one write in four carries a ttl_s of a few seconds, so records
also expire all the time; some updates and deletes go to records that may be
gone already (``NotFound`` is then the right answer, not an error).  The
readers (one blocking ``Client``) read those agents and the meetings' streams
with every read method, newest and oldest first, with filters, and check every
answer (``answers``).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from functools import partial
from typing import Any

from memoryd_client import AsyncClient, Client, errors
from memoryd_client.types import NewRecord, Order
from tests.soak.answers import check_records
from tests.soak.observed import Failed, Observer
from tests.soak.plan import Plan

NOISE_TYPES = ("note", "speech", "keywords", "plan")
WORDS = ("bamboo", "lamp", "walnut", "oak", "竹编", "灯具", "设计", "warm", "light", "frame")
QUERIES = ("bamboo", "lamp", "竹编", "oak", "missing-word")


def noise_agent(index: int) -> str:
    return f"soak-noise-{index}"


class Registry:
    """Agent ids recently written by the meetings, for the readers to read."""

    def __init__(self, size: int = 64) -> None:
        self._ids: deque[str] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, agent_id: str) -> None:
        with self._lock:
            self._ids.append(agent_id)

    def pick(self, rng: random.Random) -> str | None:
        with self._lock:
            return rng.choice(self._ids) if self._ids else None


def _content(rng: random.Random, n: int) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60)))
    return {"text": text, "n": n}


def _record(rng: random.Random, agent_id: str, n: int) -> NewRecord:
    record: NewRecord = {
        "agent_id": agent_id,
        "type": rng.choice(NOISE_TYPES),
        "content": _content(rng, n),
        "author": f"author-{n % 3}",
        "tags": ["noise", f"t{n % 4}"],
    }
    if rng.random() < 0.25:
        record["ttl_s"] = rng.uniform(1.0, 8.0)
    return record


def noise_writer(socket_path: str, plan: Plan, stop: threading.Event, observer: Observer) -> None:
    async def task(client: AsyncClient, index: int) -> None:
        rng = random.Random(f"soak-noise-{index}")
        recent_ids: deque[tuple[str, str]] = deque(maxlen=32)
        n = 0
        while not stop.is_set():
            agent_id = noise_agent(rng.randrange(plan.load.noise_agents))
            roll = rng.random()
            n += 1
            if roll < 0.6:
                r = _record(rng, agent_id, n)
                add = client.add(
                    agent_id,
                    r["type"],
                    r["content"],
                    author=r["author"],
                    tags=r["tags"],
                    ttl_s=r.get("ttl_s"),
                )
                added = await observer.acall("async add", add)
                if not isinstance(added, Failed):
                    recent_ids.append((agent_id, added["id"]))
            elif roll < 0.8:
                records = [_record(rng, agent_id, n + k) for k in range(rng.randint(3, 8))]
                n += len(records)
                await observer.acall("async add_many", client.add_many(records))
            elif recent_ids:
                target_agent, record_id = rng.choice(recent_ids)
                await _touch(client, observer, rng, target_agent, record_id, n)
            await asyncio.sleep(plan.load.noise_pause_s)

    async def main() -> None:
        async with AsyncClient(socket_path) as client:
            await asyncio.gather(*(task(client, i) for i in range(plan.load.noise_tasks)))

    asyncio.run(main())


async def _touch(
    client: AsyncClient,
    observer: Observer,
    rng: random.Random,
    agent_id: str,
    record_id: str,
    n: int,
) -> None:
    """An update, delete or get of a record that may have been trimmed or expired already."""
    gone = (errors.NotFound,)
    roll = rng.random()
    if roll < 0.5:
        update = client.update(agent_id, record_id, content=_content(rng, n), importance=0.5)
        await observer.acall("async update", update, expected=gone)
    elif roll < 0.75:
        await observer.acall("async delete", client.delete(agent_id, record_id), expected=gone)
    else:
        got = await observer.acall("async get", client.get(agent_id, record_id), expected=gone)
        if not isinstance(got, Failed) and (got["id"], got["agent_id"]) != (record_id, agent_id):
            observer.problem("get answered another record", f"{agent_id}/{record_id}: {got['id']}")


def reader(
    socket_path: str,
    plan: Plan,
    stop: threading.Event,
    observer: Observer,
    meetings: Registry,
) -> None:
    rng = random.Random("soak-reader")
    with Client(socket_path) as client:
        while not stop.is_set():
            agent_id = meetings.pick(rng) if rng.random() < 0.3 else None
            agent_id = agent_id or noise_agent(rng.randrange(plan.load.noise_agents))
            _read_once(client, observer, rng, agent_id)
            stop.wait(plan.load.reader_pause_s)


def _read_once(client: Client, observer: Observer, rng: random.Random, agent_id: str) -> None:
    roll = rng.random()
    asked_at = time.time()
    if roll < 0.55:
        order: Order = "oldest" if rng.random() < 0.2 else "newest"
        types = [rng.choice(NOISE_TYPES)] if rng.random() < 0.2 else None
        recent = partial(
            client.recent, agent_id, limit=rng.randint(1, 60), order=order, types=types
        )
        answer = observer.call("recent", recent)
        if not isinstance(answer, Failed):
            check_records(
                observer,
                "recent",
                agent_id,
                answer,
                newest_first=order == "newest",
                asked_at=asked_at,
            )
            if types and any(r["type"] not in types for r in answer):
                observer.problem("answer ignores its filter", f"recent {agent_id} types {types}")
    elif roll < 0.75:
        search = partial(client.search, agent_id, rng.choice(QUERIES), limit=rng.randint(1, 20))
        found = observer.call("search", search)
        if not isinstance(found, Failed):
            check_records(observer, "search", agent_id, found, asked_at=asked_at)
    elif roll < 0.9:
        stats = observer.call("stats", partial(client.stats, agent_id))
        if not isinstance(stats, Failed) and stats["count"] != sum(stats["by_type"].values()):
            observer.problem("stats disagree", f"{agent_id}: {stats}")
    else:
        listed = observer.call("agents", partial(client.agents, prefix="soak-noise-", limit=100))
        if not isinstance(listed, Failed) and len(listed) != len(set(listed)):
            observer.problem("duplicate id in an answer", f"agents: {listed}")
