"""The Redis store on a Redis Cluster: every agent's keys on the master of its
hash tag's slot, everything else as on one server.

What is per server on one Redis is per master here, read from all of them
in parallel (memoryd.stores.redis_cluster_link):

- durability: each master's replicas confirm what was applied to it; the
  store is as durable as its least confirmed master, and its "server" is the
  set of its masters' runs (a failover of any one puts back what is
  unconfirmed);
- the writer lease: a registry on every master, renewed with the writes
  that go to it (a daemon is seen as a writer on a shard before it writes
  there);
- the data-loss marker: one key in every 64th slot, so that a shard that
  comes back empty is found even when the others are fine;
- the eviction figures, the watch connection, the version: of every master.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import Any

from redis.asyncio.cluster import ClusterNode

from memoryd.stores.base import (
    NO_EVICTION,
    NOTICES_ID_PREFIX,
    ChangeListener,
    Durability,
    Eviction,
    Writers,
)
from memoryd.stores.redis import RedisStore
from memoryd.stores.redis_changes import ChangesMissed, NoticeReader
from memoryd.stores.redis_cluster_link import ClusterLink
from memoryd.stores.redis_commands import (
    Command,
    info_eviction,
    key_command,
    parsed_info,
    server_command,
    text,
    writers_of,
)
from memoryd.stores.redis_durability import ServerDurability, raised, server_run
from memoryd.stores.redis_link import translated

logger = logging.getLogger(__name__)

# The slots that hold a data-loss marker: a master that serves at least 64
# slots in a row holds one.
MARKER_SLOTS = range(0, 16384, 64)


class ClusterStore(RedisStore):
    """A Store on a Redis Cluster (``redis+cluster://``)."""

    _link_class = ClusterLink
    _link: ClusterLink

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        # By master name (host:port) and shard tag.
        self._shards: dict[tuple[str, str], ServerDurability] = {}

    async def _masters(self) -> list[ClusterNode]:
        await self._link.initialize()
        return self._link.masters()

    def describe(self) -> dict[str, Any]:
        masters = [node.name for node in self._link.masters()] if self._link.is_open else []
        return super().describe() | {"masters": masters}

    # -- per master ---------------------------------------------------------

    async def _on_every_master(self, commands: list[Command]) -> list[list[Any]]:
        """The replies of every master to ``commands``, in parallel; call inside
        ``translated``."""
        masters = await self._masters()
        return await asyncio.gather(*(self._link.round_trip_on(node, commands) for node in masters))

    async def _read_eviction(self, action: str) -> Eviction:
        """As on one server, for the whole cluster: it may evict if any master
        may, and its evictions are all of theirs."""
        sections = [server_command("INFO", name) for name in ("server", "memory", "stats")]
        with translated(action):
            readings = [
                [parsed_info(reply) for reply in raised(replies)]
                for replies in await self._on_every_master(sections)
            ]
        evictions = [info_eviction(*reading) for reading in readings]
        self._server_version = readings[0][0].get("redis_version") or None
        policies = sorted({e.policy for e in evictions if e.policy != NO_EVICTION})
        self._eviction = Eviction(
            policy=",".join(policies) or NO_EVICTION,
            maxmemory_bytes=min((e.maxmemory_bytes for e in evictions), default=0),
            evicted_keys=sum(e.evicted_keys for e in evictions),
            server_run_id=",".join(sorted(e.server_run_id for e in evictions)),
        )
        return self._eviction

    async def durability(self) -> Durability:
        with translated("durability"):
            masters = await self._masters()
            readings = await asyncio.gather(
                *(self._shard(node).read(self._round_trip_to(node)) for node in masters)
            )
        if any(reading.replication.get("role") != "master" for reading in readings):
            await self._link.reset()  # a master was demoted: read the slot map again
        # Sorted: the same masters in another slot order are the same servers.
        run = ";".join(sorted(reading.durability.server_run for reading in readings))
        until_s = min((reading.durability.until_s for reading in readings), default=-math.inf)
        return Durability(run, until_s)

    def _shard(self, node: ClusterNode) -> ServerDurability:
        # By tag too: a reshard that moves a master's lowest slot moves its confirm key.
        tag = self._link.shard_tag(node)
        shard = self._shards.get((node.name, tag))
        if shard is None:
            confirm_key = self._keys.confirm_of(tag)
            shard = self._shards[(node.name, tag)] = self._server_durability(confirm_key)
        return shard

    def _round_trip_to(self, node: ClusterNode) -> Any:
        async def round_trip(commands: Any) -> list[Any]:
            return await self._link.round_trip_on(node, commands)

        return round_trip

    async def server_run(self) -> str:
        sections = [server_command("INFO", "server"), server_command("INFO", "replication")]
        with translated("durability"):
            readings = [
                [parsed_info(reply) for reply in raised(replies)]
                for replies in await self._on_every_master(sections)
            ]
        return ";".join(sorted(server_run(server, replication) for server, replication in readings))

    async def ping(self) -> float:
        started = time.perf_counter()
        with translated("ping"):
            for replies in await self._on_every_master([server_command("PING")]):
                raised(replies)
        return time.perf_counter() - started

    async def marker(self, candidate: str) -> str:
        """The token of every marker slot: one token if they all hold the same,
        else a digest of them all (a shard that lost its markers got
        ``candidate`` there, so the digest is new, and stays so)."""
        keys = [self._keys.marker_of(self._link.slot_tag(slot)) for slot in MARKER_SLOTS]
        with translated("marker"):
            raised(
                await self._link.round_trip([key_command("SET", k, candidate, "NX") for k in keys])
            )
            found = raised(await self._link.round_trip([key_command("GET", k) for k in keys]))
        tokens = [candidate if token is None else text(token) for token in found]
        if len(set(tokens)) == 1:
            return tokens[0]
        digest = hashlib.sha1(" ".join(tokens).encode(), usedforsecurity=False).hexdigest()
        return f"mixed:{digest[:20]}"

    async def watch(self, daemon_id: str, listener: ChangeListener) -> None:
        """The change notices of every master: returns when any link breaks."""
        await self._masters()
        reader = NoticeReader(daemon_id, listener)

        def stream_of(node: ClusterNode) -> str:
            return self._keys.changes_of(self._link.shard_tag(node))

        try:
            await self._link.follow_every_master(stream_of, reader.read, listener.following)
        except ChangesMissed as exc:
            logger.info("a change notice may have been missed (%s): following again", exc)

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> Writers:
        """Renewed in every master's registry: the daemons the fullest counts,
        whether this one's lease was still in all of them, the most silent."""
        with translated("writer lease"):
            tags = [self._link.shard_tag(node) for node in await self._masters()]
        lease_ms = math.ceil(lease_s * 1000)

        def renewals() -> list[Command]:
            return [
                self._link.evalsha(
                    "writers", [self._keys.writers_of(tag)], daemon_id, lease_ms, NOTICES_ID_PREFIX
                )
                for tag in tags
            ]

        replies = await self._link.run_batch("writer lease", renewals)
        now = time.monotonic()
        self._lease_renewed_at.update((tag, now) for tag in tags)
        shards = [writers_of(reply) for reply in replies]
        return Writers(
            max(shard.count for shard in shards),
            all(shard.held for shard in shards),
            max(shard.silent for shard in shards),
        )
