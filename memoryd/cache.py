"""The newest records of recently used agents, for reads while the store is down.

While the store is reachable the cache only learns: from what reads return
and what the flusher applies.  When the store is down, reads answer from the
cache with the backlog laid over it, at once and flagged ``degraded``; an
agent's older records, or agents not used lately, are missing from such
answers.  Bounded twice: records per agent, and records in all (least
recently used agents go first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from memoryd.ops import Clear, Delete, Op, Put, Replace
from memoryd.records import Record, sort_key


class RecentCache:
    def __init__(self, *, per_agent: int, max_records: int) -> None:
        self.per_agent = per_agent
        self.max_records = max_records
        self._agents: OrderedDict[str, dict[str, Record]] = OrderedDict()
        self.size = 0

    def records(self, agent_id: str) -> list[Record]:
        agent = self._agents.get(agent_id)
        if agent is None:
            return []
        self._agents.move_to_end(agent_id)
        return list(agent.values())

    def get(self, agent_id: str, record_id: str) -> Record | None:
        agent = self._agents.get(agent_id)
        return None if agent is None else agent.get(record_id)

    def remember(self, records: Iterable[Record]) -> None:
        """Records the store just returned."""
        for record in records:
            self._put(record)
        self._evict()

    def applied(self, ops: Sequence[Op]) -> None:
        """Operations the store just applied."""
        for op in ops:
            if isinstance(op, Put):
                self._put(op.record)
            elif isinstance(op, Replace):
                if self.get(op.agent_id, op.record["id"]) is not None:
                    self._put(op.record)
            elif isinstance(op, Delete):
                self._drop(op.agent_id, op.record_id)
            elif isinstance(op, Clear):
                self.size -= len(self._agents.pop(op.agent_id, {}))
        self._evict()

    def _put(self, record: Record) -> None:
        agent = self._agents.setdefault(record["agent_id"], {})
        self._agents.move_to_end(record["agent_id"])
        if record["id"] not in agent:
            self.size += 1
        agent[record["id"]] = record
        if len(agent) > self.per_agent:
            oldest = min(agent.values(), key=sort_key)
            self._drop(record["agent_id"], oldest["id"])

    def _drop(self, agent_id: str, record_id: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is not None and agent.pop(record_id, None) is not None:
            self.size -= 1
            if not agent:
                del self._agents[agent_id]

    def _evict(self) -> None:
        while self.size > self.max_records and self._agents:
            _, agent = self._agents.popitem(last=False)
            self.size -= len(agent)
