"""The daemon's watch over a store that may drop keys on its own (Redis eviction).

Under any ``maxmemory-policy`` but ``noeviction`` a Redis that runs out of
memory evicts keys, memoryd's included (record HASHes carry an EXPIRE, so the
``volatile-*`` policies may pick them too): records vanish, or lose their
index entries.  The store reports what its server says (policy, maxmemory,
keys evicted so far); this module turns that into an alert, once per policy,
and tells the marker check whether evictions explain a lost marker.
"""

from __future__ import annotations

import logging

from memoryd.alerts import Alerts
from memoryd.cache import ReadCache
from memoryd.stores.base import Eviction, Store

logger = logging.getLogger(__name__)

MAY_EVICT = "store_may_evict"


class EvictionWatch:
    def __init__(self, store: Store, alerts: Alerts, cache: ReadCache) -> None:
        self._store = store
        self._alerts = alerts
        self._cache = cache
        self._last: Eviction | None = None
        self._alerted_policy: str | None = None

    async def check(self) -> int:
        """Alert if the store may evict memoryd's keys; the keys evicted since the last check.

        The first check counts every key the server evicted since it started.
        Raises what the store raises (StoreUnavailable, StoreError).
        """
        eviction = await self._store.eviction()
        if eviction is None:
            return 0
        evicted = eviction.evicted_since(self._last)
        self._last = eviction
        if evicted:
            # The views may hold records the store no longer has.
            self._cache.invalidate_all()
            logger.warning(
                "the store evicted %d keys since memoryd last looked (%d since it started; "
                "maxmemory-policy %s): some of memoryd's records or index entries may be gone; "
                "reads ask the store again, and the next sweep repairs the indexes of the "
                "records left",
                evicted,
                eviction.evicted_keys,
                eviction.policy,
            )
        self._alert_on_policy(eviction)
        return evicted

    def likely_cause(self, evicted: int) -> str | None:
        """Why the marker may be gone, when the store evicted keys since the last check
        (the first check: since the server started)."""
        if not evicted or self._last is None:
            return None
        return (
            f"Redis evicted {evicted} keys since memoryd last looked (maxmemory-policy "
            f"{self._last.policy}): eviction is the likely cause, not a restart; records "
            "applied to it before now may be gone or lose their index entries (the sweep "
            "indexes again the records left); set maxmemory-policy noeviction"
        )

    def _alert_on_policy(self, eviction: Eviction) -> None:
        if not eviction.may_evict:
            self._alerted_policy = None
            return
        if eviction.policy == self._alerted_policy:
            return
        self._alerted_policy = eviction.policy
        limit = (
            f"maxmemory {eviction.maxmemory_bytes} bytes"
            if eviction.maxmemory_bytes
            else "no maxmemory set yet"
        )
        message = (
            f"the store at {self._store.describe().get('address')} has maxmemory-policy "
            f"{eviction.policy} ({limit}): when Redis runs out of memory it evicts keys, "
            "memoryd's included, and records then vanish or lose their index entries; "
            "set maxmemory-policy noeviction"
        )
        # Raised once per policy: also not again by a restarted daemon while listed.
        self._alerts.raise_alert(MAY_EVICT, message, once=True)
