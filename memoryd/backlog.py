"""Writes that are durable in the WAL but not yet applied to the store.

The flusher drains the backlog in sequence order; reads lay it over what the
store returns so that an agent always reads its own writes.  Because every
operation is idempotent, laying the whole backlog of an agent over a store
that has already applied part of it gives the same answer as laying it over
one that has applied none of it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from memoryd.ops import Clear, Delete, Entry, Put, Replace
from memoryd.records import Query, Record, is_expired, select


@dataclass(frozen=True, slots=True)
class _Queued:
    entry: Entry
    size_bytes: int
    queued_at: float


def entry_bytes(entry: Entry) -> int:
    """About what an entry costs to hold and to send: its record's bytes."""
    op = entry.op
    return len(op.data) if isinstance(op, Put | Replace) else 64


class Backlog:
    """The not-yet-applied entries, in sequence order, with a per-agent index."""

    def __init__(self) -> None:
        self._queue: deque[_Queued] = deque()
        self._by_agent: dict[str, deque[Entry]] = {}
        self._nonempty = asyncio.Event()
        self.bytes = 0
        # The sequence number of the newest entry the store has applied: the
        # checkpoint's at start (``resume``), then each batch's last.
        self.applied_seq = 0

    def __len__(self) -> int:
        return len(self._queue)

    def describe(self) -> dict[str, Any]:
        return {
            "backlog_records": len(self),
            "backlog_bytes": self.bytes,
            "oldest_unapplied_age_s": round(self.oldest_age_s(), 3),
        }

    def resume(self, applied_seq: int, entries: Iterable[Entry]) -> None:
        """Start from what the WAL recovered: applied up to ``applied_seq``, ``entries`` after."""
        self.applied_seq = applied_seq
        self.extend(entries)

    def extend(self, entries: Iterable[Entry]) -> None:
        now = time.monotonic()
        for entry in entries:
            queued = _Queued(entry, entry_bytes(entry), now)
            self._queue.append(queued)
            self._by_agent.setdefault(entry.op.agent_id, deque()).append(entry)
            self.bytes += queued.size_bytes
        if self._queue:
            self._nonempty.set()

    async def wait_nonempty(self) -> None:
        await self._nonempty.wait()

    def head(self, max_entries: int, max_bytes: int) -> list[Entry]:
        """The oldest entries (at least one, if any), left in place until ``mark_applied``."""
        batch: list[Entry] = []
        size = 0
        for queued in self._queue:
            if batch and (len(batch) >= max_entries or size + queued.size_bytes > max_bytes):
                break
            batch.append(queued.entry)
            size += queued.size_bytes
        return batch

    def mark_applied(self, batch: Sequence[Entry]) -> None:
        """The store has applied ``batch`` (what ``head`` gave): drop it.

        Usually the oldest entries still; but entries put back meanwhile
        (``put_back``, while the batch was in flight) now come before it.
        """
        for entry in batch:
            if self._queue and self._queue[0].entry is entry:
                queued = self._queue.popleft()
            else:
                queued = self._remove(entry)
            agent_entries = self._by_agent[entry.op.agent_id]
            if agent_entries[0] is entry:
                agent_entries.popleft()
            else:
                agent_entries.remove(entry)
            if not agent_entries:
                del self._by_agent[entry.op.agent_id]
            self.bytes -= queued.size_bytes
        if batch:
            self.applied_seq = batch[-1].seq
        if not self._queue:
            self._nonempty.clear()

    def _remove(self, entry: Entry) -> _Queued:
        for queued in self._queue:
            if queued.entry is entry:
                self._queue.remove(queued)
                return queued
        raise ValueError(f"entry {entry.seq} is not in the backlog")

    def put_back(self, entries: Sequence[Entry], *, applied_seq: int) -> None:
        """Entries the store may have lost, applied again before everything queued
        (they are older): the store holds what was applied up to ``applied_seq``."""
        now = time.monotonic()
        for entry in reversed(entries):
            queued = _Queued(entry, entry_bytes(entry), now)
            self._queue.appendleft(queued)
            self._by_agent.setdefault(entry.op.agent_id, deque()).appendleft(entry)
            self.bytes += queued.size_bytes
        self.applied_seq = applied_seq
        if self._queue:
            self._nonempty.set()

    def for_agent(self, agent_id: str) -> Sequence[Entry]:
        return self._by_agent.get(agent_id, ())

    def agent_ids(self) -> Iterable[str]:
        return self._by_agent.keys()

    def applied_through(self, seq: int) -> bool:
        """Whether nothing numbered ``seq`` or lower waits any more.  Not
        ``applied_seq >= seq``: writes put back are applied after newer ones."""
        return not self._queue or self._queue[0].entry.seq > seq

    def oldest_seq(self) -> int:
        """The oldest entry not yet applied; 0 if none."""
        return self._queue[0].entry.seq if self._queue else 0

    def newest_seq(self) -> int:
        return self._queue[-1].entry.seq if self._queue else 0

    def oldest_age_s(self) -> float:
        return time.monotonic() - self._queue[0].queued_at if self._queue else 0.0

    def last_seq_for(self, agent_id: str) -> int:
        entries = self._by_agent.get(agent_id)
        return entries[-1].seq if entries else 0


# ------------------------------------------------------------------ read merge


class Unknown(enum.Enum):
    """What the store holds when it could not be asked."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN


def merge_get(
    stored: Record | None | Unknown, entries: Sequence[Entry], record_id: str, now_s: float
) -> Record | None | Unknown:
    """One record as it will be once ``entries`` are applied, unless expired by ``now_s``.

    With the store unknown, the answer stays unknown unless the backlog
    alone decides it (a put, replace, delete or clear of the record).  A
    pending Replace is trusted to hit a live record: the service accepted it
    only after seeing the record.
    """
    record = stored
    for entry in entries:
        op = entry.op
        if isinstance(op, Clear):
            record = None
        elif isinstance(op, Delete):
            record = None if op.record_id == record_id else record
        elif op.record["id"] != record_id:
            continue
        elif isinstance(op, Put):
            record = op.record if record is None or record is UNKNOWN else record
        else:
            record = op.record if record is not None else None
    if record is None or record is UNKNOWN:
        return record
    return None if is_expired(record, now_s) else record


def store_fetch_limit(query: Query, entries: Sequence[Entry]) -> int:
    """How many store records to ask for so that, after the backlog hides some,
    at least ``query.limit`` remain when there are that many."""
    hidden = sum(1 for e in entries if isinstance(e.op, Delete | Replace))
    return query.limit + hidden


def merge_is_exact(query: Query, entries: Sequence[Entry], max_memories: int) -> bool:
    """Whether ``merge_query`` gives exactly what the store will hold once
    ``entries`` are applied, trimming included, without waiting for that.

    Trimming removes an agent's oldest records beyond ``max_memories`` as
    each put lands.  A record of the merged newest N was never trimmed if N
    leaves room for the pending deletes (each can lower a record's rank by one
    after a trim).  Filters, oldest-first order and a pending clear are not
    covered by this argument: those reads wait for the flusher instead.
    """
    deletes = 0
    for entry in entries:
        if isinstance(entry.op, Clear):
            return False
        deletes += isinstance(entry.op, Delete)
    return (
        query.order == "newest"
        and query.limit <= max_memories - deletes
        and query.types is None
        and not query.needs_record
        and query.since is None
        and query.until is None
    )


def hides_store(entries: Sequence[Entry]) -> bool:
    """Whether a pending clear makes everything the store holds for the agent moot."""
    return any(isinstance(e.op, Clear) for e in entries)


def merge_query(
    stored: Sequence[Record], entries: Sequence[Entry], query: Query, now_s: float
) -> list[Record]:
    """The answer to ``query`` once ``entries`` are applied over ``stored``.

    ``stored`` holds the store's best matches (at least ``store_fetch_limit``
    of them when there are that many).  A pending Replace is trusted to hit a
    live record: the service accepted it only after seeing the record, and any
    later delete or clear comes after it in ``entries``.
    """
    view: dict[str, Record] = {} if hides_store(entries) else {r["id"]: r for r in stored}
    for entry in entries:
        op = entry.op
        if isinstance(op, Clear):
            view.clear()
        elif isinstance(op, Delete):
            view.pop(op.record_id, None)
        elif (
            isinstance(op, Replace)
            or op.record["id"] not in view
            and not is_expired(op.record, now_s)
        ):
            view[op.record["id"]] = op.record
    return select(view.values(), query, now_s)
