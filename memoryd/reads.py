"""The one read path: what the store holds, with the agent's backlog laid over it.

A read takes the read cache's answer where it is exact (memoryd.cache), else
the store's, and lays the agent's not-yet-applied writes over it, so a client
always reads its own writes.  While the store is down it answers at once from
the cache and the backlog, and says so (``degraded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from memoryd.backlog import (
    UNKNOWN,
    Backlog,
    Unknown,
    hides_store,
    merge_get,
    merge_is_exact,
    merge_query,
    store_fetch_limit,
)
from memoryd.cache import ReadCache
from memoryd.config import Settings
from memoryd.errors import BackendUnavailable, DeadlineExceeded
from memoryd.flusher import Flusher
from memoryd.health import Health
from memoryd.ops import Entry
from memoryd.records import Query, Record, is_expired
from memoryd.stores.base import Found, Store, StoreFailure

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ReadSettings:
    """What the read path takes from the settings."""

    max_memories: int
    request_timeout_s: float
    read_barrier_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> ReadSettings:
        return cls(
            max_memories=settings.max_memories,
            request_timeout_s=settings.request_timeout_s,
            read_barrier_timeout_s=settings.read_barrier_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """Records in the order asked; ``degraded``: the store could not be asked."""

    records: list[Record]
    degraded: bool


class Reader:
    def __init__(
        self,
        settings: ReadSettings,
        *,
        store: Store,
        backlog: Backlog,
        flusher: Flusher,
        health: Health,
        cache: ReadCache,
    ) -> None:
        self._settings = settings
        self._store = store
        self._backlog = backlog
        self._flusher = flusher
        self._health = health
        self._cache = cache

    def reconfigure(self, settings: ReadSettings) -> None:
        self._settings = settings

    async def get(self, agent_id: str, record_id: str) -> Record | None:
        """The record, None if it is known not to exist, else BackendUnavailable."""
        if not self._health.store_down:
            now_s = time.time()
            pending = [entry.op for entry in self._backlog.for_agent(agent_id)]
            held = self._cache.get(agent_id, record_id, now_s, pending)
            if held is not None:
                self._cache.hits += 1
                return None if is_expired(held, now_s) else held
        entries = await self._pending(agent_id)
        now_s = time.time()
        stored: Record | None | Unknown = self._cache.known(agent_id, record_id) or UNKNOWN
        if hides_store(entries):
            stored = None
        elif not self._health.store_down:
            token = self._cache.token()
            try:
                found = self._repaired(
                    agent_id, await self._store.get(agent_id, record_id, now_s), token
                )
            except StoreFailure:
                pass  # answered from the backlog alone
            else:
                stored = found
                self._cache.remember(agent_id, [found] if found is not None else [], token)
        record = merge_get(stored, entries, record_id, now_s)
        if record is UNKNOWN:
            raise BackendUnavailable(
                "the store is unreachable and the record is not among the writes memoryd "
                "still holds; retry when the store is back"
            )
        return record

    async def query(self, agent_id: str, query: Query) -> Answer:
        entries = tuple(self._backlog.for_agent(agent_id))
        if not self._health.store_down:
            # What the store will hold once the backlog is applied, from memory:
            # exact without waiting for the flusher.
            pending = [entry.op for entry in entries]
            found = self._cache.answer(agent_id, query, time.time(), pending)
            if found is not None:
                self._cache.hits += 1
                return Answer(found, degraded=False)
        if entries and not merge_is_exact(query, entries, self._settings.max_memories):
            entries = await self._pending(agent_id)
        now_s = time.time()
        degraded = self._health.store_down
        stored: list[Record] = []
        if not degraded and not hides_store(entries):
            fetch = dataclasses.replace(query, limit=store_fetch_limit(query, entries))
            try:
                stored = await self._stored_answer(agent_id, fetch, now_s)
            except StoreFailure:
                degraded = True
        if degraded and not hides_store(entries):
            stored = self._cache.records(agent_id)
        merge = entries or degraded
        records = merge_query(stored, entries, query, now_s) if merge else stored
        return Answer(records, degraded)

    async def stats(self, agent_id: str) -> dict[str, Any]:
        """Stats from the store, once the agent's backlog has reached it."""
        last_seq = self._backlog.last_seq_for(agent_id)
        if self._health.store_down:
            raise BackendUnavailable("the store is unreachable; stats need it")
        try:
            if last_seq:
                await asyncio.wait_for(
                    self._flusher.wait_applied(last_seq), self._settings.request_timeout_s
                )
            token = self._cache.token()
            stats = self._repaired(agent_id, await self._store.stats(agent_id, time.time()), token)
        except TimeoutError:
            raise DeadlineExceeded("the agent's writes were not applied in time") from None
        except StoreFailure as exc:
            raise BackendUnavailable(f"the store is unreachable: {exc}") from exc
        return stats.as_dict()

    def held_count(self, agent_id: str) -> int:
        """How many of the agent's records the backlog alone holds now."""
        query = Query(limit=self._settings.max_memories)
        return len(merge_query([], self._backlog.for_agent(agent_id), query, time.time()))

    async def agents(self, prefix: str, limit: int) -> tuple[list[str], bool]:
        """The agents with records or pending writes, and whether the store was left out."""
        # Taken first: an agent whose writes are applied while the store is
        # scanned may be missing from the scan, never from both.
        pending = [a for a in self._backlog.agent_ids() if a.startswith(prefix)]
        degraded = False
        try:
            stored = [] if self._health.store_down else await self._store.agents(prefix, limit)
            degraded = self._health.store_down
        except StoreFailure:
            stored, degraded = [], True
        return sorted(set(stored) | set(pending))[:limit], degraded

    def _repaired(self, agent_id: str, found: Found[_T], token: int) -> _T:
        """What the store answered, telling the cache if it repaired the agent's index."""
        if found.repaired:
            self._cache.stale_removed(agent_id, since=token)
        return found.value

    async def _pending(self, agent_id: str) -> tuple[Entry, ...]:
        """The agent's not-yet-applied writes, after giving the flusher a moment.

        While the store is healthy a read waits briefly for the agent's own
        writes to be applied, so that it sees exactly what the store holds
        (trimming included).  If they are not applied in time, or the store
        is down, the read lays them over the store's answer instead.  The
        snapshot is taken before the store is asked: writes applied while it
        answers are then laid over again, which is harmless (idempotent).
        """
        last_seq = self._backlog.last_seq_for(agent_id)
        if last_seq and not self._health.store_down:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._flusher.wait_applied(last_seq), self._settings.read_barrier_timeout_s
                )
        return tuple(self._backlog.for_agent(agent_id))

    async def _stored_answer(self, agent_id: str, fetch: Query, now_s: float) -> list[Record]:
        """What the store answers to ``fetch``, once the cache could not tell (``query``
        asked it first, with the backlog replayed).

        When the cache may learn the agent (memoryd.cache), the agent's newest
        records are fetched first, unfiltered, so that the next reads of this
        agent, filtered or not, can be answered from memory.
        """
        cache = self._cache
        cache.misses += 1
        token = cache.token()
        # Only newest-first reads fill: an oldest-first page (an export) would
        # fetch the newest records for nothing and push other agents out.
        if fetch.order == "newest" and cache.may_fill(agent_id):
            newest = Query(limit=max(cache.per_agent, fetch.limit if fetch.newest_of_all else 0))
            records = self._repaired(
                agent_id, await self._store.query(agent_id, newest, now_s), token
            )
            cache.fill(agent_id, records, newest.limit, token)
            if fetch.newest_of_all:
                return records[: fetch.limit]
            found = cache.answer(agent_id, fetch, now_s)
            if found is not None:
                return found
        records = self._repaired(agent_id, await self._store.query(agent_id, fetch, now_s), token)
        if fetch.order == "newest":
            cache.remember(agent_id, records, token)
        return records
