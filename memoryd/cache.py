"""What the daemon holds of each agent's newest records, and how far it may trust it.

Every agent used lately has a view: some of its newest records, in time
order, learnt from what reads return and what the flusher applies.  A view
may be *exact* from a boundary up: then every record the store holds that
sorts at or above the boundary is in the view, in the version the store
holds.  A read that an exact view can answer whole (enough matches above the
boundary, or the view holds the whole agent) is answered from memory,
without a store round trip; anything else asks the store as before.

Exactness rests on three rules:

- **Fill.**  Only an unfiltered newest-first answer of the store sets a
  boundary, and only if nothing touched the agent while the store was
  answering.  Every change gets a stamp from one clock; a read takes a token
  (the clock) before it asks, and its answer is used only if the agent's
  last change is not newer than the token.
- **Mirror.**  What the flusher applied is replayed on the view with the
  stores' own rules, at the same ``now_s``: the expire step first, a Put
  only when its id is absent and it has not expired, a Replace only when
  present, a Delete, a Clear, trimming to ``max_memories`` (a trim takes the
  oldest records; a view holds the newest, so it loses one only when it
  holds more than ``max_memories`` of them).
- **Other writers.**  Someone else may write the same store: another daemon
  sharing the Redis.  Views are trusted only while this daemon hears of every
  write (memoryd.writers renews ``trusted_until`` every fraction of a second
  while it is the only writer or follows the others' change notices, which
  ``invalidate`` the agents they name); when trust is regained, everything
  learnt before is distrusted first.

A misuse the rules cannot see: a Put that reuses the id of a record stored
with another time is a no-op in the store but shows in the view.  Client ids
are new, and a retry carries the same record, so this needs a caller that
picks ids by hand and reuses them.

While the store is down, reads answer from every view, exact or not (the
answer is flagged ``degraded``): an agent's older records, or agents not used
lately, are missing from such answers.  Bounded twice: records per agent and
records in all (the least recently used agents go first).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from memoryd.config import Settings
from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Query, Record, is_expired, matches, sort_key

SortKey = tuple[float, str]

# A boundary below every record: the view holds the whole agent.
WHOLE_AGENT: SortKey = (-math.inf, "")

# Changes remembered per agent for refusing stale fills; older ones are
# summed up in a floor, which only makes fills more cautious.
CHANGES_KEPT = 16_384


@dataclass(slots=True)
class _View:
    keys: list[SortKey] = field(default_factory=list)  # ascending, one per record
    by_id: dict[str, Record] = field(default_factory=dict)
    exact_from: SortKey | None = None  # None: nothing is exact
    # At or before the earliest expiry held (never after it), so that the
    # expire step of every apply scans the records only when one is due.
    first_expiry: float = math.inf
    filled_at: int = 0  # the cache's clock when a fill last set the boundary

    def __len__(self) -> int:
        return len(self.keys)

    def insert(self, record: Record) -> int:
        """Add or overwrite ``record``; how many records were added (0 or 1)."""
        added = 1 - self.remove(record["id"])
        key = sort_key(record)
        if not self.keys or key > self.keys[-1]:
            self.keys.append(key)  # the common case: a newer record
        else:
            bisect.insort(self.keys, key)
        self.by_id[record["id"]] = record
        expires_at = record["expires_at"]
        if expires_at is not None and expires_at < self.first_expiry:
            self.first_expiry = expires_at
        return added

    def remove(self, record_id: str) -> int:
        record = self.by_id.pop(record_id, None)
        if record is None:
            return 0
        del self.keys[bisect.bisect_left(self.keys, sort_key(record))]
        return 1

    def drop_oldest(self) -> None:
        key = self.keys.pop(0)
        del self.by_id[key[1]]
        if self.exact_from is not None and self.exact_from <= key:
            # The records above the boundary are still all here; the
            # boundary moves up to the oldest one left.
            self.exact_from = self.keys[0] if self.keys else None

    def mirror(self, op: Op, now_s: float, max_memories: int) -> int:
        """Replay an applied ``op`` as the stores apply it; the change in records held."""
        if isinstance(op, Put):
            record = op.record
            inside = self.exact_from is None or sort_key(record) >= self.exact_from
            if is_expired(record, now_s) or record["id"] in self.by_id or not inside:
                return 0
            self.insert(record)
            if len(self) > max_memories:
                # The store's trim.  It takes the oldest records, and a view
                # holds the newest ones: when more than max_memories of those
                # are held, the oldest of them went.
                self.drop_oldest()
                return 0
            return 1
        if isinstance(op, Replace):
            if op.record["id"] not in self.by_id:
                return 0
            self.remove(op.record["id"])
            if is_expired(op.record, now_s):  # an expired replacement deletes
                return -1
            self.insert(op.record)
            return 0
        if isinstance(op, Delete):
            return -self.remove(op.record_id)
        assert isinstance(op, Clear)
        held = len(self)
        self.keys.clear()
        self.by_id.clear()
        self.exact_from = WHOLE_AGENT
        return -held

    def expire(self, now_s: float) -> int:
        """The stores' expire step, run before each apply; the change in records held."""
        if now_s < self.first_expiry:
            return 0
        due = [record["id"] for record in self.by_id.values() if is_expired(record, now_s)]
        removed = sum(self.remove(record_id) for record_id in due)
        expiries = [r["expires_at"] for r in self.by_id.values() if r["expires_at"] is not None]
        self.first_expiry = min(expiries, default=math.inf)
        return -removed

    def bound(self, per_agent: int) -> int:
        dropped = 0
        while len(self) > per_agent:
            self.drop_oldest()
            dropped += 1
        return -dropped

    def ahead(self, ops: Sequence[Op], now_s: float, max_memories: int, per_agent: int) -> _View:
        """A copy with ``ops`` (not yet applied) replayed: what the store will hold."""
        view = _View(list(self.keys), dict(self.by_id), self.exact_from, self.first_expiry)
        view.expire(now_s)
        for op in ops:
            view.mirror(op, now_s, max_memories)
        view.bound(per_agent)
        return view

    def exact(self, record_id: str) -> Record | None:
        record = self.by_id.get(record_id)
        if record is None or self.exact_from is None or sort_key(record) < self.exact_from:
            return None
        return record

    def newest_first(self, until: SortKey) -> Iterable[Record]:
        for index in range(len(self.keys) - 1, -1, -1):
            key = self.keys[index]
            if key < until:
                return
            yield self.by_id[key[1]]


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """What the read cache takes from the settings."""

    per_agent: int  # read_cache_per_agent: records held per agent; 0 turns the cache off
    max_records: int  # read_cache_records: records held in all
    max_memories: int  # the stores' trim, which the views replay

    @classmethod
    def of(cls, settings: Settings) -> CacheSettings:
        return cls(
            per_agent=settings.read_cache_per_agent,
            max_records=settings.read_cache_records,
            max_memories=settings.max_memories,
        )


class ReadCache:
    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        # time.monotonic() until which this daemon is known to hear of every
        # write to the store; memoryd.writers moves it forward (trust_until).
        self._trusted_until = 0.0
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._views: OrderedDict[str, _View] = OrderedDict()
        self._clock = 0
        self._changes: OrderedDict[str, int] = OrderedDict()
        self._changes_floor = 0

    # -- reads --------------------------------------------------------------

    def token(self) -> int:
        """Taken before asking the store; given back to ``fill``/``remember``."""
        return self._clock

    def answer(
        self, agent_id: str, query: Query, now_s: float, pending: Sequence[Op] = ()
    ) -> list[Record] | None:
        """The store's answer to ``query`` once ``pending`` (the agent's writes
        not yet applied, in order) are applied; None when the view cannot tell."""
        view = self._exact_view(agent_id, now_s, pending)
        if view is None or view.exact_from is None:
            return None
        whole = view.exact_from == WHOLE_AGENT
        if query.order != "newest" and not whole:
            return None
        found: list[Record] = []
        for record in view.newest_first(view.exact_from):
            if len(found) == query.limit and query.order == "newest":
                break
            if matches(record, query, now_s):
                found.append(record)
        if len(found) < query.limit and not whole:
            return None
        self._views.move_to_end(agent_id)
        if query.order == "oldest":
            found.reverse()
            del found[query.limit :]
        return found

    def may_fill(self, agent_id: str) -> bool:
        """Whether a ``fill`` of the agent could make its view exact."""
        if self.settings.per_agent <= 0 or not self.trusted():
            return False
        view = self._views.get(agent_id)
        return view is None or view.exact_from is None

    def get(
        self, agent_id: str, record_id: str, now_s: float, pending: Sequence[Op] = ()
    ) -> Record | None:
        """The record if an exact view holds it, ``pending`` applied (expired or not:
        the caller checks)."""
        view = self._exact_view(agent_id, now_s, pending)
        return None if view is None else view.exact(record_id)

    def _exact_view(self, agent_id: str, now_s: float, pending: Sequence[Op]) -> _View | None:
        view = self._views.get(agent_id)
        if view is None or view.exact_from is None or not self.trusted():
            return None
        if pending:
            view = view.ahead(pending, now_s, self.settings.max_memories, self.settings.per_agent)
            if view.exact_from is None:
                return None
        return view

    def records(self, agent_id: str) -> list[Record]:
        """Every record held of the agent, exact or not: for reads while the store is down."""
        view = self._views.get(agent_id)
        if view is None:
            return []
        self._views.move_to_end(agent_id)
        return list(view.by_id.values())

    def known(self, agent_id: str, record_id: str) -> Record | None:
        """A record held of the agent, exact or not."""
        view = self._views.get(agent_id)
        return None if view is None else view.by_id.get(record_id)

    # -- learning from reads ------------------------------------------------

    def fill(self, agent_id: str, records: Sequence[Record], limit: int, token: int) -> None:
        """The store's newest ``limit`` records of the agent (fewer: all it has)."""
        if (
            self.settings.per_agent <= 0
            or not self.trusted()
            or self._changed_since(agent_id, token)
        ):
            return
        view = self._view(agent_id)
        boundary = WHOLE_AGENT if len(records) < limit else sort_key(records[-1])
        while view.keys and view.keys[-1] >= boundary:
            self.size -= view.remove(view.keys[-1][1])
        for record in records:
            self.size += view.insert(record)
        view.exact_from = boundary
        self._clock += 1  # so that stale_removed can tell fills after a token apart
        view.filled_at = self._clock
        self._bound(view)
        self._evict()

    def remember(self, agent_id: str, records: Iterable[Record], token: int) -> None:
        """Records a read returned: kept for reads while the store is down."""
        if self.settings.per_agent <= 0 or self._changed_since(agent_id, token):
            return
        view = self._view(agent_id)
        for record in records:
            if view.exact_from is None or sort_key(record) < view.exact_from:
                self.size += view.insert(record)
        self._bound(view)
        self._evict()

    # -- learning from writes -----------------------------------------------

    def applied(self, ops: Sequence[Op], now_s: float) -> None:
        """Operations the store has just applied, at ``now_s``, in this order."""
        expired: set[str] = set()
        for op in ops:
            agent_id = op.agent_id
            self._changed(agent_id)
            view = self._views.get(agent_id)
            if view is None:
                if not isinstance(op, Put) or self.settings.per_agent <= 0:
                    continue
                view = self._view(agent_id)
            if agent_id not in expired:
                expired.add(agent_id)
                self.size += view.expire(now_s)
            self.size += view.mirror(op, now_s, self.settings.max_memories)
            self._bound(view)
        self._evict()

    def failed(self, ops: Sequence[Op]) -> None:
        """A store apply failed: any prefix of ``ops`` may have taken effect."""
        for agent_id in {op.agent_id for op in ops}:
            self.invalidate(agent_id)

    # -- trust --------------------------------------------------------------

    def reconfigure(self, settings: CacheSettings) -> None:
        """New bounds; the cache shrinks to them as records come and go."""
        self.settings = settings

    @property
    def per_agent(self) -> int:
        return self.settings.per_agent

    def describe(self) -> dict[str, Any]:
        return {
            "records": self.size,
            "hits": self.hits,
            "misses": self.misses,
            "from_memory": self.trusted(),
        }

    def trusted(self) -> bool:
        return time.monotonic() < self._trusted_until

    def trust_until(self, until_s: float) -> None:
        """This daemon hears of every write to the store until ``until_s`` (time.monotonic()).

        Trust regained after a lapse starts over: what the views learnt before
        is distrusted first, since anyone may have written meanwhile.
        """
        if not self.trusted():
            self.invalidate_all()
        self._trusted_until = until_s

    def distrust(self) -> None:
        """Someone else may be writing (or nobody can tell): no answers from memory
        until ``trust_until`` again."""
        if self._trusted_until:
            self._trusted_until = 0.0
            self.invalidate_all()

    def stale_removed(self, agent_id: str, since: int) -> None:
        """The store removed stale index entries of the agent (memoryd.stores.base.Found)
        at some moment after ``since`` (a token).

        The live records are the same, so an exact view stays exact; but a
        read that paged through the index meanwhile may have missed some, so
        fills racing it are refused, and a fill made since the token is undone.
        """
        self._changed(agent_id)
        view = self._views.get(agent_id)
        if view is not None and view.filled_at > since:
            view.exact_from = None

    def invalidate(self, agent_id: str) -> None:
        """The agent may have changed in the store in ways the views did not see."""
        self._changed(agent_id)
        view = self._views.get(agent_id)
        if view is not None:
            view.exact_from = None

    def invalidate_all(self) -> None:
        """Anything may have changed (another writer, a store that restarted)."""
        self._clock += 1
        self._changes.clear()
        self._changes_floor = self._clock
        for view in self._views.values():
            view.exact_from = None

    # -- internals ----------------------------------------------------------

    def _view(self, agent_id: str) -> _View:
        view = self._views.get(agent_id)
        if view is None:
            view = self._views[agent_id] = _View()
        self._views.move_to_end(agent_id)
        return view

    def _bound(self, view: _View) -> None:
        self.size += view.bound(self.settings.per_agent)

    def _evict(self) -> None:
        while self.size > self.settings.max_records and self._views:
            _, view = self._views.popitem(last=False)
            self.size -= len(view)

    def _changed(self, agent_id: str) -> None:
        self._clock += 1
        self._changes[agent_id] = self._clock
        self._changes.move_to_end(agent_id)
        if len(self._changes) > CHANGES_KEPT:
            _, stamp = self._changes.popitem(last=False)
            self._changes_floor = stamp

    def _changed_since(self, agent_id: str, token: int) -> bool:
        return self._changes.get(agent_id, self._changes_floor) > token
