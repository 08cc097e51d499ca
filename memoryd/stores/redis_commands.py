"""What the Redis store sends and gets back: commands as they travel (packed,
with the key that routes them, framed in a batch), operations as the scripts'
ARGV words, replies as values.  No I/O (memoryd.stores.redis_link does that)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import msgpack

from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Query, Record, decode_record, is_expired
from memoryd.stores.base import AgentStats, Eviction, Writers

logger = logging.getLogger(__name__)

# A record's HASH outlives its expires_at by this much.  Reads stop returning
# the record at expires_at (its expiry index entry and the record itself say
# so); during the grace the HASH still tells the record's type and size, so
# the sweep or a read repair removes its index entries and subtracts its bytes
# exactly.  Past the grace Redis drops the HASH on its own, and a repair falls
# back to finding the type in the type ZSETs and recounting the bytes.
EXPIRY_GRACE_S = 3600.0

MIN_PAGE = 32
MAX_PAGE = 1000


def pack(*arguments: str | bytes | int) -> bytes:
    """One command in the wire format."""
    # hiredis's stub types its argument as a 1-tuple and its result as Any.
    return cast(bytes, hiredis.pack_command(arguments))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Command:
    """One command in the wire format, ready for a round trip, and the key
    whose slot serves it on a cluster (None: a command of the server itself)."""

    packed: bytes
    key: str | None = None


def server_command(*arguments: str | bytes | int) -> Command:
    """A command of the server (INFO, WAIT...), not of a key."""
    return Command(pack(*arguments))


def key_command(name: str, key: str, *arguments: str | bytes | int) -> Command:
    """A command on ``key`` (``name key arguments...``)."""
    return Command(pack(name, key, *arguments), key)


def _nothing_before(shard_tag: str) -> list[Command]:
    return []


def _nothing_after(shard_tag: str, commands: Sequence[Command]) -> list[Command]:
    return []


@dataclass(frozen=True, slots=True)
class Framing:
    """What a write batch carries around its commands, on each shard it goes to
    (given the shard's hash tag; "" on one server), in the same round trip:
    ``before`` them (a writer lease renewal) and ``after`` them (a change notice
    naming what they wrote).  Their replies are dropped."""

    before: Callable[[str], list[Command]] = _nothing_before
    after: Callable[[str, Sequence[Command]], list[Command]] = _nothing_after
    # Held while the batch is framed and sent: numbered notices leave in order.
    serial: asyncio.Lock | None = None


NO_FRAMING = Framing()


def score(value: float) -> str:
    # repr() is the shortest string that parses back to the same double, so
    # Redis stores exactly the float the record holds.
    return repr(float(value))


def index_fields(record: Record) -> list[str | bytes]:
    """Type, created_at, expires_at|"" and the HASH's pexpireat_ms|"", as the scripts take them."""
    expires_at = record["expires_at"]
    if expires_at is None:
        expiry, pexpireat_ms = "", ""
    else:
        expiry = score(expires_at)
        pexpireat_ms = str(math.ceil((expires_at + EXPIRY_GRACE_S) * 1000))
    return [record["type"], score(record["created_at"]), expiry, pexpireat_ms]


def _record_args(tag: str, record: Record, data: bytes) -> list[str | bytes]:
    return [tag, record["id"], *index_fields(record), data]


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


def group_by_agent(
    numbers: Iterable[tuple[Op, int | None]], now_s: float
) -> dict[str, list[str | bytes]]:
    """Each agent's operations as the apply script's ARGV words, each after its
    number (0: not numbered), in order; agents in order of first appearance."""
    grouped: dict[str, list[str | bytes]] = {}
    for op, seq in numbers:
        words = _op_args(op, now_s)
        if words:
            grouped.setdefault(op.agent_id, []).extend([str(seq or 0), *words])
    return grouped


def pairs(flat: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
    return zip(flat[0::2], flat[1::2], strict=True)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_stats(stats_pairs: Sequence[Any], types_pairs: Sequence[Any]) -> AgentStats:
    fields = {text(name): text(value) for name, value in pairs(stats_pairs)}
    count = int(fields.get("count", "0"))
    if count == 0:
        return AgentStats()
    return AgentStats(
        count=count,
        by_type={text(name): int(value) for name, value in pairs(types_pairs)},
        bytes=int(fields.get("bytes", "0")),
        oldest=float(fields["oldest"]) if "oldest" in fields else None,
        newest=float(fields["newest"]) if "newest" in fields else None,
    )


def info_eviction(
    server: dict[str, Any], memory: dict[str, Any], stats: dict[str, Any]
) -> Eviction:
    return Eviction(
        # A server that does not say (a proxy, a look-alike) is taken to evict.
        policy=str(memory.get("maxmemory_policy") or "unknown"),
        maxmemory_bytes=int(memory.get("maxmemory", 0)),
        evicted_keys=int(stats.get("evicted_keys", 0)),
        server_run_id=str(server.get("run_id", "")),
    )


# With appendfsync everysec a write reaches the disk within about a second
# (two, when the disk is slow: Redis then postpones the fsync once).
EVERYSEC_LAG_S = 2.0


def durable_until(persistence: dict[str, Any], appendfsync: str | None, now_s: float) -> float:
    """Before when applied writes are durable, from INFO persistence (see
    RedisStore.durability); -inf when nothing can be said."""
    until = -math.inf
    if int(persistence.get("aof_enabled", 0)) and persistence.get("aof_last_write_status") == "ok":
        if appendfsync == "always":
            return math.inf
        if appendfsync == "everysec":
            until = now_s - EVERYSEC_LAG_S
    rdb_saved_all = (
        persistence.get("rdb_last_bgsave_status") == "ok"
        and int(persistence.get("rdb_changes_since_last_save", 1)) == 0
        and not int(persistence.get("rdb_bgsave_in_progress", 0))
    )
    return max(until, now_s) if rdb_saved_all else until


def writers_of(reply: Sequence[Any]) -> Writers:
    """A reply of writers.lua."""
    return Writers(int(reply[0]), bool(int(reply[1])), int(reply[2]) if len(reply) > 2 else 0)


def parsed_info(reply: bytes) -> dict[str, str]:
    """The fields of an INFO reply, as text ("name:value" lines)."""
    fields: dict[str, str] = {}
    for line in text(reply).splitlines():
        name, colon, value = line.partition(":")
        if colon and not line.startswith("#"):
            fields[name] = value
    return fields


def appendfsync_of(reply: Any) -> str | None:
    """The policy in a CONFIG GET appendfsync reply; None where CONFIG is refused
    (renamed away, or not allowed to memoryd's user)."""
    if isinstance(reply, dict):  # RESP3
        reply = [item for pair in reply.items() for item in pair]
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    return text(reply[1])


def page_size(query: Query) -> int:
    # Without filters beyond type and time nearly every entry matches, so a
    # page of about `limit` suffices; otherwise read ahead more per trip.
    wanted = query.limit * 4 if query.needs_record else query.limit + 8
    return max(MIN_PAGE, min(MAX_PAGE, wanted))


def decoded(agent_id: str, record_id: str, data: bytes) -> Record | None:
    """The record stored as ``data``; None (and a warning) if it does not decode."""
    try:
        return decode_record(data)
    except (ValueError, TypeError, msgpack.UnpackException):
        # Never log the content itself; the key is enough to look at it.
        logger.warning("undecodable record %s of agent %s skipped", record_id, agent_id)
        return None
