"""Model-based test of the WAL, the backlog and a real LocalStore, with crashes.

A Hypothesis state machine appends batches for a few agents, applies a prefix
of the backlog to the store and checkpoints, rolls segments (512-byte
segments), and crashes: nothing is closed, the newest segment loses some of
the bytes no fdatasync covered (a write that was in flight may survive whole,
in part, or not at all), and the directory is recovered and replayed as the
daemon does at start.  The model is the list of acknowledged operations.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memoryd.backlog import Backlog
from memoryd.ops import Clear, Delete, Entry, Op, Put, Replace, encode_op
from memoryd.records import Query, Record
from memoryd.stores.local import LocalStore
from memoryd.wal import (
    Wal,
    WalFullError,
    WalSettings,
    list_segments,
    read_checkpoint,
)
from memoryd.wal.format import MAGIC, encode_frame

AGENTS = ("alice", "bob", "张三")
SEGMENT_BYTES = 512
MAX_BYTES = 12 * 1024
NOW_S = 1_800_000_000.0

State = dict[str, dict[str, Record]]
T = TypeVar("T")


def apply_ops(state: State, ops: list[Op]) -> None:
    """The stores' semantics (no expiry, no trimming), in plain Python."""
    for op in ops:
        match op:
            case Put(record=record):
                state.setdefault(record["agent_id"], {}).setdefault(record["id"], record)
            case Replace(record=record):
                agent = state.get(record["agent_id"], {})
                if record["id"] in agent:
                    agent[record["id"]] = record
            case Delete(agent_id=agent_id, record_id=record_id):
                state.get(agent_id, {}).pop(record_id, None)
            case Clear(agent_id=agent_id):
                state.pop(agent_id, None)


def without_empty(state: State) -> State:
    return {agent: records for agent, records in state.items() if records}


class WalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.directory = Path(tempfile.mkdtemp(prefix="walmodel-", dir=base))
        self.wal_dir = self.directory / "wal"
        self.loop = asyncio.new_event_loop()
        self.store = LocalStore(self.directory / "store", max_memories=100_000)
        self.run(self.store.open())
        # The model: every acknowledged op, in acknowledgement (= seq) order.
        self.acked: list[Entry] = []
        self.state: State = {}  # the acknowledged ops applied, kept up to date
        self.next_id = 0
        self.store_applied_seq = 0  # the store has applied every entry up to this
        self.crashes = 0
        self.backlog = Backlog()
        self.wal = self._open_wal()

    # ------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def _open_wal(self) -> Wal:
        wal = Wal(
            self.wal_dir,
            WalSettings(fsync="always", max_bytes=MAX_BYTES, segment_bytes=SEGMENT_BYTES),
            on_durable=self.backlog.extend,
        )

        async def open_() -> None:
            recovery = wal.open()
            # As the daemon does: what recovery found goes to the backlog.
            self.backlog.extend(recovery.entries)

        self.run(open_())
        return wal

    def teardown(self) -> None:
        try:
            self.run(self.wal.close())
            self.run(self.store.close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def ack(self, entries: list[Entry]) -> None:
        self.acked.extend(entries)
        apply_ops(self.state, [entry.op for entry in entries])

    def model(self) -> State:
        return without_empty(self.state)

    def live_ids(self, agent: str) -> list[str]:
        return sorted(self.state.get(agent, {}))

    def new_record(self, agent: str, text: str) -> Record:
        self.next_id += 1
        return {
            "id": f"R{self.next_id:08d}",
            "agent_id": agent,
            "type": "discussion",
            "content": {"text": text, "n": self.next_id},
            "author": None,
            "importance": 0.5,
            "tags": [],
            "metadata": {},
            "created_at": 1_700_000_000.0 + self.next_id,
            "expires_at": None,
        }

    def draw_ops(self, data: st.DataObject, count: int) -> list[Op]:
        ops: list[Op] = []
        for _ in range(count):
            agent = data.draw(st.sampled_from(AGENTS), label="agent")
            kind = data.draw(st.sampled_from(["put", "put", "put", "replace", "delete", "clear"]))
            ids = self.live_ids(agent)
            if kind == "put" or (kind in ("replace", "delete") and not ids):
                text = data.draw(st.text("ab记忆", max_size=40), label="text")
                # Each put has a fresh id, as the service gives it (a ULID).
                ops.append(Put.of(self.new_record(agent, text)))
            elif kind == "replace":
                target = data.draw(st.sampled_from(ids), label="replace")
                record = {**self.state[agent][target], "content": {"text": "改", "n": -1}}
                ops.append(Replace.of(cast(Record, record)))
            elif kind == "delete":
                ops.append(Delete(agent, data.draw(st.sampled_from(ids), label="delete")))
            else:
                ops.append(Clear(agent))
        return ops

    async def store_contents(self) -> State:
        state: State = {}
        for agent in AGENTS:
            records = (
                await self.store.query(agent, Query(limit=100_000, order="oldest"), NOW_S)
            ).value
            if records:
                state[agent] = {record["id"]: record for record in records}
        return state

    # ------------------------------------------------------------ rules

    @rule(data=st.data(), batches=st.integers(1, 3), size=st.integers(1, 3))
    def append(self, data: st.DataObject, batches: int, size: int) -> None:
        """One or several batches in one loop iteration: one group commit."""
        groups = [self.draw_ops(data, size) for _ in range(batches)]

        async def append_all() -> list[list[int] | BaseException]:
            return await asyncio.gather(
                *(self.wal.append(ops) for ops in groups), return_exceptions=True
            )

        for ops, outcome in zip(groups, self.run(append_all()), strict=True):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, WalFullError), outcome
                event("wal_full")
                continue
            assert len(outcome) == len(ops)
            assert not self.acked or outcome[0] > self.acked[-1].seq
            self.ack([Entry(seq, op) for seq, op in zip(outcome, ops, strict=True)])

    @rule(count=st.integers(1, 12), checkpoint=st.booleans())
    def apply_and_checkpoint(self, count: int, checkpoint: bool) -> None:
        """The flusher: apply the oldest entries, then maybe checkpoint them."""
        batch = self.backlog.head(count, 1 << 30)
        if batch:
            self.run(self.store.apply([entry.op for entry in batch], time.time()))
            self.backlog.mark_applied(batch)
            self.store_applied_seq = max(self.store_applied_seq, batch[-1].seq)
        if checkpoint and batch:
            before = len(list_segments(self.wal_dir))
            self.run(self.wal.checkpoint(batch[-1].seq))
            if len(list_segments(self.wal_dir)) < before:
                event("checkpoint deleted segments")

    @precondition(lambda self: self.wal.segments.current is not None)
    @rule(
        data=st.data(),
        inflight=st.integers(0, 3),
        keep=st.floats(0, 1),
    )
    def crash(self, data: st.DataObject, inflight: int, keep: float) -> None:
        """Power loss: fds abandoned, the unsynced end of the newest segment torn."""
        wal = self.wal
        assert wal.segments.current is not None
        newest = wal.segments.current.path
        # With fsync=always every frame written so far is acknowledged and
        # covered by an fdatasync; a group in flight (written, not yet synced)
        # is what may survive whole, in part, or not at all.
        synced_size = newest.stat().st_size
        next_seq = wal._next_seq
        ops: list[Op] = []
        frames: list[bytes] = []
        budget = MAX_BYTES - wal.segments.total_bytes
        for op in self.draw_ops(data, inflight):
            # Only what the WAL would have admitted (wal_max_bytes) is in flight.
            frame = encode_frame(next_seq + len(ops), encode_op(op))
            if len(frame) > budget:
                break
            budget -= len(frame)
            ops.append(op)
            frames.append(frame)
        wal.abandon()  # the descriptors go, nothing more is written or synced
        with newest.open("ab") as file:
            file.write(b"".join(frames))
        cut = synced_size + round(keep * sum(len(frame) for frame in frames))
        os.truncate(newest, cut)
        survived, end = [], synced_size
        for seq, op, frame in zip(range(next_seq, next_seq + len(ops)), ops, frames, strict=True):
            end += len(frame)
            if end <= cut:
                survived.append(Entry(seq, op))
        self.crashes += 1
        event(f"crash: {len(survived)} of {len(ops)} in-flight frames survived")
        if cut > synced_size + sum(len(frames[i]) for i in range(len(survived))):
            event("crash: torn frame")

        # Restart: a new backlog and a recovered WAL.  The store keeps what it
        # committed (SQLite, synchronous=FULL); it stays open to keep this fast.
        self.backlog = Backlog()
        self.wal = self._open_wal()
        recovery = self.wal.recovery
        assert recovery.corrupt_records == recovery.quarantined_segments == 0
        assert recovery.missing_records == 0
        assert recovery.torn_tail_bytes == cut - synced_size - sum(
            len(frames[i]) for i in range(len(survived))
        )
        # Whole frames of the in-flight group that reached the disk are now
        # durable: they were never acknowledged, but they will be applied.
        recovered = {entry.seq for entry in recovery.entries}
        for entry in survived:
            assert entry.seq in recovered
        self.ack(survived)
        # The store may have applied more than the checkpoint says: replay
        # re-applies it, which must change nothing.
        self.store_applied_seq = max(self.store_applied_seq, recovery.applied_seq)

    @rule()
    def drain(self) -> None:
        """Apply everything; the store alone must then equal the model."""
        while batch := self.backlog.head(16, 1 << 30):
            self.run(self.store.apply([entry.op for entry in batch], time.time()))
            self.backlog.mark_applied(batch)
            self.store_applied_seq = max(self.store_applied_seq, batch[-1].seq)
        assert without_empty(self.run(self.store_contents())) == self.model()

    # ------------------------------------------------------------ invariants

    @invariant()
    def store_plus_backlog_equals_the_acknowledged_writes(self) -> None:
        """Every acknowledged write applied exactly once in effect, in order."""
        state = self.run(self.store_contents())
        pending = [entry for agent in AGENTS for entry in self.backlog.for_agent(agent)]
        pending.sort(key=lambda entry: entry.seq)
        apply_ops(state, [entry.op for entry in pending])
        assert without_empty(state) == self.model()

    @invariant()
    def per_agent_order_is_kept(self) -> None:
        for agent in AGENTS:
            seqs = [entry.seq for entry in self.backlog.for_agent(agent)]
            assert seqs == sorted(set(seqs))
        acked = [entry.seq for entry in self.acked]
        assert acked == sorted(set(acked))
        # The backlog holds exactly the acknowledged entries not yet applied
        # (after a crash, possibly some applied ones again: replay is idempotent).
        acked_ops = {entry.seq: entry.op for entry in self.acked}
        for agent in AGENTS:
            for entry in self.backlog.for_agent(agent):
                assert acked_ops.get(entry.seq) == entry.op, entry.seq
        for entry in self.acked:
            if entry.seq > self.store_applied_seq:
                assert entry in self.backlog.for_agent(entry.op.agent_id), entry.seq

    @invariant()
    def checkpoint_never_passes_what_the_store_applied(self) -> None:
        checkpoint = read_checkpoint(self.wal_dir)
        assert checkpoint <= self.store_applied_seq
        assert self.wal.checkpointed_seq == checkpoint

    @invariant()
    def wal_bytes_within_max_bytes(self) -> None:
        on_disk = sum(path.stat().st_size for path in list_segments(self.wal_dir))
        assert on_disk <= MAX_BYTES
        assert self.wal.segments.total_bytes == on_disk
        for path in list_segments(self.wal_dir):
            assert path.read_bytes()[: len(MAGIC)] == MAGIC


WalMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    # No shrinking: each step touches SQLite and the disk, so shrinking a long
    # failing run takes minutes.  A failure prints the whole step sequence.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestWalModel = WalMachine.TestCase
