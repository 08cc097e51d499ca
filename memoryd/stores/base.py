"""The contract between the daemon and a store (Redis or local SQLite)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from memoryd.errors import MemorydError
from memoryd.ops import Op
from memoryd.records import Query, Record


class StoreUnavailable(MemorydError):
    """The store could not be reached or did not answer in time.

    Raised (``from`` the underlying library's exception) for every failure
    that a later retry may cure: refused or broken connections, timeouts,
    a Redis that is still loading.
    """


class StoreRefusing(StoreUnavailable):
    """The store answers, but refuses writes for now: out of memory (``OOM``),
    a replica (``READONLY``), a failed RDB save (``MISCONF``).  Reads still
    work; writes wait in the WAL until it takes them again."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreMisconfigured(StoreUnavailable):
    """The store answers, but refuses memoryd itself: wrong credentials, no
    permission.  Waiting does not cure it; at start it stops the daemon, at
    run time it raises an alert (writes wait in the WAL meanwhile)."""


class StoreError(MemorydError):
    """The store answered, but with an error that retrying will not fix."""


# What a store call may fail with: caught together wherever a caller falls
# back (an answer from the backlog, a batch tried again), reported to Health
# once by memoryd.stores.monitored.
STORE_FAILURES = (StoreUnavailable, StoreError)


@dataclass(slots=True)
class AgentStats:
    """What one agent has stored now (never "ever added")."""

    count: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    oldest: float | None = None
    newest: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_type": dict(self.by_type),
            "bytes": self.bytes,
            "oldest": self.oldest,
            "newest": self.newest,
        }


# The only maxmemory-policy under which Redis never drops a key to make room.
NO_EVICTION = "noeviction"


@dataclass(frozen=True, slots=True)
class Eviction:
    """What a store's server says about dropping keys when its memory is full.

    Read from Redis's ``INFO`` (which answers even where CONFIG is renamed
    away): ``maxmemory_policy`` and ``maxmemory`` from ``INFO memory``,
    ``evicted_keys`` from ``INFO stats``, ``run_id`` from ``INFO server``.
    """

    policy: str
    maxmemory_bytes: int  # 0: no limit
    evicted_keys: int  # keys the server evicted since it started, in all its databases
    server_run_id: str  # changes when the server restarts (and its counters start at 0)

    @property
    def may_evict(self) -> bool:
        # Every other policy can drop memoryd's keys: record HASHes carry an
        # EXPIRE, so even the volatile-* policies may pick them.
        return self.policy != NO_EVICTION

    def evicted_since(self, earlier: Eviction | None) -> int:
        """Keys evicted since ``earlier`` was read (None: since the server started).

        A server that restarted, or whose counters were reset (CONFIG
        RESETSTAT), counts from its new start.
        """
        if (
            earlier is None
            or earlier.server_run_id != self.server_run_id
            or self.evicted_keys < earlier.evicted_keys
        ):
            return self.evicted_keys
        return self.evicted_keys - earlier.evicted_keys


class Store(Protocol):
    """A place records live in.  All methods are coroutines safe to call from
    the event loop; none may block it."""

    kind: str

    @property
    def identity(self) -> str:
        """Which dataset this store is (its address, never a password, and key
        prefix): the store marker is remembered under it."""

    # Called with an agent id whenever a store removes expired records or
    # dangling index entries of that agent outside apply() (read repairs, the
    # sweep).  The live records are the same, but a read that paged through
    # the agent's index meanwhile may have missed some, so the read cache must
    # not learn from it.  Set by the daemon; a store whose reads are one
    # atomic step never calls it.
    stale_removed: Callable[[str], None]
    # Called with an agent id whose live records a store changed outside
    # apply(): the Redis store indexing again records whose index entries
    # Redis evicted, or trimming the agent after that.  Views of that agent
    # are no longer exact.  Set by the daemon.
    records_changed: Callable[[str], None]
    # (daemon id, lease in seconds) to renew with every write, so that no
    # daemon writes without holding a fresh writer lease (memoryd.writers).
    writer_lease: tuple[str, float] | None

    async def open(self) -> None:
        """Connect or open files.  Raises StoreUnavailable if not reachable."""

    async def close(self) -> None: ...

    async def apply(self, ops: Sequence[Op], now_s: float) -> None:
        """Apply ``ops`` in order, each idempotently (see memoryd.ops).

        Operations of one agent must take effect in the given order; those of
        different agents are independent.  When this returns, the effects are
        as durable as the store makes them; on an exception, any prefix of
        ``ops`` may have taken effect, and the caller applies them all again.
        Puts whose expiry is at or before ``now_s`` are skipped.
        """

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Record | None:
        """The record, or None if absent or expired."""

    async def query(self, agent_id: str, query: Query, now_s: float) -> list[Record]:
        """Records of one agent that match ``query`` (memoryd.records.matches),
        in its order, at most ``query.limit``."""

    async def stats(self, agent_id: str, now_s: float) -> AgentStats: ...

    async def agents(self, prefix: str, limit: int) -> list[str]:
        """Agent ids that have at least one record, sorted, starting with ``prefix``."""

    async def ping(self) -> float:
        """Round-trip time in seconds."""

    async def marker(self, candidate: str) -> str:
        """The token that marks this store's dataset, set to ``candidate`` if it
        has none.  A token that changes between two calls means the data the
        store held is gone (a Redis restarted empty or flushed, a new file)."""

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> tuple[int, bool]:
        """Renew this daemon's lease among the writers of the store (``lease_s``
        0: give it up): how many daemons hold one, this one included, and
        whether this daemon's lease was still there.  A store that only one
        daemon can open at a time answers (1, True)."""

    async def watch(self) -> None:
        """Return when the link to the store broke: a sign that it may have
        restarted, perhaps empty, between two commands that both succeeded.

        A connection of its own waits on the server for nothing else.  Raises
        StoreUnavailable when the link cannot be made.  A store in this
        process's own files never breaks it and never returns.
        """

    async def sweep(self, now_s: float) -> int:
        """Remove expired records with their index entries; the number removed.

        A store whose server may have dropped some of its keys (Redis
        eviction) also repairs what that left behind: index entries without
        their record, records without their index entries, stats that no
        longer count what is readable.
        """

    async def eviction(self) -> Eviction | None:
        """What the server says about evicting keys now (also kept for
        ``describe``); None for a store that never drops keys on its own."""

    def describe(self) -> dict[str, Any]:
        """Kind, address (never a password) and server version, for status; the
        Redis store adds ``maxmemory_policy``, ``maxmemory_bytes`` and
        ``evicted_keys`` as last read (None before the server was reached)."""
