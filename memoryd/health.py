"""The health monitor: probes the store on its own schedule, owns the state.

States (the contract): ``healthy``; ``degraded`` (store unreachable, or
reachable but refusing writes: out of memory, a read-only replica, a failed
RDB save, or refusing memoryd's credentials; writes are buffered in the WAL);
``recovering`` (store back, draining the backlog); ``failing`` (the WAL cannot
take writes, or the disk under it is in trouble).  The probe runs
independently of traffic, so recovery is noticed even when nobody writes.

A store that refuses writes still answers reads, so reads keep going to it;
only the flusher waits.  It leaves ``degraded`` once a batch is applied again,
not at the first write probe that passes: a Redis hovering at its maxmemory
takes a small probe and refuses the next batch, and the state must not flap.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from memoryd.backlog import Backlog
from memoryd.clock import SYSTEM_CLOCK, Clock
from memoryd.stores.base import Store, StoreFailure, StoreRefusing

logger = logging.getLogger(__name__)


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    RECOVERING = "recovering"
    FAILING = "failing"


_SEVERITY = {State.HEALTHY: 0, State.RECOVERING: 1, State.DEGRADED: 2, State.FAILING: 3}


class Health:
    def __init__(
        self,
        store: Store,
        backlog: Backlog,
        *,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 0.5,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        successes_to_recover: int = 3,
        on_change: Callable[[State, str, str | None], None] = lambda state, why, problem: None,
        check_store: Callable[[], Awaitable[None]] | None = None,
        check_store_every: int = 5,
        wal_has_room: Callable[[], bool] = lambda: False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        # Long on purpose: every fact the state is derived from starts here.
        self.store = store
        # Read, never changed: how much waits, and how far the flusher got.
        self._backlog = backlog
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.successes_to_recover = successes_to_recover
        self.on_change = on_change
        # A deeper look at the store (has it lost its data?), on reconnecting
        # and every few probes: a quick restart can fall between two probes.
        self.check_store = check_store
        self.check_store_every = check_store_every
        # A full WAL clears on the next accepted write, or here once there is
        # room again, so `failing` does not outlast its cause when nobody writes.
        self._wal_has_room = wal_has_room
        self._clock = clock
        self._probes = 0
        self._deep_check_due = False
        self.state = State.HEALTHY
        self.since = self._clock.time()
        self.reason = "started"
        self.last_error: str | None = None
        self.ping_latency_s: float | None = None
        self.loop_lag_s = 0.0
        self.wal_failure: str | None = None
        self.wal_full_reason: str | None = None
        self._wal_full_for_space = True
        # Trouble with files beside the WAL (the checkpoint...), by what failed.
        self.disk_trouble: dict[str, str] = {}
        # Why the store cannot take writes when it is reachable: "refusing: OOM",
        # "misconfigured"...; None when it is fine or merely unreachable.
        self.store_problem: str | None = None
        # The state is derived from these facts, so that, say, a full WAL
        # never hides that the store is down too.
        self._store_reachable = asyncio.Event()
        self._store_reachable.set()
        self._store_writable = asyncio.Event()
        self._store_writable.set()
        self._draining = False
        # Recovery is over once what queued up during the outage is applied;
        # new writes keep arriving meanwhile, so "backlog empty" may never be seen.
        self._recovered_at_seq = 0
        self._failures = 0
        self._successes = 0
        self._wake_probe = asyncio.Event()

    @property
    def store_down(self) -> bool:
        return not self._store_reachable.is_set()

    @property
    def store_refuses_writes(self) -> bool:
        return not self._store_writable.is_set()

    def describe(self) -> dict[str, Any]:
        """The state and how the store answers, for ``status``."""
        ping_ms = round(self.ping_latency_s * 1000, 3) if self.ping_latency_s else None
        return {
            "state": self.state.value,
            "since": self.since,
            "reason": self.reason,
            "store": {
                "ping_ms": ping_ms,
                "last_error": self.last_error,
                "reachable": not self.store_down,
                "problem": self.store_problem,
            },
            "event_loop_lag_ms": round(self.loop_lag_s * 1000, 3),
        }

    def _derive(self) -> State:
        if self.wal_failure is not None or self.wal_full_reason is not None or self.disk_trouble:
            return State.FAILING
        if self.store_down or self.store_problem is not None:
            return State.DEGRADED
        return State.RECOVERING if self._draining else State.HEALTHY

    def _update(self, reason: str, *, news: bool = False) -> None:
        """Take the state the facts give; log and report it if it changed, or
        if ``news`` (the same state for another reason: refusing after unreachable)."""
        state = self._derive()
        if state is self.state and not news:
            return
        worse = news or _SEVERITY[state] > _SEVERITY[self.state]
        previous, self.state, self.since, self.reason = (
            self.state,
            state,
            self._clock.time(),
            reason,
        )
        if worse:
            logger.warning("health %s -> %s: %s", previous.value, state.value, reason)
        else:
            logger.info("health %s -> %s: %s", previous.value, state.value, reason)
        self.on_change(state, reason, self.store_problem)

    # Reports from the flusher, the service and the WAL.

    def store_failed(self, exc: BaseException) -> None:
        """A store call failed (the flusher, a read, the sweep, a probe): what
        the store can still do follows from the failure's kind."""
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._successes = 0
        self._wake_probe.set()
        if isinstance(exc, StoreRefusing):
            self._store_refusing(f"refusing: {exc.reason}")
            return
        kind = exc.kind if isinstance(exc, StoreFailure) else "unavailable"  # a probe's timeout
        if kind == "error":
            # It answered, so it is reachable: reads go on, the flusher waits
            # for the probe as it does for a store refusing writes.
            self._store_refusing("error")
            return
        problem = "misconfigured" if kind == "misconfigured" else None
        if self.store_down and problem == self.store_problem:
            return
        # Still degraded, for another reason (refusing, then unreachable): say so.
        news = self.state is State.DEGRADED and problem != self.store_problem
        self.store_problem = problem
        self._store_reachable.clear()
        self._store_writable.clear()
        if problem is None:
            why = f"store unreachable ({self.last_error})"
        else:
            why = f"store misconfigured: it refuses memoryd ({self.last_error})"
        self._update(f"{why}; writes go on into the WAL and are applied when it returns", news=news)

    def _store_refusing(self, problem: str) -> None:
        """Reachable (reads go on) but refusing writes: the flusher waits for the probe."""
        self._store_writable.clear()
        self._came_back()
        if self.store_problem == problem:
            return
        news = self.state is State.DEGRADED
        self.store_problem = problem
        self._update(
            f"store {problem} ({self.last_error}); writes go on into the WAL and are "
            "applied once it takes them again",
            news=news,
        )

    def store_succeeded(self, latency_s: float) -> None:
        """The flusher applied a batch: the store takes writes."""
        self.ping_latency_s = latency_s
        if self.store_problem is not None and not self.store_down:
            self.store_problem = None
            self.last_error = None
            draining = "; draining the backlog" if self._draining else ""
            self._update("the store takes writes again" + draining)
        if self._draining and self._backlog.applied_through(self._recovered_at_seq):
            self._draining = False
            self._update("what queued up during the outage is applied")

    def disk_failed(self, what: str, reason: str) -> None:
        """Writing ``what`` (the checkpoint...) failed; it is tried again on its own."""
        if self.disk_trouble.get(what) == reason:
            return
        self.disk_trouble[what] = reason
        self._update(f"{what} failed: {reason}; retried until it works", news=True)

    def disk_recovered(self, what: str) -> None:
        if self.disk_trouble.pop(what, None) is not None:
            self._update(f"{what} works again")

    def wal_failed(self, reason: str) -> None:
        """The WAL cannot take writes (an fdatasync failed): for good."""
        self.wal_failure = reason
        self._update(reason)

    def wal_full(self, reason: str, *, for_space: bool = True) -> None:
        """The WAL refuses writes (retryable) until it takes one again, or, when
        the cause is room (``for_space``), until the probe finds room."""
        self.wal_full_reason = reason
        self._wal_full_for_space = for_space
        self._update(f"{reason}; writes are refused until the WAL takes them again, reads go on")

    def wal_has_room(self) -> None:
        if self.wal_full_reason is not None:
            self.wal_full_reason = None
            self._update("the WAL takes writes again")

    def check_soon(self) -> None:
        """Look deeper (the data-loss marker) at the next probe, and probe now:
        the link to the store broke, so it may have restarted between two
        commands that both succeeded."""
        self._deep_check_due = True
        self._wake_probe.set()

    async def wait_store_writable(self) -> None:
        await self._store_writable.wait()

    # The probe.

    async def run(self) -> None:
        """Probe forever; cancel to stop."""
        while True:
            delay_s = self._next_delay_s()
            slept_from = self._clock.monotonic()
            self._wake_probe.clear()
            await self._clock.wait(self._wake_probe.wait(), delay_s)
            self.loop_lag_s = max(0.0, self._clock.monotonic() - slept_from - delay_s)
            await self._probe()

    def _next_delay_s(self) -> float:
        if not self.store_down and not self.store_refuses_writes:
            return self.probe_interval_s
        # Full jitter: spread the probes of many daemons hitting one Redis.
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(self._failures, 16))
        return random.uniform(0, ceiling)

    async def _probe(self) -> None:
        self._probes += 1
        if self.wal_full_reason is not None and self._wal_full_for_space and self._wal_has_room():
            self.wal_has_room()
        try:
            latency_s = await asyncio.wait_for(self.store.ping(), self.probe_timeout_s)
        except (StoreFailure, TimeoutError) as exc:
            self._failures += 1
            self.store_failed(exc)
            return
        self.ping_latency_s = latency_s
        self._successes += 1
        if self.store_down:
            if self._successes >= self.successes_to_recover:
                # Several successes in a row, so one lucky ping does not flap the state.
                await self._reconnected()
        elif self.store_refuses_writes:
            await self._probe_writes()
        elif self._draining and self._backlog.applied_through(self._recovered_at_seq):
            self._draining = False
            self._update("what queued up during the outage is applied")
        elif self._deep_check_due or self._probes % self.check_store_every == 0:
            self._deep_check_due = False
            await self._check_store()
        if not self.store_down and not self.store_refuses_writes:
            self._failures = 0

    async def _reconnected(self) -> None:
        """Pings pass again: look deeper (the marker, which also writes), then use it.

        A store that answers but refuses the marker's write is reachable but
        refusing (``_store_refusing``): reads go to it, the flusher waits.
        """
        if not await self._check_store():
            return
        self._came_back()
        self._store_writable.set()
        if self.store_problem is not None and len(self._backlog):
            # It refused memoryd before (credentials, an ACL): it has taken
            # memoryd back only once a batch applies (store_succeeded), or a
            # store that lets ping and the marker pass but not the apply script
            # would flap between degraded and recovering.
            return
        self.store_problem = None
        self.last_error = None
        self._update("store reachable again" + ("; draining the backlog" if self._draining else ""))

    def _came_back(self) -> None:
        if self.store_down:
            self._draining = len(self._backlog) > 0
            self._recovered_at_seq = self._backlog.newest_seq()
            self._store_reachable.set()

    async def _probe_writes(self) -> None:
        """The store refused writes: let the flusher try once a probe write passes.

        The state stays degraded until a batch is applied (``store_succeeded``),
        unless there is nothing to apply.
        """
        if not await self._check_store():
            self._failures += 1
            return
        self._store_writable.set()
        if len(self._backlog) == 0:
            self.store_problem = None
            self.last_error = None
            self._update("the store takes writes again")

    async def _check_store(self) -> bool:
        if self.check_store is None:
            return True
        try:
            await self.check_store()
        except StoreFailure as exc:
            self._successes = 0
            self.store_failed(exc)
            return False
        return True
