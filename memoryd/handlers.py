"""The methods of the protocol: each checks its arguments, then writes or reads.

Writes go through memoryd.writes (the WAL, the durability wait, one
read-modify-write of an agent at a time), reads through memoryd.reads (the
store or the read cache, with the agent's backlog laid over it).  What is
here is what the protocol says: argument names, defaults, bounds and results.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from memoryd import __version__
from memoryd import validation as v
from memoryd.config import Settings
from memoryd.errors import (
    BackendUnavailable,
    InvalidRequest,
    NotFound,
    TooLarge,
)
from memoryd.ops import Clear, Delete, Put, Replace
from memoryd.reads import Answer, Reader
from memoryd.records import Query, Record
from memoryd.transport import Peer
from memoryd.validation import Args
from memoryd.writes import Writer
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


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """What the methods take from the settings: the bounds and defaults of arguments."""

    max_batch: int
    default_ttl_s: int
    max_record_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> RequestSettings:
        return cls(
            max_batch=settings.max_batch,
            default_ttl_s=settings.default_ttl_s,
            max_record_bytes=settings.max_record_bytes,
        )


class Handlers:
    def __init__(
        self,
        settings: RequestSettings,
        *,
        reader: Reader,
        writer: Writer,
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self._reader = reader
        self._writer = writer
        self._status = status
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

    def reconfigure(self, settings: RequestSettings) -> None:
        """Requests from now on follow ``settings`` (bounds, the default TTL)."""
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
        seqs = await self._writer.append([put])
        await self._writer.wait_applied(durability, seqs[-1])
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
        seqs = await self._writer.append(puts)
        await self._writer.wait_applied(durability, seqs[-1])
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
        async with self._writer.agent_lock(agent_id):
            current = await self._reader.get(agent_id, record_id)
            if current is None:
                raise NotFound(f"no record {record_id!r} for agent {agent_id!r}")
            replace = Replace.of({**current, **changes})  # type: ignore[typeddict-item]
            self._check_size(replace.data, replace.record, args)
            await self._writer.append([replace])
        return replace.record

    async def delete(self, values: Mapping[str, Any], peer: Peer) -> dict[str, bool]:
        args = Args(values, frozenset({"agent_id", "id"}))
        agent_id = _agent_id(args)
        record_id = _record_id(args, "id")
        async with self._writer.agent_lock(agent_id):
            if await self._reader.get(agent_id, record_id) is None:
                return {"deleted": False}
            await self._writer.append([Delete(agent_id, record_id)])
        return {"deleted": True}

    async def clear(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"agent_id"}))
        agent_id = _agent_id(args)
        async with self._writer.agent_lock(agent_id):
            try:
                count = (await self._reader.stats(agent_id))["count"]
                degraded = False
            except BackendUnavailable:
                count = self._reader.held_count(agent_id)
                degraded = True
            await self._writer.append([Clear(agent_id)])
        return {"deleted": count, "degraded": degraded}

    # ------------------------------------------------------------ reads

    async def get(self, values: Mapping[str, Any], peer: Peer) -> Record:
        args = Args(values, frozenset({"agent_id", "id"}))
        agent_id = _agent_id(args)
        record_id = _record_id(args, "id")
        record = await self._reader.get(agent_id, record_id)
        if record is None:
            raise NotFound(f"no record {record_id!r} for agent {agent_id!r}")
        return record

    async def recent(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, _QUERY_FIELDS)
        agent_id = _agent_id(args)
        return _answer(await self._reader.query(agent_id, self._query_of(args)))

    async def search(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"agent_id", "query", "limit", "types"}))
        agent_id = _agent_id(args)
        text = v.query_text("query", args.required("query"))
        query = Query(
            limit=v.limit("limit", args.optional("limit", 10)),
            types=v.type_list("types", args.values["types"]) if args.has("types") else None,
            text=text,
        )
        return _answer(await self._reader.query(agent_id, query))

    async def stats(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"agent_id"}))
        return await self._reader.stats(_agent_id(args))

    async def agents(self, values: Mapping[str, Any], peer: Peer) -> dict[str, Any]:
        args = Args(values, frozenset({"prefix", "limit"}))
        prefix = v.prefix("prefix", args.optional("prefix", ""))
        limit = v.integer(
            "limit", args.optional("limit", wire.DEFAULT_AGENTS_LIMIT), 1, wire.MAX_AGENTS_LIMIT
        )
        agent_ids, degraded = await self._reader.agents(prefix, limit)
        return {"agents": agent_ids, "degraded": degraded}

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


def _answer(answer: Answer) -> dict[str, Any]:
    return {"records": answer.records, "degraded": answer.degraded}
