"""The health state is derived from independent facts: store reachability,
the WAL's condition and the backlog."""

from __future__ import annotations

from pathlib import Path

import pytest

from memoryd.backlog import Backlog
from memoryd.health import Health, State
from memoryd.ops import Delete, Entry
from memoryd.records import Query
from memoryd.stores.base import StoreRefusing, StoreUnavailable
from memoryd.stores.local import LocalStore
from memoryd.stores.memory import MemoryStore
from memoryd.stores.monitored import MonitoredStore


def state_of(health: Health) -> State:
    """The state now (read through a call: mypy would keep a narrowed ``health.state``)."""
    return health.state


def queued(*seqs: int) -> Backlog:
    """A backlog holding entries with these sequence numbers."""
    backlog = Backlog()
    backlog.extend(Entry(seq, Delete("agent", f"r{seq}")) for seq in seqs)
    return backlog


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


async def test_recovery_needs_several_probes_then_ends_when_the_outage_backlog_is_applied(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path, max_memories=10)
    await store.open()
    backlog = queued(5, 6, 7)
    health = Health(store, backlog, successes_to_recover=3)
    health.store_failed(StoreUnavailable("connection refused"))
    for _ in range(2):
        await health._probe()
        assert state_of(health) is State.DEGRADED
    await health._probe()
    assert state_of(health) is State.RECOVERING and not health.store_down
    # New writes keep the backlog from ever being empty: that must not matter.
    backlog.extend(Entry(seq, Delete("agent", f"r{seq}")) for seq in range(8, 13))
    backlog.mark_applied(2)  # up to seq 6, of the 7 queued during the outage
    health.store_succeeded(0.001)
    assert state_of(health) is State.RECOVERING
    backlog.mark_applied(1)
    health.store_succeeded(0.001)
    assert state_of(health) is State.HEALTHY
    await store.close()


async def test_failing_clears_once_the_wal_has_room_even_without_writes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_memories=10)
    await store.open()
    room = [False]
    health = Health(store, Backlog(), wal_has_room=lambda: room[0])
    health.wal_full("wal_max_bytes reached")
    await health._probe()
    assert state_of(health) is State.FAILING
    room[0] = True
    await health._probe()
    assert state_of(health) is State.HEALTHY
    await store.close()


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


async def test_the_monitored_store_reports_each_failure_once_and_raises_it_on() -> None:
    store = MemoryStore()
    health = Health(store, Backlog())
    monitored = MonitoredStore(store, health)
    failures: list[str] = []
    real_failed = health.store_failed

    def counting(exc: BaseException) -> None:
        failures.append(type(exc).__name__)
        real_failed(exc)

    health.store_failed = counting  # type: ignore[method-assign]

    async def refused(*args: object) -> list[str]:
        raise StoreUnavailable("connection refused")

    store.agents = refused  # type: ignore[method-assign,assignment]
    with pytest.raises(StoreUnavailable):
        await monitored.agents("", 10)
    assert failures == ["StoreUnavailable"] and health.store_down
    assert await monitored.query("a", Query(), 0.0) == []  # what works is not reported
    assert failures == ["StoreUnavailable"]
