"""Laying not-yet-applied writes over the store's answer: when that is exact."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from memoryd.backlog import Backlog, merge_is_exact, merge_query, store_fetch_limit
from memoryd.ops import Delete, Entry, Op, Put, Replace
from memoryd.records import Query, Record
from memoryd.stores.local import LocalStore

NOW = 1_800_000_000.0
MAX_MEMORIES = 6
AGENT = "agent_1"


def record(n: int, created_offset: int, text: str = "") -> Record:
    return {
        "id": f"R{n:04d}",
        "agent_id": AGENT,
        "type": "note",
        "content": text or f"记录 {n}",
        "author": None,
        "importance": 0.5,
        "tags": [],
        "metadata": {},
        "created_at": NOW + created_offset,
        "expires_at": None,
    }


def creation_offset(n: int) -> int:
    """Each id has one creation time, old or new: a client assigns both once per
    record, so the same id again is a retry of the same record."""
    return (n * 37) % 101 - 50


# Old creation times included: those are the records a trim takes at once.
puts = st.builds(lambda n: Put.of(record(n, creation_offset(n))), st.integers(0, 40))


# A pending write: put a record, delete one, or replace one (content only).
actions = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("replace"), st.integers(0, 40), st.just(0)),
)


def realistic(stored_ops: list[Op], steps: list[tuple[str, int, int]]) -> list[Op]:
    """Pending writes as the daemon accepts them: a replace only of a record it
    has seen (in the store or among earlier writes), keeping its creation time."""
    known = {op.record["id"]: op.record for op in stored_ops if isinstance(op, Put)}
    pending: list[Op] = []
    for kind, n, _ in steps:
        record_id = f"R{n:04d}"
        if kind == "put":
            put = Put.of(record(n, creation_offset(n)))
            known.setdefault(record_id, put.record)
            pending.append(put)
        elif kind == "delete":
            known.pop(record_id, None)
            pending.append(Delete(AGENT, record_id))
        elif record_id in known:
            replaced = Replace.of({**known[record_id], "content": "改过的"})
            known[record_id] = replaced.record
            pending.append(replaced)
    return pending


async def merged_and_truth(
    stored_ops: list[Op], pending: list[Op], limit: int
) -> tuple[list[Record], list[Record]]:
    with tempfile.TemporaryDirectory() as directory:
        store = LocalStore(Path(directory), max_memories=MAX_MEMORIES)
        await store.open()
        try:
            await store.apply(stored_ops, NOW)
            entries = [Entry(seq, op) for seq, op in enumerate(pending, start=1)]
            query = Query(limit=limit)
            fetch = dataclasses.replace(query, limit=store_fetch_limit(query, entries))
            merged = merge_query((await store.query(AGENT, fetch, NOW)).value, entries, query, NOW)
            await store.apply(pending, NOW)
            truth = (await store.query(AGENT, query, NOW)).value
        finally:
            await store.close()
    return merged, truth


@settings(max_examples=150, deadline=None)
@given(
    stored_ops=st.lists(puts, max_size=10),
    steps=st.lists(actions, max_size=12),
    limit=st.integers(1, MAX_MEMORIES),
)
def test_the_merge_is_exact_whenever_the_daemon_skips_the_wait(
    stored_ops: list[Op], steps: list[tuple[str, int, int]], limit: int
) -> None:
    pending = realistic(stored_ops, steps)
    entries = [Entry(seq, op) for seq, op in enumerate(pending, start=1)]
    # Exactly the reads the daemon answers without waiting for the flusher.
    assume(merge_is_exact(Query(limit=limit), entries, MAX_MEMORIES))
    merged, truth = asyncio.run(merged_and_truth(stored_ops, pending, limit))
    assert [r["id"] for r in merged] == [r["id"] for r in truth]
    assert [r["content"] for r in merged] == [r["content"] for r in truth]


def test_a_batch_in_flight_while_entries_are_put_back_drops_only_itself() -> None:
    """The store restarted while the flusher had a batch in flight: what the store lost
    is put back in front of the batch, and the batch's success must not drop it."""
    backlog = Backlog()
    lost = [Entry(seq, Delete("agent", f"r{seq}")) for seq in (1, 2)]
    backlog.extend(Entry(seq, Delete("agent", f"r{seq}")) for seq in (3, 4))
    in_flight = backlog.head(2, 1 << 20)
    backlog.put_back(lost, applied_seq=0)
    backlog.mark_applied(in_flight)
    assert [entry.seq for entry in backlog.head(10, 1 << 20)] == [1, 2]
    assert [entry.seq for entry in backlog.for_agent("agent")] == [1, 2]
    backlog.mark_applied(backlog.head(10, 1 << 20))
    assert len(backlog) == 0 and backlog.bytes == 0
