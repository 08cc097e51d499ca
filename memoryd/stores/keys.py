"""Every Redis key name memoryd uses, built in this one place.

The layout is a contract (DESIGN.md, "Storage layout in Redis"): all keys of
one agent carry the Redis Cluster hash tag ``{agent_id}``, so every write of
an agent touches one shard and can be one atomic Lua script.  The scripts
never spell a key suffix themselves: they get whole key names, or the
prefixes built here to which they append a record id or a type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The agent id rule of the protocol.  Keys found by SCAN are parsed back into
# agent ids and checked against it, so that a stray key which merely matches a
# glob pattern (say, a type named "x}:stats") is never taken for an agent.
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")

_AGENT = "agent:{"
_STATS = "}:stats"
_EXPIRY = "}:memories:expiry"


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a SCAN MATCH pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True, slots=True)
class AgentKeys:
    """The keys of one agent."""

    prefix: str
    agent_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}{_AGENT}{self.agent_id}}}:"

    @property
    def memory_prefix(self) -> str:
        """Prepended to a record id: that record's HASH."""
        return self.base + "memory:"

    def memory(self, record_id: str) -> str:
        return self.memory_prefix + record_id

    @property
    def list(self) -> str:
        """ZSET id -> created_at: the time index."""
        return self.base + "memories:list"

    @property
    def types(self) -> str:
        """HASH type -> number of records of that type stored now."""
        return self.base + "memories:types"

    @property
    def type_prefix(self) -> str:
        """Prepended to a type: that type's ZSET id -> created_at."""
        return self.base + "memories:type:"

    def type(self, record_type: str) -> str:
        return self.type_prefix + record_type

    @property
    def stats(self) -> str:
        """HASH count, bytes, oldest, newest, last_write."""
        return self.base + "stats"

    @property
    def expiry(self) -> str:
        """ZSET id -> expires_at of the records that expire, for the sweep."""
        return self.base + "memories:expiry"

    @property
    def script_keys(self) -> tuple[str, str, str, str]:
        """The fixed keys the apply script takes, in its KEYS order."""
        return (self.list, self.types, self.stats, self.expiry)


@dataclass(frozen=True, slots=True)
class KeySpace:
    """The keys under one ``key_prefix``."""

    prefix: str = ""

    def agent(self, agent_id: str) -> AgentKeys:
        return AgentKeys(self.prefix, agent_id)

    @property
    def marker(self) -> str:
        """STRING: a token set once per dataset, so a Redis that lost its data shows."""
        return f"{self.prefix}memoryd:marker"

    @property
    def writers(self) -> str:
        """ZSET daemon id -> lease end: the daemons writing under this prefix."""
        return f"{self.prefix}memoryd:writers"

    @property
    def watch_channel(self) -> str:
        """Pub/sub channel each daemon's watch connection subscribes to; nothing
        is published on it: the subscription only waits for the link to break."""
        return f"{self.prefix}memoryd:watch"

    def stats_pattern(self, agent_prefix: str = "") -> str:
        """SCAN MATCH pattern of the stats keys of agents whose id starts with ``agent_prefix``."""
        return f"{glob_escape(self.prefix)}{_AGENT}{glob_escape(agent_prefix)}*{_STATS}"

    def expiry_pattern(self) -> str:
        """SCAN MATCH pattern of every agent's expiry index."""
        return f"{glob_escape(self.prefix)}{_AGENT}*{_EXPIRY}"

    def agent_of_stats_key(self, key: str) -> str | None:
        return self._agent_between(key, _STATS)

    def agent_of_expiry_key(self, key: str) -> str | None:
        return self._agent_between(key, _EXPIRY)

    def _agent_between(self, key: str, suffix: str) -> str | None:
        head = self.prefix + _AGENT
        if not (key.startswith(head) and key.endswith(suffix)):
            return None
        agent_id = key[len(head) : len(key) - len(suffix)]
        return agent_id if _AGENT_ID.fullmatch(agent_id) else None
