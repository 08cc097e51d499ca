"""The methods of the protocol: checking arguments, writing, reading.

Writes go to the WAL and are acknowledged once durable there; the flusher
applies them to the store.  Reads take the store's answer (from memory when
the read cache can tell it exactly: memoryd.cache) and lay the agent's
backlog over it, so a client always reads its own writes.  While the store is
down, reads answer at once from the cache with the backlog laid over it, and
say so (``degraded: true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgpack

from memoryd import __version__
from memoryd import validation as v
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
from memoryd.errors import (
    BackendUnavailable,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    NotFound,
    Overloaded,
    TooLarge,
    WalFull,
)
from memoryd.flusher import Flusher
from memoryd.health import Health
from memoryd.ops import Clear, Delete, Entry, Op, Put, Replace
from memoryd.records import Query, Record, is_expired
from memoryd.stores.base import STORE_FAILURES, Store
from memoryd.transport import Peer
from memoryd.validation import Args
from memoryd.wal import Wal, WalBusyError, WalError, WalFullError
from memoryd_client import wire
from memoryd_client.ids import new_id

Handler = Callable[[Mapping[str, Any], Peer], Awaitable[Any]]

_RECORD_FIELDS = frozenset(
    {
        "agent_id",
        "type",
        "content",
        "author",
        "importance",
        "tags",
        "metadata",
        "ttl_s",
        "id",
        "created_at",
        "expires_at",
        "durability",
    }
)
_UPDATE_FIELDS = frozenset({"content", "importance", "tags", "metadata", "ttl_s"})
_QUERY_FIELDS = frozenset(
    {"agent_id", "limit", "order", "types", "author", "exclude_author", "tags", "since", "until"}
)
DEFAULT_AGENTS_LIMIT = 100
MAX_AGENTS_LIMIT = 10_000


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        wal: Wal,
        backlog: Backlog,
        flusher: Flusher,
        health: Health,
        cache: ReadCache,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.wal = wal
        self.backlog = backlog
        self.flusher = flusher
        self.health = health
        self.cache = cache
        self._status = status
        self._agent_locks: dict[str, asyncio.Lock] = {}
        self.methods: dict[str, Handler] = {
            "hello": self.hello,
            "ping": self.ping,
            "add": self.add,
            "add_many": self.add_many,
            "get": self.get,
            "update": self.update,
            "delete": self.delete,
            "recent": self.recent,
            "search": self.search,
            "stats": self.stats,
            "clear": self.clear,
            "agents": self.agents,
            "status": self.status,
        }

    async def call(self, method: str, args: Mapping[str, Any], peer: Peer) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            raise InvalidRequest("method", f"unknown method {method[:64]!r}")
        return await handler(args, peer)

    # ------------------------------------------------------------ session

    def reconfigure(self, settings: Settings) -> None:
        """Requests from now on follow ``settings`` (limits, TTL, timeouts)."""
        self.settings = settings

    async def hello(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"client", "protocol"}))
        if args.has("client"):
            v.text("client", args.values["client"], max_chars=256)
        if args.has("protocol"):
            v.integer("protocol", args.values["protocol"], 1, 2**31)
        return {
            "server": "memoryd",
            "version": __version__,
            "protocol": wire.PROTOCOL_VERSION,
            "peer": {"pid": peer.pid, "uid": peer.uid, "gid": peer.gid},
        }

    async def ping(self, values: Mapping[str, Any], peer: Peer) -> str:
        Args(values, frozenset())
        return "pong"

    async def status(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        Args(values, frozenset())
        return self._status()

    # ------------------------------------------------------------ writes

    async def add(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, _RECORD_FIELDS)
        durability = self._durability(args)
        put = Put.of(self._new_record(args, time.time()))
        self._check_size(put.data, put.record, args)
        seqs = await self._append([put])
        await self._wait_if_store_durability(durability, seqs[-1])
        return {"id": put.record["id"], "created_at": put.record["created_at"]}

    async def add_many(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"records", "durability"}))
        durability = self._durability(args)
        records = args.required("records")
        if not isinstance(records, list) or not records:
            raise InvalidRequest("records", "must be a non-empty array of records")
        if len(records) > self.settings.max_batch:
            raise TooLarge("records", f"at most {self.settings.max_batch} records per batch")
        now_s = time.time()
        puts = []
        for index, item in enumerate(records):
            where = f"records[{index}]."
            if not isinstance(item, dict):
                raise InvalidRequest(f"records[{index}]", "must be a map")
            item_args = Args(item, _RECORD_FIELDS, where)
            if self._durability(item_args) == "store":
                durability = "store"
            put = Put.of(self._new_record(item_args, now_s))
            self._check_size(put.data, put.record, item_args)
            puts.append(put)
        seqs = await self._append(puts)
        await self._wait_if_store_durability(durability, seqs[-1])
        return {"ids": [put.record["id"] for put in puts]}

    async def update(self, values: Mapping[str, Any], peer: Peer) -> Record:
        args = Args(values, _UPDATE_FIELDS | {"agent_id", "id"})
        agent_id = _agent_id(args)
        record_id = _record_id(args, "id")
        if not any(name in args.values for name in _UPDATE_FIELDS):
            raise InvalidRequest(
                "", f"nothing to update: give any of {', '.join(sorted(_UPDATE_FIELDS))}"
            )
        changes = self._changes(args, time.time())
        async with self._agent_lock(agent_id):
            current = await self._get(agent_id, record_id)
            if current is None:
                raise NotFound(f"no record {record_id!r} for agent {agent_id!r}")
            replace = Replace.of({**current, **changes})  # type: ignore[typeddict-item]
            self._check_size(replace.data, replace.record, args)
            await self._append([replace])
        return replace.record

    async def delete(self, values: Mapping[str, Any], peer: Peer) -> dict[str, bool]:
        args = Args(values, frozenset({"agent_id", "id"}))
        agent_id = _agent_id(args)
        record_id = _record_id(args, "id")
        async with self._agent_lock(agent_id):
            if await self._get(agent_id, record_id) is None:
                return {"deleted": False}
            await self._append([Delete(agent_id, record_id)])
        return {"deleted": True}

    async def clear(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"agent_id"}))
        agent_id = _agent_id(args)
        async with self._agent_lock(agent_id):
            try:
                count = (await self._exact_stats(agent_id))["count"]
                degraded = False
            except BackendUnavailable:
                count = len(
                    merge_query(
                        [],
                        self.backlog.for_agent(agent_id),
                        Query(limit=self.settings.max_memories),
                        time.time(),
                    )
                )
                degraded = True
            await self._append([Clear(agent_id)])
        return {"deleted": count, "degraded": degraded}

    # ------------------------------------------------------------ reads

    async def get(self, values: Mapping[str, Any], peer: Peer) -> Record:
        args = Args(values, frozenset({"agent_id", "id"}))
        agent_id = _agent_id(args)
        record_id = _record_id(args, "id")
        record = await self._get(agent_id, record_id)
        if record is None:
            raise NotFound(f"no record {record_id!r} for agent {agent_id!r}")
        return record

    async def recent(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, _QUERY_FIELDS)
        agent_id = _agent_id(args)
        return await self._query(agent_id, self._query_of(args))

    async def search(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"agent_id", "query", "limit", "types"}))
        agent_id = _agent_id(args)
        text = v.query_text("query", args.required("query"))
        query = Query(
            limit=v.limit("limit", args.optional("limit", 10)),
            types=v.type_list("types", args.values["types"]) if args.has("types") else None,
            text=text,
        )
        return await self._query(agent_id, query)

    async def stats(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"agent_id"}))
        return await self._exact_stats(_agent_id(args))

    async def agents(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"prefix", "limit"}))
        prefix = v.prefix("prefix", args.optional("prefix", ""))
        limit = v.integer(
            "limit", args.optional("limit", DEFAULT_AGENTS_LIMIT), 1, MAX_AGENTS_LIMIT
        )
        # Taken first: an agent whose writes are applied while the store is
        # scanned may be missing from the scan, never from both.
        pending = [a for a in self.backlog.agent_ids() if a.startswith(prefix)]
        degraded = False
        try:
            stored = [] if self.health.store_down else await self.store.agents(prefix, limit)
            degraded = self.health.store_down
        except STORE_FAILURES:
            stored, degraded = [], True
        return {"agents": sorted(set(stored) | set(pending))[:limit], "degraded": degraded}

    # ------------------------------------------------------------ internals

    def _durability(self, args: Args) -> str:
        return v.choice(
            args.name("durability"), args.optional("durability", "local"), ("local", "store")
        )

    def _new_record(self, args: Args, now_s: float) -> Record:
        created_at = (
            v.timestamp(args.name("created_at"), args.values["created_at"], now_s)
            if args.has("created_at")
            else now_s
        )
        expires_at = self._expires_at(args, now_s)
        return {
            "id": v.record_id(args.name("id"), args.values["id"])
            if args.has("id")
            else new_id(now_s),
            "agent_id": v.agent_id(args.name("agent_id"), args.required("agent_id")),
            "type": v.type_token(args.name("type"), args.required("type")),
            "content": v.content(args.name("content"), args.values.get("content")),
            "author": v.author(args.name("author"), args.values.get("author")),
            "importance": v.number(args.name("importance"), args.optional("importance", 0.5), 0, 1),
            "tags": v.tags(args.name("tags"), args.optional("tags", [])),
            "metadata": v.metadata(args.name("metadata"), args.optional("metadata", {})),
            "created_at": created_at,
            "expires_at": expires_at,
        }

    def _expires_at(self, args: Args, now_s: float) -> float | None:
        """From ``ttl_s`` (0: never), or as given (a restore keeps the exported expiry)."""
        if args.has("expires_at"):
            if args.has("ttl_s"):
                raise InvalidRequest(args.name("expires_at"), "give ttl_s or expires_at, not both")
            return v.expiry(args.name("expires_at"), args.values["expires_at"])
        ttl_s = v.ttl_s(args.name("ttl_s"), args.optional("ttl_s", self.settings.default_ttl_s))
        return now_s + ttl_s if ttl_s > 0 else None

    def _changes(self, args: Args, now_s: float) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name in ("content", "importance", "tags", "metadata"):
            if name in args.values and args.values[name] is None:
                raise InvalidRequest(name, "must not be nil (leave it out to keep it)")
        if "ttl_s" in args.values and args.values["ttl_s"] is None:
            changes["expires_at"] = None  # nil, like 0: never expires
        if args.has("content"):
            changes["content"] = v.content("content", args.values["content"])
        if args.has("importance"):
            changes["importance"] = v.number("importance", args.values["importance"], 0, 1)
        if args.has("tags"):
            changes["tags"] = v.tags("tags", args.values["tags"])
        if args.has("metadata"):
            changes["metadata"] = v.metadata("metadata", args.values["metadata"])
        if args.has("ttl_s"):
            ttl = v.ttl_s("ttl_s", args.values["ttl_s"])
            changes["expires_at"] = now_s + ttl if ttl > 0 else None
        return changes

    def _check_size(self, data: bytes, record: Record, args: Args) -> None:
        limit = self.settings.max_record_bytes
        if len(data) <= limit:
            return
        content_bytes = len(msgpack.packb(record["content"], use_bin_type=True))
        argument = "content" if content_bytes > limit // 2 else "metadata"
        raise TooLarge(
            args.name(argument),
            f"the record encodes to {len(data)} bytes; max_record_bytes is {limit}",
        )

    async def _append(self, ops: Sequence[Op]) -> list[int]:
        try:
            seqs = await self.wal.append(ops)
        except WalFullError as exc:
            self.health.wal_full(str(exc), for_space=exc.for_space)
            raise WalFull(str(exc)) from exc
        except WalBusyError as exc:
            self.health.wal_full(str(exc), for_space=False)
            raise Overloaded(str(exc)) from exc
        except WalError as exc:
            raise InternalError(str(exc)) from exc
        if self.health.wal_full_reason is not None:
            self.health.wal_has_room()
        return seqs

    async def _wait_if_store_durability(self, durability: str, seq: int) -> None:
        if durability != "store":
            return
        try:
            await asyncio.wait_for(self.flusher.wait_applied(seq), self.settings.request_timeout_s)
        except TimeoutError:
            why = "the store is unreachable" if self.health.store_down else "the store is slow"
            error = BackendUnavailable if self.health.store_down else DeadlineExceeded
            raise error(
                f"{why}: the write is safe in the WAL and will be applied, "
                "but was not applied within request_timeout_s"
            ) from None

    @contextlib.asynccontextmanager
    async def _agent_lock(self, agent_id: str) -> AsyncIterator[None]:
        # Read-modify-write methods of one agent run one at a time, so two
        # updates of one record never both start from the same version.
        lock = self._agent_locks.setdefault(agent_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._agent_locks.get(agent_id) is lock:
                del self._agent_locks[agent_id]

    async def _pending(self, agent_id: str) -> tuple[Entry, ...]:
        """The agent's not-yet-applied writes, after giving the flusher a moment.

        While the store is healthy a read waits briefly for the agent's own
        writes to be applied, so that it sees exactly what the store holds
        (trimming included).  If they are not applied in time, or the store
        is down, the read lays them over the store's answer instead.  The
        snapshot is taken before the store is asked: writes applied while it
        answers are then laid over again, which is harmless (idempotent).
        """
        last_seq = self.backlog.last_seq_for(agent_id)
        if last_seq and not self.health.store_down:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.flusher.wait_applied(last_seq), self.settings.read_barrier_timeout_s
                )
        return tuple(self.backlog.for_agent(agent_id))

    async def _get(self, agent_id: str, record_id: str) -> Record | None:
        """The record, None if it is known not to exist, else BackendUnavailable."""
        if not self.health.store_down:
            now_s = time.time()
            pending = [entry.op for entry in self.backlog.for_agent(agent_id)]
            held = self.cache.get(agent_id, record_id, now_s, pending)
            if held is not None:
                self.cache.hits += 1
                return None if is_expired(held, now_s) else held
        entries = await self._pending(agent_id)
        now_s = time.time()
        stored: Record | None | Unknown = self.cache.known(agent_id, record_id) or UNKNOWN
        if hides_store(entries):
            stored = None
        elif not self.health.store_down:
            token = self.cache.token()
            try:
                stored = await self.store.get(agent_id, record_id, now_s)
            except STORE_FAILURES:
                pass  # answered from the backlog alone
            else:
                self.cache.remember(agent_id, [stored] if stored is not None else [], token)
        record = merge_get(stored, entries, record_id, now_s)
        if record is UNKNOWN:
            raise BackendUnavailable(
                "the store is unreachable and the record is not among the writes memoryd "
                "still holds; retry when the store is back"
            )
        return record

    async def _query(self, agent_id: str, query: Query) -> dict[str, Any]:
        entries = tuple(self.backlog.for_agent(agent_id))
        if not self.health.store_down:
            # What the store will hold once the backlog is applied, from memory:
            # exact without waiting for the flusher.
            pending = [entry.op for entry in entries]
            found = self.cache.answer(agent_id, query, time.time(), pending)
            if found is not None:
                self.cache.hits += 1
                return {"records": found, "degraded": False}
        if entries and not merge_is_exact(query, entries, self.settings.max_memories):
            entries = await self._pending(agent_id)
        now_s = time.time()
        degraded = self.health.store_down
        stored: list[Record] = []
        if not degraded and not hides_store(entries):
            fetch = dataclasses.replace(query, limit=store_fetch_limit(query, entries))
            try:
                stored = await self._stored_answer(agent_id, fetch, now_s)
            except STORE_FAILURES:
                degraded = True
        if degraded and not hides_store(entries):
            stored = self.cache.records(agent_id)
        merge = entries or degraded
        records = merge_query(stored, entries, query, now_s) if merge else stored
        return {"records": records, "degraded": degraded}

    async def _stored_answer(self, agent_id: str, fetch: Query, now_s: float) -> list[Record]:
        """What the store answers to ``fetch``, once the cache could not tell (``_query``
        asked it first, with the backlog replayed).

        When the cache may learn the agent (memoryd.cache), the agent's newest
        records are fetched first, unfiltered, so that the next reads of this
        agent, filtered or not, can be answered from memory.
        """
        cache = self.cache
        cache.misses += 1
        token = cache.token()
        # Only newest-first reads fill: an oldest-first page (an export) would
        # fetch the newest records for nothing and push other agents out.
        if fetch.order == "newest" and cache.may_fill(agent_id):
            newest = Query(limit=max(cache.per_agent, fetch.limit if fetch.newest_of_all else 0))
            records = await self.store.query(agent_id, newest, now_s)
            cache.fill(agent_id, records, newest.limit, token)
            if fetch.newest_of_all:
                return records[: fetch.limit]
            found = cache.answer(agent_id, fetch, now_s)
            if found is not None:
                return found
        records = await self.store.query(agent_id, fetch, now_s)
        if fetch.order == "newest":
            cache.remember(agent_id, records, token)
        return records

    async def _exact_stats(self, agent_id: str) -> dict[str, Any]:
        """Stats from the store, once the agent's backlog has reached it."""
        last_seq = self.backlog.last_seq_for(agent_id)
        if self.health.store_down:
            raise BackendUnavailable("the store is unreachable; stats need it")
        try:
            if last_seq:
                await asyncio.wait_for(
                    self.flusher.wait_applied(last_seq), self.settings.request_timeout_s
                )
            stats = await self.store.stats(agent_id, time.time())
        except TimeoutError:
            raise DeadlineExceeded("the agent's writes were not applied in time") from None
        except STORE_FAILURES as exc:
            raise BackendUnavailable(f"the store is unreachable: {exc}") from exc
        return stats.as_dict()

    def _query_of(self, args: Args) -> Query:
        now_s = time.time()
        return Query(
            limit=v.limit("limit", args.optional("limit", 10)),
            order=v.choice("order", args.optional("order", "newest"), ("newest", "oldest")),  # type: ignore[arg-type]
            types=v.type_list("types", args.values["types"]) if args.has("types") else None,
            author=v.author("author", args.values.get("author")),
            exclude_author=v.author("exclude_author", args.values.get("exclude_author")),
            tags=frozenset(v.tags("tags", args.values["tags"])) if args.has("tags") else None,
            since=v.timestamp("since", args.values["since"], now_s) if args.has("since") else None,
            until=v.timestamp("until", args.values["until"], now_s) if args.has("until") else None,
        )


def _agent_id(args: Args) -> str:
    return v.agent_id("agent_id", args.required("agent_id"))


def _record_id(args: Args, name: str) -> str:
    return v.record_id(name, args.required(name))
