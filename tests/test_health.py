"""The health state is derived from independent facts: store reachability,
the WAL's condition and the backlog."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memoryd.backlog import Backlog
from memoryd.health import Health, State
from memoryd.ops import Delete, Entry
from memoryd.records import Query
from memoryd.stores.base import StoreError, StoreRefusing, StoreUnavailable
from memoryd.stores.local import LocalStore
from memoryd.stores.memory import MemoryStore
from memoryd.stores.monitored import MonitoredStore
from tests.fakeclock import FakeClock, settle


def state_of(health: Health) -> State:
    """The state now (read through a call: mypy would keep a narrowed ``health.state``)."""
    return health.state


def queued(*seqs: int) -> Backlog:
    """A backlog holding entries with these sequence numbers."""
    backlog = Backlog()
    backlog.extend(Entry(seq, Delete("agent", f"r{seq}")) for seq in seqs)
    return backlog


@dataclass
class Probed:
    """A Health probing an in-memory store on a fake clock, its deeper look counted."""

    clock: FakeClock = field(default_factory=FakeClock)
    store: MemoryStore = field(default_factory=MemoryStore)
    backlog: Backlog = field(default_factory=Backlog)
    deep_checks: int = 0
    deep_check_fails: StoreUnavailable | None = None
    wal_room: bool = False
    health: Health = field(init=False)

    def __post_init__(self) -> None:
        self.health = Health(
            self.store,
            self.backlog,
            check_store=self.deep_check,
            wal_has_room=lambda: self.wal_room,
            clock=self.clock,
        )

    async def deep_check(self) -> None:
        self.deep_checks += 1
        if self.deep_check_fails is not None:
            raise self.deep_check_fails


@pytest.fixture
async def probed() -> AsyncIterator[Probed]:
    probed = Probed()
    task = asyncio.create_task(probed.health.run())
    await settle()
    yield probed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_full_wal_does_not_hide_a_down_store(tmp_path: Path) -> None:
    changes: list[State] = []
    health = Health(
        LocalStore(tmp_path, max_memories=10),
        queued(1, 2, 3, 4, 5),
        on_change=lambda state, why, problem: changes.append(state),
    )
    health.store_failed(StoreUnavailable("connection refused"))
    assert state_of(health) is State.DEGRADED and health.store_down
    health.wal_full("wal_max_bytes reached")
    assert state_of(health) is State.FAILING
    assert health.store_down, "the flusher must keep backing off while the store is down"
    health.wal_has_room()
    assert state_of(health) is State.DEGRADED  # not healthy: the store is still down
    assert changes == [State.DEGRADED, State.FAILING, State.DEGRADED]


async def test_probes_run_every_interval_and_look_deeper_every_fifth(probed: Probed) -> None:
    await probed.clock.advance(14.0)
    # Fourteen probes done, the next waiting: one second apart, exactly.
    assert probed.clock.sleeps == [1.0] * 15
    assert probed.deep_checks == 2  # at the fifth and the tenth
    assert state_of(probed.health) is State.HEALTHY


async def test_check_soon_probes_and_looks_deeper_at_once(probed: Probed) -> None:
    await probed.clock.advance(1.0)
    assert probed.deep_checks == 0
    probed.health.check_soon()  # the link to the store broke
    await settle()
    assert probed.deep_checks == 1, "without waiting for the next interval"
    assert len(probed.clock.sleeps) == 3


async def test_a_down_store_is_probed_with_full_jitter_up_to_the_cap(probed: Probed) -> None:
    random.seed(7)
    probed.store.fail_with(StoreUnavailable("connection refused"))
    await probed.clock.advance(1.0)  # the first probe fails
    assert probed.health.store_down and state_of(probed.health) is State.DEGRADED
    for _ in range(40):
        await probed.clock.advance(5.0)  # at least one probe per cap
    backoff = probed.clock.sleeps[1:]
    assert len(backoff) > 40
    for failures, delay_s in enumerate(backoff, start=1):
        assert 0 <= delay_s <= min(5.0, 0.2 * 2**failures)
    assert len(set(backoff)) == len(backoff), "jittered: no two daemons probe in step"
    assert max(backoff[10:]) > 2.5, "the ceiling grows to the cap"


async def test_recovery_needs_three_good_probes_and_a_deeper_look_then_ends_when_drained(
    probed: Probed,
) -> None:
    probed.backlog.extend(Entry(seq, Delete("agent", f"r{seq}")) for seq in (5, 6, 7))
    probed.store.fail_with(StoreUnavailable("connection refused"))
    await probed.clock.advance(1.0)
    assert state_of(probed.health) is State.DEGRADED
    probed.store.fail_with(None)
    checks_before = probed.deep_checks
    for _ in range(2):
        await probed.clock.advance(probed.clock.sleeps[-1])
        assert state_of(probed.health) is State.DEGRADED, "one lucky ping does not flap"
    await probed.clock.advance(probed.clock.sleeps[-1])
    assert state_of(probed.health) is State.RECOVERING and not probed.health.store_down
    assert probed.deep_checks == checks_before + 1, "the marker is looked at before reuse"
    assert probed.clock.sleeps[-1] == 1.0, "back to the normal interval"
    # New writes keep the backlog from ever being empty: that must not matter.
    probed.backlog.extend(Entry(seq, Delete("agent", f"r{seq}")) for seq in range(8, 13))
    probed.backlog.mark_applied(
        probed.backlog.head(2, 1 << 30)
    )  # up to seq 6, of the 7 queued during the outage
    probed.health.store_succeeded(0.001)
    assert state_of(probed.health) is State.RECOVERING
    probed.backlog.mark_applied(probed.backlog.head(1, 1 << 30))
    await probed.clock.advance(1.0)  # the probe sees it too, without a batch
    assert state_of(probed.health) is State.HEALTHY


async def test_a_store_that_fails_the_deeper_look_is_not_used(probed: Probed) -> None:
    probed.store.fail_with(StoreUnavailable("connection refused"))
    await probed.clock.advance(1.0)
    probed.store.fail_with(None)
    probed.deep_check_fails = StoreUnavailable("connection reset")
    for _ in range(6):
        await probed.clock.advance(probed.clock.sleeps[-1])
    assert probed.health.store_down and state_of(probed.health) is State.DEGRADED
    # Answering but refusing the marker's write: reachable for reads, not for the flusher.
    probed.deep_check_fails = StoreRefusing("READONLY", "READONLY You can't write")
    for _ in range(3):
        await probed.clock.advance(probed.clock.sleeps[-1])
    assert not probed.health.store_down and probed.health.store_refuses_writes
    assert state_of(probed.health) is State.DEGRADED


async def test_failing_clears_once_the_wal_has_room_even_without_writes(probed: Probed) -> None:
    probed.health.wal_full("wal_max_bytes reached")
    await probed.clock.advance(1.0)
    assert state_of(probed.health) is State.FAILING
    probed.wal_room = True
    await probed.clock.advance(1.0)
    assert state_of(probed.health) is State.HEALTHY


async def test_a_refusing_store_is_let_write_once_a_probe_write_passes(probed: Probed) -> None:
    probed.backlog.extend([Entry(1, Delete("agent", "r1"))])
    probed.health.store_failed(StoreRefusing("OOM", "OOM command not allowed"))
    assert probed.health.store_refuses_writes and not probed.health.store_down
    probed.deep_check_fails = StoreRefusing("OOM", "OOM")  # the marker's write is refused too
    await probed.clock.advance(probed.clock.sleeps[-1])
    assert probed.health.store_refuses_writes
    probed.deep_check_fails = None
    await probed.clock.advance(probed.clock.sleeps[-1])
    assert not probed.health.store_refuses_writes, "the flusher may try"
    assert state_of(probed.health) is State.DEGRADED, "until a batch is applied"
    probed.health.store_succeeded(0.001)
    assert state_of(probed.health) is State.HEALTHY


async def test_a_refusing_store_that_becomes_unreachable_says_so(tmp_path: Path) -> None:
    changes: list[tuple[State, str]] = []
    health = Health(
        LocalStore(tmp_path, max_memories=10),
        queued(1),
        on_change=lambda state, why, problem: changes.append((state, why)),
    )
    health.store_failed(StoreRefusing("OOM", "OOM command not allowed"))
    assert state_of(health) is State.DEGRADED and "refusing: OOM" in health.reason
    health.store_failed(StoreUnavailable("connection refused"))
    assert health.store_down and health.store_problem is None
    assert state_of(health) is State.DEGRADED
    assert "unreachable" in health.reason and "refusing" not in health.reason
    assert [why.split(" (")[0] for _, why in changes] == [
        "store refusing: OOM",
        "store unreachable",
    ]
    health.store_failed(StoreUnavailable("connection refused"))
    assert len(changes) == 2, "the same outage is reported once"


async def test_an_error_reply_is_not_an_outage(probed: Probed) -> None:
    monitored = MonitoredStore(probed.store, probed.health)
    probed.store.fail_with(StoreError("redis query: WRONGTYPE Operation against a key"))
    with pytest.raises(StoreError):
        await monitored.query("a", Query(), 0.0)
    health = probed.health
    assert not health.store_down, "it answered: reads go on"
    assert health.store_refuses_writes and health.store_problem == "error"
    assert state_of(health) is State.DEGRADED and "WRONGTYPE" in health.reason
    probed.store.fail_with(None)
    await probed.clock.advance(probed.clock.sleeps[-1])  # the probe's write passes
    assert state_of(health) is State.HEALTHY, "nothing waited to be applied"


async def test_the_monitored_store_reports_each_failure_once_and_raises_it_on() -> None:
    store = MemoryStore()
    changes: list[str] = []
    health = Health(store, Backlog(), on_change=lambda state, why, problem: changes.append(why))
    monitored = MonitoredStore(store, health)
    store.fail_with(StoreUnavailable("connection refused"))
    with pytest.raises(StoreUnavailable):
        await monitored.agents("", 10)
    assert health.store_down and len(changes) == 1
    assert health.last_error == "StoreUnavailable: connection refused"
    with pytest.raises(StoreUnavailable):
        await store.agents("", 10)  # the bare store reports nothing
    assert health.last_error == "StoreUnavailable: connection refused" and len(changes) == 1
    store.fail_with(None)
    assert (await monitored.query("a", Query(), 0.0)).value == []  # what works is not reported
    assert len(changes) == 1
