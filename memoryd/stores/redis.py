"""The Redis store: records as HASHes, indexes as ZSETs, one Lua script per write.

The key layout is a contract (docs/operations.md, "Keys in Redis"); the
names come from memoryd.stores.keys only.  Every write of one agent in a batch
is one call of ``apply.lua``, atomic on the agent's shard, and all the calls
of a batch travel in one non-transactional pipeline: one round trip per batch.
Reads go through ``page.lua`` (one round trip per page of an index) and repair
what they find stale: an expired record or an index entry without its HASH.
When Redis may have evicted keys, the sweep also repairs what that left
behind (memoryd.stores.redis_repair).  Commands and replies are built in
memoryd.stores.redis_commands, and travel through memoryd.stores.redis_link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from memoryd import redis_url
from memoryd.ops import Op
from memoryd.records import Query, Record, is_expired, matches
from memoryd.stores.base import (
    APPLIED_KEPT_S,
    NOTICES_ID_PREFIX,
    AgentStats,
    ChangeListener,
    Durability,
    Eviction,
    Found,
    Sequenced,
    Swept,
    WriterLease,
    Writers,
    numbered,
)
from memoryd.stores.keys import AgentKeys, KeySpace
from memoryd.stores.redis_changes import (
    ChangesMissed,
    NoticeReader,
    NoticeWriter,
    follow_stream,
)
from memoryd.stores.redis_commands import (
    EXPIRY_GRACE_S,
    Command,
    Framing,
    decoded,
    group_by_agent,
    info_eviction,
    page_size,
    pairs,
    parse_stats,
    score,
    text,
    writers_of,
)
from memoryd.stores.redis_durability import ServerDurability, server_run
from memoryd.stores.redis_link import RedisLink, translated
from memoryd.stores.redis_repair import AGENTS_PER_PIPELINE, SCAN_COUNT, EvictionRepair

__all__ = ["EXPIRY_GRACE_S", "RedisStore"]

logger = logging.getLogger(__name__)

# A write renews the writer lease itself only when no renewal was sent this
# recently: a lease lasts seconds, and a renewal per batch costs Redis a script.
LEASE_FRESH_S = 0.5


class RedisStore:
    """A Store on one Redis server (standalone, via a URL)."""

    kind = "redis"
    _link_class = RedisLink

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "",
        max_memories: int = 1000,
        pool_size: int = 32,
        socket_timeout_s: float = 1.0,
        connect_timeout_s: float = 1.0,
        retries: int = 2,
        min_replicas: int | None = None,
    ) -> None:
        self._url = redis_url.parse(url)  # checked already when the settings were read
        self._masked_url = redis_url.masked(url)
        self._keys = KeySpace(key_prefix)
        self._max_memories = max_memories
        self._min_replicas = min_replicas  # None: every replica the master reports
        self._link = self._link_class(
            self._url,
            pool_size=pool_size,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            retries=retries,
        )
        self._eviction_repair = EvictionRepair(self._link, self._keys, max_memories=max_memories)
        # When the lease was last renewed, in each shard's registry ("": one server).
        self._lease_renewed_at: dict[str, float] = {}
        self._server_version: str | None = None
        self._eviction: Eviction | None = None  # as last read, for describe()
        # The master a Sentinel set named, and since when (time.time()).
        self._master: tuple[str | None, float] = (None, time.time())
        self._following: asyncio.Task[None] | None = None  # Sentinel: follow_failovers
        self._durability = self._server_durability(self._keys.confirm)
        self._notices = NoticeWriter(self._keys)

    # -- life cycle ---------------------------------------------------------

    async def open(self) -> None:
        self._link.connect()
        eviction = await self._read_eviction("open")
        with translated("open"):
            await self._link.load_scripts()
        self._note_master()
        if self._url.topology == "sentinel":
            self._following = asyncio.create_task(self._link.follow_failovers())
        logger.info(
            "redis store at %s (server %s, key prefix %r, maxmemory-policy %s, maxmemory %d)",
            self._masked_url,
            self._server_version,
            self._keys.prefix,
            eviction.policy,
            eviction.maxmemory_bytes,
        )

    async def close(self) -> None:
        following, self._following = self._following, None
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await self._link.close()

    def describe(self) -> dict[str, Any]:
        eviction = self._eviction
        return {
            "kind": self.kind,
            "address": self._masked_url,
            "server_version": self._server_version,
            "maxmemory_policy": None if eviction is None else eviction.policy,
            "maxmemory_bytes": None if eviction is None else eviction.maxmemory_bytes,
            "evicted_keys": None if eviction is None else eviction.evicted_keys,
        } | self._master_description()

    def _master_description(self) -> dict[str, Any]:
        if self._url.topology != "sentinel":
            return {}
        self._note_master()
        master, since_s = self._master
        return {"master": master, "master_since": since_s}

    async def _leave_a_demoted_master(self, replication: dict[str, Any]) -> None:
        """A master the sentinels demoted still answers reads: only a write would
        tell the pool (READONLY).  Drop its connections, so the next ones go to
        the master the sentinels name now."""
        if self._url.topology == "sentinel" and replication.get("role") != "master":
            logger.warning(
                "the server memoryd reached is a replica now: asking the sentinels again"
            )
            await self._link.reset()

    def _note_master(self) -> None:
        master = self._link.master_address
        if master != self._master[0]:
            if self._master[0] is not None:
                logger.warning(
                    "the sentinels name a new master: %s (was %s)", master, self._master[0]
                )
            self._master = (master, time.time())

    @property
    def identity(self) -> str:
        """Which dataset this is: the server's address (no credentials) and the key prefix."""
        return f"redis {self._url.address} prefix {self._keys.prefix!r}"

    async def eviction(self) -> Eviction:
        return await self._read_eviction("info")

    async def _info(self, *sections: str) -> list[dict[str, Any]]:
        """INFO of each section, in one round trip (INFO works where CONFIG is renamed).
        Call inside ``translated``."""
        async with self._link.client.pipeline(transaction=False) as pipe:
            for section in sections:
                pipe.info(section)
            return list(await pipe.execute())

    async def _server_and_replication(self) -> tuple[str, dict[str, Any]]:
        """This server's run (``_server_run``) and its INFO replication, leaving
        it if it is a demoted master.  Call inside ``translated``."""
        server, replication = await self._info("server", "replication")
        await self._leave_a_demoted_master(replication)
        self._note_master()
        return server_run(server, replication), replication

    async def _read_eviction(self, action: str) -> Eviction:
        """INFO server, memory and stats: the eviction figures and the version."""
        with translated(action):
            server, memory, stats = await self._info("server", "memory", "stats")
        self._server_version = str(server.get("redis_version", "")) or None
        self._eviction = info_eviction(server, memory, stats)
        return self._eviction

    def _server_durability(self, confirm_key: str) -> ServerDurability:
        # A Sentinel set or a Cluster promotes a replica by itself: only replicas confirm.
        failover = self._url.topology != "standalone"
        return ServerDurability(confirm_key, min_replicas=self._min_replicas, failover=failover)

    async def durability(self) -> Durability:
        """How far applied writes are durable (memoryd.stores.redis_durability):
        on a Sentinel set, of the master the sentinels name now."""
        with translated("durability"):
            await self._link.refresh_master()
            reading = await self._durability.read(self._link.round_trip)
            await self._leave_a_demoted_master(reading.replication)
            self._note_master()
        return reading.durability

    async def server_run(self) -> str:
        with translated("durability"):
            run, _ = await self._server_and_replication()
        return run

    async def ping(self) -> float:
        client = self._link.client
        started = time.perf_counter()
        with translated("ping"):
            await client.ping()
        return time.perf_counter() - started

    async def marker(self, candidate: str) -> str:
        client = self._link.client
        with translated("marker"):
            await client.set(self._keys.marker, candidate, nx=True)
            token = await client.get(self._keys.marker)
            if self._server_version is None:  # opened while Redis was down
                info = await client.info("server")
                self._server_version = str(info.get("redis_version", "")) or None
        return text(token) if token is not None else candidate

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> Writers:
        self._lease_renewed_at[""] = time.monotonic()
        script = self._link.script("writers")
        lease_ms = math.ceil(lease_s * 1000)
        with translated("writer lease"):
            reply = await script(
                keys=[self._keys.writers], args=[daemon_id, lease_ms, NOTICES_ID_PREFIX]
            )
        return writers_of(reply)

    async def watch(self, daemon_id: str, listener: ChangeListener) -> None:
        reader = NoticeReader(daemon_id, listener)
        connection, current = await self._link.master_to_follow()
        try:
            await follow_stream(
                connection,
                self._keys.changes_of(""),
                reader.read,
                listener.following,
                current,
                socket_timeout_s=self._link.socket_timeout_s,
            )
        except ChangesMissed as exc:
            logger.info("a change notice may have been missed (%s): following again", exc)

    # -- writes -------------------------------------------------------------

    async def apply(
        self,
        ops: Sequence[Op],
        now_s: float,
        lease: WriterLease | None = None,
        sequenced: Sequenced | None = None,
    ) -> None:
        grouped = group_by_agent(numbered(ops, sequenced), now_s)
        if not grouped:
            return
        source = "" if sequenced is None else sequenced.source

        def commands() -> list[Command]:
            return [
                self._apply_command(self._keys.agent(agent_id), now_s, words, source)
                for agent_id, words in grouped.items()
            ]

        await self._link.run_batch("apply", commands, self._framing(lease))

    async def sweep(self, now_s: float, lease: WriterLease | None = None) -> Swept:
        swept = await self._sweep_expired(now_s, lease)
        eviction = await self.eviction()
        if not self._eviction_repair.due(eviction):
            return swept
        repaired = await self._eviction_repair.run(eviction, now_s, self._framing(lease))
        return Swept(
            swept.removed + repaired.removed,
            swept.stale | repaired.stale,
            swept.changed | repaired.changed,
        )

    async def _sweep_expired(self, now_s: float, lease: WriterLease | None) -> Swept:
        client = self._link.client
        removed = 0
        stale: set[str] = set()
        agents: list[str] = []
        with translated("sweep"):
            async for key in client.scan_iter(match=self._keys.expiry_pattern(), count=SCAN_COUNT):
                agent_id = self._keys.agent_of_expiry_key(text(key))
                if agent_id is not None:
                    agents.append(agent_id)
                if len(agents) >= AGENTS_PER_PIPELINE:
                    removed += await self._expire(agents, now_s, lease, stale)
                    agents = []
        if agents:
            removed += await self._expire(agents, now_s, lease, stale)
        if removed:
            logger.info("sweep removed %d expired records", removed)
        return Swept(removed, frozenset(stale))

    async def _expire(
        self, agent_ids: Sequence[str], now_s: float, lease: WriterLease | None, stale: set[str]
    ) -> int:
        """Run the apply script's expire step for each agent; how many records it
        removed.  Adds the agents it removed records of to ``stale``."""

        def commands() -> list[Command]:
            return [self._apply_command(self._keys.agent(a), now_s, []) for a in agent_ids]

        results = await self._link.run_batch("sweep", commands, self._framing(lease))
        stale.update(a for a, result in zip(agent_ids, results, strict=True) if int(result[0]))
        return sum(int(result[0]) for result in results)

    def _framing(self, lease: WriterLease | None) -> Framing:
        """What goes around a write batch on each shard: before it the lease's
        renewal in the shard's registry, unless one is fresh there already;
        after it the change notice naming its agents (memoryd.stores.redis_changes).

        The writer lease is renewed by the very round trip that writes: the
        other daemons see this one as a writer before its writes.
        """
        writer_id = "" if lease is None else lease.daemon_id

        def notice(shard_tag: str, commands: Sequence[Command]) -> list[Command]:
            return self._notices.notice(shard_tag, commands, writer_id)

        return Framing(self._lease_renewal(lease), notice, self._notices.serial)

    def _lease_renewal(self, lease: WriterLease | None) -> Callable[[str], list[Command]]:

        def renewal(shard_tag: str) -> list[Command]:
            now = time.monotonic()
            if lease is None or now - self._lease_renewed_at.get(shard_tag, -math.inf) < (
                LEASE_FRESH_S
            ):
                return []
            self._lease_renewed_at[shard_tag] = now
            lease_ms = math.ceil(lease.lease_s * 1000)
            registry = self._keys.writers_of(shard_tag)
            return [
                self._link.evalsha(
                    "writers", [registry], lease.daemon_id, lease_ms, NOTICES_ID_PREFIX
                )
            ]

        return renewal

    def _apply_command(
        self, keys: AgentKeys, now_s: float, words: list[str | bytes], source: str = ""
    ) -> Command:
        arguments = self._apply_args(keys, now_s, source)
        return self._link.evalsha("apply", keys.apply_keys, *arguments, *words)

    def _apply_args(self, keys: AgentKeys, now_s: float, source: str = "") -> list[str | bytes]:
        """The apply script's ARGV before the operations (``source`` "": not numbered)."""
        return [
            keys.memory_prefix,
            keys.type_prefix,
            score(now_s),
            str(self._max_memories),
            source,
            str(int(APPLIED_KEPT_S * 1000)),
        ]

    async def _call_apply(self, agent_id: str, words: list[str | bytes], now_s: float) -> Any:
        keys = self._keys.agent(agent_id)
        script = self._link.script("apply")
        with translated("apply"):
            return await script(keys=keys.apply_keys, args=[*self._apply_args(keys, now_s), *words])

    async def _repair(self, agent_id: str, stale_ids: Sequence[str], now_s: float) -> bool:
        """Remove what a read found stale (expired records, index entries without
        a HASH) and every expired record of the agent; whether anything was."""
        words: list[str | bytes] = []
        for record_id in stale_ids:
            words += ["0", "E", record_id]
        result = await self._call_apply(agent_id, words, now_s)
        logger.debug("repaired %d stale entries of agent %s", len(stale_ids), agent_id)
        return bool(stale_ids) or bool(int(result[0]))

    # -- reads --------------------------------------------------------------

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Found[Record | None]:
        client = self._link.client
        with translated("get"):
            data = await client.hget(self._keys.agent(agent_id).memory(record_id), "data")
        if not isinstance(data, bytes):  # None: absent (decode_responses is off, never str)
            return Found(None)
        record = decoded(agent_id, record_id, data)
        if record is None:
            return Found(None)
        if is_expired(record, now_s):
            return Found(None, repaired=await self._repair(agent_id, [], now_s))
        return Found(record)

    async def query(self, agent_id: str, query: Query, now_s: float) -> Found[list[Record]]:
        if query.limit <= 0 or (query.types is not None and not query.types):
            return Found([])
        keys = self._keys.agent(agent_id)
        index = keys.list
        if query.types is not None and len(query.types) == 1:
            (only_type,) = query.types
            index = keys.type(only_type)
        bounds = (
            "-inf" if query.since is None else score(query.since),
            "+inf" if query.until is None else "(" + score(query.until),
        )
        size = page_size(query)
        found: list[Record] = []
        stale: list[str] = []
        offset = 0
        while len(found) < query.limit:
            page = await self._page(index, keys, query, bounds, offset, size)
            self._take_page(agent_id, page, query, now_s, found, stale)
            if len(page) < 2 * size:
                break
            offset += size
        # Repaired only now, so that the offsets of the pages above stay put.
        if stale:
            return Found(found, repaired=await self._repair(agent_id, stale, now_s))
        return Found(found)

    @staticmethod
    def _take_page(
        agent_id: str,
        page: list[Any],
        query: Query,
        now_s: float,
        found: list[Record],
        stale: list[str],
    ) -> None:
        """Add the matching records of ``page`` to ``found`` (up to the limit), stale ids to
        ``stale``."""
        for record_id, data in pairs(page):
            if data is None:
                stale.append(text(record_id))
                continue
            record = decoded(agent_id, text(record_id), data)
            if record is None:
                continue
            if is_expired(record, now_s):
                stale.append(text(record_id))
            elif matches(record, query, now_s):
                found.append(record)
                if len(found) == query.limit:
                    return

    async def _page(
        self,
        index: str,
        keys: AgentKeys,
        query: Query,
        bounds: tuple[str, str],
        offset: int,
        count: int,
    ) -> list[Any]:
        script = self._link.script("page")
        low, high = bounds
        with translated("query"):
            page: list[Any] = await script(
                keys=[index],
                args=[keys.memory_prefix, query.order, low, high, offset, count],
            )
        return page

    async def stats(self, agent_id: str, now_s: float) -> Found[AgentStats]:
        # The apply script with no operations: the expire step, then the stats
        # and types HASHes read in the same atomic step.
        result = await self._call_apply(agent_id, [], now_s)
        return Found(parse_stats(result[1], result[2]), repaired=bool(int(result[0])))

    async def agents(self, prefix: str, limit: int) -> list[str]:
        client = self._link.client
        found: set[str] = set()
        with translated("agents"):
            pattern = self._keys.stats_pattern(prefix)
            async for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                agent_id = self._keys.agent_of_stats_key(text(key))
                if agent_id is not None:
                    found.add(agent_id)
        return sorted(found)[: max(limit, 0)]
