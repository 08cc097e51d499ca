"""A store that tells Health of each of its failures, so that callers need not.

Every request path (the service's reads, the flusher's batches, the sweep)
goes through this wrapper: a call that fails with a store failure
(``StoreFailure``) is reported to ``Health`` once, here, and raised on for
the caller to fall back as it must.  Health's own probes, the data-loss check
it runs and the writer lease use the bare store: they report, or ignore,
their failures themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from memoryd.health import Health
from memoryd.ops import Op
from memoryd.records import Query, Record
from memoryd.stores.base import (
    AgentStats,
    ChangeListener,
    Durability,
    Eviction,
    Found,
    Sequenced,
    Store,
    StoreFailure,
    Swept,
    WriterLease,
    Writers,
)

_T = TypeVar("_T")


class MonitoredStore:
    def __init__(self, store: Store, health: Health) -> None:
        self._store = store
        self._health = health
        self.kind = store.kind

    async def _reported(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except StoreFailure as exc:
            self._health.store_failed(exc)
            raise

    @property
    def identity(self) -> str:
        return self._store.identity

    async def open(self) -> None:
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def apply(
        self,
        ops: Sequence[Op],
        now_s: float,
        lease: WriterLease | None = None,
        sequenced: Sequenced | None = None,
    ) -> None:
        await self._reported(self._store.apply(ops, now_s, lease, sequenced))

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Found[Record | None]:
        return await self._reported(self._store.get(agent_id, record_id, now_s))

    async def query(self, agent_id: str, query: Query, now_s: float) -> Found[list[Record]]:
        return await self._reported(self._store.query(agent_id, query, now_s))

    async def stats(self, agent_id: str, now_s: float) -> Found[AgentStats]:
        return await self._reported(self._store.stats(agent_id, now_s))

    async def agents(self, prefix: str, limit: int) -> list[str]:
        return await self._reported(self._store.agents(prefix, limit))

    async def ping(self) -> float:
        return await self._store.ping()

    async def marker(self, candidate: str) -> str:
        return await self._store.marker(candidate)

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> Writers:
        return await self._store.renew_writer_lease(daemon_id, lease_s)

    async def watch(self, daemon_id: str, listener: ChangeListener) -> None:
        await self._store.watch(daemon_id, listener)

    async def sweep(self, now_s: float, lease: WriterLease | None = None) -> Swept:
        return await self._reported(self._store.sweep(now_s, lease))

    async def durability(self) -> Durability:
        return await self._reported(self._store.durability())

    async def server_run(self) -> str:
        return await self._reported(self._store.server_run())

    async def eviction(self) -> Eviction | None:
        return await self._store.eviction()

    def describe(self) -> dict[str, Any]:
        return self._store.describe()
