"""Every Redis key name memoryd uses, built in this one place.

The layout is a contract (docs/operations.md, "Keys in Redis"): all keys of
one agent carry the Redis Cluster hash tag ``{agent_id}``, so every write of
an agent touches one shard and can be one atomic Lua script.  The scripts
never spell a key suffix themselves: they get whole key names, or the
prefixes built here to which they append a record id or a type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memoryd.validation import AGENT_ID_PATTERN, RECORD_ID_PATTERN, TYPE_PATTERN

# Keys found by SCAN are parsed back into agent ids, record ids and types and
# checked against the protocol's rules, so that a stray key which merely
# matches a glob pattern (say, a type named "x}:stats") is never taken for ours.
_AGENT_ID = AGENT_ID_PATTERN
_RECORD_ID = RECORD_ID_PATTERN
_TYPE = TYPE_PATTERN
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")

_AGENT = "agent:{"
_STATS = "}:stats"
_EXPIRY = "}:memories:expiry"
# What follows "agent:{A}:" in the name of each of an agent's keys.
_MEMORY = "memory:"
_LIST = "memories:list"
_TYPES = "memories:types"
_TYPE_PREFIX = "memories:type:"
_STATS_REST = "stats"
_EXPIRY_REST = "memories:expiry"
_APPLIED_REST = "applied"


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
        return self.base + _MEMORY

    def memory(self, record_id: str) -> str:
        return self.memory_prefix + record_id

    @property
    def list(self) -> str:
        """ZSET id -> created_at: the time index."""
        return self.base + _LIST

    @property
    def types(self) -> str:
        """HASH type -> number of records of that type stored now."""
        return self.base + _TYPES

    @property
    def type_prefix(self) -> str:
        """Prepended to a type: that type's ZSET id -> created_at."""
        return self.base + _TYPE_PREFIX

    def type(self, record_type: str) -> str:
        return self.type_prefix + record_type

    @property
    def stats(self) -> str:
        """HASH count, bytes, oldest, newest, last_write."""
        return self.base + _STATS_REST

    @property
    def expiry(self) -> str:
        """ZSET id -> expires_at of the records that expire, for the sweep."""
        return self.base + _EXPIRY_REST

    @property
    def applied(self) -> str:
        """HASH source (a WAL's id) -> the highest sequence number applied from it
        (memoryd.stores.base.Sequenced); kept when the agent's records go."""
        return self.base + _APPLIED_REST

    @property
    def repair_keys(self) -> tuple[str, str, str, str]:
        """The fixed keys the repair script takes, in its KEYS order."""
        return (self.list, self.types, self.stats, self.expiry)

    @property
    def apply_keys(self) -> tuple[str, str, str, str, str]:
        """The fixed keys the apply script takes, in its KEYS order."""
        return (*self.repair_keys, self.applied)


@dataclass(frozen=True, slots=True)
class AgentKey:
    """One key of an agent, parsed back from its name (as SCAN finds it)."""

    agent_id: str
    # "memory" (a record HASH), "type" (a type ZSET), "list", "types", "stats", "expiry"
    # or "applied"
    kind: str
    # The record id of a "memory" key, the type of a "type" key, else "".
    name: str = ""


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
    def confirm(self) -> str:
        """STRING written before each WAIT: the replicas that acknowledge it have
        every write applied before it (memoryd.stores.redis durability)."""
        return f"{self.prefix}memoryd:confirm"

    @property
    def writers(self) -> str:
        """ZSET daemon id -> lease end: the daemons writing under this prefix."""
        return f"{self.prefix}memoryd:writers"

    def writers_of(self, shard_tag: str) -> str:
        """``writers`` of the cluster shard whose slots ``shard_tag`` hashes to
        (``writers`` itself for "": one server)."""
        return self._of_shard("writers", shard_tag)

    def confirm_of(self, shard_tag: str) -> str:
        """``confirm`` on the cluster shard of ``shard_tag`` ("": one server)."""
        return self._of_shard("confirm", shard_tag)

    def marker_of(self, shard_tag: str) -> str:
        """``marker`` in the cluster slot of ``shard_tag`` ("": one server)."""
        return self._of_shard("marker", shard_tag)

    def _of_shard(self, name: str, shard_tag: str) -> str:
        if not shard_tag:
            return f"{self.prefix}memoryd:{name}"
        return f"{self.prefix}memoryd:{{{shard_tag}}}:{name}"

    def changes_of(self, shard_tag: str) -> str:
        """STREAM of change notices: which daemon wrote which agents, on the
        cluster shard of ``shard_tag`` ("": one server; memoryd.stores.redis_changes)."""
        return self._of_shard("changes", shard_tag)

    def stats_pattern(self, agent_prefix: str = "") -> str:
        """SCAN MATCH pattern of the stats keys of agents whose id starts with ``agent_prefix``."""
        return f"{glob_escape(self.prefix)}{_AGENT}{glob_escape(agent_prefix)}*{_STATS}"

    def expiry_pattern(self) -> str:
        """SCAN MATCH pattern of every agent's expiry index."""
        return f"{glob_escape(self.prefix)}{_AGENT}*{_EXPIRY}"

    def agent_key_pattern(self) -> str:
        """SCAN MATCH pattern of every key of every agent."""
        return f"{glob_escape(self.prefix)}{_AGENT}*"

    def parse_agent_key(self, key: str) -> AgentKey | None:
        """What an agent's key is, or None for a key that only looks like one."""
        head = self.prefix + _AGENT
        if not key.startswith(head):
            return None
        # An agent id never holds "}", so the first one closes the hash tag.
        agent_id, separator, rest = key[len(head) :].partition("}:")
        if not separator or not _AGENT_ID.fullmatch(agent_id):
            return None
        fixed = {
            _LIST: "list",
            _TYPES: "types",
            _STATS_REST: "stats",
            _EXPIRY_REST: "expiry",
            _APPLIED_REST: "applied",
        }
        if rest in fixed:
            return AgentKey(agent_id, fixed[rest])
        if rest.startswith(_MEMORY) and _RECORD_ID.fullmatch(rest[len(_MEMORY) :]):
            return AgentKey(agent_id, "memory", rest[len(_MEMORY) :])
        if rest.startswith(_TYPE_PREFIX) and _TYPE.fullmatch(rest[len(_TYPE_PREFIX) :]):
            return AgentKey(agent_id, "type", rest[len(_TYPE_PREFIX) :])
        return None

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
