"""The write path: into the WAL, acknowledged once durable there (or once applied,
for ``durability: store``), one read-modify-write of an agent at a time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from memoryd.config import Settings
from memoryd.errors import BackendUnavailable, DeadlineExceeded, InternalError, Overloaded, WalFull
from memoryd.flusher import Flusher
from memoryd.health import Health
from memoryd.ops import Op
from memoryd.wal import Wal, WalBusyError, WalError, WalFullError


@dataclass(frozen=True, slots=True)
class WriteSettings:
    """What the write path takes from the settings."""

    request_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> WriteSettings:
        return cls(request_timeout_s=settings.request_timeout_s)


class Writer:
    def __init__(
        self, settings: WriteSettings, *, wal: Wal, flusher: Flusher, health: Health
    ) -> None:
        self._settings = settings
        self._wal = wal
        self._flusher = flusher
        self._health = health
        self._agent_locks: dict[str, asyncio.Lock] = {}

    def reconfigure(self, settings: WriteSettings) -> None:
        self._settings = settings

    async def append(self, ops: Sequence[Op]) -> list[int]:
        """Durable in the WAL (under its fsync policy) when this returns; their seqs."""
        try:
            seqs = await self._wal.append(ops)
        except WalFullError as exc:
            self._health.wal_full(str(exc), for_space=exc.for_space)
            raise WalFull(str(exc)) from exc
        except WalBusyError as exc:
            self._health.wal_full(str(exc), for_space=False)
            raise Overloaded(str(exc)) from exc
        except WalError as exc:
            raise InternalError(str(exc)) from exc
        if self._health.wal_full_reason is not None:
            self._health.wal_has_room()
        return seqs

    async def wait_applied(self, durability: str, seq: int) -> None:
        """For ``durability: store``: until the store has applied ``seq``."""
        if durability != "store":
            return
        try:
            await asyncio.wait_for(
                self._flusher.wait_applied(seq), self._settings.request_timeout_s
            )
        except TimeoutError:
            down = self._health.store_down
            why = "the store is unreachable" if down else "the store is slow"
            error = BackendUnavailable if down else DeadlineExceeded
            raise error(
                f"{why}: the write is safe in the WAL and will be applied, "
                "but was not applied within request_timeout_s"
            ) from None

    @contextlib.asynccontextmanager
    async def agent_lock(self, agent_id: str) -> AsyncIterator[None]:
        # Read-modify-write methods of one agent run one at a time, so two
        # updates of one record never both start from the same version.
        lock = self._agent_locks.setdefault(agent_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._agent_locks.get(agent_id) is lock:
                del self._agent_locks[agent_id]
