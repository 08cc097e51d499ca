"""Whether this daemon knows every write to its store, which reads from memory rely on.

The read cache (memoryd.cache) mirrors what this daemon's flusher applies,
so it is exact only as long as it hears of every other write to the same
records: another daemon on another host sharing the Redis and key prefix,
say.  Every daemon therefore holds a lease in the store's registry of
writers, renewed every ``interval_s``, and follows the change notices the
others append to their writes (``Store.watch``; memoryd.stores.redis_changes):
each names the agents a batch wrote, and this daemon drops its views of them.
While the registry names this daemon alone, or the notices are followed, the
cache is trusted for ``trust_s`` past each renewal that said so.  When a
second writer shows up while the notices are not followed (the watch is
being made again), this daemon stops answering from memory at its next
renewal (reads go to the store, as they always may), and when it trusts again
it distrusts everything it learnt before and starts over; so does a watch that
starts following.

A batch the flusher writes renews the lease in the same round trip unless a
renewal went out less than half a second before, so a daemon never writes
without a fresh lease, at start-up included: the others
see it at their next renewal.  A lease lasts ``lease_s``, so a daemon that
died without giving its lease up keeps the others off their caches for at most
that long.  A lease that is gone at a renewal (the key space was flushed)
starts trust over.  A store only one daemon can open (the local store) always
answers "alone".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from memoryd.cache import ReadCache
from memoryd.stores.base import NOTICES_ID_PREFIX, Store, StoreFailure, WriterLease
from memoryd_client.ids import new_id

logger = logging.getLogger(__name__)

INTERVAL_S = 0.5
TRUST_S = 1.5
LEASE_S = 5.0
# Pause before the watch connection is made again after it broke, doubled
# while the store cannot be reached.
REWATCH_S = 0.1
REWATCH_MAX_S = 5.0


class SoleWriter:
    def __init__(
        self,
        store: Store,
        cache: ReadCache,
        *,
        interval_s: float = INTERVAL_S,
        trust_s: float = TRUST_S,
        lease_s: float = LEASE_S,
        on_link_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.on_link_lost = on_link_lost
        self.interval_s = interval_s
        self.trust_s = trust_s
        self.lease_s = lease_s
        # Marked as a daemon that sends change notices (memoryd.stores.base).
        self.daemon_id = NOTICES_ID_PREFIX + new_id()
        self.writers = 0  # how many daemons the last renewal counted; 0: unknown
        self._lease: WriterLease | None = WriterLease(self.daemon_id, lease_s)
        # Whether the watch follows what other daemons write (their change
        # notices): then the views stay trusted with other writers too.
        self._following = False
        self._silent = False  # a daemon that sends no notices writes too

    def lease(self) -> WriterLease | None:
        """The lease for writes to renew (memoryd.flusher); None once given up."""
        return self._lease

    async def run(self) -> None:
        """Renew the lease forever; cancel to stop."""
        while True:
            await self.renew()
            await asyncio.sleep(self.interval_s)

    async def renew(self) -> None:
        asked_at = time.monotonic()
        try:
            found = await asyncio.wait_for(
                self.store.renew_writer_lease(self.daemon_id, self.lease_s), self.trust_s
            )
        except (StoreFailure, TimeoutError):
            # Whoever else writes meanwhile, this daemon would not know.  The
            # health probe reports the store itself.
            self._distrust(0)
            return
        writers = found.count
        if not found.held:
            # The lease was gone: the key space was flushed (what the views hold
            # may be gone too) or the lease ran out.  Trust starts over.
            self._distrust(writers)
            return
        if found.silent:
            if self.writers <= 1 or not self._silent:
                logger.warning(
                    "%d of the %d daemons writing to this store send no change notices (an "
                    "older memoryd): reads go to the store instead of memory while they write",
                    found.silent,
                    writers,
                )
            self._silent = True
            self._distrust(writers)
            return
        self._silent = False
        if writers > 1 and not self._following:
            if self.writers <= 1:
                logger.warning(
                    "%d daemons write to this store and their changes are not followed yet: "
                    "reads go to the store instead of memory until they are",
                    writers,
                )
            self._distrust(writers)
            return
        if not self.cache.trusted() and self.writers > 1:
            logger.info("reads from memory resume (%d daemons write to this store)", writers)
        self.writers = writers
        self.cache.trust_until(asked_at + self.trust_s)

    # -- what the other daemons wrote (memoryd.stores.base.ChangeListener) ---

    def following(self) -> None:
        # Whatever another daemon wrote before now may not have been heard of.
        self.cache.invalidate_all()
        self._following = True

    def changed(self, agent_ids: Sequence[str]) -> None:
        for agent_id in agent_ids:
            self.cache.invalidate(agent_id)

    async def watch(self) -> None:
        """Stop answering from memory the moment the link to the store breaks; forever.

        A Redis that restarts between two renewals (killed and started again
        within half a second, empty) would otherwise have its old records
        served from memory until the next renewal found the lease gone.
        """
        pause_s = REWATCH_S
        while True:
            try:
                await self.store.watch(self.daemon_id, self)
            except StoreFailure:
                # Down: renewals fail too, so trust is over.  Try less often.
                pause_s = min(REWATCH_MAX_S, pause_s * 2)
            else:
                logger.info("the link to the store broke: reads go to the store until checked")
                pause_s = REWATCH_S
                self.on_link_lost()
            self._following = False
            self._distrust(0)
            await asyncio.sleep(pause_s)

    async def leave(self) -> None:
        """Give the lease up (at shutdown), so that the other daemons need not wait it out."""
        self._lease = None
        self._distrust(0)
        try:
            await asyncio.wait_for(self.store.renew_writer_lease(self.daemon_id, 0), self.trust_s)
        except (StoreFailure, TimeoutError) as exc:
            logger.info("could not give the writer lease up (%s); it ends on its own", exc)

    def _distrust(self, writers: int) -> None:
        self.writers = writers
        self.cache.distrust()
