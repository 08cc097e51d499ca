"""The Redis store's boundary to a Redis Cluster: redis-py's asyncio
RedisCluster for the slot map and single key commands, and round trips of
memoryd's own, one per master in parallel.

A batch is grouped by the master serving each command's key, and each group
travels in one write on one of that master's connections.  Replies that say
the slot is elsewhere are sent again: ``MOVED`` after the slot map is read
anew; ``ASK``, ``TRYAGAIN`` and a script meeting a key not on the node (a
slot migrating) after a pause, to the same node, until it answers ``MOVED``:
an agent's writes wait while its slot moves.  Every command memoryd sends is
safe to send again: each write is idempotent and numbered
(memoryd.stores.base.Sequenced).

Keys of the daemon itself (the writer registry, the confirm key, the
data-loss markers) carry a hash tag that puts them in a chosen slot:
``shard_tag`` names, for each master, the tag of the lowest slot it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    MaxConnectionsError,
    MovedError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from memoryd.stores.base import StoreUnavailable
from memoryd.stores.redis_changes import Take, follow_stream
from memoryd.stores.redis_commands import NO_FRAMING, Command, Framing, pack
from memoryd.stores.redis_link import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    SCRIPTS,
    RedisLink,
    connection_arguments,
    exchange,
    script_text,
    tls_arguments,
)

logger = logging.getLogger(__name__)

# How often one batch may be sent again because its slots moved (MOVED); and
# for how long, in pauses of TRYAGAIN_PAUSE_S, a command is sent again while the
# slot of its keys migrates (TRYAGAIN, or a script meeting a key not there).
REDIRECTS_MAX = 8
TRYAGAIN_PAUSE_S = 0.05
MIGRATING_WAIT_MAX_S = 5.0

# The pause between tries for a connection of a node whose connections are all in use.
CONNECTION_WAIT_S = 0.002


def _migrating(reply: Any) -> bool:
    """Whether ``reply`` says the slot of its keys is migrating: TRYAGAIN (the
    keys are split), or a script that met a key not on the node (it wrote
    nothing: apply.lua touches every key before it writes)."""
    return isinstance(reply, TryAgainError) or (
        isinstance(reply, ResponseError) and "non local key" in str(reply)
    )


def slot_tags() -> list[str]:
    """For each of the 16384 slots, a short hash tag whose keys land in it."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    n = 0
    while missing:
        tag = str(n)
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return cast(list[str], tags)


class ClusterLink(RedisLink):
    """Links to every master of a Redis Cluster, and the scripts loaded on them."""

    _cluster: RedisCluster | None = None
    _slot_tags: list[str] | None = None  # slot_tags(), made when first needed
    _lowest: tuple[dict[int, list[ClusterNode]], dict[str, int]] | None = None

    def connect(self) -> None:
        if self._cluster is not None:
            return
        url = self._url
        retry = Retry(
            ExponentialWithJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), self._retries
        )
        tls = {"ssl": True, **tls_arguments(url)} if url.tls else {}
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in url.hosts],
            username=url.username,
            password=url.password,
            max_connections=self._pool_size,
            socket_timeout=self._socket_timeout_s,
            socket_connect_timeout=self._connect_timeout_s,
            retry=retry,
            decode_responses=False,
            **tls,
        )
        self._scripts = {name: cluster.register_script(script_text(name)) for name in SCRIPTS}
        self._cluster = cluster
        # RedisCluster takes the same key commands as Redis (HGET, GET, SET, a
        # script by its keys, SCAN over every master): the store sends it no other.
        self._client = cast(aioredis.Redis, cluster)

    @property
    def is_open(self) -> bool:
        return self._cluster is not None

    @property
    def cluster(self) -> RedisCluster:
        if self._cluster is None:
            raise StoreUnavailable("redis store is not open")
        return self._cluster

    async def initialize(self) -> None:
        """Read the slot map (at open, and after a node failed)."""
        await self.cluster.initialize()

    def masters(self) -> list[ClusterNode]:
        """The masters, in the order of the lowest slot each serves."""
        lowest = self._lowest_slots()
        by_name = {node.name: node for node in self.cluster.get_primaries()}
        return [by_name[name] for name in sorted(lowest, key=lowest.__getitem__) if name in by_name]

    def shard_tag(self, node: ClusterNode) -> str:
        """The hash tag of the lowest slot ``node`` serves: keys of the daemon
        itself tagged with it live on that master."""
        slot = self._lowest_slots().get(node.name)
        if slot is None:
            raise StoreUnavailable(f"redis cluster: {node.name} serves no slot")
        return self.slot_tag(slot)

    def _lowest_slots(self) -> dict[str, int]:
        """Master name -> the lowest slot it serves, for the slot map read last
        (redis-py replaces its map when it reads it again)."""
        slots = self.cluster.nodes_manager.slots_cache
        if self._lowest is None or self._lowest[0] is not slots:
            lowest: dict[str, int] = {}
            for slot in sorted(slots):
                if slots[slot]:
                    lowest.setdefault(slots[slot][0].name, slot)
            self._lowest = (slots, lowest)
        return self._lowest[1]

    def slot_tag(self, slot: int) -> str:
        if self._slot_tags is None:
            self._slot_tags = slot_tags()
        return self._slot_tags[slot]

    async def load_scripts(self) -> None:
        loads = [Command(pack("SCRIPT", "LOAD", script_text(name))) for name in SCRIPTS]
        for node in self.masters():
            for reply in await self.round_trip_on(node, loads):
                if isinstance(reply, Exception):
                    raise reply

    async def refresh_master(self) -> None:
        """Nothing to ask: a cluster's nodes say where each slot is."""

    @property
    def master_address(self) -> str | None:
        return None

    async def reset(self) -> None:
        self._lowest = None
        with contextlib.suppress(Exception):
            await self.cluster.nodes_manager.initialize()

    async def close(self) -> None:
        cluster, self._cluster = self._cluster, None
        self._client = None
        if cluster is not None:
            await cluster.aclose()

    async def send_batch(self, commands: list[Command], framing: Framing) -> list[Any]:
        """One round trip per master, masters in parallel, each framed for its shard."""
        return await self._routed(commands, framing)

    async def round_trip(self, commands: Sequence[Command]) -> list[Any]:
        """A reply for each of ``commands`` (each routed by its key), in their order."""
        return await self._routed(commands, NO_FRAMING)

    async def round_trip_on(self, node: ClusterNode, commands: Sequence[Command]) -> list[Any]:
        """A reply for each of ``commands``, all sent to ``node`` (commands of the
        server itself, or keys tagged with its shard)."""
        try:
            replies = await self._node_round_trip(node, [c.packed for c in commands])
        except (RedisError, OSError):
            await self.reset()  # the master may have been replaced: read the map again
            raise
        if any(isinstance(reply, MovedError) for reply in replies):
            # A key tagged for the node's shard is no longer there (its lowest slot
            # moved): the caller's next try is made with the map read again.
            await self.reset()
        return replies

    async def _routed(self, commands: Sequence[Command], framing: Framing) -> list[Any]:
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        redirects = 0
        for _ in range(REDIRECTS_MAX + int(MIGRATING_WAIT_MAX_S / TRYAGAIN_PAUSE_S)):
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            for index in todo:
                node = self._node_of(commands[index])
                groups.setdefault(node.name, (node, []))[1].append(index)
            sent = await self._send_groups(commands, groups, framing)
            todo, moved, busy = [], False, False
            for index, reply in sent:
                if isinstance(reply, MovedError):
                    moved = True
                elif isinstance(reply, AskError) or _migrating(reply):
                    busy = True
                else:
                    replies[index] = reply
                    continue
                todo.append(index)
            if not todo:
                return replies
            if moved:
                redirects += 1
                if redirects > REDIRECTS_MAX:
                    break
                await self._read_slot_map()
            if busy:
                await asyncio.sleep(TRYAGAIN_PAUSE_S)
        raise StoreUnavailable(
            "redis cluster: slots still moving (MOVED, ASK, TRYAGAIN) at every try"
        )

    async def _read_slot_map(self) -> None:
        self._lowest = None  # redis-py may have changed its map in place meanwhile
        await self.cluster.nodes_manager.initialize()

    async def _send_groups(
        self,
        commands: Sequence[Command],
        groups: dict[str, tuple[ClusterNode, list[int]]],
        framing: Framing,
    ) -> list[tuple[int, Any]]:
        """Each group to its node, in parallel: (index, reply) for every command.

        A framing reply that is an error (a change notice refused, or sent to a
        node its slot left) fails the batch, to be sent again whole: a notice
        lost would leave the other daemons' views of its agents stale.
        """
        trips = []
        for node, indexes in groups.values():
            tag = self.shard_tag(node)
            group = [commands[i] for i in indexes]
            first = [c.packed for c in framing.before(tag)]
            last = [c.packed for c in framing.after(tag, group)]
            packed = first + [c.packed for c in group] + last
            trips.append(self._framed_round_trip(node, packed, len(first), len(group)))
        results = await asyncio.gather(*trips, return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            # A master that does not answer may have been replaced: read the
            # slot map again before the next batch.
            await self.reset()
            raise failed
        return [
            (index, reply)
            for (_, indexes), node_replies in zip(groups.values(), results, strict=True)
            for index, reply in zip(indexes, cast(list[Any], node_replies), strict=True)
        ]

    async def _framed_round_trip(
        self, node: ClusterNode, packed: list[bytes], before: int, count: int
    ) -> list[Any]:
        """The replies to the ``count`` commands after the ``before`` first."""
        replies = await self._node_round_trip(node, packed)
        for reply in replies[before + count :]:
            if isinstance(reply, AskError) or _migrating(reply):
                # The notice's slot moved or is moving: the commands go again
                # with their notice, as if they had met it themselves.
                self._lowest = None
                return [reply] * count
            if isinstance(reply, Exception):
                raise StoreUnavailable(f"redis cluster: a change notice failed: {reply}")
        return replies[before : before + count]

    async def _node_round_trip(self, node: ClusterNode, packed: list[bytes]) -> list[Any]:
        """Write ``packed`` on one of ``node``'s connections and read a reply for each.

        Never behind ``ASKING``: on the node a slot is migrating to, a script would
        take the agent's keys not yet there for absent, and drop what they index;
        a command the slot's old node answers ASK waits until the slot has moved.
        """
        connection = await self._connection_of(node)
        try:
            return await exchange(connection, packed)
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            node.release(connection)

    async def _connection_of(self, node: ClusterNode) -> Any:
        """One of ``node``'s connections, waiting for one to be free (redis-py's
        refuses at once when all are in use)."""
        deadline = time.monotonic() + self._connect_timeout_s + self._socket_timeout_s
        while True:
            try:
                return node.acquire_connection()
            except MaxConnectionsError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(CONNECTION_WAIT_S)

    def _node_of(self, command: Command) -> ClusterNode:
        if command.key is None:
            raise AssertionError("a command without a key has no slot")  # pragma: no cover
        slot = self.cluster.keyslot(command.key)
        return self.cluster.nodes_manager.get_node_from_slot(slot)

    async def follow_every_master(
        self, stream_of: Callable[[ClusterNode], str], take: Take, following: Callable[[], None]
    ) -> None:
        """``follow`` the stream ``stream_of`` each master names, all at once;
        return when any link breaks, or when the masters or their streams are no
        longer those (a failover, a reshard, a master added).  ``following``
        once all of them follow."""
        masters = self.masters()
        streams = [(node.name, stream_of(node)) for node in masters]

        def current() -> bool:
            return [(node.name, stream_of(node)) for node in self.masters()] == streams

        waiting = len(masters)

        def one_more() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting == 0:
                following()

        follows = [
            asyncio.create_task(
                follow_stream(
                    self.own_connection(
                        connection_arguments(self._url) | {"host": node.host, "port": node.port}
                    ),
                    stream_of(node),
                    take,
                    one_more,
                    current,
                    socket_timeout_s=self._socket_timeout_s,
                )
            )
            for node in masters
        ]
        try:
            done, _ = await asyncio.wait(follows, return_when=asyncio.FIRST_COMPLETED)
            for follow in done:
                follow.result()  # what ended it, raised
        finally:
            for follow in follows:
                follow.cancel()
            await asyncio.gather(*follows, return_exceptions=True)
