"""The flusher: applies the backlog to the store, in order, in batches.

One batch at a time, oldest first.  A batch that fails is applied again
whole (every operation is idempotent), after a backoff, until the store takes
it; nothing behind it overtakes it.  Progress is checkpointed in the WAL so a
restart replays only what the store has not confirmed durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memoryd.backlog import Backlog, entry_bytes
from memoryd.cache import ReadCache
from memoryd.clock import SYSTEM_CLOCK, Clock
from memoryd.config import Settings
from memoryd.durability import Unconfirmed
from memoryd.health import Health
from memoryd.stores.base import Sequenced, Store, StoreFailure, WriterLease
from memoryd.wal import Wal

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FlushSettings:
    """What the flusher takes from the settings."""

    batch_max: int
    batch_max_bytes: int
    checkpoint_interval_s: float

    @classmethod
    def of(cls, settings: Settings) -> FlushSettings:
        return cls(
            batch_max=settings.flush_batch_max,
            batch_max_bytes=settings.flush_batch_max_bytes,
            checkpoint_interval_s=settings.checkpoint_interval_s,
        )


def _no_lease() -> WriterLease | None:
    return None


class Flusher:
    def __init__(
        self,
        settings: FlushSettings,
        *,
        store: Store,
        backlog: Backlog,
        wal: Wal,
        health: Health,
        cache: ReadCache,
        unconfirmed: Unconfirmed,
        lease: Callable[[], WriterLease | None] = _no_lease,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backlog = backlog
        self.wal = wal
        self.health = health
        self.cache = cache
        self.unconfirmed = unconfirmed
        # This daemon's writer lease, renewed by the batches (None once given up).
        self._lease = lease
        self._clock = clock
        self.applied_records = 0
        self._applied_changed = asyncio.Condition()
        self._last_checkpoint_s = clock.monotonic()
        self._stopping = False
        self._recent_batches: deque[tuple[float, int]] = deque(maxlen=4096)

    def stop(self) -> None:
        """Make ``run()`` return after the batch in hand.

        Cancelling alone is not enough: redis-py can swallow a CancelledError
        that lands inside a command, and the loop would go on.
        """
        self._stopping = True

    async def run(self) -> None:
        """Apply batches until ``stop()``."""
        while not self._stopping:
            interval_s = self.settings.checkpoint_interval_s
            if not await self._clock.wait(self.backlog.wait_nonempty(), interval_s):
                # Idle: record what the last batches applied, so a restart
                # replays little and applied segments can go.
                await self._checkpoint_if_due()
                continue
            if not await self.apply_one_batch():
                await self.health.wait_store_writable()
            await self._checkpoint_if_due()

    async def apply_one_batch(self) -> bool:
        """Apply the oldest batch; False if the store refused it."""
        batch = self.backlog.head(self.settings.batch_max, self.settings.batch_max_bytes)
        if not batch:
            return True
        ops = [entry.op for entry in batch]
        started_s = self._clock.monotonic()
        now_s = self._clock.time()
        try:
            numbers = Sequenced(self.wal.wal_id, [entry.seq for entry in batch])
            await self.store.apply(ops, now_s, self._lease(), numbers)
        except StoreFailure:
            self.cache.failed(ops)  # Health heard of it from the store (MonitoredStore)
            return False
        self.health.store_succeeded(self._clock.monotonic() - started_s)
        self.cache.applied(ops, now_s)
        self.backlog.mark_applied(batch)
        self.unconfirmed.applied(batch[0].seq, batch[-1].seq, sum(map(entry_bytes, batch)))
        self.applied_records += len(batch)
        self._recent_batches.append((self._clock.monotonic(), len(batch)))
        async with self._applied_changed:
            self._applied_changed.notify_all()
        return True

    @property
    def applied_seq(self) -> int:
        """The newest write the store has applied (the backlog keeps it)."""
        return self.backlog.applied_seq

    def reconfigure(self, settings: FlushSettings) -> None:
        self.settings = settings

    def describe(self) -> dict[str, Any]:
        return {
            "applied_seq": self.applied_seq,
            "applied_records": self.applied_records,
            "drain_rate_per_s": self.drain_rate_per_s(),
        }

    def drain_rate_per_s(self, window_s: float = 10.0) -> float:
        """Records applied per second over the last ``window_s``."""
        since = self._clock.monotonic() - window_s
        applied = sum(count for at, count in self._recent_batches if at >= since)
        return round(applied / window_s, 1)

    async def wait_applied(self, seq: int) -> None:
        """Return once the store has applied every entry up to ``seq``."""
        async with self._applied_changed:
            await self._applied_changed.wait_for(lambda: self.applied_seq >= seq)

    async def _checkpoint_if_due(self) -> None:
        elapsed_s = self._clock.monotonic() - self._last_checkpoint_s
        due = elapsed_s >= self.settings.checkpoint_interval_s
        if not due or self._checkpoint_seq() <= self.wal.checkpointed_seq:
            return
        try:
            await self.checkpoint()
        except OSError as exc:
            # A full disk, no file descriptors left: the store has the records,
            # the WAL keeps them a while longer, and the next interval tries again.
            self.health.disk_failed("writing the WAL checkpoint", _os_reason(exc))
        else:
            self.health.disk_recovered("writing the WAL checkpoint")

    async def checkpoint(self) -> None:
        self._last_checkpoint_s = self._clock.monotonic()
        # As far as the store has confirmed durable: the rest stays in the WAL,
        # to be applied again if the store loses it (memoryd.durability).
        await self.wal.checkpoint(self._checkpoint_seq())

    def _checkpoint_seq(self) -> int:
        """As far as a restart may skip: confirmed durable, and nothing older
        still waiting to be applied (writes put back come before newer ones)."""
        oldest_pending = self.backlog.oldest_seq()
        confirmed = self.unconfirmed.confirmed_seq
        return min(confirmed, oldest_pending - 1) if oldest_pending else confirmed

    async def drain(self, timeout_s: float, give_up: Callable[[], bool]) -> bool:
        """Apply what is left (used at shutdown); True if the backlog emptied.

        Stops early when ``give_up()`` says so (a second SIGTERM): what is
        left is safe in the WAL anyway.
        """
        clock = self._clock
        deadline = clock.monotonic() + timeout_s
        while len(self.backlog) and clock.monotonic() < deadline and not give_up():
            if not await self.apply_one_batch():
                await clock.sleep(min(0.2, max(0.0, deadline - clock.monotonic())))
        await self.checkpoint()
        return not len(self.backlog)


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror or exc} (errno {exc.errno})" if exc.errno else str(exc)
