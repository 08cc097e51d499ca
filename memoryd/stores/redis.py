"""The Redis store: records as HASHes, indexes as ZSETs, one Lua script per write.

The key layout is a contract (docs/operations.md, "Keys in Redis"); the
names come from memoryd.stores.keys only.  Every write of one agent in a batch
is one call of ``apply.lua``, atomic on the agent's shard, and all the calls
of a batch travel in one non-transactional pipeline: one round trip per batch.
Reads go through ``page.lua`` (one round trip per page of an index) and repair
what they find stale: an expired record or an index entry without its HASH.
When Redis may have evicted keys (``INFO``: its ``maxmemory-policy`` evicts,
or ``evicted_keys`` grew), the sweep also runs ``repair.lua`` over every agent
SCAN finds, which rebuilds its indexes and stats from its record HASHes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import hiredis
import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memoryd import redis_url
from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Query, Record, decode_record, is_expired, matches
from memoryd.stores.base import (
    AgentStats,
    Eviction,
    StoreError,
    StoreMisconfigured,
    StoreRefusing,
    StoreUnavailable,
)
from memoryd.stores.keys import AgentKey, AgentKeys, KeySpace

logger = logging.getLogger(__name__)

# A record's HASH outlives its expires_at by this much.  Reads stop returning
# the record at expires_at (its expiry index entry and the record itself say
# so); during the grace the HASH still tells the record's type and size, so
# the sweep or a read repair removes its index entries and subtracts its bytes
# exactly.  Past the grace Redis drops the HASH on its own, and a repair falls
# back to finding the type in the type ZSETs and recounting the bytes.
EXPIRY_GRACE_S = 3600.0

# Backoff between the library's retries of a command whose connection broke.
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0

# A write renews the writer lease itself only when no renewal was sent this
# recently: a lease lasts seconds, and a renewal per batch costs Redis a script.
LEASE_FRESH_S = 0.5

SCAN_COUNT = 1000  # keys per SCAN step: few round trips, short server stalls
SWEEP_AGENTS_PER_PIPELINE = 256
MIN_PAGE = 32
MAX_PAGE = 1000

# Replies that mean "not now" rather than "never": a Redis still loading its
# dataset, busy in a script, or a replica promoted/demoted mid-failover.
_TRANSIENT_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")
# Replies of a Redis that answers but will not take writes for now.
_REFUSING_REPLIES = ("OOM", "READONLY", "MISCONF")
# Replies of a Redis that refuses memoryd itself (credentials, ACL).
_MISCONFIGURED_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM")


def _nobody(agent_id: str) -> None:
    pass


def _script_text(name: str) -> str:
    return resources.files("memoryd.stores").joinpath(name).read_text(encoding="utf-8")


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn redis-py's exceptions into the store's own, at the boundary."""
    try:
        yield
    except (AuthenticationError, NoPermissionError) as exc:
        raise StoreMisconfigured(f"redis {action}: {exc}") from exc
    except ReadOnlyError as exc:
        raise StoreRefusing("READONLY", f"redis {action}: {exc}") from exc
    except OutOfMemoryError as exc:
        raise StoreRefusing("OOM", f"redis {action}: {exc}") from exc
    except (
        BusyLoadingError,
        RedisConnectionError,
        RedisTimeoutError,
        TimeoutError,
        OSError,
    ) as exc:
        raise StoreUnavailable(f"redis {action}: {exc}") from exc
    except ResponseError as exc:
        raise _reply_error(action, exc) from exc
    except RedisError as exc:
        raise StoreError(f"redis {action}: {exc}") from exc


def _reply_error(action: str, exc: ResponseError) -> Exception:
    """The store's exception for an error reply (a script's error included)."""
    text = str(exc)
    message = f"redis {action}: {text}"
    if text.startswith(_REFUSING_REPLIES):
        return StoreRefusing(text.split(" ", 1)[0], message)
    if text.startswith(_MISCONFIGURED_REPLIES):
        return StoreMisconfigured(message)
    if text.startswith(_TRANSIENT_REPLIES):
        return StoreUnavailable(message)
    return StoreError(message)


def _score(value: float) -> str:
    # repr() is the shortest string that parses back to the same double, so
    # Redis stores exactly the float the record holds.
    return repr(float(value))


def _index_fields(record: Record) -> list[str | bytes]:
    """Type, created_at, expires_at|"" and the HASH's pexpireat_ms|"", as the scripts take them."""
    expires_at = record["expires_at"]
    if expires_at is None:
        expiry, pexpireat_ms = "", ""
    else:
        expiry = _score(expires_at)
        pexpireat_ms = str(math.ceil((expires_at + EXPIRY_GRACE_S) * 1000))
    return [record["type"], _score(record["created_at"]), expiry, pexpireat_ms]


def _record_args(tag: str, record: Record, data: bytes) -> list[str | bytes]:
    return [tag, record["id"], *_index_fields(record), data]


def _op_args(op: Op, now_s: float) -> list[str | bytes]:
    """One operation as the apply script's flat ARGV words."""
    match op:
        case Put(record=record, data=data):
            return [] if is_expired(record, now_s) else _record_args("P", record, data)
        case Replace(record=record, data=data):
            # A replacement that has already expired leaves the record gone.
            if is_expired(record, now_s):
                return ["D", record["id"]]
            return _record_args("R", record, data)
        case Delete(record_id=record_id):
            return ["D", record_id]
        case Clear():
            return ["C"]


def _group_by_agent(ops: Sequence[Op], now_s: float) -> dict[str, list[str | bytes]]:
    """Each agent's operations, in order; agents in order of first appearance."""
    grouped: dict[str, list[str | bytes]] = {}
    for op in ops:
        words = _op_args(op, now_s)
        if words:
            grouped.setdefault(op.agent_id, []).extend(words)
    return grouped


def _pairs(flat: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    return zip(flat[0::2], flat[1::2], strict=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_stats(stats_pairs: Sequence[Any], types_pairs: Sequence[Any]) -> AgentStats:
    fields = {_text(name): _text(value) for name, value in _pairs(stats_pairs)}
    count = int(fields.get("count", "0"))
    if count == 0:
        return AgentStats()
    return AgentStats(
        count=count,
        by_type={_text(name): int(value) for name, value in _pairs(types_pairs)},
        bytes=int(fields.get("bytes", "0")),
        oldest=float(fields["oldest"]) if "oldest" in fields else None,
        newest=float(fields["newest"]) if "newest" in fields else None,
    )


def _connection_arguments(url: redis_url.RedisUrl) -> dict[str, Any]:
    """redis-py's connection arguments for a parsed URL."""
    common: dict[str, Any] = {"db": url.db, "username": url.username, "password": url.password}
    if url.scheme == "unix":
        return {**common, "connection_class": aioredis.UnixDomainSocketConnection, "path": url.path}
    common.update(host=url.host, port=url.port)
    if url.scheme == "rediss":
        common["connection_class"] = aioredis.SSLConnection
        for name, value in url.tls_options.items():
            is_flag = name == "ssl_check_hostname"
            common[name] = value.lower() in ("1", "true", "yes") if is_flag else value
    return common


def _info_eviction(
    server: dict[str, Any], memory: dict[str, Any], stats: dict[str, Any]
) -> Eviction:
    return Eviction(
        # A server that does not say (a proxy, a look-alike) is taken to evict.
        policy=str(memory.get("maxmemory_policy") or "unknown"),
        maxmemory_bytes=int(memory.get("maxmemory", 0)),
        evicted_keys=int(stats.get("evicted_keys", 0)),
        server_run_id=str(server.get("run_id", "")),
    )


@dataclass(slots=True)
class _AgentScan:
    """What SCAN found of one agent: its type ZSETs, and its HASHes no list names."""

    types: set[str] = field(default_factory=set)
    unlisted: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _RepairTally:
    agents: int = 0
    dropped_entries: int = 0
    indexed_records: int = 0
    removed_records: int = 0
    rewritten: set[str] = field(default_factory=set)  # agents whose counts were rewritten

    def add(self, agent_id: str, reply: Sequence[Any]) -> None:
        self.dropped_entries += int(reply[0])
        self.indexed_records += int(reply[1])
        self.removed_records += int(reply[2])
        if int(reply[4]):
            self.rewritten.add(agent_id)


def _page_size(query: Query) -> int:
    # Without filters beyond type and time nearly every entry matches, so a
    # page of about `limit` suffices; otherwise read ahead more per trip.
    wanted = query.limit * 4 if query.needs_record else query.limit + 8
    return max(MIN_PAGE, min(MAX_PAGE, wanted))


class RedisStore:
    """A Store on one Redis server (standalone, via a URL)."""

    kind = "redis"

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
    ) -> None:
        self._url = redis_url.parse(url)  # checked already when the settings were read
        self._masked_url = redis_url.masked(url)
        self._keys = KeySpace(key_prefix)
        self._max_memories = max_memories
        self._pool_size = pool_size
        self._socket_timeout_s = socket_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._retries = retries
        self._client: aioredis.Redis | None = None
        self._apply_script: AsyncScript | None = None
        self._page_script: AsyncScript | None = None
        self._writers_script: AsyncScript | None = None
        self._repair_script: AsyncScript | None = None
        # Told of every agent whose index entries were removed outside apply():
        # a read paging through its index meanwhile may have missed entries.
        self.stale_removed: Callable[[str], None] = _nobody
        # Told of every agent whose live records the eviction repair changed.
        self.records_changed: Callable[[str], None] = _nobody
        # (daemon id, lease in seconds): renewed with every write (memoryd.writers).
        self.writer_lease: tuple[str, float] | None = None
        self._lease_renewed_at = -math.inf
        self._server_version: str | None = None
        self._eviction: Eviction | None = None  # as last read, for describe()
        # What INFO said when the last eviction repair started (None: none yet).
        self._repaired_at: Eviction | None = None

    # -- life cycle ---------------------------------------------------------

    def _connect(self) -> aioredis.Redis:
        # Library retries (resending a command after a broken connection or a
        # timeout) are safe here: every apply is idempotent, and the only
        # effects of reads are repairs, which are idempotent too.
        retry = Retry(
            ExponentialWithJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), self._retries
        )
        # Built from the parsed parts, never from the text: redis-py reads a
        # malformed URL loosely (a missing host as localhost, db "zz" as 0).
        pool = aioredis.BlockingConnectionPool(
            **_connection_arguments(self._url),
            max_connections=self._pool_size,
            # Waiting longer than one command may take for a free connection
            # only hides an overload; better to fail and let the caller back off.
            timeout=self._connect_timeout_s + self._socket_timeout_s,
            socket_timeout=self._socket_timeout_s,
            socket_connect_timeout=self._connect_timeout_s,
            retry=retry,
            decode_responses=False,
        )
        client = aioredis.Redis(connection_pool=pool)
        self._apply_script = client.register_script(_script_text("apply.lua"))
        self._page_script = client.register_script(_script_text("page.lua"))
        self._writers_script = client.register_script(_script_text("writers.lua"))
        self._repair_script = client.register_script(_script_text("repair.lua"))
        return client

    async def open(self) -> None:
        if self._client is None:
            self._client = self._connect()
        eviction = await self._read_eviction("open")
        with _translated("open"):
            await self._load_scripts()
        logger.info(
            "redis store at %s (server %s, key prefix %r, maxmemory-policy %s, maxmemory %d)",
            self._masked_url,
            self._server_version,
            self._keys.prefix,
            eviction.policy,
            eviction.maxmemory_bytes,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose(close_connection_pool=True)

    def describe(self) -> dict[str, Any]:
        eviction = self._eviction
        return {
            "kind": self.kind,
            "address": self._masked_url,
            "server_version": self._server_version,
            "maxmemory_policy": None if eviction is None else eviction.policy,
            "maxmemory_bytes": None if eviction is None else eviction.maxmemory_bytes,
            "evicted_keys": None if eviction is None else eviction.evicted_keys,
        }

    @property
    def identity(self) -> str:
        """Which dataset this is: the server's address (no credentials) and the key prefix."""
        return f"redis {self._url.address} prefix {self._keys.prefix!r}"

    async def eviction(self) -> Eviction:
        return await self._read_eviction("info")

    async def _read_eviction(self, action: str) -> Eviction:
        """INFO server, memory and stats, in one round trip (INFO works where CONFIG is renamed)."""
        client = self._require_client()
        with _translated(action):
            async with client.pipeline(transaction=False) as pipe:
                pipe.info("server")
                pipe.info("memory")
                pipe.info("stats")
                server, memory, stats = await pipe.execute()
        self._server_version = str(server.get("redis_version", "")) or None
        self._eviction = _info_eviction(server, memory, stats)
        return self._eviction

    async def ping(self) -> float:
        client = self._require_client()
        started = time.perf_counter()
        with _translated("ping"):
            await client.ping()
        return time.perf_counter() - started

    async def marker(self, candidate: str) -> str:
        client = self._require_client()
        with _translated("marker"):
            await client.set(self._keys.marker, candidate, nx=True)
            token = await client.get(self._keys.marker)
            if self._server_version is None:  # opened while Redis was down
                info = await client.info("server")
                self._server_version = str(info.get("redis_version", "")) or None
        return _text(token) if token is not None else candidate

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> tuple[int, bool]:
        self._lease_renewed_at = time.monotonic()
        script = self._require_script(self._writers_script)
        with _translated("writer lease"):
            writers, held = await script(
                keys=[self._keys.writers], args=[daemon_id, math.ceil(lease_s * 1000)]
            )
        return int(writers), bool(held)

    async def watch(self) -> None:
        # A connection of its own, without the pool's retries (they would
        # reconnect behind our back, which is the very event to see), and
        # without a socket timeout: it waits on SUBSCRIBE until the link breaks.
        # RESP2: in RESP3 the confirmation is a push message read_response skips.
        arguments = _connection_arguments(self._url)
        connection_class = arguments.pop("connection_class", aioredis.Connection)
        connection = connection_class(
            **arguments,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=self._connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            with _translated("watch"):
                await connection.connect()
                await connection.send_command("SUBSCRIBE", self._keys.watch_channel)
                await connection.read_response()
            with contextlib.suppress(RedisError, OSError):
                while True:
                    await connection.read_response(timeout=None)
        finally:
            await connection.disconnect()

    # -- writes -------------------------------------------------------------

    async def apply(self, ops: Sequence[Op], now_s: float) -> None:
        grouped = _group_by_agent(ops, now_s)
        if not grouped:
            return

        def commands() -> list[bytes]:
            return [
                self._apply_command(self._keys.agent(agent_id), now_s, words)
                for agent_id, words in grouped.items()
            ]

        await self._run_batch("apply", commands)

    async def sweep(self, now_s: float) -> int:
        removed = await self._sweep_expired(now_s)
        eviction = await self.eviction()
        if self._repair_due(eviction):
            removed += await self._repair_evicted(eviction, now_s)
            self._repaired_at = eviction
        return removed

    async def _sweep_expired(self, now_s: float) -> int:
        client = self._require_client()
        removed = 0
        agents: list[str] = []
        with _translated("sweep"):
            async for key in client.scan_iter(match=self._keys.expiry_pattern(), count=SCAN_COUNT):
                agent_id = self._keys.agent_of_expiry_key(_text(key))
                if agent_id is not None:
                    agents.append(agent_id)
                if len(agents) >= SWEEP_AGENTS_PER_PIPELINE:
                    removed += await self._expire(agents, now_s)
                    agents = []
        if agents:
            removed += await self._expire(agents, now_s)
        if removed:
            logger.info("sweep removed %d expired records", removed)
        return removed

    async def _expire(self, agent_ids: Sequence[str], now_s: float) -> int:
        """Run the apply script's expire step for each agent; how many records it removed."""

        def commands() -> list[bytes]:
            return [self._apply_command(self._keys.agent(a), now_s, []) for a in agent_ids]

        results = await self._run_batch("sweep", commands)
        for agent_id, result in zip(agent_ids, results, strict=True):
            if int(result[0]):
                self.stale_removed(agent_id)
        return sum(int(result[0]) for result in results)

    # -- repair after eviction ----------------------------------------------

    def _repair_due(self, eviction: Eviction) -> bool:
        """Whether keys may have been evicted since the last repair began.

        Not at every sweep: a repair reads every agent's indexes.  Only when
        ``evicted_keys`` grew since the last repair began, and once per daemon
        and per Redis run when the policy evicts or keys were evicted at all.
        """
        earlier = self._repaired_at
        if earlier is None or earlier.server_run_id != eviction.server_run_id:
            return eviction.may_evict or eviction.evicted_keys > 0
        return eviction.evicted_since(earlier) > 0

    async def _repair_evicted(self, eviction: Eviction, now_s: float) -> int:
        """Repair every agent's keys after evictions; how many records it removed."""
        logger.info(
            "redis may have evicted memoryd's keys (maxmemory-policy %s, %d keys evicted since "
            "it started): checking every agent's indexes against its records",
            eviction.policy,
            eviction.evicted_keys,
        )
        found = await self._scan_agents()
        tally = _RepairTally(agents=len(found))
        agent_ids = sorted(found)
        for first in range(0, len(agent_ids), SWEEP_AGENTS_PER_PIPELINE):
            chunk = agent_ids[first : first + SWEEP_AGENTS_PER_PIPELINE]
            await self._repair_agents(chunk, found, now_s, tally)
        if tally.dropped_entries or tally.indexed_records or tally.removed_records:
            logger.warning(
                "eviction repair of %d agents: %d index entries without their record removed, "
                "%d records without index entries indexed again, %d expired or trimmed records "
                "removed, counts of %d agents rewritten; records Redis evicted are lost",
                tally.agents,
                tally.dropped_entries,
                tally.indexed_records,
                tally.removed_records,
                len(tally.rewritten),
            )
        else:
            logger.info(
                "eviction repair of %d agents: indexes match the records (counts of %d agents "
                "rewritten)",
                tally.agents,
                len(tally.rewritten),
            )
        return tally.removed_records

    async def _scan_agents(self) -> dict[str, _AgentScan]:
        """Every agent with a key, its type ZSETs, and its record HASHes no list names.

        SCAN in steps of SCAN_COUNT keys; the HASHes of each step are looked up
        in their agents' lists in one round trip, so only the unlisted are kept.
        """
        client = self._require_client()
        found: dict[str, _AgentScan] = {}
        cursor = 0
        with _translated("sweep"):
            while True:
                cursor, names = await client.scan(
                    cursor, match=self._keys.agent_key_pattern(), count=SCAN_COUNT
                )
                hashes: list[AgentKey] = []
                for name in names:
                    key = self._keys.parse_agent_key(_text(name))
                    if key is None:
                        continue
                    scan = found.setdefault(key.agent_id, _AgentScan())
                    if key.kind == "type":
                        scan.types.add(key.name)
                    elif key.kind == "memory":
                        hashes.append(key)
                await self._keep_unlisted(hashes, found)
                if cursor == 0:
                    return found

    async def _keep_unlisted(
        self, hashes: Sequence[AgentKey], found: dict[str, _AgentScan]
    ) -> None:
        if not hashes:
            return
        lookups = [
            self._pack("ZSCORE", self._keys.agent(key.agent_id).list, key.name) for key in hashes
        ]
        for key, score in zip(hashes, await self._round_trip(lookups), strict=True):
            if isinstance(score, Exception):
                raise score
            if score is None:
                found[key.agent_id].unlisted.add(key.name)

    async def _repair_agents(
        self,
        agent_ids: Sequence[str],
        found: dict[str, _AgentScan],
        now_s: float,
        tally: _RepairTally,
    ) -> None:
        """Two calls of the repair script: the indexes, then the records whose data it needs."""
        first_words: dict[str, list[str | bytes]] = {
            agent_id: [
                word for record_id in sorted(found[agent_id].unlisted) for word in ("C", record_id)
            ]
            for agent_id in agent_ids
        }
        wanted: dict[str, list[str]] = {}
        for agent_id, reply in await self._run_repair(first_words, found):
            tally.add(agent_id, reply)
            if reply[5]:
                wanted[agent_id] = [_text(record_id) for record_id in reply[5]]
        if wanted:
            second_words = await self._read_for_repair(wanted, now_s)
            for agent_id, reply in await self._run_repair(second_words, found):
                tally.add(agent_id, reply)

    async def _run_repair(
        self, words: dict[str, list[str | bytes]], found: dict[str, _AgentScan]
    ) -> list[tuple[str, Any]]:
        script = self._require_script(self._repair_script)

        def commands() -> list[bytes]:
            packed = []
            for agent_id, agent_words in words.items():
                keys = self._keys.agent(agent_id)
                types = sorted(found[agent_id].types)
                packed.append(
                    self._pack(
                        "EVALSHA",
                        script.sha,
                        len(keys.script_keys),
                        *keys.script_keys,
                        keys.memory_prefix,
                        keys.type_prefix,
                        str(self._max_memories),
                        str(len(types)),
                        *types,
                        *agent_words,
                    )
                )
            return packed

        replies = await self._run_batch("sweep", commands)
        for agent_id, reply in zip(words, replies, strict=True):
            if int(reply[0]) or int(reply[2]):
                self.stale_removed(agent_id)
            if int(reply[3]):
                self.records_changed(agent_id)
        return list(zip(words, replies, strict=True))

    async def _read_for_repair(
        self, wanted: dict[str, list[str]], now_s: float
    ) -> dict[str, list[str | bytes]]:
        """K or X words for the records the repair script asked about, from their data."""
        targets = [(agent_id, record_id) for agent_id, ids in wanted.items() for record_id in ids]
        reads = [
            self._pack("HGET", self._keys.agent(agent_id).memory(record_id), "data")
            for agent_id, record_id in targets
        ]
        with _translated("sweep"):
            replies = await self._round_trip(reads)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        words: dict[str, list[str | bytes]] = {}
        for (agent_id, record_id), data in zip(targets, replies, strict=True):
            if not isinstance(data, bytes):
                continue  # gone meanwhile: the next repair sees its index entries
            record = self._decode(agent_id, record_id, data)
            if record is None:
                continue
            sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
            agent_words = words.setdefault(agent_id, [])
            if is_expired(record, now_s):
                agent_words += ["X", record_id, sha1]
            else:
                agent_words += ["K", record_id, *_index_fields(record), sha1]
        return words

    @staticmethod
    def _pack(*arguments: str | bytes | int) -> bytes:
        # hiredis's stub types its argument as a 1-tuple and its result as Any.
        return cast(bytes, hiredis.pack_command(arguments))  # type: ignore[arg-type]

    def _apply_args(self, keys: AgentKeys, now_s: float) -> list[str | bytes]:
        return [keys.memory_prefix, keys.type_prefix, _score(now_s), str(self._max_memories)]

    def _apply_command(self, keys: AgentKeys, now_s: float, words: list[str | bytes]) -> bytes:
        # EVALSHA, packed by hiredis: a Script object would cost a SCRIPT EXISTS
        # round trip per call; NOSCRIPT is handled in _run_batch instead.
        script = self._require_script(self._apply_script)
        script_keys = keys.script_keys
        command = ("EVALSHA", script.sha, len(script_keys), *script_keys)
        return self._pack(*command, *self._apply_args(keys, now_s), *words)

    async def _run_batch(self, action: str, commands: Callable[[], list[bytes]]) -> list[Any]:
        """The replies to ``commands``, sent in one write: one round trip per batch.

        The commands are packed again after the scripts are reloaded (Redis
        restarted or flushed them): sending them all again is safe, each
        script call is idempotent.
        """
        with _translated(action):
            for attempt in range(2):
                lease = self._lease_command()
                replies = await self._round_trip(lease + commands())
                if lease:
                    # The writer lease is renewed by the very round trip that writes:
                    # the other daemons see this one as a writer before its writes.
                    replies = replies[1:]
                if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                    logger.info("redis does not know the scripts any more; loading them again")
                    await self._load_scripts()
                    continue
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return replies
        raise AssertionError("unreachable")  # pragma: no cover

    def _lease_command(self) -> list[bytes]:
        """The lease renewal to send with a write, unless a renewal is fresh already."""
        if self.writer_lease is None:
            return []
        if time.monotonic() - self._lease_renewed_at < LEASE_FRESH_S:
            return []
        self._lease_renewed_at = time.monotonic()
        daemon_id, lease_s = self.writer_lease
        script = self._require_script(self._writers_script)
        return [
            self._pack(
                "EVALSHA", script.sha, 1, self._keys.writers, daemon_id, math.ceil(lease_s * 1000)
            )
        ]

    async def _round_trip(self, packed: list[bytes]) -> list[Any]:
        """Write ``packed`` on a pooled connection and read a reply for each.

        redis-py's Pipeline would do the same with several times the CPU per
        call (it runs on the event loop, between the requests of the agents).
        A connection that failed half-way is closed, never handed on.
        """
        pool = self._require_client().connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in packed:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

    async def _call_apply(self, agent_id: str, words: list[str | bytes], now_s: float) -> Any:
        keys = self._keys.agent(agent_id)
        script = self._require_script(self._apply_script)
        with _translated("apply"):
            return await script(
                keys=keys.script_keys, args=[*self._apply_args(keys, now_s), *words]
            )

    async def _repair(self, agent_id: str, stale_ids: Sequence[str], now_s: float) -> None:
        """Remove what a read found stale: expired records, index entries without a HASH."""
        words: list[str | bytes] = []
        for record_id in stale_ids:
            words += ["E", record_id]
        result = await self._call_apply(agent_id, words, now_s)
        if stale_ids or int(result[0]):
            self.stale_removed(agent_id)
        logger.debug("repaired %d stale entries of agent %s", len(stale_ids), agent_id)

    async def _load_scripts(self) -> None:
        client = self._require_client()
        scripts = (self._apply_script, self._page_script, self._writers_script, self._repair_script)
        for script in scripts:
            loaded = self._require_script(script)
            loaded.sha = await client.script_load(loaded.script)

    # -- reads --------------------------------------------------------------

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Record | None:
        client = self._require_client()
        with _translated("get"):
            data = await client.hget(self._keys.agent(agent_id).memory(record_id), "data")
        if not isinstance(data, bytes):  # None: absent (decode_responses is off, never str)
            return None
        record = self._decode(agent_id, record_id, data)
        if record is None:
            return None
        if is_expired(record, now_s):
            await self._repair(agent_id, [], now_s)
            return None
        return record

    async def query(self, agent_id: str, query: Query, now_s: float) -> list[Record]:
        if query.limit <= 0 or (query.types is not None and not query.types):
            return []
        keys = self._keys.agent(agent_id)
        index = keys.list
        if query.types is not None and len(query.types) == 1:
            (only_type,) = query.types
            index = keys.type(only_type)
        low = "-inf" if query.since is None else _score(query.since)
        high = "+inf" if query.until is None else "(" + _score(query.until)
        page_size = _page_size(query)
        found: list[Record] = []
        stale: list[str] = []
        offset = 0
        while len(found) < query.limit:
            page = await self._page(index, keys, query, (low, high), offset, page_size)
            for record_id, data in _pairs(page):
                if data is None:
                    stale.append(_text(record_id))
                    continue
                record = self._decode(agent_id, _text(record_id), data)
                if record is None:
                    continue
                if is_expired(record, now_s):
                    stale.append(_text(record_id))
                elif matches(record, query, now_s):
                    found.append(record)
                    if len(found) == query.limit:
                        break
            if len(page) < 2 * page_size:
                break
            offset += page_size
        # Repaired only now, so that the offsets of the pages above stay put.
        if stale:
            await self._repair(agent_id, stale, now_s)
        return found

    async def _page(
        self,
        index: str,
        keys: AgentKeys,
        query: Query,
        bounds: tuple[str, str],
        offset: int,
        count: int,
    ) -> list[Any]:
        script = self._require_script(self._page_script)
        low, high = bounds
        with _translated("query"):
            page: list[Any] = await script(
                keys=[index],
                args=[keys.memory_prefix, query.order, low, high, offset, count],
            )
        return page

    async def stats(self, agent_id: str, now_s: float) -> AgentStats:
        # The apply script with no operations: the expire step, then the stats
        # and types HASHes read in the same atomic step.
        result = await self._call_apply(agent_id, [], now_s)
        if int(result[0]):
            self.stale_removed(agent_id)
        return _parse_stats(result[1], result[2])

    async def agents(self, prefix: str, limit: int) -> list[str]:
        client = self._require_client()
        found: set[str] = set()
        with _translated("agents"):
            pattern = self._keys.stats_pattern(prefix)
            async for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                agent_id = self._keys.agent_of_stats_key(_text(key))
                if agent_id is not None:
                    found.add(agent_id)
        return sorted(found)[: max(limit, 0)]

    # -- helpers ------------------------------------------------------------

    def _decode(self, agent_id: str, record_id: str, data: bytes) -> Record | None:
        try:
            return decode_record(data)
        except (ValueError, TypeError, msgpack.UnpackException):
            # Never log the content itself; the key is enough to look at it.
            logger.warning("undecodable record %s of agent %s skipped", record_id, agent_id)
            return None

    def _require_client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("redis store is not open")
        return self._client

    @staticmethod
    def _require_script(script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise StoreUnavailable("redis store is not open")
        return script
