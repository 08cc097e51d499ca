"""The daemon's housekeeping: the store's data-loss check, the expiry sweep, the watchdog.

Each is a small object the composition root builds and the server runs as a
background task; none holds more than what it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from memoryd.alerts import Alerts
from memoryd.cache import ReadCache
from memoryd.durability import Restorer, describe_put_back
from memoryd.eviction import EvictionWatch
from memoryd.health import Health
from memoryd.marker import StoreMarker
from memoryd.stores.base import Store, StoreFailure, Swept, WriterLease
from memoryd.systemd import Notifier
from memoryd.wal import Wal

logger = logging.getLogger(__name__)


class DataLossCheck:
    """Whether the store still holds what memoryd applied to it.

    A store without its marker (memoryd.marker) has been emptied, flushed or
    swapped: the records applied to it before are gone.  Those it had not
    confirmed durable are still in the WAL and are applied again
    (memoryd.durability); ``store_data_lost`` says what was restored and what,
    beyond the WAL's retention, could not be.  Run when the store is opened and each time it comes
    back; it also reads the eviction figures (memoryd.eviction).
    """

    def __init__(
        self,
        store: Store,
        marker: StoreMarker,
        eviction_watch: EvictionWatch,
        cache: ReadCache,
        alerts: Alerts,
        restorer: Restorer,
    ) -> None:
        self._store = store
        self._marker = marker
        self._eviction_watch = eviction_watch
        self._cache = cache
        self._alerts = alerts
        self._restorer = restorer

    async def run(self) -> None:
        # Before the store is used again: a server that is another one (a failover,
        # a restart that loaded an older file) gets what it may miss first.
        put_back = await self._restorer.note_server_run(await self._store.server_run())
        lost = await self._marker.lost(self._store)
        # Read after the marker: evictions that took the marker are counted.
        evicted_keys = await self._eviction_watch.check()
        if not lost:
            return
        self._cache.invalidate_all()  # what the views hold is gone from the store too
        if put_back is None:
            put_back = await self._restorer.put_back("the store lost memoryd's marker")
        self._alerts.raise_alert(
            "store_data_lost",
            f"the store at {self._store.describe().get('address')} lost memoryd's marker: "
            + (
                self._eviction_watch.likely_cause(evicted_keys)
                or "it restarted empty, was flushed, or is another server"
            )
            + f"; {describe_put_back(put_back)}",
        )


class ExpirySweep:
    """Removes expired records every ``interval_s`` while the store is reachable,
    and tells the read cache which agents' indexes that changed."""

    def __init__(
        self,
        store: Store,
        health: Health,
        cache: ReadCache,
        *,
        interval_s: float,
        lease: Callable[[], WriterLease | None],
    ) -> None:
        self._store = store
        self._health = health
        self._cache = cache
        self._lease = lease
        self.interval_s = interval_s

    def reconfigure(self, *, interval_s: float) -> None:
        self.interval_s = interval_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if not self._health.store_down:
                with contextlib.suppress(StoreFailure):  # reported by the store
                    await self.sweep()

    async def sweep(self) -> Swept:
        token = self._cache.token()
        swept = await self._store.sweep(time.time(), self._lease())
        for agent_id in swept.stale:
            self._cache.stale_removed(agent_id, since=token)
        for agent_id in swept.changed:
            self._cache.invalidate(agent_id)
        return swept


class WatchdogFeeder:
    """WATCHDOG=1 from the event loop, only while the WAL writer makes progress.

    A blocked loop sends nothing (this task cannot run); a WAL whose oldest
    append has waited longer than twice the ping interval is stuck (a hung
    disk), so the pings stop and systemd restarts memoryd.
    """

    def __init__(self, wal: Wal, notifier: Notifier, *, interval_s: float) -> None:
        self._wal = wal
        self._notifier = notifier
        self._interval_s = interval_s

    async def run(self) -> None:
        stuck = False
        while True:
            stalled_s = self._wal.stalled_for_s()
            if stalled_s < 2 * self._interval_s:
                if stuck:
                    logger.info("WAL writes move again: watchdog pings resume")
                stuck = False
                self._notifier.watchdog()
            elif not stuck:
                stuck = True
                logger.warning(
                    "WAL writes stuck for %.1fs: no more watchdog pings, so systemd "
                    "restarts memoryd unless they move again",
                    stalled_s,
                )
            await asyncio.sleep(self._interval_s)
