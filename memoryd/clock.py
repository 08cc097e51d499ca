"""Time as the daemon's parts read it: one seam, so tests can turn the clock.

Health, the WAL and the flusher take a ``Clock`` (the system's by default);
unit tests hand them a fake one that moves only when told (tests/fakeclock.py),
so a backoff, an interval or an age is tested without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


class Clock:
    """The system's clocks and asyncio's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        """Seconds since the epoch: record times, expiry."""
        return time.time()

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)

    async def wait(self, awaitable: Awaitable[_T], timeout_s: float) -> bool:
        """Await ``awaitable`` for at most ``timeout_s``; whether it finished (it is
        cancelled if not)."""
        try:
            await asyncio.wait_for(awaitable, timeout_s)
        except TimeoutError:
            return False
        return True


SYSTEM_CLOCK = Clock()
