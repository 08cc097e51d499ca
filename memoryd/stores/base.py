"""The contract between the daemon and a store (Redis or local SQLite)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from memoryd.errors import MemorydError
from memoryd.ops import Op
from memoryd.records import Query, Record

FailureKind = Literal["unavailable", "refusing", "misconfigured", "error"]


class StoreFailure(MemorydError):
    """What a store call may fail with: the one root callers catch to fall back
    (an answer from the backlog, a batch tried again).

    The store's boundary (memoryd.stores.redis_link, memoryd.stores.local)
    picks the class, and so the ``kind``, once; memoryd.health reads the kind
    to tell what the store can still do, and memoryd.stores.monitored reports
    each failure to it once.
    """

    kind: ClassVar[FailureKind]


class StoreUnavailable(StoreFailure):
    """The store could not be reached or did not answer in time.

    Raised (``from`` the underlying library's exception) for every failure
    that a later retry may cure: refused or broken connections, timeouts,
    a Redis that is still loading.
    """

    kind: ClassVar[FailureKind] = "unavailable"


class StoreRefusing(StoreUnavailable):
    """The store answers, but refuses writes for now: out of memory (``OOM``),
    a replica (``READONLY``), a failed RDB save (``MISCONF``).  Reads still
    work; writes wait in the WAL until it takes them again."""

    kind: ClassVar[FailureKind] = "refusing"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreMisconfigured(StoreUnavailable):
    """The store answers, but refuses memoryd itself: wrong credentials, no
    permission.  Waiting does not cure it; at start it stops the daemon, at
    run time it raises an alert (writes wait in the WAL meanwhile)."""

    kind: ClassVar[FailureKind] = "misconfigured"


class StoreError(StoreFailure):
    """The store answered, but with an error that retrying will not fix by
    itself (a script error, a key of the wrong type): the store is reachable,
    and writes wait in the WAL until a batch applies again."""

    kind: ClassVar[FailureKind] = "error"


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


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Found(Generic[_T]):
    """What a read answered, and whether the store removed stale index entries
    of the agent while answering (expired records, entries whose record was
    gone).

    The agent's live records are the same, but a read paging through its
    index meanwhile may have missed some, so the read cache must not learn
    from reads that overlapped: memoryd.cache.ReadCache.stale_removed.  A
    store whose reads are one atomic step never repairs.
    """

    value: _T
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class Swept:
    """What a sweep did: how many records it removed, the agents whose index
    entries it removed (see ``Found``), and the agents whose live records it
    changed (the Redis store indexing again records whose index entries Redis
    evicted, or trimming the agent after that): views of those are no longer
    exact."""

    removed: int = 0
    stale: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Sequenced:
    """Where a batch of operations comes from: ``source`` names the log that
    numbered them (the WAL's id), ``seqs`` holds one number per operation, in
    the order of the operations and increasing.

    A store keeps, per agent and source, the highest number it applied, in
    the same atomic step as the operations, and skips an operation numbered
    at or below it.  So a batch applied again (its reply was lost, or the
    daemon restarted before its checkpoint) changes nothing the first apply
    changed: idempotence per operation is not enough once a trim has removed
    a record that a Put applied again would bring back.
    """

    source: str
    seqs: Sequence[int]

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("a Sequenced batch needs a source")


# How long a store keeps an agent's applied numbers after its last numbered
# write from that source: far longer than a lost reply's retry or a restart's
# replay takes; an agent whose records are all gone leaves only this behind,
# and not for longer.
APPLIED_KEPT_S = 86_400.0


def numbered(ops: Sequence[Op], sequenced: Sequenced | None) -> Iterator[tuple[Op, int | None]]:
    """Each operation with its number (None when the batch is not ``Sequenced``)."""
    if sequenced is None:
        return ((op, None) for op in ops)
    if len(sequenced.seqs) != len(ops):
        raise ValueError(f"{len(ops)} operations but {len(sequenced.seqs)} sequence numbers")
    return zip(ops, sequenced.seqs, strict=True)


@dataclass(frozen=True, slots=True)
class WriterLease:
    """This daemon's lease among the writers of a store (memoryd.writers): a
    store that can renew it in the round trip of a write does, so that no
    daemon writes without holding a fresh lease."""

    daemon_id: str
    lease_s: float


@dataclass(frozen=True, slots=True)
class Durability:
    """What a store's server says about keeping applied writes.

    ``server_run`` names this run of the server and of its data (Redis: its
    ``run_id`` and replication id): a new one means it restarted, resynced
    from a master or took over from one, so nothing applied before is known
    to be in it.  Every write applied to this run before ``until_s`` (the clock's
    ``time()``) is durable: ``math.inf``, all of them; ``-math.inf``, none can
    be said (no persistence).
    """

    server_run: str
    until_s: float


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


# The daemon ids of daemons that send change notices start with this; a lease
# held under another id is an older memoryd's, which writes without them.
NOTICES_ID_PREFIX = "n1."


@dataclass(frozen=True, slots=True)
class Writers:
    """What a writer lease renewal found (Store.renew_writer_lease)."""

    count: int  # daemons holding a lease, this one included
    held: bool  # whether this daemon's lease was still there
    silent: int = 0  # of them, daemons that send no change notices (an older memoryd)


class ChangeListener(Protocol):
    """Hears from Store.watch what other daemons wrote."""

    def following(self) -> None:
        """From now on, every change another daemon makes is told to ``changed``."""

    def changed(self, agent_ids: Sequence[str]) -> None:
        """Another daemon wrote these agents."""


class Store(Protocol):
    """A place records live in.  All methods are coroutines safe to call from
    the event loop; none may block it."""

    kind: str

    @property
    def identity(self) -> str:
        """Which dataset this store is (its address, never a password, and key
        prefix): the store marker is remembered under it."""

    async def open(self) -> None:
        """Connect or open files.  Raises StoreUnavailable if not reachable."""

    async def close(self) -> None: ...

    async def apply(
        self,
        ops: Sequence[Op],
        now_s: float,
        lease: WriterLease | None = None,
        sequenced: Sequenced | None = None,
    ) -> None:
        """Apply ``ops`` in order, each idempotently (see memoryd.ops), renewing
        ``lease`` on the way unless it was renewed a moment ago, and skipping
        those that ``sequenced`` numbers at or below what the store applied
        from its source (see ``Sequenced``).

        Operations of one agent must take effect in the given order; those of
        different agents are independent.  When this returns, the effects are
        as durable as the store makes them; on an exception, any prefix of
        ``ops`` may have taken effect, and the caller applies them all again.
        Puts whose expiry is at or before ``now_s`` are skipped.
        """

    async def get(self, agent_id: str, record_id: str, now_s: float) -> Found[Record | None]:
        """The record, or None if absent or expired."""

    async def query(self, agent_id: str, query: Query, now_s: float) -> Found[list[Record]]:
        """Records of one agent that match ``query`` (memoryd.records.matches),
        in its order, at most ``query.limit``."""

    async def stats(self, agent_id: str, now_s: float) -> Found[AgentStats]: ...

    async def agents(self, prefix: str, limit: int) -> list[str]:
        """Agent ids that have at least one record, sorted, starting with ``prefix``."""

    async def ping(self) -> float:
        """Round-trip time in seconds."""

    async def marker(self, candidate: str) -> str:
        """The token that marks this store's dataset, set to ``candidate`` if it
        has none.  A token that changes between two calls means the data the
        store held is gone (a Redis restarted empty or flushed, a new file)."""

    async def renew_writer_lease(self, daemon_id: str, lease_s: float) -> Writers:
        """Renew this daemon's lease among the writers of the store (``lease_s``
        0: give it up).  A store that only one daemon can open at a time
        answers ``Writers(1, True)``."""

    async def watch(self, daemon_id: str, listener: ChangeListener) -> None:
        """Return when the link to the store broke (a sign that it may have
        restarted, perhaps empty, between two commands that both succeeded), or
        when a change by another daemon may have been missed.

        A connection of its own follows what the other daemons writing the
        store say they wrote (memoryd.stores.redis_changes): ``listener`` hears
        once it follows, then of every agent another daemon than ``daemon_id``
        wrote.  Raises StoreUnavailable when the link cannot be made.  A store
        in this process's own files has no other writer: it says it follows,
        never breaks the link and never returns.
        """

    async def sweep(self, now_s: float, lease: WriterLease | None = None) -> Swept:
        """Remove expired records with their index entries (renewing ``lease``
        as ``apply`` does).

        A store whose server may have dropped some of its keys (Redis
        eviction) also repairs what that left behind: index entries without
        their record, records without their index entries, stats that no
        longer count what is readable.
        """

    async def durability(self) -> Durability:
        """How far applied writes are durable (memoryd.durability keeps the rest)."""

    async def server_run(self) -> str:
        """``Durability.server_run`` alone, cheaply: checked each time the store
        comes back, before it is used again."""

    async def eviction(self) -> Eviction | None:
        """What the server says about evicting keys now (also kept for
        ``describe``); None for a store that never drops keys on its own."""

    def describe(self) -> dict[str, Any]:
        """Kind, address (never a password) and server version, for status; the
        Redis store adds ``maxmemory_policy``, ``maxmemory_bytes`` and
        ``evicted_keys`` as last read (None before the server was reached)."""
