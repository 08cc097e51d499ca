"""A store in this process's memory, for unit tests beside the real ones.

It keeps the Store contract (memoryd.stores.base) as the SQLite and Redis
stores do, and passes the same conformance suite (tests/test_stores.py), so
tests of the layers above can run without a file or a server.  It is never
a stand-in for Redis in tests of Redis behaviour, and the daemon never
builds one.  Records are kept encoded and decoded on every read, as the
real stores do, so no caller can change a stored record through a reference.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from memoryd import __version__
from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Query, Record, decode_record, is_expired, select, sort_key
from memoryd.stores.base import (
    APPLIED_KEPT_S,
    AgentStats,
    ChangeListener,
    Durability,
    Eviction,
    Found,
    Sequenced,
    StoreError,
    StoreUnavailable,
    Swept,
    WriterLease,
    Writers,
    numbered,
)


class MemoryStore:
    kind = "memory"

    def __init__(self, *, max_memories: int = 1000) -> None:
        self._max_memories = max_memories
        # agent id -> record id -> (the record, its encoding as stored)
        self._agents: dict[str, dict[str, tuple[Record, bytes]]] = {}
        self._marker: str | None = None
        # (agent id, source) -> (the highest sequence number applied, when)
        self._applied: dict[tuple[str, str], tuple[int, float]] = {}
        self._failure: StoreUnavailable | StoreError | None = None

    def fail_with(self, failure: StoreUnavailable | StoreError | None) -> None:
        """Make every call that reaches the records raise ``failure``, until it is
        None again: how unit tests see the layers above fall back.  How Redis
        really fails is tested on real servers, never through this."""
        self._failure = failure

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    @property
    def identity(self) -> str:
        return f"memory:{id(self):x}"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def apply(
        self,
        ops: Sequence[Op],
        now_s: float,
        lease: WriterLease | None = None,
        sequenced: Sequenced | None = None,
    ) -> None:
        self._check()
        for agent_id in dict.fromkeys(op.agent_id for op in ops):
            self._expire(agent_id, now_s)
        for op, seq in numbered(ops, sequenced):
            if seq is not None and sequenced is not None:
                guard = (op.agent_id, sequenced.source)
                if seq <= self._applied.get(guard, (0, 0.0))[0]:
                    continue
                self._applied[guard] = (seq, now_s)
            self._apply(op, now_s)

    def _apply(self, op: Op, now_s: float) -> None:
        match op:
            case Put(record=record, data=data):
                records = self._agents.setdefault(record["agent_id"], {})
                if not is_expired(record, now_s) and record["id"] not in records:
                    records[record["id"]] = (record, data)
                    self._trim(record["agent_id"])
            case Replace(record=record, data=data):
                records = self._agents.get(record["agent_id"], {})
                if record["id"] in records:
                    if is_expired(record, now_s):
                        del records[record["id"]]
                    else:
                        records[record["id"]] = (record, data)
            case Delete(agent_id=agent_id, record_id=record_id):
                self._agents.get(agent_id, {}).pop(record_id, None)
            case Clear(agent_id=agent_id):
                self._agents.pop(agent_id, None)

    def _expire(self, agent_id: str, now_s: float) -> None:
        records = self._agents.get(agent_id, {})
        for record_id in [i for i, (record, _) in records.items() if is_expired(record, now_s)]:
            del records[record_id]

    def _trim(self, agent_id: str) -> None:
        records = self._agents[agent_id]
        excess = len(records) - self._max_memories
        if excess > 0:
            oldest = sorted(records.values(), key=lambda stored: sort_key(stored[0]))[:excess]
            for record, _ in oldest:
                del records[record["id"]]

    def _live(self, agent_id: str, now_s: float) -> list[tuple[Record, bytes]]:
        return [
            (decode_record(data), data)
            for record, data in self._agents.get(agent_id, {}).values()
            if not is_expired(record, now_s)
        ]

    # Reads are one step of this process: they never repair.

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Found[Record | None]:
        self._check()
        stored = self._agents.get(agent_id, {}).get(record_id)
        if stored is None or is_expired(stored[0], now_s):
            return Found(None)
        return Found(decode_record(stored[1]))

    async def query(self, agent_id: str, query: Query, now_s: float) -> Found[list[Record]]:
        self._check()
        if query.limit <= 0:
            return Found([])
        return Found(select((record for record, _ in self._live(agent_id, now_s)), query, now_s))

    async def stats(self, agent_id: str, now_s: float) -> Found[AgentStats]:
        self._check()
        stats = AgentStats()
        for record, data in self._live(agent_id, now_s):
            stats.count += 1
            stats.by_type[record["type"]] = stats.by_type.get(record["type"], 0) + 1
            stats.bytes += len(data)
            created = record["created_at"]
            stats.oldest = created if stats.oldest is None else min(stats.oldest, created)
            stats.newest = created if stats.newest is None else max(stats.newest, created)
        return Found(stats)

    async def agents(self, prefix: str, limit: int) -> list[str]:
        self._check()
        known = sorted(a for a, records in self._agents.items() if records and a.startswith(prefix))
        return known[: max(limit, 0)]

    async def ping(self) -> float:
        self._check()
        return 0.0

    async def marker(self, candidate: str) -> str:
        self._check()
        if self._marker is None:
            self._marker = candidate
        return self._marker

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> Writers:
        self._check()
        return Writers(1, True)  # nobody else can reach this process's memory

    async def watch(self, daemon_id: str, listener: ChangeListener) -> None:
        listener.following()
        await asyncio.Event().wait()

    async def sweep(self, now_s: float, lease: WriterLease | None = None) -> Swept:
        self._check()
        removed = 0
        for agent_id, records in self._agents.items():
            before = len(records)
            self._expire(agent_id, now_s)
            removed += before - len(records)
        for guard, (_, applied_at) in list(self._applied.items()):
            if applied_at <= now_s - APPLIED_KEPT_S:
                del self._applied[guard]
        return Swept(removed)

    async def durability(self) -> Durability:
        # In this process: gone with it, which is what a unit test wants.
        return Durability(server_run=self.identity, until_s=math.inf)

    async def server_run(self) -> str:
        return self.identity

    async def eviction(self) -> Eviction | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": "memory", "server_version": __version__}
