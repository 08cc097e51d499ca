"""Repairing what Redis's evictions left of memoryd's keys.

A Redis whose ``maxmemory-policy`` evicts may drop any key: a record's HASH
(its index entries then point at nothing), an index ZSET (its records are
then unlisted), a stats HASH.  When that may have happened (``INFO``: the
policy evicts, or ``evicted_keys`` grew), the sweep runs ``repair.lua`` over
every agent SCAN finds, which rebuilds its indexes and stats from its record
HASHes.  Records Redis evicted are lost; everything else is consistent again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memoryd.records import is_expired
from memoryd.stores.base import Eviction, Swept
from memoryd.stores.keys import AgentKey, KeySpace
from memoryd.stores.redis_commands import Command, Framing, decoded, index_fields, key_command, text
from memoryd.stores.redis_link import RedisLink, translated

logger = logging.getLogger(__name__)

SCAN_COUNT = 1000  # keys per SCAN step: few round trips, short server stalls
AGENTS_PER_PIPELINE = 256


@dataclass(slots=True)
class _AgentScan:
    """What SCAN found of one agent: its type ZSETs, and its HASHes no list names."""

    types: set[str] = field(default_factory=set)
    unlisted: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _RepairTally:
    agents: int = 0
    dropped_entries: int = 0
    indexed_records: int = 0
    removed_records: int = 0
    rewritten: set[str] = field(default_factory=set)  # agents whose counts were rewritten
    stale: set[str] = field(default_factory=set)  # agents whose index entries were removed
    changed: set[str] = field(default_factory=set)  # agents whose live records changed

    def add(self, agent_id: str, reply: Sequence[Any]) -> None:
        self.dropped_entries += int(reply[0])
        self.indexed_records += int(reply[1])
        self.removed_records += int(reply[2])
        if int(reply[4]):
            self.rewritten.add(agent_id)
        if int(reply[0]) or int(reply[2]):
            self.stale.add(agent_id)
        if int(reply[3]):
            self.changed.add(agent_id)

    def swept(self) -> Swept:
        return Swept(self.removed_records, frozenset(self.stale), frozenset(self.changed))

    def log(self) -> None:
        if self.dropped_entries or self.indexed_records or self.removed_records:
            logger.warning(
                "eviction repair of %d agents: %d index entries without their record removed, "
                "%d records without index entries indexed again, %d expired or trimmed records "
                "removed, counts of %d agents rewritten; records Redis evicted are lost",
                self.agents,
                self.dropped_entries,
                self.indexed_records,
                self.removed_records,
                len(self.rewritten),
            )
        else:
            logger.info(
                "eviction repair of %d agents: indexes match the records (counts of %d agents "
                "rewritten)",
                self.agents,
                len(self.rewritten),
            )


class EvictionRepair:
    def __init__(self, link: RedisLink, keys: KeySpace, *, max_memories: int) -> None:
        self._link = link
        self._keys = keys
        self._max_memories = max_memories
        # What INFO said when the last repair started (None: none yet).
        self._repaired_at: Eviction | None = None

    def due(self, eviction: Eviction) -> bool:
        """Whether keys may have been evicted since the last repair began.

        Not at every sweep: a repair reads every agent's indexes.  Only when
        ``evicted_keys`` grew since the last repair began, and once per daemon
        and per Redis run when the policy evicts or keys were evicted at all.
        """
        earlier = self._repaired_at
        if earlier is None or earlier.server_run_id != eviction.server_run_id:
            return eviction.may_evict or eviction.evicted_keys > 0
        return eviction.evicted_since(earlier) > 0

    async def run(self, eviction: Eviction, now_s: float, framing: Framing) -> Swept:
        """Repair every agent's keys; ``framing`` goes around each write batch."""
        logger.info(
            "redis may have evicted memoryd's keys (maxmemory-policy %s, %d keys evicted since "
            "it started): checking every agent's indexes against its records",
            eviction.policy,
            eviction.evicted_keys,
        )
        found = await self._scan_agents()
        tally = _RepairTally(agents=len(found))
        agent_ids = sorted(found)
        for first in range(0, len(agent_ids), AGENTS_PER_PIPELINE):
            chunk = agent_ids[first : first + AGENTS_PER_PIPELINE]
            await self._repair_agents(chunk, found, now_s, tally, framing)
        tally.log()
        self._repaired_at = eviction
        return tally.swept()

    async def _scan_agents(self) -> dict[str, _AgentScan]:
        """Every agent with a key, its type ZSETs, and its record HASHes no list names.

        SCAN in steps of SCAN_COUNT keys (on a cluster, of every master); the
        HASHes of each step are looked up in their agents' lists in one round
        trip, so only the unlisted are kept.
        """
        client = self._link.client
        found: dict[str, _AgentScan] = {}
        hashes: list[AgentKey] = []
        with translated("sweep"):
            async for name in client.scan_iter(
                match=self._keys.agent_key_pattern(), count=SCAN_COUNT
            ):
                key = self._keys.parse_agent_key(text(name))
                if key is None:
                    continue
                scan = found.setdefault(key.agent_id, _AgentScan())
                if key.kind == "type":
                    scan.types.add(key.name)
                elif key.kind == "memory":
                    hashes.append(key)
                if len(hashes) >= SCAN_COUNT:
                    await self._keep_unlisted(hashes, found)
                    hashes = []
            await self._keep_unlisted(hashes, found)
        return found

    async def _keep_unlisted(
        self, hashes: Sequence[AgentKey], found: dict[str, _AgentScan]
    ) -> None:
        if not hashes:
            return
        lookups = [
            key_command("ZSCORE", self._keys.agent(key.agent_id).list, key.name) for key in hashes
        ]
        for key, found_score in zip(hashes, await self._link.round_trip(lookups), strict=True):
            if isinstance(found_score, Exception):
                raise found_score
            if found_score is None:
                found[key.agent_id].unlisted.add(key.name)

    async def _repair_agents(
        self,
        agent_ids: Sequence[str],
        found: dict[str, _AgentScan],
        now_s: float,
        tally: _RepairTally,
        framing: Framing,
    ) -> None:
        """Two calls of the repair script: the indexes, then the records whose data it needs."""
        first_words: dict[str, list[str | bytes]] = {
            agent_id: [
                word for record_id in sorted(found[agent_id].unlisted) for word in ("C", record_id)
            ]
            for agent_id in agent_ids
        }
        wanted: dict[str, list[str]] = {}
        for agent_id, reply in await self._run_repair(first_words, found, framing):
            tally.add(agent_id, reply)
            if reply[5]:
                wanted[agent_id] = [text(record_id) for record_id in reply[5]]
        if wanted:
            second_words = await self._read_for_repair(wanted, now_s)
            for agent_id, reply in await self._run_repair(second_words, found, framing):
                tally.add(agent_id, reply)

    async def _run_repair(
        self,
        words: dict[str, list[str | bytes]],
        found: dict[str, _AgentScan],
        framing: Framing,
    ) -> list[tuple[str, Any]]:
        def commands() -> list[Command]:
            packed = []
            for agent_id, agent_words in words.items():
                keys = self._keys.agent(agent_id)
                types = sorted(found[agent_id].types)
                packed.append(
                    self._link.evalsha(
                        "repair",
                        keys.repair_keys,
                        keys.memory_prefix,
                        keys.type_prefix,
                        str(self._max_memories),
                        str(len(types)),
                        *types,
                        *agent_words,
                    )
                )
            return packed

        replies = await self._link.run_batch("sweep", commands, framing)
        return list(zip(words, replies, strict=True))

    async def _read_for_repair(
        self, wanted: dict[str, list[str]], now_s: float
    ) -> dict[str, list[str | bytes]]:
        """K or X words for the records the repair script asked about, from their data."""
        targets = [(agent_id, record_id) for agent_id, ids in wanted.items() for record_id in ids]
        reads = [
            key_command("HGET", self._keys.agent(agent_id).memory(record_id), "data")
            for agent_id, record_id in targets
        ]
        with translated("sweep"):
            replies = await self._link.round_trip(reads)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        words: dict[str, list[str | bytes]] = {}
        for (agent_id, record_id), data in zip(targets, replies, strict=True):
            if not isinstance(data, bytes):
                continue  # gone meanwhile: the next repair sees its index entries
            record = decoded(agent_id, record_id, data)
            if record is None:
                continue
            sha1 = hashlib.sha1(data, usedforsecurity=False).hexdigest()
            agent_words = words.setdefault(agent_id, [])
            if is_expired(record, now_s):
                agent_words += ["X", record_id, sha1]
            else:
                agent_words += ["K", record_id, *index_fields(record), sha1]
        return words
