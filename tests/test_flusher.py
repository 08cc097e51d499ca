"""The flusher on an in-memory store and a fake clock: batches in order, a failed
batch applied again whole, checkpoints on their interval, drain's deadline."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memoryd.backlog import Backlog
from memoryd.cache import CacheSettings, ReadCache
from memoryd.durability import RetainSettings, Unconfirmed
from memoryd.flusher import Flusher, FlushSettings
from memoryd.health import Health, State
from memoryd.ops import Op
from memoryd.records import Query
from memoryd.stores.base import Sequenced, StoreRefusing, WriterLease
from memoryd.stores.memory import MemoryStore
from memoryd.stores.monitored import MonitoredStore
from memoryd.wal import Wal, WalSettings
from tests.fakeclock import FakeClock, settle
from tests.test_stores import NOW, put

AGENT = "craftsman_1"
SETTINGS = FlushSettings(batch_max=4, batch_max_bytes=1 << 20, checkpoint_interval_s=2.0)
RETAIN = RetainSettings(max_bytes=1 << 20, max_age_s=60.0)


@dataclass
class Parts:
    wal_dir: Path
    clock: FakeClock = field(default_factory=FakeClock)
    store: MemoryStore = field(default_factory=MemoryStore)
    backlog: Backlog = field(default_factory=Backlog)
    lease: WriterLease | None = None
    wal: Wal = field(init=False)
    health: Health = field(init=False)
    flusher: Flusher = field(init=False)

    def __post_init__(self) -> None:
        self.wal = Wal(
            self.wal_dir,
            WalSettings(fsync="always", max_bytes=1 << 26, segment_bytes=1 << 20),
            on_durable=self.backlog.extend,
            clock=self.clock,
        )
        self.health = Health(self.store, self.backlog, clock=self.clock)
        self.flusher = Flusher(
            SETTINGS,
            store=MonitoredStore(self.store, self.health),
            backlog=self.backlog,
            wal=self.wal,
            health=self.health,
            cache=ReadCache(CacheSettings(per_agent=8, max_records=100, max_memories=1000)),
            # The in-memory store confirms every write as it is applied.
            unconfirmed=Unconfirmed(RETAIN, durable_until_s=math.inf, clock=self.clock),
            lease=lambda: self.lease,
            clock=self.clock,
        )

    async def write(self, *record_ids: str) -> None:
        await self.wal.append([put(record_id, AGENT, created_at=NOW) for record_id in record_ids])

    async def stored_ids(self) -> list[str]:
        found = await self.store.query(AGENT, Query(limit=100, order="oldest"), NOW)
        return sorted(record["id"] for record in found.value)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (real time, bounded) for what a worker thread does: the WAL's fsync."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    parts = Parts(tmp_path / "wal")
    parts.wal.open()
    tasks = [asyncio.create_task(parts.flusher.run()), asyncio.create_task(parts.health.run())]
    await settle()
    yield parts
    parts.flusher.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await parts.wal.close()


async def test_batches_are_applied_in_order_and_checkpointed_on_the_interval(
    parts: Parts,
) -> None:
    await parts.write(*(f"r{n}" for n in range(10)))
    await settle()
    assert await parts.stored_ids() == sorted(f"r{n}" for n in range(10))
    assert parts.flusher.applied_seq == 10 and len(parts.backlog) == 0
    assert parts.wal.checkpointed_seq == 0, "not before the interval"
    await parts.clock.advance(SETTINGS.checkpoint_interval_s)
    await eventually(lambda: parts.wal.checkpointed_seq == 10)


async def test_a_refused_batch_is_applied_again_whole_once_the_store_takes_writes(
    parts: Parts,
) -> None:
    parts.store.fail_with(StoreRefusing("OOM", "OOM command not allowed"))
    await parts.write("a", "b", "c")
    await settle()
    assert parts.flusher.applied_seq == 0 and len(parts.backlog) == 3
    assert state_of(parts.health) is State.DEGRADED and parts.health.store_refuses_writes
    parts.store.fail_with(None)
    await parts.clock.advance(parts.clock.sleeps[-1])  # the probe lets the flusher try
    await settle()
    assert len(parts.backlog) == 0
    assert await parts.stored_ids() == ["a", "b", "c"]
    assert state_of(parts.health) is State.HEALTHY


class LeaseRecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.leases: list[WriterLease | None] = []

    async def apply(
        self,
        ops: Sequence[Op],
        now_s: float,
        lease: WriterLease | None = None,
        sequenced: Sequenced | None = None,
    ) -> None:
        self.leases.append(lease)
        await super().apply(ops, now_s, lease, sequenced)


async def test_each_batch_renews_the_lease_it_is_given(tmp_path: Path) -> None:
    store = LeaseRecordingStore()
    parts = Parts(tmp_path / "wal", store=store, lease=WriterLease("daemon-1", 5.0))
    parts.wal.open()
    await parts.write("a")
    assert await parts.flusher.apply_one_batch()
    parts.lease = None  # given up at shutdown
    await parts.write("b")
    assert await parts.flusher.apply_one_batch()
    assert store.leases == [WriterLease("daemon-1", 5.0), None]
    await parts.wal.close()


async def test_drain_gives_up_at_its_deadline_and_leaves_the_rest_in_the_wal(
    parts: Parts,
) -> None:
    parts.flusher.stop()
    await settle()
    parts.store.fail_with(StoreRefusing("READONLY", "READONLY You can't write"))
    await parts.write("a", "b")
    drained = asyncio.create_task(parts.flusher.drain(1.0, give_up=lambda: False))
    await parts.clock.advance(0.9)
    assert not drained.done()
    await parts.clock.advance(0.2)
    assert drained.done() and drained.result() is False
    parts.store.fail_with(None)
    assert len(parts.backlog) == 2 and await parts.stored_ids() == []


async def test_the_drain_rate_counts_the_last_ten_seconds_of_the_clock(parts: Parts) -> None:
    await parts.write(*(f"r{n}" for n in range(20)))
    await settle()
    assert parts.flusher.drain_rate_per_s() == 2.0
    await parts.clock.advance(10.5)
    assert parts.flusher.drain_rate_per_s() == 0.0


def state_of(health: Health) -> State:
    return health.state
