"""Write operations: what the WAL holds and what the flusher applies to a store.

Every operation carries its resolved effect (ids, absolute expiry times,
whole records), never something relative to the moment it is applied, so
replaying it after a crash or an outage gives the same result.  Every store
applies each of them idempotently:

- ``Put``: store the record unless a record with its id exists (or it has expired).
- ``Replace``: overwrite an existing record with a new version; nothing if absent.
- ``Delete``: remove one record if present.
- ``Clear``: remove every record of one agent.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from memoryd.records import Record, decode_record, encode_record


@dataclass(frozen=True, slots=True)
class Put:
    record: Record
    data: bytes

    @property
    def agent_id(self) -> str:
        return self.record["agent_id"]

    @classmethod
    def of(cls, record: Record) -> Put:
        return cls(record, encode_record(record))


@dataclass(frozen=True, slots=True)
class Replace:
    record: Record
    data: bytes

    @property
    def agent_id(self) -> str:
        return self.record["agent_id"]

    @classmethod
    def of(cls, record: Record) -> Replace:
        return cls(record, encode_record(record))


@dataclass(frozen=True, slots=True)
class Delete:
    agent_id: str
    record_id: str


@dataclass(frozen=True, slots=True)
class Clear:
    agent_id: str


Op = Put | Replace | Delete | Clear


@dataclass(frozen=True, slots=True)
class Entry:
    """An operation with the WAL sequence number that orders it."""

    seq: int
    op: Op


_PUT, _REPLACE, _DELETE, _CLEAR = 1, 2, 3, 4


class OpDecodeError(ValueError):
    """A WAL payload whose checksum held but which is not an operation."""


def encode_op(op: Op) -> bytes:
    match op:
        case Put(data=data):
            fields: list[object] = [_PUT, data]
        case Replace(data=data):
            fields = [_REPLACE, data]
        case Delete(agent_id=agent_id, record_id=record_id):
            fields = [_DELETE, agent_id, record_id]
        case Clear(agent_id=agent_id):
            fields = [_CLEAR, agent_id]
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def decode_op(payload: bytes) -> Op:
    try:
        fields = msgpack.unpackb(payload, raw=False)
        tag = fields[0]
        if tag == _PUT:
            return Put(decode_record(fields[1]), fields[1])
        if tag == _REPLACE:
            return Replace(decode_record(fields[1]), fields[1])
        if tag == _DELETE:
            return Delete(str(fields[1]), str(fields[2]))
        if tag == _CLEAR:
            return Clear(str(fields[1]))
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
        raise OpDecodeError(f"undecodable WAL operation: {exc}") from exc
    raise OpDecodeError(f"unknown WAL operation tag {tag!r}")
