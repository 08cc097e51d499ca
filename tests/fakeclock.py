"""A clock that moves only when a test says so, for the parts that take a
``memoryd.clock.Clock``: Health, the WAL, the flusher.

``advance(s)`` moves time forward, waking every sleeper whose deadline it
passes, in deadline order, and lets the event loop run what they wake before
it moves on; so a backoff of 5 s or an interval of a minute is tested in
microseconds, and exactly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

from memoryd.clock import Clock

_T = TypeVar("_T")

# Loop iterations given to woken tasks before time moves on: enough for a
# probe of an in-memory store (a few awaits), far more than any needs.
_SETTLE_ROUNDS = 50


class FakeClock(Clock):
    def __init__(self, *, monotonic_s: float = 1000.0, epoch_s: float = 1_700_000_000.0) -> None:
        self._now_s = monotonic_s
        self._epoch_offset_s = epoch_s - monotonic_s
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.sleeps: list[float] = []  # every delay asked of sleep() or wait(), in order

    def monotonic(self) -> float:
        return self._now_s

    def time(self) -> float:
        return self._now_s + self._epoch_offset_s

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        await self._until(self._now_s + max(0.0, delay_s))

    async def wait(self, awaitable: Awaitable[_T], timeout_s: float) -> bool:
        self.sleeps.append(timeout_s)
        done = asyncio.ensure_future(awaitable)
        timer = asyncio.ensure_future(self._until(self._now_s + max(0.0, timeout_s)))
        try:
            await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if not done.done():
            done.cancel()
            return False
        done.result()  # raises what the awaitable raised
        return True

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, running what wakes on the way."""
        target = self._now_s + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now_s = max(self._now_s, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self._now_s = target
        await settle()

    @property
    def sleeping(self) -> int:
        """How many sleepers wait for the clock."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def _until(self, deadline: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        await future


async def settle() -> None:
    """Let every task that can run, run, without real time passing."""
    for _ in range(_SETTLE_ROUNDS):
        await asyncio.sleep(0)
