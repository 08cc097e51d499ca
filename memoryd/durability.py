"""Applied is not yet safe: what the store has applied but not confirmed durable.

A write Redis has applied can still be lost: persistence may be off, or once a
second; a server that restarts empty has lost it.  So the WAL keeps every
applied write until the store confirms it durable (``Store.durable_until``),
and only then lets the checkpoint pass it and the segments holding it go.  If
the store comes back without memoryd's marker (it lost its data), the writes
not yet confirmed are read back from the WAL and applied again (``put_back``):
the store is healed, not only reported.

When the store cannot confirm at all (no persistence), applied writes are kept
within a bound, ``wal_retain_bytes`` and ``wal_retain_s``; past it they are let
go (``released``) and a loss beyond it can only be reported.

Only a few numbers per applied batch are held in memory; the writes themselves
stay in the WAL's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from memoryd.backlog import Backlog
from memoryd.clock import SYSTEM_CLOCK, Clock
from memoryd.config import Settings
from memoryd.health import Health
from memoryd.stores.base import Store, StoreFailure
from memoryd.wal import Wal

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetainSettings:
    """How much applied but unconfirmed WAL is kept when the store cannot confirm."""

    max_bytes: int  # wal_retain_bytes
    max_age_s: float  # wal_retain_s

    @classmethod
    def of(cls, settings: Settings) -> RetainSettings:
        # Held to half the WAL: unconfirmed writes must never fill it, or new
        # writes would be refused while the store cannot confirm the old ones.
        max_bytes = min(settings.wal_retain_bytes, settings.wal_max_bytes // 2)
        return cls(max_bytes=max_bytes, max_age_s=settings.wal_retain_s)


# Batches applied in a row within this long are kept as one: a few numbers per
# second at most, however many batches, for up to wal_retain_s of them.
COALESCE_S = 1.0


@dataclass(frozen=True, slots=True)
class _Batch:
    first_seq: int
    last_seq: int
    size_bytes: int
    # The clock's time(), as the store's durability is told in it: when its last
    # write was applied (what confirming it waits for), and its first.
    applied_at_s: float
    first_applied_at_s: float


@dataclass(frozen=True, slots=True)
class PutBack:
    """The writes to apply again: sequence numbers ``first_seq`` to ``last_seq``,
    applied since ``since_s``; and what was let go before (``released``, the
    newest of them applied at ``released_until_s``)."""

    first_seq: int
    last_seq: int
    since_s: float | None
    released: int
    released_until_s: float | None
    size_bytes: int = 0  # of the writes to apply again, as they were applied

    @property
    def count(self) -> int:
        return max(0, self.last_seq - self.first_seq + 1)


class Unconfirmed:
    def __init__(
        self,
        settings: RetainSettings,
        *,
        durable_until_s: float = -math.inf,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.settings = settings
        self._clock = clock
        # What the store said last (DurabilityWatch): math.inf confirms each
        # batch as it is applied.
        self.durable_until_s = durable_until_s
        self._batches: deque[_Batch] = deque()
        self.bytes = 0
        self._confirmed_up_to = 0  # the newest confirmed or let go
        self._applied_up_to = 0  # the newest ever applied
        self.released = 0  # writes let go unconfirmed, since start
        self._released_until_s: float | None = None
        # Put back, being read from the WAL and not yet queued again: still
        # unconfirmed, and the confirmed point must not pass them.
        self._restoring: list[PutBack] = []

    def reconfigure(self, settings: RetainSettings) -> None:
        self.settings = settings

    def resume(self, checkpointed_seq: int) -> None:
        """Start from the checkpoint: everything after it is applied (again) from the WAL."""
        self._confirmed_up_to = self._applied_up_to = checkpointed_seq

    @property
    def confirmed_seq(self) -> int:
        """Everything at or below is confirmed durable or let go past retention.

        Never past a batch still unconfirmed: after a put-back, a batch that
        was in flight may be confirmed before the older ones put back.
        """
        firsts = [batch.first_seq for batch in self._batches]
        firsts += [put_back.first_seq for put_back in self._restoring]
        if not firsts:
            return self._confirmed_up_to
        return min(self._confirmed_up_to, min(firsts) - 1)

    def __len__(self) -> int:
        applied = sum(batch.last_seq - batch.first_seq + 1 for batch in self._batches)
        return applied + sum(put_back.count for put_back in self._restoring)

    def applied(self, first_seq: int, last_seq: int, size_bytes: int) -> None:
        """The store applied this batch (consecutive sequence numbers)."""
        self._applied_up_to = max(self._applied_up_to, last_seq)
        now_s = self._clock.time()
        last = self._batches[-1] if self._batches else None
        if (
            last is not None
            and last.last_seq + 1 == first_seq
            and now_s - last.first_applied_at_s < COALESCE_S
        ):
            size = last.size_bytes + size_bytes
            self._batches[-1] = _Batch(
                last.first_seq, last_seq, size, now_s, last.first_applied_at_s
            )
        else:
            self._batches.append(_Batch(first_seq, last_seq, size_bytes, now_s, now_s))
        self.bytes += size_bytes
        if self.durable_until_s == math.inf:
            self._pop()

    def confirm(self, durable_until_s: float) -> None:
        """The store says everything applied before ``durable_until_s`` is durable."""
        self.durable_until_s = durable_until_s
        while self._batches and self._batches[0].applied_at_s < durable_until_s:
            self._pop()

    def release_beyond_retention(self) -> None:
        """Let go of what is older or more than the retention allows."""
        oldest_kept_s = self._clock.time() - self.settings.max_age_s
        released = 0
        while self._batches and (
            self.bytes > self.settings.max_bytes or self._batches[0].applied_at_s < oldest_kept_s
        ):
            batch = self._pop()
            released += batch.last_seq - batch.first_seq + 1
            self._released_until_s = batch.applied_at_s
        if released:
            self.released += released
            logger.info(
                "%d applied writes the store has not confirmed durable left the WAL's retention "
                "(wal_retain_bytes %d, wal_retain_s %.0f): a store that loses them now cannot "
                "get them back",
                released,
                self.settings.max_bytes,
                self.settings.max_age_s,
            )

    def put_back(self, applied_seq: int) -> PutBack:
        """Take what is unconfirmed out, to be applied again: everything after
        ``confirmed_seq`` up to the newest write ever applied (``applied_seq``,
        the backlog's, is not it after an earlier put-back: a batch in flight
        then was applied after older ones).

        Until ``restored`` is called with it, it still counts as unconfirmed
        and holds the confirmed point back.  What the store said of its
        durability was said of the server before: nothing is confirmed at
        once any more until it says so again.
        """
        since_s = self._batches[0].first_applied_at_s if self._batches else None
        last_seq = max(applied_seq, self._applied_up_to)
        put_back = PutBack(
            self.confirmed_seq + 1,
            last_seq,
            since_s,
            self.released,
            self._released_until_s,
            self.bytes,
        )
        self._batches.clear()
        self.bytes = 0
        self.durable_until_s = -math.inf
        self._restoring.append(put_back)
        return put_back

    def restored(self, put_back: PutBack) -> None:
        """What ``put_back`` took out is queued to be applied again (or given up)."""
        self._restoring.remove(put_back)

    def oldest_age_s(self) -> float:
        applied_at_s = [self._batches[0].applied_at_s] if self._batches else []
        applied_at_s += [p.since_s for p in self._restoring if p.since_s is not None]
        if not applied_at_s:
            return 0.0
        return max(0.0, self._clock.time() - min(applied_at_s))

    def describe(self) -> dict[str, Any]:
        restoring_bytes = sum(put_back.size_bytes for put_back in self._restoring)
        return {
            "unconfirmed_records": len(self),
            "unconfirmed_bytes": self.bytes + restoring_bytes,
            "unconfirmed_oldest_age_s": round(self.oldest_age_s(), 3),
            "confirmed_seq": self.confirmed_seq,
            "released_unconfirmed": self.released,
        }

    def _pop(self) -> _Batch:
        batch = self._batches.popleft()
        self.bytes -= batch.size_bytes
        self._confirmed_up_to = max(self._confirmed_up_to, batch.last_seq)
        return batch


class Restorer:
    """Applies again, before anything newer, every write the store has not
    confirmed durable: read back from the WAL, queued first in the backlog."""

    def __init__(self, unconfirmed: Unconfirmed, backlog: Backlog, wal: Wal) -> None:
        self._unconfirmed = unconfirmed
        self._backlog = backlog
        self._wal = wal
        self._server_run: str | None = None  # the store's, as last seen

    async def note_server_run(self, server_run: str) -> PutBack | None:
        """Put back what is unconfirmed if the store's server is another one than
        last seen (restarted, promoted, resynced); what was put back, if it was."""
        previous, self._server_run = self._server_run, server_run
        if previous is None or previous == server_run:
            return None
        # Whatever it holds, nothing applied to the one before is known to be in it.
        return await self.put_back("the store's server is another one (restarted or failed over)")

    async def put_back(self, why: str) -> PutBack:
        put_back = self._unconfirmed.put_back(self._backlog.applied_seq)
        try:
            if put_back.count:
                await self._queue_again(put_back, why)
        finally:
            self._unconfirmed.restored(put_back)
        return put_back

    async def _queue_again(self, put_back: PutBack, why: str) -> None:
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(
            None, self._wal.read_back, put_back.first_seq, put_back.last_seq
        )
        # On the loop, with no await before the entries are queued: a batch
        # numbered under the new id must never precede them.  An fsync,
        # once per put-back.
        self._wal.renew_id()
        self._backlog.put_back(entries, applied_seq=put_back.first_seq - 1)
        logger.warning(
            "%s: %d writes it had not confirmed durable are applied again from the WAL",
            why,
            len(entries),
        )


class DurabilityWatch:
    """Asks the store how far applied writes are durable, every ``interval_s``,
    and puts back what a store whose server is another one may miss (the
    data-loss check does the same each time the store comes back)."""

    def __init__(
        self,
        store: Store,
        unconfirmed: Unconfirmed,
        restorer: Restorer,
        health: Health,
        *,
        interval_s: float = 1.0,
    ) -> None:
        self._store = store
        self._unconfirmed = unconfirmed
        self._restorer = restorer
        self._health = health
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            if not self._health.store_down:
                with contextlib.suppress(StoreFailure):  # the health probe reports the store
                    await self.check()
            await asyncio.sleep(self._interval_s)

    async def check(self) -> None:
        durability = await self._store.durability()
        if await self._restorer.note_server_run(durability.server_run) is not None:
            return
        self._unconfirmed.confirm(durability.until_s)
        self._unconfirmed.release_beyond_retention()


def describe_put_back(put_back: PutBack) -> str:
    """What an alert says was restored, and what could not be."""
    restored = f"{put_back.count} writes not yet confirmed durable were applied again"
    if put_back.since_s is not None:
        restored += f" (applied since {_when(put_back.since_s)})"
    if put_back.released and put_back.released_until_s is not None:
        return (
            f"{restored}; {put_back.released} writes applied up to "
            f"{_when(put_back.released_until_s)} had left the WAL's retention "
            "(wal_retain_bytes, wal_retain_s) unconfirmed and may be lost"
        )
    return restored + "; nothing older had left the WAL unconfirmed"


def _when(time_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_s))
