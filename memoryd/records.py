"""The record, the read query, and the rules every store filters by.

A record travels as a plain dict (it is packed onto the wire as it is); its
shape is the client's ``memoryd_client.types.Record``, defined once for both
sides.  The stores keep it msgpack-encoded.  The filter and search rules live here once so
that the Redis store, the local store and the overlay of not-yet-applied
writes answer a query identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from memoryd_client.types import Order, Record

__all__ = ["Order", "Query", "Record", "decode_record", "encode_record", "matches", "select"]


@dataclass(frozen=True, slots=True)
class Query:
    """What ``recent`` and ``search`` ask of a store; None means "no filter"."""

    limit: int = 10
    order: Order = "newest"
    types: frozenset[str] | None = None
    author: str | None = None
    exclude_author: str | None = None
    tags: frozenset[str] | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None

    @property
    def newest_of_all(self) -> bool:
        """Whether this asks for the newest records without any filter."""
        return self.order == "newest" and self == Query(limit=self.limit)

    @property
    def needs_record(self) -> bool:
        """Whether matching looks inside records beyond type and time."""
        return (
            self.author is not None
            or self.exclude_author is not None
            or self.tags is not None
            or self.text is not None
        )


def encode_record(record: Record) -> bytes:
    return msgpack.packb(record, use_bin_type=True)  # type: ignore[no-any-return]


def decode_record(data: bytes) -> Record:
    record: Record = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return record


# Case-insensitive for ASCII letters only, so that every store (SQLite's
# lower() included) folds case the same way; CJK has no case to fold.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_case(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def _strings_in(value: Any) -> Iterator[str]:
    """Every string in ``value``, in order, however deeply it nests.

    Iterative: memoryd bounds the nesting of what it accepts
    (memoryd.validation), but a record an older version stored may nest a
    thousand levels, deeper than recursion goes.
    """
    pending: list[Iterator[Any]] = [iter((value,))]
    while pending:
        for item in pending[-1]:
            if isinstance(item, str):
                yield item
            elif isinstance(item, dict):
                pending.append(iter(item.values()))
                break
            elif isinstance(item, list | tuple):
                pending.append(iter(item))
                break
        else:
            pending.pop()


def text_of(record: Record) -> str:
    """The text that ``search`` looks in: every string inside the content."""
    return "\n".join(_strings_in(record["content"]))


def is_expired(record: Record, now_s: float) -> bool:
    expires_at = record["expires_at"]
    return expires_at is not None and expires_at <= now_s


def matches(record: Record, query: Query, now_s: float) -> bool:
    if is_expired(record, now_s):
        return False
    if query.types is not None and record["type"] not in query.types:
        return False
    created_at = record["created_at"]
    if query.since is not None and created_at < query.since:
        return False
    if query.until is not None and created_at >= query.until:
        return False
    if query.author is not None and record["author"] != query.author:
        return False
    if query.exclude_author is not None and record["author"] == query.exclude_author:
        return False
    if query.tags is not None and not query.tags.issubset(record["tags"]):
        return False
    if query.text is not None and fold_case(query.text) not in fold_case(text_of(record)):
        return False
    return True


def sort_key(record: Record) -> tuple[float, str]:
    """Time order, ties broken by id (ids are time-sortable too)."""
    return (record["created_at"], record["id"])


def select(records: Iterable[Record], query: Query, now_s: float) -> list[Record]:
    """The records of ``records`` that match, in the query's order, at most its limit."""
    found = [record for record in records if matches(record, query, now_s)]
    found.sort(key=sort_key, reverse=query.order == "newest")
    return found[: query.limit]
