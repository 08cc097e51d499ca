"""What the blocking and the asyncio client share about a call.

A ``Call`` is everything about one method call that does not depend on how
bytes move: the method name, the named arguments (with the record id and
creation time already assigned, so that every retry sends the same write) and
the function that turns the server's result into what the caller gets.  The
helpers at the end read responses off the wire for both clients.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

import msgpack

from memoryd_client import ids, wire
from memoryd_client.errors import ProtocolError, error_from_wire
from memoryd_client.types import (
    AddResult,
    AgentList,
    Cleared,
    Durability,
    HelloResult,
    Order,
    Record,
    RecordList,
    Stats,
)

T = TypeVar("T")

# Every way a byte stream can fail to decode: msgpack raises ValueError
# subclasses for bad data and UnpackException subclasses for limits.
UNPACK_ERRORS: Final = (ValueError, msgpack.UnpackException)

# Responses may be far larger than requests (``recent`` with a high limit), and
# the daemon is trusted more than its clients: the limit only stops a corrupt
# header from allocating gigabytes.
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024

RECV_CHUNK_BYTES: Final = 256 * 1024


class Unset(enum.Enum):
    """Type of ``UNSET``, the default of ``update``'s optional fields."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


# Leaving a field of ``update`` out changes nothing; ``ttl_s=None`` removes the
# expiry, and None for any other field is refused by the daemon.
UNSET: Final = Unset.UNSET


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One method call, ready to be sent as many times as retries need."""

    method: str
    args: dict[str, Any]
    shape: Callable[[Any], T]


class MsgIds:
    """msgids in 1..2**32-1, wrapping around and never 0."""

    def __init__(self, first: int = wire.MIN_MSGID) -> None:
        self._next = first

    def take(self) -> int:
        msgid = self._next
        self._next = msgid + 1 if msgid < wire.MAX_MSGID else wire.MIN_MSGID
        return msgid


# Arguments -------------------------------------------------------------------


def _named(**args: Any) -> dict[str, Any]:
    # None means "not given": the server applies its default.
    return {name: value for name, value in args.items() if value is not None}


def _strings(name: str, values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        # list("abc") would silently become three one-letter tags.
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    return list(values)


def _mapping(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if metadata is None else dict(metadata)


def _with_identity(args: dict[str, Any]) -> dict[str, Any]:
    """Assign id and created_at where missing, so that a retry is the same write."""
    if args.get("created_at") is None:
        args["created_at"] = time.time()
    if args.get("id") is None:
        args["id"] = ids.new_id(args["created_at"])
    return args


# Results ---------------------------------------------------------------------


def _unexpected(method: str, result: Any) -> ProtocolError:
    return ProtocolError(f"unexpected result for {method}: {type(result).__name__}")


def _map(method: str, result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise _unexpected(method, result)
    return result


def _field(method: str, result: Any, name: str, kind: type[Any]) -> Any:
    value = _map(method, result).get(name)
    if not isinstance(value, kind):
        raise ProtocolError(f"result of {method} has no {kind.__name__} {name!r}")
    return value


def _records(method: str, result: Any) -> RecordList:
    records = _field(method, result, "records", list)
    return RecordList(records, degraded=bool(_map(method, result).get("degraded", False)))


# Calls -----------------------------------------------------------------------


def hello(client: str | None) -> Call[HelloResult]:
    args = _named(client=client, protocol=wire.PROTOCOL_VERSION)
    return Call("hello", args, lambda r: cast(HelloResult, _map("hello", r)))


def ping() -> Call[str]:
    def shape(result: Any) -> str:
        if not isinstance(result, str):
            raise _unexpected("ping", result)
        return result

    return Call("ping", {}, shape)


def add(
    agent_id: str,
    type: str,
    content: Any,
    *,
    author: str | None,
    importance: float | None,
    tags: Sequence[str] | None,
    metadata: Mapping[str, Any] | None,
    ttl_s: float | None,
    id: str | None,
    created_at: float | None,
    durability: Durability | None,
) -> Call[AddResult]:
    args = _named(
        agent_id=agent_id,
        type=type,
        author=author,
        importance=importance,
        tags=_strings("tags", tags),
        metadata=_mapping(metadata),
        ttl_s=ttl_s,
        id=id,
        created_at=created_at,
        durability=durability,
    )
    args["content"] = content
    return Call("add", _with_identity(args), lambda r: cast(AddResult, _map("add", r)))


def add_many(records: Sequence[Mapping[str, Any]]) -> Call[list[str]]:
    prepared = []
    for record in records:
        if not isinstance(record, Mapping):
            raise TypeError(f"add_many takes mappings, not {type(record).__name__}")
        fields = {name: value for name, value in record.items() if value is not None}
        prepared.append(_with_identity(fields))
    return Call(
        "add_many", {"records": prepared}, lambda r: list(_field("add_many", r, "ids", list))
    )


def get(agent_id: str, id: str) -> Call[Record]:
    return Call("get", _named(agent_id=agent_id, id=id), lambda r: cast(Record, _map("get", r)))


def update(
    agent_id: str,
    id: str,
    *,
    content: Any,
    importance: float | Unset,
    tags: Sequence[str] | Unset,
    metadata: Mapping[str, Any] | Unset,
    ttl_s: float | None | Unset,
) -> Call[Record]:
    changes: dict[str, Any] = {
        "content": content,
        "importance": importance,
        "tags": tags if isinstance(tags, Unset) else _strings("tags", tags),
        "metadata": metadata if isinstance(metadata, Unset) else _mapping(metadata),
        "ttl_s": ttl_s,
    }
    args = {"agent_id": agent_id, "id": id}
    args.update({name: value for name, value in changes.items() if value is not UNSET})
    return Call("update", args, lambda r: cast(Record, _map("update", r)))


def delete(agent_id: str, id: str) -> Call[bool]:
    args = _named(agent_id=agent_id, id=id)
    # int too: bool is an int, and a server may count what it deleted.
    return Call("delete", args, lambda r: bool(_field("delete", r, "deleted", int)))


def recent(
    agent_id: str,
    *,
    limit: int | None,
    order: Order | None,
    types: Sequence[str] | None,
    author: str | None,
    exclude_author: str | None,
    tags: Sequence[str] | None,
    since: float | None,
    until: float | None,
) -> Call[RecordList]:
    args = _named(
        agent_id=agent_id,
        limit=limit,
        order=order,
        types=_strings("types", types),
        author=author,
        exclude_author=exclude_author,
        tags=_strings("tags", tags),
        since=since,
        until=until,
    )
    return Call("recent", args, lambda r: _records("recent", r))


def search(
    agent_id: str, query: str, *, limit: int | None, types: Sequence[str] | None
) -> Call[RecordList]:
    args = _named(agent_id=agent_id, query=query, limit=limit, types=_strings("types", types))
    return Call("search", args, lambda r: _records("search", r))


def stats(agent_id: str) -> Call[Stats]:
    return Call("stats", {"agent_id": agent_id}, lambda r: cast(Stats, _map("stats", r)))


def clear(agent_id: str) -> Call[Cleared]:
    def shape(result: Any) -> Cleared:
        deleted = int(_field("clear", result, "deleted", int))
        return Cleared(deleted, degraded=bool(_map("clear", result).get("degraded", False)))

    return Call("clear", {"agent_id": agent_id}, shape)


def agents(*, prefix: str | None, limit: int | None) -> Call[AgentList]:
    def shape(result: Any) -> AgentList:
        # The contract says "the agent ids"; accept a bare list or {"agents": [...]}.
        degraded = False
        if isinstance(result, dict):
            degraded = bool(result.get("degraded", False))
            result = result.get("agents")
        if not isinstance(result, list):
            raise _unexpected("agents", result)
        return AgentList((str(agent_id) for agent_id in result), degraded=degraded)

    return Call("agents", _named(prefix=prefix, limit=limit), shape)


def status() -> Call[dict[str, Any]]:
    return Call("status", {}, lambda r: _map("status", r))


# Reading responses -----------------------------------------------------------


def read_message(obj: object) -> wire.Response | None:
    """The response in one decoded object, or None for a notification to ignore.

    Raises ``ProtocolError`` for a ``protocol_error`` notification (the server
    is closing the connection) and for anything a server must not send.
    """
    try:
        message = wire.parse_message(obj)
    except wire.WireFormatError as exc:
        raise ProtocolError(f"server sent an invalid message: {exc}") from exc
    if isinstance(message, wire.Response):
        return message
    if isinstance(message, wire.Request):
        raise ProtocolError(f"server sent a request ({message.method}); clients serve none")
    if message.method == wire.PROTOCOL_ERROR_EVENT:
        code = message.args.get("code", "?")
        text = message.args.get("message", "")
        raise ProtocolError(f"server refused the stream and closes it: {code}: {text}")
    return None


def outcome(response: wire.Response) -> Any:
    """The result of a response, or its error raised as the matching exception."""
    if response.error is not None:
        raise error_from_wire(response.error)
    return response.result


def unknown_msgid(msgid: int) -> ProtocolError:
    return ProtocolError(f"server answered msgid {msgid}, which no request is waiting for")


def undecodable(exc: Exception) -> ProtocolError:
    error = ProtocolError(f"server sent bytes that are not msgpack: {exc}")
    error.__cause__ = exc
    return error


def feed(unpacker: msgpack.Unpacker, data: bytes) -> None:
    try:
        unpacker.feed(data)
    except UNPACK_ERRORS as exc:
        raise undecodable(exc) from exc


def objects(unpacker: msgpack.Unpacker) -> Iterator[Any]:
    """The objects decoded so far, lazily; bad bytes raise ``ProtocolError``."""
    try:
        yield from unpacker
    except UNPACK_ERRORS as exc:
        raise undecodable(exc) from exc
